"""VectorQuantizer: nearest-code search, loss weighting, straight-through gradients, statistics."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from tests.models.test_codebook_ops import gathered_sizes
from vqgan_jax.models.quantizer import VectorQuantizer, apply_codebook_overrides
from vqgan_jax.runtime.sharding import create_mesh


def _apply(quantizer, codebook, z, method=None):
  return quantizer.apply({'params': {'embedding': jnp.asarray(codebook)}}, z, method=method)


def _problem(seed=0, shape=(2, 4, 4, 8), k=16):
  rng = np.random.RandomState(seed)
  return rng.normal(size=shape).astype(np.float32), rng.normal(size=(k, shape[-1])).astype(
      np.float32)


def test_indices_match_brute_force_search():
  z, codebook = _problem()
  out = _apply(VectorQuantizer(16, 8), codebook, z)
  brute = np.argmin(((z[..., None, :] - codebook)**2).sum(-1), axis=-1)
  assert out.indices.dtype == jnp.int32 and out.indices.shape == (2, 4, 4)
  np.testing.assert_array_equal(out.indices, brute)
  np.testing.assert_allclose(out.quantized, codebook[brute], rtol=1e-6, atol=1e-6)


def test_ties_pick_the_first_code_like_torch():
  codebook = np.eye(4, dtype=np.float32)[[0, 1, 2, 1]]  # Codes 1 and 3 are identical.
  z = np.eye(4, dtype=np.float32)[[1, 1]]
  np.testing.assert_array_equal(_apply(VectorQuantizer(4, 4), codebook, z).indices, [1, 1])


@pytest.mark.parametrize('legacy', [True, False])
def test_loss_weighting(legacy):
  z, codebook = _problem()
  out = _apply(VectorQuantizer(16, 8, beta=0.25, legacy=legacy), codebook, z)
  codes = codebook[np.argmin(((z[..., None, :] - codebook)**2).sum(-1), axis=-1)]
  mse = np.mean((codes - z)**2)
  codebook_w, commitment_w = (0.25, 1.0) if legacy else (1.0, 0.25)
  np.testing.assert_allclose(out.codebook_loss, codebook_w * mse, rtol=1e-5)
  np.testing.assert_allclose(out.commitment_loss, commitment_w * mse, rtol=1e-5)
  np.testing.assert_allclose(out.loss, (codebook_w + commitment_w) * mse, rtol=1e-5)


def test_straight_through_and_loss_gradients_go_where_they_should():
  z, codebook = _problem()
  quantizer = VectorQuantizer(16, 8)
  upstream = np.random.RandomState(1).normal(size=z.shape).astype(np.float32)

  def through_quantized(e, z):
    return jnp.sum(_apply(quantizer, e, z).quantized * upstream)

  grad_e, grad_z = jax.grad(through_quantized, argnums=(0, 1))(codebook, z)
  np.testing.assert_array_equal(grad_z, upstream)  # Exactly the upstream gradient.
  np.testing.assert_array_equal(grad_e, 0.0)  # The codebook learns only from its loss term.

  def term(name):
    return jax.grad(lambda e, z: getattr(_apply(quantizer, e, z), name), argnums=(0, 1))(
        codebook, z)

  codebook_grad_e, codebook_grad_z = term('codebook_loss')
  commitment_grad_e, commitment_grad_z = term('commitment_loss')
  np.testing.assert_array_equal(codebook_grad_z, 0.0)
  np.testing.assert_array_equal(commitment_grad_e, 0.0)
  codes = codebook[np.asarray(_apply(quantizer, codebook, z).indices)]
  np.testing.assert_allclose(commitment_grad_z, 2 * (z - codes) / z.size, rtol=1e-5, atol=1e-8)
  assert np.abs(codebook_grad_e).sum() > 0


def test_usage_and_perplexity_on_a_known_histogram():
  codebook = 10.0 * np.eye(4, dtype=np.float32)
  z = codebook[[0, 0, 1, 2]][None]  # Codes 0, 0, 1, 2: probabilities 1/2, 1/4, 1/4, 0.
  out = _apply(VectorQuantizer(4, 4), codebook, z)
  np.testing.assert_array_equal(out.indices, [[0, 0, 1, 2]])
  np.testing.assert_allclose(out.usage, 0.75)
  np.testing.assert_allclose(out.perplexity, 2**1.5, rtol=1e-6)  # exp(1.5 ln 2).


def test_bfloat16_latents_give_float32_outputs():
  z, codebook = _problem()
  out = _apply(VectorQuantizer(16, 8), codebook, jnp.asarray(z, jnp.bfloat16))
  assert out.quantized.dtype == jnp.float32
  assert all(x.dtype == jnp.float32 for x in (out.loss, out.perplexity, out.usage))


def test_lookup_and_init():
  quantizer = VectorQuantizer(64, 8)
  params = quantizer.init(jax.random.key(0), jnp.zeros((1, 8)))['params']
  codebook = params['embedding']
  assert codebook.shape == (64, 8) and codebook.dtype == jnp.float32
  assert np.abs(codebook).max() <= 1 / 64 and np.std(codebook) > 0.3 / 64
  indices = jnp.array([[3, 0], [63, 3]])
  looked_up = quantizer.apply({'params': params}, indices, method='lookup')
  np.testing.assert_array_equal(looked_up, np.asarray(codebook)[np.asarray(indices)])


def test_wrong_latent_width_is_a_clear_error():
  with pytest.raises(ValueError, match='last axis 8'):
    _apply(VectorQuantizer(16, 8), np.zeros((16, 8), np.float32), np.zeros((2, 4), np.float32))


def test_l2_normalized_lookup_is_cosine_nearest_on_unit_vectors():
  z, codebook = _problem(seed=3)
  codebook *= np.random.RandomState(4).uniform(0.1, 10.0, size=(16, 1)).astype(np.float32)
  quantizer = VectorQuantizer(16, 8, l2_normalize=True)
  out = _apply(quantizer, codebook, z)
  unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
  cosine = np.argmax(unit(z) @ unit(codebook).T, axis=-1)
  np.testing.assert_array_equal(out.indices, cosine)
  # The decoder sees unit code vectors, forward and from indices alike.
  np.testing.assert_allclose(out.quantized, unit(codebook)[cosine], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(_apply(quantizer, codebook, out.indices, method='lookup'),
                             unit(codebook)[cosine], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.commitment_loss, np.mean((unit(codebook)[cosine] - unit(z))**2),
                             rtol=1e-5)


@pytest.mark.parametrize('chunk', [7, 16, 1000])
def test_chunked_lookup_gives_identical_indices_and_bounds_memory(chunk):
  z, codebook = _problem(seed=5, shape=(2, 8, 8, 8), k=512)
  full = _apply(VectorQuantizer(512, 8), codebook, z)
  chunked = _apply(VectorQuantizer(512, 8, lookup_chunk_size=chunk), codebook, z)
  np.testing.assert_array_equal(chunked.indices, full.indices)
  np.testing.assert_allclose(chunked.loss, full.loss, rtol=1e-6)
  if chunk < 128:  # 128 tokens: the chunked search never holds the 128 x 512 distances.
    params = {'params': {'embedding': jnp.asarray(codebook)}}
    temp = lambda q: jax.jit(lambda p, x: q.apply(p, x).indices).lower(
        params, z).compile().memory_analysis().temp_size_in_bytes
    assert temp(VectorQuantizer(512, 8, lookup_chunk_size=chunk)) < temp(VectorQuantizer(512, 8)) / 2


def test_chunked_lookup_on_a_sharded_batch_stays_on_each_device():
  mesh = create_mesh()
  z, codebook = _problem(seed=6, shape=(8, 4, 4, 8), k=64)
  params = {'params': {'embedding': jnp.asarray(codebook)}}

  def stats(quantizer):
    def fn(p, x):
      out = quantizer.apply(p, x, train=True)
      return out.indices, out.loss, out.sample_entropy, out.codebook_entropy
    return jax.jit(fn)

  chunked = stats(VectorQuantizer(64, 8, lookup_chunk_size=8, entropy_temperature=0.5))
  x = jax.device_put(z, NamedSharding(mesh, P('data')))
  with jax.set_mesh(mesh):  # The training step's mesh, in context while tracing.
    hlo = chunked.lower(params, x).compile().as_text()
    sharded = chunked(params, x)
  assert all(size < z.size for size in gathered_sizes(hlo)), gathered_sizes(hlo)
  reference = stats(VectorQuantizer(64, 8, entropy_temperature=0.5))(params, z)
  np.testing.assert_array_equal(sharded[0], reference[0])
  for got, want in zip(sharded[1:], reference[1:]):
    np.testing.assert_allclose(got, want, rtol=1e-6)


# Codebook maintenance inside training (the 'codebook_state' collection).


def _train_call(quantizer, variables, z, seed=0):
  return quantizer.apply(variables, z, train=True, mutable=['codebook_state'],
                         rngs={'codebook': jax.random.key(seed)})


def test_ema_codebook_follows_the_hand_computation_and_ignores_the_codebook_loss():
  codebook = np.array([[0.0, 0.0], [4.0, 4.0], [-4.0, 4.0]], np.float32)
  quantizer = VectorQuantizer(3, 2, ema_decay=0.5, ema_epsilon=0.0)
  variables = quantizer.init(jax.random.key(0), jnp.zeros((1, 2)))
  variables = {'params': {'embedding': jnp.asarray(codebook)},
               'codebook_state': dict(variables['codebook_state'])}
  variables['codebook_state']['embed_sum'] = jnp.asarray(codebook)
  z = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 5.0]], np.float32)  # Codes 0, 0, 1.
  out, state = _train_call(quantizer, variables, z)
  state = state['codebook_state']
  np.testing.assert_array_equal(out.indices, [0, 0, 1])
  # N = 0.5 * 1 + 0.5 * (2, 1, 0) = (1.5, 1, 0.5); m = 0.5 * e + 0.5 * sums.
  np.testing.assert_allclose(state['cluster_size'], [1.5, 1.0, 0.5])
  expected_sum = 0.5 * codebook + 0.5 * np.array([[1.0, 1.0], [3.0, 5.0], [0.0, 0.0]])
  np.testing.assert_allclose(state['embed_sum'], expected_sum, rtol=1e-6)
  np.testing.assert_allclose(state['next_codebook'], expected_sum / [[1.5], [1.0], [0.5]],
                             rtol=1e-6)
  assert bool(np.all(state['override']))
  assert float(out.codebook_loss) == 0.0
  grad = jax.grad(lambda e: _train_call(quantizer, {**variables, 'params': {'embedding': e}},
                                        z)[0].loss)(jnp.asarray(codebook))
  np.testing.assert_array_equal(grad, 0.0)


def test_restart_reseeds_exactly_the_dead_codes_from_recent_outputs():
  codebook = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], np.float32)
  quantizer = VectorQuantizer(4, 2, restart_unused_steps=2, buffer_size=6)
  variables = {'params': {'embedding': jnp.asarray(codebook)},
               'codebook_state': quantizer.init(jax.random.key(0),
                                                jnp.zeros((1, 2)))['codebook_state']}
  z = np.array([[2.0, 0.1], [0.1, 2.0], [1.5, 0.2]], np.float32)  # Only codes 0 and 1.
  restarts = []
  for step in range(3):
    out, state = _train_call(quantizer, variables, z + 0.01 * step, seed=step)
    variables = {**variables, **state}
    restarts.append(int(out.restarts))
    q = state['codebook_state']
  # Codes 2 and 3 unused for 2 steps once the buffer (6 rows = 2 steps) is full: step 1.
  assert restarts == [0, 2, 0]
  # After step 1 the restarted codes were chosen from the buffer; code 0/1 never overridden.
  assert int(q['restarts_total']) == 2
  np.testing.assert_array_equal(q['override'], [False, False, False, False])


def test_restart_override_mask_and_values():
  codebook = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], np.float32)
  quantizer = VectorQuantizer(4, 2, restart_unused_steps=1, buffer_size=3)
  variables = {'params': {'embedding': jnp.asarray(codebook)},
               'codebook_state': quantizer.init(jax.random.key(0),
                                                jnp.zeros((1, 2)))['codebook_state']}
  z = np.array([[2.0, 0.1], [0.1, 2.0], [1.5, 0.2]], np.float32)
  out, state = _train_call(quantizer, variables, z)
  q = state['codebook_state']
  np.testing.assert_array_equal(q['override'], [False, False, True, True])
  assert int(out.restarts) == 2
  new = np.asarray(q['next_codebook'])
  np.testing.assert_array_equal(new[:2], codebook[:2])
  assert {tuple(r) for r in new[2:]} <= {tuple(r) for r in z} and len({tuple(r) for r in new[2:]}) == 2
  params = apply_codebook_overrides({'quantizer': variables['params']},
                                    {'quantizer': state['codebook_state']})
  np.testing.assert_array_equal(params['quantizer']['embedding'], new)


def test_data_initialisation_waits_for_a_full_buffer():
  quantizer = VectorQuantizer(4, 2, codebook_init='random_outputs', buffer_size=6)
  variables = quantizer.init(jax.random.key(0), jnp.zeros((1, 2)))
  batches = [np.full((3, 2), 10.0 * (i + 1), np.float32) + np.arange(3)[:, None] for i in range(3)]
  overrides = []
  for i, z in enumerate(batches):
    out, state = _train_call(quantizer, variables, z, seed=i)
    variables = {**variables, **state}
    q = state['codebook_state']
    overrides.append(bool(np.all(q['override'])))
    if i == 1:
      seeded = np.asarray(q['next_codebook'])
  assert overrides == [False, True, False]
  rows = {tuple(r) for r in np.concatenate(batches[:2])}
  assert all(tuple(r) in rows for r in seeded) and len({tuple(r) for r in seeded}) == 4


def test_usage_window_counts_codes_chosen_in_recent_steps():
  codebook = 10.0 * np.eye(4, dtype=np.float32)
  quantizer = VectorQuantizer(4, 4, usage_window_steps=2)
  variables = {'params': {'embedding': jnp.asarray(codebook)},
               'codebook_state': quantizer.init(jax.random.key(0),
                                                jnp.zeros((1, 4)))['codebook_state']}
  usage, dead = [], []
  for codes in ([0, 1], [2], [2], [3]):
    out, state = _train_call(quantizer, variables, codebook[codes])
    variables = {**variables, **state}
    usage.append(float(out.window_usage))
    dead.append(int(out.dead_codes))
  assert usage == [0.5, 0.75, 0.25, 0.5] and dead == [2, 1, 3, 2]


def test_factorised_lookup_projects_in_and_out():
  quantizer = VectorQuantizer(16, 32, codebook_dim=4, l2_normalize=True)
  z = jnp.asarray(np.random.RandomState(0).normal(size=(2, 3, 3, 32)), jnp.float32)
  variables = quantizer.init(jax.random.key(0), z)
  assert variables['params']['embedding'].shape == (16, 4)
  assert variables['params']['project_in']['kernel'].shape == (32, 4)
  out = quantizer.apply({'params': variables['params']}, z)
  assert out.quantized.shape == z.shape
  np.testing.assert_allclose(quantizer.apply({'params': variables['params']}, out.indices,
                                             method='lookup'), out.quantized, rtol=1e-5,
                             atol=1e-6)


def test_apply_codebook_overrides_replaces_only_flagged_rows():
  params = {'quantizer': {'embedding': jnp.zeros((3, 2))}, 'decoder': {'w': jnp.ones(2)}}
  state = {'quantizer': {'next_codebook': jnp.ones((3, 2)),
                         'override': jnp.array([False, True, False])}}
  new = apply_codebook_overrides(params, state)
  np.testing.assert_array_equal(new['quantizer']['embedding'], [[0, 0], [1, 1], [0, 0]])
  assert new['decoder'] is params['decoder']
  assert apply_codebook_overrides(params, {'quantizer': {'step': 0}}) is params
