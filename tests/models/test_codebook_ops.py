"""Codebook functions: EMA by hand, exact re-seeding, k-means++, chunked entropy, buffers,
the per-device chunked search."""
import contextlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from vqgan_jax.models import codebook_ops
from vqgan_jax.runtime.sharding import create_mesh


def test_ema_update_matches_hand_computation():
  cluster_size = np.array([1.0, 2.0, 0.5], np.float32)
  embed_sum = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], np.float32)
  vectors = np.array([[1.0, 1.0], [3.0, 1.0], [0.0, 4.0]], np.float32)
  indices = np.array([0, 0, 1], np.int32)
  decay, eps = 0.9, 0.1
  new_size, new_sum, codebook = codebook_ops.ema_update(
      cluster_size, embed_sum, vectors, indices, decay=decay, epsilon=eps)
  # By hand: counts (2, 1, 0); sums code0 = (4, 2), code1 = (0, 4), code2 = 0.
  size = [0.9 * 1 + 0.1 * 2, 0.9 * 2 + 0.1 * 1, 0.9 * 0.5]  # (1.1, 1.9, 0.45), total 3.45
  sums = [[0.9 + 0.4, 0.2], [0.0, 1.8 + 0.4], [0.9, 0.9]]
  total = sum(size)
  smoothed = [(s + eps) / (total + 3 * eps) * total for s in size]
  np.testing.assert_allclose(new_size, size, rtol=1e-6)
  np.testing.assert_allclose(new_sum, sums, rtol=1e-6)
  np.testing.assert_allclose(codebook, np.array(sums) / np.array(smoothed)[:, None], rtol=1e-6)


def test_reseed_replaces_exactly_the_dead_rows_with_distinct_pool_rows():
  codebook = np.arange(12, dtype=np.float32).reshape(6, 2)
  pool = 100 + np.arange(20, dtype=np.float32).reshape(10, 2)
  dead = np.array([False, True, False, True, True, False])
  new = np.asarray(codebook_ops.reseed(codebook, dead, pool, jax.random.key(0)))
  np.testing.assert_array_equal(new[~dead], codebook[~dead])
  pool_rows = {tuple(r) for r in pool}
  replaced = [tuple(r) for r in new[dead]]
  assert all(r in pool_rows for r in replaced) and len(set(replaced)) == 3


def test_kmeans_plus_plus_finds_separated_clusters():
  rng = np.random.default_rng(0)
  centres = np.array([[10, 0], [-10, 0], [0, 10], [0, -10]], np.float32)
  points = (centres[rng.integers(0, 4, 400)] + rng.normal(0, 0.1, (400, 2))).astype(np.float32)
  found = np.asarray(codebook_ops.kmeans_plus_plus(jnp.asarray(points), 4, jax.random.key(1),
                                                   lloyd_iterations=3))
  nearest = np.argmin(((found[:, None] - centres[None])**2).sum(-1), axis=1)
  assert sorted(nearest) == [0, 1, 2, 3]
  np.testing.assert_allclose(found, centres[nearest], atol=0.05)


def test_kmeans_plus_plus_with_fewer_distinct_points_than_centres():
  points = jnp.asarray(np.repeat(np.eye(2, dtype=np.float32), 5, axis=0))
  found = np.asarray(codebook_ops.kmeans_plus_plus(points, 4, jax.random.key(0)))
  assert np.isfinite(found).all()
  assert {tuple(r) for r in found} <= {(1.0, 0.0), (0.0, 1.0)}


