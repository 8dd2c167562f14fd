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
most `IM2COL_MAX_PIXELS` pixels, or at most 4x4 pixels whatever its width. Accelerators never
take it: the choice is made where the conv is traced, from `jax.default_backend()`, and GPU/TPU
convolutions are left to their compilers, which were not measured with it.
"""
from __future__ import annotations

import contextlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp

IM2COL_MIN_CHANNELS = 256
IM2COL_MAX_PIXELS = 16 * 16
IM2COL_ANY_WIDTH_MAX_SIZE = 4
_enabled = True


@contextlib.contextmanager
def plain_convs():
  """While tracing inside this context every 3x3 conv is a `lax.conv`, on any map.

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


def _is_same_conv3x3(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                     dimension_numbers, feature_group_count) -> bool:
  nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
  ones = (None, (1, 1))
  return (lhs.ndim == 4 and tuple(rhs.shape[:2]) == (3, 3) and feature_group_count == 1
          and tuple(window_strides) == (1, 1)
          and tuple(map(tuple, padding)) == ((1, 1), (1, 1))
          and (lhs_dilation if lhs_dilation is None else tuple(lhs_dilation)) in ones
          and (rhs_dilation if rhs_dilation is None else tuple(rhs_dilation)) in ones
          and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs):
  """`jax.lax.conv_general_dilated` (flax `nn.Conv(conv_general_dilated=...)`), with 3x3
  'same' NHWC convs on small, wide maps as im2col matmuls on the CPU (see module docstring)."""
  if (not kwargs and not isinstance(padding, str) and _is_same_conv3x3(
      lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
      feature_group_count) and prefers_im2col(lhs.shape)):
    return _im2col_conv3x3(lhs, rhs, precision)
  return jax.lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      precision=precision, **kwargs)
