"""SimVQ (frozen basis times a learned map) and IBQ (index backpropagation): the lookups and
where their gradients go, against direct numpy computations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqgan_jax.models.quantizer import VectorQuantizer


def _latents(seed=0, shape=(2, 4, 4, 8)):
  return jnp.asarray(np.random.RandomState(seed).normal(size=shape), jnp.float32)


def test_simvq_codebook_is_the_frozen_basis_through_the_learned_map():
  z = _latents()
  quantizer = VectorQuantizer(64, 8, simvq=True)
  params = quantizer.init(jax.random.key(0), z)['params']
  basis = np.asarray(params['embedding'])
  assert basis.shape == (64, 8) and params['codebook_transform']['kernel'].shape == (8, 8)
  assert 0.25 < basis.std() < 0.45  # N(0, 1/d): std 0.354 for d = 8.
  transform = params['codebook_transform']
  codebook = basis @ np.asarray(transform['kernel']) + np.asarray(transform['bias'])
  out = quantizer.apply({'params': params}, z)
  flat = np.asarray(z).reshape(-1, 8)
  brute = np.argmin(((flat[:, None] - codebook)**2).sum(-1), axis=-1)
  np.testing.assert_array_equal(np.asarray(out.indices).reshape(-1), brute)
  np.testing.assert_allclose(np.asarray(out.quantized).reshape(-1, 8), codebook[brute],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(quantizer.apply({'params': params}, out.indices, method='lookup'),
                             out.quantized, rtol=1e-5, atol=1e-6)


def test_simvq_learns_only_the_map_and_every_code_moves():
  z = _latents()
  quantizer = VectorQuantizer(64, 8, simvq=True)
  params = quantizer.init(jax.random.key(0), z)['params']
  grads = jax.grad(lambda p: quantizer.apply({'params': p}, z).loss)(params)
  np.testing.assert_array_equal(grads['embedding'], 0.0)  # The basis is frozen.
  assert np.abs(grads['codebook_transform']['kernel']).sum() > 0
  # One step on the map moves every code, chosen or not.
  step = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
  before = quantizer.apply({'params': params}, method='codebook')
  after = quantizer.apply({'params': step}, method='codebook')
  used = np.unique(np.asarray(quantizer.apply({'params': params}, z).indices))
  assert len(used) < 64
  assert np.all(np.abs(np.asarray(after - before)).sum(-1) > 0)


@pytest.mark.parametrize('l2_normalize', [False, True])
def test_ibq_picks_the_largest_dot_product_and_decodes_the_exact_code(l2_normalize):
  z = _latents(1)
  quantizer = VectorQuantizer(32, 8, index_backprop=True, l2_normalize=l2_normalize)
  params = {'embedding': jnp.asarray(np.random.RandomState(2).normal(size=(32, 8)), jnp.float32)}
  out = quantizer.apply({'params': params}, z)
  flat, codebook = np.asarray(z).reshape(-1, 8), np.asarray(params['embedding'])
  if l2_normalize:
    flat = flat / np.linalg.norm(flat, axis=-1, keepdims=True)
    codebook = codebook / np.linalg.norm(codebook, axis=-1, keepdims=True)
    # On unit vectors the largest dot product is the nearest code, as the plain lookup picks.
    plain = VectorQuantizer(32, 8, l2_normalize=True).apply({'params': params}, z)
    np.testing.assert_array_equal(out.indices, plain.indices)
  want = np.argmax(flat @ codebook.T, axis=-1)
  np.testing.assert_array_equal(np.asarray(out.indices).reshape(-1), want)
  np.testing.assert_allclose(np.asarray(out.quantized).reshape(-1, 8), codebook[want],
                             rtol=1e-6, atol=1e-6)


def test_ibq_gradient_reaches_every_code_and_the_encoder_through_the_softmax():
  z = _latents(3)
  codebook = jnp.asarray(np.random.RandomState(4).normal(size=(32, 8)), jnp.float32)
  upstream = jnp.asarray(np.random.RandomState(5).normal(size=z.shape), jnp.float32)

  def through_quantized(quantizer):
    return jax.grad(lambda e, z: jnp.sum(quantizer.apply(
        {'params': {'embedding': e}}, z).quantized * upstream), argnums=(0, 1))(codebook, z)

  grad_e, grad_z = through_quantized(VectorQuantizer(32, 8, index_backprop=True))
  used = np.unique(np.asarray(VectorQuantizer(32, 8).apply(
      {'params': {'embedding': codebook}}, z).indices))
  assert len(used) < 32
  assert np.all(np.abs(np.asarray(grad_e)).sum(-1) > 0)  # Every code, chosen or not.
  # The paper's formula with the full one-hot: (hard + soft - sg(soft)) @ e.
  def one_hot_through(e, z):
    logits = z.reshape(-1, 8) @ e.T
    probs = jax.nn.softmax(logits, axis=-1)
    hard = jax.nn.one_hot(jnp.argmax(logits, -1), 32)
    one_hot = hard + probs - jax.lax.stop_gradient(probs)
    return jnp.sum((one_hot @ e).reshape(z.shape) * upstream)
  want_e, want_z = jax.grad(one_hot_through, argnums=(0, 1))(codebook, z)
  np.testing.assert_allclose(grad_e, want_e, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(grad_z, want_z, rtol=1e-4, atol=1e-6)
  # The taming estimator gives the codebook nothing through the quantized output.
  grad_e_st, _ = through_quantized(VectorQuantizer(32, 8))
  np.testing.assert_array_equal(grad_e_st, 0.0)


def test_ibq_entropy_terms_and_simvq_together():
  z = _latents(6)
  quantizer = VectorQuantizer(32, 8, index_backprop=True, simvq=True, entropy_temperature=0.1)
  params = quantizer.init(jax.random.key(0), z)['params']
  out = quantizer.apply({'params': params}, z, train=True)
  codebook = np.asarray(quantizer.apply({'params': params}, method='codebook'))
  logits = np.asarray(z).reshape(-1, 8) @ codebook.T / 0.1
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  sample = -np.mean(np.sum(probs * np.log(np.maximum(probs, 1e-30)), -1))
  mean = probs.mean(0)
  np.testing.assert_allclose(out.sample_entropy, sample, rtol=1e-4)
  np.testing.assert_allclose(out.codebook_entropy, -np.sum(mean * np.log(mean)), rtol=1e-4)


@pytest.mark.parametrize('options, message', [
    (dict(simvq=True, ema_decay=0.9), 'simvq'),
    (dict(simvq=True, restart_unused_steps=10), 'simvq'),
    (dict(index_backprop=True, lookup_chunk_size=4), 'lookup_chunk_size=0'),
])
def test_incompatible_options_say_what_to_change(options, message):
  with pytest.raises(ValueError, match=message):
    VectorQuantizer(16, 8, **options).init(jax.random.key(0), _latents())
