"""Codebook functions: EMA by hand, exact re-seeding, k-means++, chunked entropy, buffers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqgan_jax.models import codebook_ops


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
