"""GroupNorm with statistics reduced per channel first, then per group.

The same function as `nn.GroupNorm(use_fast_variance=False)` (two-pass variance, as torch) and the
same parameters (`scale`, `bias`), so taming checkpoints and older workdirs load unchanged. Why
not flax's: it reduces a (B, H*W, G, C/G) view over axes (1, 3), a strided reduction that XLA:CPU
runs 2-3x slower than summing each channel over H*W (a contiguous, vectorised reduction) and then
the C/G channels of each group in a (B, C) array. Measured on 2 CPU cores, GroupNorm + swish
forward + backward: 4.6 -> 2.2 ms at 8x32x32x64, 29.1 -> 9.7 ms at 2x128x128x128.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _group_mean(channel_means: jax.Array, num_groups: int) -> jax.Array:
  """(B, C) per-channel means -> each channel's group mean, (B, 1, 1, C)."""
  batch, channels = channel_means.shape
  per_group = channels // num_groups
  means = channel_means.reshape(batch, num_groups, per_group).mean(axis=-1)
  return jnp.repeat(means, per_group, axis=-1)[:, None, None, :]


class GroupNorm(nn.Module):
  """GroupNorm over NHWC: statistics and affine in float32, output in `dtype`."""
  num_groups: int = 32
  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    if x.ndim != 4 or channels % self.num_groups:
      raise ValueError(f'GroupNorm expects NHWC input with channels divisible by '
                       f'{self.num_groups} groups, got shape {x.shape}.')
    scale = self.param('scale', nn.initializers.ones, (channels,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (channels,), jnp.float32)
    x = x.astype(jnp.float32)
    centred = x - _group_mean(jnp.mean(x, axis=(1, 2)), self.num_groups)
    variance = _group_mean(jnp.mean(jnp.square(centred), axis=(1, 2)), self.num_groups)
    return (centred * (jax.lax.rsqrt(variance + self.epsilon) * scale) + bias).astype(self.dtype)
