"""The CPU conv paths: im2col matmuls equal lax.conv (values and gradients) where chosen, every
other conv is lax.conv, and accelerators never take the matmul."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqgan_jax.models import conv_paths

NHWC = ("NHWC", "HWIO", "NHWC")


def _lax_conv(x, k, strides=(1, 1), padding=((1, 1), (1, 1))):
  return jax.lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=NHWC)


def _path_conv(x, k, strides=(1, 1), padding=((1, 1), (1, 1))):
  dn = jax.lax.conv_dimension_numbers(x.shape, k.shape, NHWC)
  return conv_paths.conv_general_dilated(x, k, strides, padding, dimension_numbers=dn)


@pytest.mark.parametrize("shape, im2col", [((2, 2, 2, 64), True), ((2, 4, 4, 32), True),
                                           ((2, 8, 8, 256), True), ((1, 16, 16, 256), True),
                                           ((2, 8, 8, 64), False), ((1, 32, 32, 256), False)])
def test_choice_and_equal_values_and_gradients(shape, im2col):
  assert conv_paths.prefers_im2col(shape) == im2col
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, shape[-1], 16)) * 0.05, jnp.float32)
  loss = lambda conv: jax.jit(jax.value_and_grad(
      lambda x, k: jnp.sum(jnp.sin(conv(x, k))), argnums=(0, 1)))
  (want, want_grads), (got, got_grads) = loss(_lax_conv)(x, k), loss(_path_conv)(x, k)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for g, w in zip(got_grads, want_grads):
    # Summation order differs (the kernel gradient sums B*H*W products): float32 rounding.
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(w))))
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


def test_accelerators_and_plain_convs_never_take_the_matmul(monkeypatch):
  with conv_paths.plain_convs():
    assert not conv_paths.prefers_im2col((2, 2, 2, 512))
  assert conv_paths.prefers_im2col((2, 2, 2, 512))  # Restored.
  for backend in ("gpu", "tpu"):
    monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
    assert not conv_paths.prefers_im2col((2, 2, 2, 512))
