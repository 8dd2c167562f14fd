"""taming-transformers' PatchGAN discriminator (`NLayerDiscriminator`) in Flax linen, NHWC.

Same layers, padding, initialisation and BatchNorm behaviour as taming's
`modules/discriminator/model.py`, so taming's discriminator weights convert by transposing conv
kernels (OIHW -> HWIO) and renaming. Parameter tree: `conv_0/{kernel,bias}`, then for
l = 1..num_layers `conv_{l}/kernel` and `norm_{l}/{scale,bias}` (with `batch_stats`
`norm_{l}/{mean,var}`), then `conv_out/{kernel,bias}`.

Convolutions compute in `dtype` with float32 parameters; BatchNorm statistics and the logits are
float32. BatchNorm statistics are taken over the whole (global) batch: under `jax.jit` with a
batch-sharded input, XLA inserts the cross-device reductions itself.
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

KERNEL = 4
PADDING = ((1, 1), (1, 1))
NEGATIVE_SLOPE = 0.2


def _torch_bias_init(fan_in: int) -> nn.initializers.Initializer:
  """torch.nn.Conv2d's default bias init, U(+-1/sqrt(fan_in)), which taming's init leaves alone."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class TorchBatchNorm(nn.Module):
  """BatchNorm over all axes but the last, with torch.nn.BatchNorm2d's running statistics.

  flax's `nn.BatchNorm` updates the running variance with the biased batch variance; torch uses
  the unbiased one (n / (n - 1) times larger, n = B*H*W), so the two drift apart in eval mode
  (by 1/3 at n = 4). Normalisation itself uses the biased variance in both. This module matches
  torch exactly: `momentum` is torch's (new = (1 - momentum) * old + momentum * batch), and the
  variables are named like flax's (`scale`, `bias`; `batch_stats` `mean`, `var`).
  """
  momentum: float = 0.1
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    features = x.shape[-1]
    scale = self.param('scale', lambda key, shape: 1.0 + 0.02 * jax.random.normal(key, shape),
                       (features,))
    bias = self.param('bias', nn.initializers.zeros_init(), (features,))
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)

    x32 = x.astype(jnp.float32)
    if train:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x32, axis=axes)
      var = jnp.mean(jnp.square(x32 - mean), axis=axes)
      if not self.is_initializing():
        n = math.prod(x.shape[:-1])
        unbiased = var * (n / max(n - 1, 1))
        ra_mean.value = (1.0 - self.momentum) * ra_mean.value + self.momentum * mean
        ra_var.value = (1.0 - self.momentum) * ra_var.value + self.momentum * unbiased
    else:
      mean, var = ra_mean.value, ra_var.value
    y = (x32 - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
    return y.astype(self.dtype)


class NLayerDiscriminator(nn.Module):
  """PatchGAN: (B, H, W, 3) images in [-1, 1] -> (B, H/2^L - 2, W/2^L - 2, 1) float32 logits.

  Each logit judges one overlapping patch (70x70 pixels for num_layers=3). Conv kernels are
  N(0, 0.02) and BatchNorm scales N(1, 0.02) as taming's `weights_init`; conv biases keep
  torch's default U(+-1/sqrt(fan_in)).
  """
  ndf: int = 64
  num_layers: int = 3
  dtype: Any = jnp.float32

  def _conv(self, features: int, stride: int, use_bias: bool, fan_in: int, name: str) -> nn.Conv:
    return nn.Conv(features, (KERNEL, KERNEL), strides=(stride, stride), padding=PADDING,
                   use_bias=use_bias, dtype=self.dtype, param_dtype=jnp.float32,
                   kernel_init=nn.initializers.normal(0.02),
                   bias_init=_torch_bias_init(fan_in), name=name)

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> jax.Array:
    x = images.astype(self.dtype)
    fan_in = KERNEL * KERNEL * x.shape[-1]
    x = self._conv(self.ndf, 2, True, fan_in, 'conv_0')(x)
    x = nn.leaky_relu(x, NEGATIVE_SLOPE)
    for layer in range(1, self.num_layers + 1):
      stride = 2 if layer < self.num_layers else 1
      features = self.ndf * min(2**layer, 8)
      fan_in = KERNEL * KERNEL * x.shape[-1]
      x = self._conv(features, stride, False, fan_in, f'conv_{layer}')(x)
      x = TorchBatchNorm(dtype=self.dtype, name=f'norm_{layer}')(x, train)
      x = nn.leaky_relu(x, NEGATIVE_SLOPE)
    fan_in = KERNEL * KERNEL * x.shape[-1]
    x = self._conv(1, 1, True, fan_in, 'conv_out')(x)
    return x.astype(jnp.float32)
