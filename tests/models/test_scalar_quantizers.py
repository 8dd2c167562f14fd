"""FSQ and LFQ: index/code round trips, full coverage, straight-through gradients, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqgan_jax.models.autoencoder import VQModel
from vqgan_jax.models.scalar_quantizers import (FiniteScalarQuantizer, LookupFreeQuantizer,
                                                NoQuantizer)

FSQ = FiniteScalarQuantizer(levels=(8, 5, 5, 5), embed_dim=4, codebook_size=1000)
LFQ = LookupFreeQuantizer(codebook_size=1024, embed_dim=10, entropy_temperature=0.01)


def _params(module, dim):
  return module.init(jax.random.key(0), jnp.zeros((1, dim))).get('params', {})


@pytest.mark.parametrize('module,dim', [(FSQ, 4), (LFQ, 10)])
def test_every_index_round_trips_through_its_code(module, dim):
  params = {'params': _params(module, dim)}
  every = jnp.arange(module.codebook_size)
  codes = module.apply(params, every, method='lookup')
  assert codes.shape == (module.codebook_size, dim)
  assert len({tuple(c) for c in np.asarray(codes)}) == module.codebook_size  # A bijection.
  out = module.apply(params, jnp.asarray(np.random.default_rng(0).normal(size=(64, dim)) * 2,
                                         jnp.float32))
  # What the decoder gets from the forward pass equals the lookup of the returned indices.
  np.testing.assert_allclose(out.quantized, module.apply(params, out.indices, method='lookup'),
                             atol=1e-6)


def test_lfq_codes_quantize_back_to_their_index():
  params = {'params': _params(LFQ, 10)}
  every = jnp.arange(1024)
  codes = LFQ.apply(params, every, method='lookup')
  np.testing.assert_array_equal(LFQ.apply(params, codes).indices, every)


@pytest.mark.parametrize('module,dim,scale', [(FSQ, 4, 3.0), (LFQ, 10, 1.0)])
def test_uniform_inputs_cover_the_whole_code_space(module, dim, scale):
  z = jax.random.uniform(jax.random.key(1), (200_000, dim), minval=-scale, maxval=scale)
  out = module.apply({'params': _params(module, dim)}, z)
  assert len(np.unique(np.asarray(out.indices))) == module.codebook_size
  assert float(out.usage) == 1.0


def test_fsq_levels_and_straight_through_gradient():
  z = jnp.linspace(-4, 4, 400)[:, None] * jnp.ones((1, 4))
  out = FSQ.apply({}, z)
  for channel, levels in enumerate((8, 5, 5, 5)):
    assert len(np.unique(np.asarray(out.quantized[:, channel]))) == levels
  grad = jax.grad(lambda x: jnp.sum(FSQ.apply({}, x).quantized))(z[:5] * 0.1)
  assert np.all(np.asarray(grad) > 0)  # Through tanh and the rounding's straight-through.


def test_lfq_straight_through_commitment_and_entropy():
  z = jnp.asarray(np.random.default_rng(2).normal(size=(32, 10)), jnp.float32)
  out = LFQ.apply({}, z, train=True)
  np.testing.assert_array_equal(out.quantized, jnp.where(z > 0, 1.0, -1.0))
  np.testing.assert_allclose(out.commitment_loss,
                             0.25 * np.mean((np.asarray(z) - np.sign(np.asarray(z)))**2), rtol=1e-5)
  assert float(out.sample_entropy) >= 0 and float(out.codebook_entropy) > 0
  grad = jax.grad(lambda x: jnp.sum(LFQ.apply({}, x).quantized * 3.0))(z)
  np.testing.assert_allclose(grad, 3.0 + 0.0 * grad)


def test_projections_when_embed_dim_differs():
  fsq = FiniteScalarQuantizer(levels=(4, 4, 4), embed_dim=16, codebook_size=64)
  z = jnp.ones((2, 4, 4, 16))
  params = fsq.init(jax.random.key(0), z)['params']
  assert params['project_in']['kernel'].shape == (16, 3)
  out = fsq.apply({'params': params}, z)
  assert out.quantized.shape == z.shape and out.indices.shape == (2, 4, 4)


def test_bad_sizes_are_clear_errors():
  with pytest.raises(ValueError, match='product of the levels'):
    FiniteScalarQuantizer(levels=(4, 4), embed_dim=2, codebook_size=20).init(
        jax.random.key(0), jnp.zeros((1, 2)))
  with pytest.raises(ValueError, match='power of two'):
    LookupFreeQuantizer(codebook_size=1000, embed_dim=10).init(jax.random.key(0),
                                                               jnp.zeros((1, 10)))


def _lfq_entropy(bits, z, kind, temperature=1.0, chunk=0):
  lfq = LookupFreeQuantizer(codebook_size=2**bits, embed_dim=bits,
                            entropy_temperature=temperature, lfq_entropy=kind,
                            lookup_chunk_size=chunk)
  out = jax.jit(lambda x: lfq.apply({}, x, train=True))(z)
  return float(out.sample_entropy), float(out.codebook_entropy)


def _corner_probs(z, temperature):
  """softmax(-|z - c|^2 / t) over every +-1 corner c, in float64 numpy."""
  bits = z.shape[-1]
  corners = np.where((np.arange(2**bits)[:, None] >> np.arange(bits)) & 1, 1.0, -1.0)
  logits = -((z[:, None].astype(np.float64) - corners)**2).sum(-1) / temperature
  probs = np.exp(logits - logits.max(1, keepdims=True))
  return probs / probs.sum(1, keepdims=True)


Z6 = (np.random.default_rng(3).normal(size=(96, 6)) * 0.5).astype(np.float32)


def test_lfq_factorized_sample_entropy_is_the_exact_one():
  factorized, _ = _lfq_entropy(6, Z6, 'factorized')
  exact, _ = _lfq_entropy(6, Z6, 'exact')
  np.testing.assert_allclose(factorized, exact, rtol=1e-5)


def test_lfq_factorized_codebook_entropy_is_the_sum_of_bit_marginals_and_bounds_the_exact():
  _, factorized = _lfq_entropy(6, Z6, 'factorized')
  on = 1 / (1 + np.exp(-4 * Z6.astype(np.float64)))  # p_i(+1) = sigmoid(4 z_i / t), t = 1.
  marginal = on.mean(0)
  by_hand = -np.sum(marginal * np.log(marginal) + (1 - marginal) * np.log(1 - marginal))
  np.testing.assert_allclose(factorized, by_hand, rtol=1e-5)
  # The corners' joint softmax has exactly these marginals.
  probs = _corner_probs(Z6, 1.0)
  corner_bits = (np.arange(64)[:, None] >> np.arange(6)) & 1
  np.testing.assert_allclose(probs @ corner_bits, on, rtol=1e-6, atol=1e-9)
  _, exact = _lfq_entropy(6, Z6, 'exact')
  assert factorized > exact  # 4.144 vs 4.127 nats here.


@pytest.mark.parametrize('chunk', [0, 40])
def test_lfq_exact_entropy_is_the_all_corners_softmax(chunk):
  sample, codebook = _lfq_entropy(6, Z6, 'exact', temperature=0.5, chunk=chunk)
  probs = _corner_probs(Z6, 0.5)
  mean = probs.mean(0)
  np.testing.assert_allclose(sample, np.mean(-(probs * np.log(probs)).sum(1)), rtol=1e-4)
  np.testing.assert_allclose(codebook, -(mean * np.log(mean)).sum(), rtol=1e-4)


def test_lfq_factorized_entropy_at_2_to_the_18_codes_has_finite_gradients_and_small_memory():
  bits, tokens = 18, 300
  lfq = LookupFreeQuantizer(codebook_size=2**bits, embed_dim=bits, entropy_temperature=0.01)
  z = jnp.asarray(np.random.default_rng(4).normal(size=(tokens, bits)), jnp.float32)
  z = z.at[0].set(30.0)  # Saturated bits: probabilities underflow to exactly 0 or 1.

  def loss(x):
    out = lfq.apply({}, x, train=True)
    return out.commitment_loss + out.entropy_loss, out

  grad_fn = jax.jit(jax.grad(loss, has_aux=True))
  temp = grad_fn.lower(z).compile().memory_analysis().temp_size_in_bytes
  assert temp < tokens * 2**bits * 4 / 10  # Nothing near one (tokens, K) float32 block.
  grad, out = grad_fn(z)
  assert np.isfinite(np.asarray(grad)).all() and np.abs(np.asarray(grad)).sum() > 0
  assert 0 < float(out.codebook_entropy) <= bits * np.log(2) + 1e-4
  assert 0 <= float(out.sample_entropy) < float(out.codebook_entropy)


def test_unknown_lfq_entropy_is_a_clear_error():
  with pytest.raises(ValueError, match="lfq_entropy='bitwise'.*'factorized', 'exact'"):
    LookupFreeQuantizer(codebook_size=64, embed_dim=6, lfq_entropy='bitwise').init(
        jax.random.key(0), jnp.zeros((1, 6)))


def test_no_quantizer_is_the_identity_and_has_no_codes():
  z = jnp.asarray(np.random.RandomState(0).normal(size=(2, 3, 3, 4)), jnp.float32)
  out = NoQuantizer(16, 4).apply({}, z)
  np.testing.assert_array_equal(out.quantized, z)
  assert float(out.loss) == 0.0 and out.indices.shape == (2, 3, 3)
  np.testing.assert_array_equal(jax.grad(lambda z: NoQuantizer(16, 4).apply(
      {}, z).quantized.sum())(z), 1.0)
  with pytest.raises(ValueError, match="no codes"):
    NoQuantizer(16, 4).apply({}, out.indices, method="lookup")
  # The same network around it: encoder -> quant_conv -> (identity) -> decoder.
  model = VQModel(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), resolution=8,
                  z_channels=4, embed_dim=4, codebook_size=16, quantizer_type="none")
  images = jnp.zeros((1, 8, 8, 3))
  params = model.init(jax.random.key(0), images)["params"]
  assert "quantizer" not in params
  recon, _ = model.apply({"params": params}, images)
  assert recon.shape == images.shape
