"""The CPU conv paths: im2col matmuls and tap-matmul kernel gradients equal lax.conv (values and
gradients, sharded or not) where chosen, every other conv is lax.conv, and accelerators never
take either."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqgan_jax.models import conv_paths
from vqgan_jax.runtime import sharding

NHWC = ("NHWC", "HWIO", "NHWC")


def _lax_conv(x, k, strides=(1, 1), padding=((1, 1), (1, 1))):
  return jax.lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=NHWC)


def _path_conv(x, k, strides=(1, 1), padding=((1, 1), (1, 1))):
  dn = jax.lax.conv_dimension_numbers(x.shape, k.shape, NHWC)
  return conv_paths.conv_general_dilated(x, k, strides, padding, dimension_numbers=dn)


def _assert_same_values_and_gradients(conv, reference, x, k, value_rtol):
  """sum(sin(conv(x, k))) and its gradients equal `reference`'s."""
  loss = lambda conv: jax.jit(jax.value_and_grad(
      lambda x, k: jnp.sum(jnp.sin(conv(x, k))), argnums=(0, 1)))
  (want, want_grads), (got, got_grads) = loss(reference)(x, k), loss(conv)(x, k)
  np.testing.assert_allclose(got, want, rtol=value_rtol)
  for g, w in zip(got_grads, want_grads):
    # Summation order differs (the kernel gradient sums B*H*W products): float32 rounding.
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(w))))


@pytest.mark.parametrize("shape, im2col", [((2, 2, 2, 64), True), ((2, 4, 4, 32), True),
                                           ((2, 8, 8, 256), True), ((1, 16, 16, 256), True),
                                           ((2, 8, 8, 64), False), ((1, 32, 32, 256), False)])
def test_choice_and_equal_values_and_gradients(shape, im2col):
  assert conv_paths.prefers_im2col(shape) == im2col
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, shape[-1], 16)) * 0.05, jnp.float32)
  _assert_same_values_and_gradients(_path_conv, _lax_conv, x, k, value_rtol=1e-5)
  hlo = jax.jit(_path_conv).lower(x, k).as_text()
  assert ("convolution" not in hlo) == im2col


def test_other_convs_stay_lax_convs():
  x = jnp.ones((2, 4, 4, 64))
  for k, strides, padding in [(jnp.ones((3, 3, 64, 8)), (2, 2), ((0, 1), (0, 1))),
                              (jnp.ones((1, 1, 64, 8)), (1, 1), ((0, 0), (0, 0))),
                              (jnp.ones((3, 3, 64, 8)), (1, 1), ((0, 0), (0, 0)))]:
    np.testing.assert_allclose(_path_conv(x, k, strides, padding),
                               _lax_conv(x, k, strides, padding), rtol=1e-6)
    assert "convolution" in jax.jit(lambda x, k, s=strides, p=padding: _path_conv(
        x, k, s, p)).lower(x, k).as_text()


def _grad_convolutions(conv, x, k):
  """Convolutions in the compiled-to-be value-and-grad of sum(sin(conv(x, k)))."""
  step = jax.jit(jax.value_and_grad(lambda x, k: jnp.sum(jnp.sin(conv(x, k))), argnums=(0, 1)))
  return step.lower(x, k).as_text().count("stablehlo.convolution")


@pytest.mark.parametrize("x_shape, k_shape, padding", [
    ((2, 12, 12, 128), (3, 3, 128, 128), ((1, 1), (1, 1))),  # A res block's conv.
    ((2, 11, 9, 128), (2, 2, 128, 160), ((0, 1), (1, 0))),  # An upsample phase.
    ((2, 7, 6, 128), (3, 2, 128, 128), ((2, 0), (0, 3))),  # Any other padding.
    ((2, 10, 10, 128), (1, 1, 128, 256), ((0, 0), (0, 0)))])  # nin_shortcut.
