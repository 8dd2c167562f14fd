"""VQModel: shapes, parameter tree, input checks, bfloat16, dropout and the released sizes.

Numerical equality with taming's torch modules is tested in test_convert_taming.py.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqgan_jax.models.autoencoder import VQModel, count_params, downsampling_factor

TINY = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=16,
            z_channels=8, embed_dim=8, codebook_size=64)


def _random_variables(model, images, seed=0):
  """Random weights without compiling `init` (slow on CPU): unit-gain convs, N(0.1) others."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), images)
  rng = np.random.RandomState(seed)

  def draw(s):
    fan_in = np.prod(s.shape[:-1]) if len(s.shape) == 4 else 1
    std = 1 / np.sqrt(fan_in) if len(s.shape) == 4 else 0.1
    return jnp.asarray(rng.normal(size=s.shape) * std, jnp.float32)

  variables = jax.tree.map(draw, shapes)
  variables['params']['quantizer']['embedding'] = jnp.asarray(rng.normal(size=(64, 8)),
                                                              jnp.float32)
  return variables


@pytest.mark.parametrize('height,width', [(16, 16), (16, 32), (32, 16)])
def test_shapes_square_and_non_square(height, width):
  model = VQModel(**TINY)
  images = jnp.zeros((2, height, width, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  (recon, out), inter = jax.eval_shape(
      lambda v, x: model.apply(v, x, mutable=['intermediates']), variables, images)
  h, w = height // 2, width // 2
  assert recon.shape == (2, height, width, 3) and recon.dtype == jnp.float32
  assert out.quantized.shape == (2, h, w, 8) and out.quantized.dtype == jnp.float32
  assert out.indices.shape == (2, h, w) and out.indices.dtype == jnp.int32
  assert out.loss.shape == () and out.perplexity.shape == () and out.usage.shape == ()
  assert inter['intermediates']['decoder']['conv_out_input'][0].shape == (2, height, width, 32)
  assert variables['params']['decoder']['conv_out']['kernel'].shape == (3, 3, 32, 3)

  indices = jax.eval_shape(lambda v, x: model.apply(v, x, method='encode_to_indices'),
                           variables, images)
  assert indices.shape == (2, h, w) and indices.dtype == jnp.int32
  decoded = jax.eval_shape(lambda v, i: model.apply(v, i, method='decode_indices'), variables,
                           indices)
  assert decoded.shape == (2, height, width, 3) and decoded.dtype == jnp.float32


def test_parameter_tree_follows_taming_layout():
  model = VQModel(**dict(TINY, num_res_blocks=2))
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params']
  assert set(params) == {'encoder', 'quant_conv', 'quantizer', 'post_quant_conv', 'decoder'}
  encoder, decoder = params['encoder'], params['decoder']
  # Attention only where the nominal size (16 -> 8) is in attn_resolutions, after every block.
  assert set(encoder['down_0']) == {'block_0', 'block_1', 'downsample'}
  assert set(encoder['down_1']) == {'block_0', 'block_1', 'attn_0', 'attn_1'}
  assert set(decoder['up_1']) == {'block_0', 'block_1', 'block_2', 'attn_0', 'attn_1',
                                  'attn_2', 'upsample'}
  assert set(decoder['up_0']) == {'block_0', 'block_1', 'block_2'}
  assert set(encoder['mid']) == set(decoder['mid']) == {'block_1', 'attn_1', 'block_2'}
  assert set(encoder['down_0']['block_0']) == {'norm1', 'conv1', 'norm2', 'conv2'}
  assert 'nin_shortcut' in encoder['down_1']['block_0']  # 32 -> 64 channels.
  assert set(encoder['mid']['attn_1']) == {'norm', 'q', 'k', 'v', 'proj_out'}
  assert encoder['down_0']['downsample']['conv']['kernel'].shape == (3, 3, 32, 32)
  assert params['quantizer']['embedding'].shape == (64, 8)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))


def test_input_and_config_errors():
  model = VQModel(**dict(TINY, ch_mult=(1, 2, 2)))
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  with pytest.raises(ValueError, match=r'18x16 is not divisible .* factor 4.*20x16'):
    model.apply(variables, jnp.zeros((1, 18, 16, 3)))
  with pytest.raises(ValueError, match='3 channels'):
    model.apply(variables, jnp.zeros((1, 16, 16, 1)))
  with pytest.raises(ValueError, match=r'ch\*ch_mult=\[48\].*32 GroupNorm groups'):
    jax.eval_shape(VQModel(**dict(TINY, ch=48, ch_mult=(2, 1))).init, jax.random.key(0),
                   jnp.zeros((1, 16, 16, 3)))
  assert downsampling_factor((1, 1, 2, 2, 4)) == 16


def test_bfloat16_compute_tracks_float32_and_returns_float32():
  images = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
  model = VQModel(**TINY)
  variables = _random_variables(model, images)
  recon, out = jax.jit(VQModel(**TINY, dtype=jnp.bfloat16).apply)(variables, images)
  assert recon.dtype == out.quantized.dtype == out.loss.dtype == jnp.float32
  assert np.isfinite(recon).all()

  decode = lambda m: jax.jit(lambda v, q: m.apply(v, q, method='decode'))
  ref = decode(model)(variables, out.quantized)
  low = decode(VQModel(**TINY, dtype=jnp.bfloat16))(variables, out.quantized)
  assert low.dtype == jnp.float32
  assert 0 < np.abs(low - ref).max() < 0.05 * np.abs(ref).max()