@pytest.mark.parametrize("chunk", [0, 7, 64])
def test_search_entropy_matches_numpy_and_does_not_depend_on_chunking(chunk):
  rng = np.random.default_rng(0)
  vectors = rng.normal(size=(50, 4)).astype(np.float32)
  codebook = rng.normal(size=(16, 4)).astype(np.float32)
  indices, (sample_entropy, codebook_entropy) = codebook_ops.search(
      vectors, codebook, chunk_size=chunk, entropy_temperature=0.5)
  distances = ((vectors[:, None] - codebook[None])**2).sum(-1)
  np.testing.assert_array_equal(indices, distances.argmin(1))
  logits = -distances / 0.5
  probs = np.exp(logits - logits.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  expected_sample = np.mean(-(probs * np.log(probs)).sum(1))
  mean = probs.mean(0)
  np.testing.assert_allclose(sample_entropy, expected_sample, rtol=1e-4)
  np.testing.assert_allclose(codebook_entropy, -(mean * np.log(mean)).sum(), rtol=1e-4)


def test_push_recent_keeps_the_newest_rows():
  buffer = jnp.zeros((5, 1))
  buffer, count = codebook_ops.push_recent(buffer, jnp.int32(0), jnp.ones((2, 1)), jax.random.key(0))
  buffer, count = codebook_ops.push_recent(buffer, count, 2 * jnp.ones((2, 1)), jax.random.key(0))
  np.testing.assert_array_equal(buffer[:, 0], [0, 1, 1, 2, 2])
  assert int(count) == 4
  many = jnp.arange(12, dtype=jnp.float32)[:, None]
  buffer, count = codebook_ops.push_recent(buffer, count, many, jax.random.key(0))
  assert int(count) == 5 and len(set(np.asarray(buffer[:, 0]).tolist())) == 5
  assert set(np.asarray(buffer[:, 0]).tolist()) <= set(range(12))


def test_unused_steps_and_perplexity():
  unused = codebook_ops.advance_unused_steps(jnp.array([0, 3, 5]), jnp.array([2, 0, 1]))
  np.testing.assert_array_equal(unused, [0, 4, 0])
  np.testing.assert_allclose(codebook_ops.perplexity(jnp.array([5, 5, 0, 0])), 2.0, rtol=1e-6)


def test_entropy_gradient_is_finite_when_probabilities_underflow():
  # LFQ-like: far codes at a sharp temperature give exactly-zero probabilities.
  corners = jnp.array([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]]) * 30.0
  vectors = jnp.array([[29.0, 31.0], [30.0, 29.5]])

  def loss(v):
    _, (sample, codebook) = codebook_ops.search(v, corners, entropy_temperature=0.01)
    return sample - codebook

  grad = jax.grad(loss)(vectors)
  assert np.isfinite(np.asarray(grad)).all()


def gathered_sizes(hlo: str) -> list[int]:
  """Element counts of the results of every all-gather in compiled HLO text."""
  sizes = []
  for line in hlo.splitlines():
    if 'all-gather(' in line or 'all-gather-start(' in line:
      result = line.split('=', 1)[1].split('all-gather', 1)[0]
      for dims in re.findall(r'\[([\d,]*)\]', result):
        sizes.append(int(np.prod([int(d) for d in dims.split(',') if d])))
  return sizes


def _trip_counts(hlo: str) -> list[int]:
  return [int(n) for n in re.findall(r'known_trip_count":\{"n":"(\d+)"', hlo)]


def _sharded_problem(rows=256, dim=8, codes=32):
  mesh = create_mesh()
  assert mesh.shape['data'] == 8  # tests/conftest.py forces 8 CPU devices.
  rng = np.random.default_rng(0)
  vectors = rng.normal(size=(rows, dim)).astype(np.float32)
  codebook = rng.normal(size=(codes, dim)).astype(np.float32)
  return mesh, vectors, codebook