def test_wide_convs_take_tap_kernel_gradients_equal_to_lax(x_shape, k_shape, padding):
  assert conv_paths.prefers_tap_kernel_grad(k_shape)
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
  k = jnp.asarray(rng.normal(size=k_shape) * 0.02, jnp.float32)
  lax_conv = lambda x, k: _lax_conv(x, k, (1, 1), padding)
  path_conv = lambda x, k: _path_conv(x, k, (1, 1), padding)
  _assert_same_values_and_gradients(path_conv, lax_conv, x, k, value_rtol=1e-6)
  # lax differentiates into three convs (value, input and kernel gradient); the tap path's
  # kernel gradient is matmuls.
  assert (_grad_convolutions(lax_conv, x, k), _grad_convolutions(path_conv, x, k)) == (3, 2)


def test_tap_kernel_gradients_sharded_over_the_batch_equal_one_device():
  mesh = sharding.create_mesh()  # The trainers' mesh.
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(sharding.DATA_AXIS))
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(8, 10, 10, 128)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, 128, 128)) * 0.02, jnp.float32)
  grads = jax.jit(jax.grad(lambda x, k: jnp.sum(jnp.sin(_path_conv(x, k))), argnums=(0, 1)))
  want = grads(x, k)
  got = grads(jax.device_put(x, batch), k)
  assert got[0].sharding.is_equivalent_to(batch, 4)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(w))))


def test_tap_kernel_gradients_add_no_scratch_per_layer():
  """The taps read shifted copies of the output gradient, which exists only in the backward
  pass; shifted copies of the input could be made in the forward pass and held until the
  backward one (one per tap per layer: 3.4x lax's scratch here)."""
  def scratch_bytes(conv, layers):
    def loss(kernels, x):
      for k in kernels:
        x = x + conv(jax.nn.silu(x), k)
      return jnp.sum(jnp.square(x))
    kernels = [jnp.full((3, 3, 128, 128), 0.01)] * layers
    compiled = jax.jit(jax.grad(loss)).lower(kernels, jnp.ones((2, 32, 32, 128))).compile()
    return compiled.memory_analysis().temp_size_in_bytes
  activation = 2 * 32 * 32 * 128 * 4
  for layers in (4, 8):
    lax_bytes, tap_bytes = scratch_bytes(_lax_conv, layers), scratch_bytes(_path_conv, layers)
    # One layer's taps at a time: at most the 9 shifted gradients and the padded one.
    assert tap_bytes <= lax_bytes + 10 * activation, (layers, tap_bytes, lax_bytes)


def test_narrow_and_strided_convs_keep_lax_kernel_gradients():
  x, k = jnp.ones((2, 8, 8, 64)), jnp.ones((3, 3, 64, 128)) * 0.01
  assert not conv_paths.prefers_tap_kernel_grad(k.shape)
  assert _grad_convolutions(_path_conv, x, k) == 3
  x, k = jnp.ones((2, 12, 12, 128)), jnp.ones((3, 3, 128, 128)) * 0.01  # taming's downsample.
  downsample = lambda x, k: _path_conv(x, k, (2, 2), ((0, 1), (0, 1)))
  assert _grad_convolutions(downsample, x, k) == 3


def test_accelerators_and_plain_convs_never_take_the_matmul(monkeypatch):
  with conv_paths.plain_convs():
    assert not conv_paths.prefers_im2col((2, 2, 2, 512))
    assert not conv_paths.prefers_tap_kernel_grad((3, 3, 512, 512))
  assert conv_paths.prefers_im2col((2, 2, 2, 512))  # Restored.
  assert conv_paths.prefers_tap_kernel_grad((3, 3, 512, 512))
  for backend in ("gpu", "tpu"):
    monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
    assert not conv_paths.prefers_im2col((2, 2, 2, 512))
    assert not conv_paths.prefers_tap_kernel_grad((3, 3, 512, 512))