def test_dropout_only_in_training():
  images = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (1, 16, 16, 3)), jnp.float32)
  model = VQModel(**dict(TINY, dropout=0.5))
  variables = _random_variables(model, images)
  run = jax.jit(lambda x, seed, train: model.apply(
      variables, x, train, rngs={'dropout': jax.random.key(seed)})[0], static_argnums=2)
  np.testing.assert_array_equal(run(images, 0, False), run(images, 1, False))
  assert not np.allclose(run(images, 0, True), run(images, 1, True))


@pytest.mark.parametrize('codebook_size,expected', [(1024, 72_141_699), (16384, 76_073_859)])
def test_parameter_count_of_taming_imagenet_f16(codebook_size, expected):
  """The published sizes of taming's f16 ImageNet VQGANs count the generator only.

  encoder 29,298,176 + decoder 42,449,795 + quant_conv/post_quant_conv 2 x 65,792 +
  codebook 256 x codebook_size. Neither the PatchGAN (taming's imagenet_vqgan.yaml keeps the
  default disc_num_layers=3, ndf=64: 2,765,633 more; 663,361 with 2 layers) nor LPIPS is in
  them.
  """
  model = VQModel(codebook_size=codebook_size)  # Defaults are the f16 ImageNet config.
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params']
  assert count_params(params) == expected
  assert count_params(params['encoder']) == 29_298_176
  assert count_params(params['decoder']) == 42_449_795


def test_remat_gives_the_same_parameters_outputs_and_gradients():
  plain, remat = VQModel(**TINY), VQModel(**dict(TINY, remat=True))
  images = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
  params = plain.init(jax.random.key(0), images)['params']
  assert jax.tree.structure(remat.init(jax.random.key(0), images)['params']) == (
      jax.tree.structure(params))
  loss = lambda model: jax.value_and_grad(
      lambda p: jnp.mean(model.apply({'params': p}, images, train=True)[0]**2))(params)
  (value, grads), (value_r, grads_r) = loss(plain), loss(remat)
  np.testing.assert_allclose(value_r, value, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), grads_r, grads)
  jaxpr = str(jax.make_jaxpr(lambda p: jax.grad(
      lambda q: jnp.mean(remat.apply({'params': q}, images)[0]))(p))(params))
  assert 'remat' in jaxpr or 'checkpoint' in jaxpr


@pytest.mark.parametrize("shape", [(2, 4, 4, 8), (1, 3, 5, 16)])
def test_upsample_conv_equals_nearest_upsample_then_conv(shape):
  from vqgan_jax.models.autoencoder import upsample_conv3x3  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape).astype(np.float32))
  kernel = jnp.asarray(rng.normal(size=(3, 3, shape[-1], 6)).astype(np.float32))

  def reference(x, kernel):
    up = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return jax.lax.conv_general_dilated(up, kernel, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  expected = reference(x, kernel)
  np.testing.assert_allclose(upsample_conv3x3(x, kernel), expected, rtol=1e-5, atol=1e-5)
  cotangent = jnp.asarray(rng.normal(size=expected.shape).astype(np.float32))
  for got, want in zip(jax.vjp(upsample_conv3x3, x, kernel)[1](cotangent),
                       jax.vjp(reference, x, kernel)[1](cotangent)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_zero_init_residual_blocks_start_as_their_shortcut_and_output_norm_can_be_dropped():
  from vqgan_jax.models.autoencoder import AttnBlock, ResnetBlock
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 32))
  for block in (ResnetBlock(32, zero_init=True), AttnBlock(zero_init=True)):
    out, variables = block.init_with_output(jax.random.key(0), x)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))
    # Only the branch's last conv starts at zero; it still learns.
    last = 'conv2' if isinstance(block, ResnetBlock) else 'proj_out'
    assert not np.any(variables['params'][last]['kernel'])
    grads = jax.grad(lambda p, blk=block: jnp.sum(blk.apply({'params': p}, x)**2))(
        variables['params'])
    assert np.any(np.asarray(grads[last]['kernel']))
  out, _ = ResnetBlock(32).init_with_output(jax.random.key(0), x)
  assert not np.allclose(np.asarray(out), np.asarray(x))

  images = jnp.zeros((1, 16, 16, 3))
  taming = jax.eval_shape(VQModel(**TINY).init, jax.random.key(0), images)['params']
  plain = jax.eval_shape(VQModel(**TINY, output_norm=False).init, jax.random.key(0),
                         images)['params']
  assert 'norm_out' in taming['encoder'] and 'norm_out' in taming['decoder']
  assert 'norm_out' not in plain['encoder'] and 'norm_out' not in plain['decoder']
  assert count_params(taming) - count_params(plain) == 2 * 64 + 2 * 32  # Scale and bias.