@pytest.mark.parametrize('mesh_from', ['argument', 'context'])
def test_chunked_search_runs_on_each_devices_rows_without_gathering_the_latents(mesh_from):
  mesh, vectors, codebook = _sharded_problem()
  rows, chunk = vectors.shape[0], 8
  x = jax.device_put(vectors, NamedSharding(mesh, P('data')))
  e = jax.device_put(codebook, NamedSharding(mesh, P()))
  kwargs = dict(mesh=mesh) if mesh_from == 'argument' else {}
  search = jax.jit(lambda x, e: codebook_ops.search(x, e, chunk_size=chunk,
                                                    entropy_temperature=0.5, **kwargs))
  with jax.set_mesh(mesh) if mesh_from == 'context' else contextlib.nullcontext():
    hlo = search.lower(x, e).compile().as_text()
    indices, (sample_entropy, codebook_entropy) = search(x, e)
  # No device receives the latents (or a chunked view of them): only the entropy sums are
  # all-reduced; each device loops over its own rows / 8 / C chunks, not all rows / C.
  assert all(size < vectors.size for size in gathered_sizes(hlo)), gathered_sizes(hlo)
  assert _trip_counts(hlo) == [rows // 8 // chunk]
  assert indices.sharding.spec == P('data')
  ref_indices, (ref_sample, ref_codebook) = codebook_ops.search(vectors, codebook,
                                                                entropy_temperature=0.5)
  np.testing.assert_array_equal(indices, ref_indices)
  np.testing.assert_allclose(sample_entropy, ref_sample, rtol=1e-6)
  np.testing.assert_allclose(codebook_entropy, ref_codebook, rtol=1e-6)


def test_without_a_mesh_the_chunked_search_gathers_the_batch():
  """The HLO check above can fail: the same jit with no mesh known gathers all rows."""
  mesh, vectors, codebook = _sharded_problem()
  x = jax.device_put(vectors, NamedSharding(mesh, P('data')))
  search = jax.jit(lambda x, e: codebook_ops.search(x, e, chunk_size=8)[0])
  hlo = search.lower(x, codebook).compile().as_text()
  assert any(size >= vectors.size for size in gathered_sizes(hlo))
  assert _trip_counts(hlo) == [vectors.shape[0] // 8]


@pytest.mark.parametrize('rows', [200, 250])  # 25 rows a device (not a multiple of C); 250 % 8.
def test_sharded_chunked_search_matches_unchunked_for_awkward_row_counts(rows):
  mesh, vectors, codebook = _sharded_problem(rows=rows)
  codebook[5] = codebook[3]  # A tie: the first index wins.
  vectors[:4] = codebook[3]
  search = jax.jit(lambda x, e: codebook_ops.search(x, e, chunk_size=8, entropy_temperature=0.5,
                                                    mesh=mesh))
  indices, entropy = search(vectors, codebook)
  ref_indices, ref_entropy = codebook_ops.search(vectors, codebook, entropy_temperature=0.5)
  np.testing.assert_array_equal(indices, ref_indices)
  assert (np.asarray(indices[:4]) == 3).all()
  np.testing.assert_allclose(entropy, ref_entropy, rtol=1e-6)


def test_sharded_chunked_entropy_gradients_match_unsharded():
  mesh, vectors, codebook = _sharded_problem(rows=64, codes=16)

  def loss(x, e, mesh=None):
    _, (sample, codebook_entropy) = codebook_ops.search(x, e, chunk_size=4,
                                                        entropy_temperature=0.5, mesh=mesh)
    return sample - codebook_entropy

  x = jax.device_put(vectors, NamedSharding(mesh, P('data')))
  sharded = jax.jit(jax.grad(lambda x, e: loss(x, e, mesh), argnums=(0, 1)))(x, codebook)
  reference = jax.jit(jax.grad(loss, argnums=(0, 1)))(vectors, codebook)
  for got, want in zip(sharded, reference):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_chunked_search_on_one_device_or_no_mesh():
  _, vectors, codebook = _sharded_problem(rows=50)
  one = jax.make_mesh((1,), ('data',), axis_types=(AxisType.Auto,), devices=jax.devices()[:1])
  assert codebook_ops.row_shards(one, 50) == 1 and codebook_ops.row_shards(None, 50) == 1
  ref_indices, ref_entropy = codebook_ops.search(vectors, codebook, entropy_temperature=0.5)
  for mesh in (one, None):
    indices, entropy = jax.jit(lambda x, e, mesh=mesh: codebook_ops.search(
        x, e, chunk_size=8, entropy_temperature=0.5, mesh=mesh))(vectors, codebook)
    np.testing.assert_array_equal(indices, ref_indices)
    np.testing.assert_allclose(entropy, ref_entropy, rtol=1e-6)
  indices, _ = codebook_ops.search(vectors, codebook, chunk_size=8, mesh=create_mesh())  # Eager.
  np.testing.assert_array_equal(indices, ref_indices)
