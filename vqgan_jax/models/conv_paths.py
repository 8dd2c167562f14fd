"""3x3 'same' convolutions the way XLA:CPU runs them fastest, chosen per shape on the CPU only.

XLA:CPU's convolution falls back to a slow generic kernel on small maps (~1 GFLOP/s on a 2x2x512
map) and, for every conv it differentiates, flips the kernel with a `reverse` that costs more
than the conv itself there (15-65 ms for a 3x3x512x512 kernel). On small, wide maps one im2col
matmul (the 3x3 neighbourhood of every pixel, 9C wide, times the kernel as a (9C, O) matrix)
avoids both. fwd+bwd per conv, one process, 2 cores (ms, lax.conv -> im2col):

    2x2x512 b2 110 -> 6.3    4x4x512 b2 22 -> 12.6    8x8x512 b2 52 -> 33    16x16x512 b2 113 -> 90
    16x16x256 b2 33 -> 24.5  8x8x256 b16 55 -> 48     4x4x512 b16 67 -> 45
    but 32x32x256 b2 118 -> 127, 16x16x128 b16 62 -> 82, 8x8x64 b8 1.6 -> 2.3 (lax is faster)

so a conv takes the matmul when its input has at least `IM2COL_MIN_CHANNELS` channels and at
most `IM2COL_MAX_PIXELS` pixels, or at most 4x4 pixels whatever its width.

On large maps the forward conv and its input gradient run well, but XLA:CPU's kernel gradient
does not: at 2x256x256x128 -> 128 it takes ~5 s of a ~5.5 s fwd+bwd. Every other stride-1
conv with at least `KERNEL_GRAD_MIN_CHANNELS` input and output channels therefore keeps
`lax.conv` for its value and input gradient and computes its kernel gradient as one
(C_in x B*H*W) @ (B*H*W x C_out) matmul per kernel tap (`conv_with_tap_kernel_grad`); strided
convs (the four downsamples) keep lax's. fwd+bwd per conv, one process, 2 cores (ms,
lax.conv -> tap matmuls):

    2x256x256x128 5788 -> 2006   2x128x128x128 671 -> 444   2x64x64x256 543 -> 436
    2x32x32x256 122 -> 92        16x16x16x128 69 -> 60
    but 8x32x32x64 30 -> 33, 8x16x16x64 7.1 -> 9.3, 2x256x256x128 -> 3 399 -> 565 (lax is faster)

Accelerators take neither path: the choice is made where the conv is traced, from
`jax.default_backend()`, and GPU/TPU convolutions are left to their compilers, which were not
measured with them.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp

IM2COL_MIN_CHANNELS = 256
IM2COL_MAX_PIXELS = 16 * 16
IM2COL_ANY_WIDTH_MAX_SIZE = 4
KERNEL_GRAD_MIN_CHANNELS = 128
_enabled = True


@contextlib.contextmanager
def plain_convs():
  """While tracing inside this context every conv is a plain `lax.conv`, on any map.

  For counting FLOPs: XLA's cost analysis of a conv counts the multiply-adds inside the image,
  that of the im2col matmul also those with its zero padding (2.25x at 2x2, 1.44x at 4x4).
  """
  global _enabled
  saved, _enabled = _enabled, False
  try:
    yield
  finally:
    _enabled = saved


def prefers_im2col(shape: Sequence[int]) -> bool:
  """Whether a 3x3 'same' conv of an NHWC input of `shape` runs as an im2col matmul here."""
  if not _enabled or jax.default_backend() != "cpu":
    return False
  height, width, channels = shape[1], shape[2], shape[3]
  if max(height, width) <= IM2COL_ANY_WIDTH_MAX_SIZE:
    return True
  return channels >= IM2COL_MIN_CHANNELS and height * width <= IM2COL_MAX_PIXELS


def prefers_tap_kernel_grad(kernel_shape: Sequence[int]) -> bool:
  """Whether a conv with an HWIO kernel of `kernel_shape` takes `conv_with_tap_kernel_grad`."""
  if not _enabled or jax.default_backend() != "cpu":
    return False
  return min(kernel_shape[2], kernel_shape[3]) >= KERNEL_GRAD_MIN_CHANNELS


def im2col(x: jax.Array) -> jax.Array:
  """(B, H, W, C) -> (B, H, W, 9C): the zero-padded 3x3 neighbourhood of every pixel."""
  h, w = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return jnp.concatenate([padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)],
                         axis=-1)


def _im2col_conv3x3(x: jax.Array, kernel: jax.Array, precision: Any = None) -> jax.Array:
  return jnp.matmul(im2col(x), kernel.reshape(-1, kernel.shape[-1]), precision=precision)


def same_conv3x3(x: jax.Array, kernel: jax.Array, precision: Any = None) -> jax.Array:
  """3x3 stride-1 'same' conv, NHWC x HWIO, by the faster path for its shape."""
  if prefers_im2col(x.shape):
    return _im2col_conv3x3(x, kernel, precision)
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      precision=precision)


def _nhwc_conv(x, kernel, strides, padding, precision):
  return jax.lax.conv_general_dilated(x, kernel, strides, padding,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_with_tap_kernel_grad(x: jax.Array, kernel: jax.Array,
                              padding: tuple[tuple[int, int], tuple[int, int]],
                              precision: Any = None) -> jax.Array:
  """A stride-1 NHWC x HWIO `lax.conv` (explicit non-negative padding, no dilation) whose
  kernel gradient is one matmul per kernel tap: for tap (i, j), the input (B*H*W, C_in)
  transposed times the output gradient shifted by the tap's offset (B*H*W, C_out).

  The gradient is shifted rather than the input: copies of the input could be (and by XLA:CPU
  are) made in the forward pass and kept until the backward one (2.6x the step's scratch at
  256 px); the output gradient exists only in the backward pass.
  """
  return _nhwc_conv(x, kernel, (1, 1), padding, precision)


def _tap_conv_fwd(x, kernel, padding, precision):
  return _nhwc_conv(x, kernel, (1, 1), padding, precision), (x, kernel)


def _tap_conv_bwd(padding, precision, residuals, out_grad):
  x, kernel = residuals
  _, input_pullback = jax.vjp(lambda x: _nhwc_conv(x, kernel, (1, 1), padding, precision), x)
  (kh, kw), (height, width, in_c) = kernel.shape[:2], x.shape[1:]
  # out[p - lo + i] reads x[p] through tap i: pad the gradient so each tap's view is a slice.
  before = [max(0, k - 1 - lo) for k, (lo, _) in zip((kh, kw), padding)]
  after = [max(0, k - 1 - hi) for k, (_, hi) in zip((kh, kw), padding)]
  padded_grad = jnp.pad(out_grad, ((0, 0), (before[0], after[0]), (before[1], after[1]), (0, 0)))
  inputs = x.reshape(-1, in_c)
  taps = []
  for i in range(kh):
    for j in range(kw):
      top, left = padding[0][0] - i + before[0], padding[1][0] - j + before[1]
      shifted = padded_grad[:, top:top + height, left:left + width].reshape(-1, out_grad.shape[-1])
      taps.append(jax.lax.dot_general(inputs, shifted, (((0,), (0,)), ((), ())),
                                      precision=precision))
  kernel_grad = jnp.stack(taps).reshape(kernel.shape).astype(kernel.dtype)
  return input_pullback(out_grad)[0], kernel_grad


conv_with_tap_kernel_grad.defvjp(_tap_conv_fwd, _tap_conv_bwd)


def _plain_nhwc_padding(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                        dimension_numbers, feature_group_count):
  """The padding as ((top, bottom), (left, right)) if the conv is an undilated, ungrouped
  NHWC x HWIO conv with explicit non-negative padding, else None."""
  if lhs.ndim != 4 or isinstance(padding, str) or feature_group_count != 1:
    return None
  ones = (None, (1, 1))
  if ((lhs_dilation if lhs_dilation is None else tuple(lhs_dilation)) not in ones
      or (rhs_dilation if rhs_dilation is None else tuple(rhs_dilation)) not in ones):
    return None
  nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
  if jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != nhwc:
    return None
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  return padding if min(min(p) for p in padding) >= 0 else None


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs):
  """`jax.lax.conv_general_dilated` (flax `nn.Conv(conv_general_dilated=...)`), on the CPU
  with 3x3 'same' convs on small, wide maps as im2col matmuls and wide convs elsewhere with
  tap-matmul kernel gradients (see module docstring)."""
  plain_padding = None if kwargs else _plain_nhwc_padding(
      lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
      feature_group_count)
  if plain_padding is not None:
    strides = tuple(int(s) for s in window_strides)
    if (tuple(rhs.shape[:2]) == (3, 3) and strides == (1, 1)
        and plain_padding == ((1, 1), (1, 1)) and prefers_im2col(lhs.shape)):
      return _im2col_conv3x3(lhs, rhs, precision)
    if strides == (1, 1) and prefers_tap_kernel_grad(rhs.shape):
      return conv_with_tap_kernel_grad(lhs, rhs, plain_padding, precision)
  return jax.lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      precision=precision, **kwargs)
