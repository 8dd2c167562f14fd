"""FSQ and LFQ: index/code round trips, full coverage, straight-through gradients, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqgan_jax.models.scalar_quantizers import FiniteScalarQuantizer, LookupFreeQuantizer

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
