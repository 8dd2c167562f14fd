"""Per-image quality metrics as papers report them: PSNR, SSIM (Wang et al.) and LPIPS.

- PSNR and SSIM take NHWC images in [-1, 1], quantise them to uint8 levels first (as saved
  images would be) and compare them on [0, 1] (data_range 1). SSIM is the Wang et al. setting,
  identical to `skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, channel_axis=-1)`: 11x11 Gaussian window, K1 0.01,
  K2 0.03, mean over the interior where the window fits, then over channels. PSNR of identical
  images is inf, as in skimage.
- LPIPS: VGG16 LPIPS v0.1 (see `vqgan_jax.models.lpips`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # skimage's int(truncate * sigma + 0.5) with truncate 3.5: an 11x11 window



def _unit_uint8_levels(x: jax.Array) -> jax.Array:
  """[-1, 1] -> nearest uint8 level -> [0, 1] float32."""
  return jnp.clip(jnp.round((x.astype(jnp.float32) + 1.0) * 127.5), 0.0, 255.0) / 255.0


@jax.jit
def psnr(x: jax.Array, y: jax.Array) -> jax.Array:
  """Per-image PSNR in dB (B,) of NHWC images in [-1, 1], on uint8 levels with data_range 1."""
  mse = jnp.mean(jnp.square(_unit_uint8_levels(x) - _unit_uint8_levels(y)), axis=(1, 2, 3))
  return -10.0 * jnp.log10(mse)


def _gaussian_blur_valid(x: jax.Array) -> jax.Array:
  """Separable 11x11 Gaussian (sigma 1.5) per channel, only where the window fits (VALID).

  skimage blurs with reflected borders and then crops the border of width 5; the crop keeps
  exactly the VALID positions, so border handling never matters.
  """
  taps = np.exp(-0.5 * (np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1) / SSIM_SIGMA) ** 2)
  taps = jnp.asarray(taps / taps.sum(), jnp.float32)
  channels = x.shape[-1]
  for kernel in (taps.reshape(-1, 1, 1, 1), taps.reshape(1, -1, 1, 1)):
    x = jax.lax.conv_general_dilated(
        x, jnp.tile(kernel, (1, 1, 1, channels)), (1, 1), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels,
        precision=jax.lax.Precision.HIGHEST)
  return x


@jax.jit
def ssim(x: jax.Array, y: jax.Array) -> jax.Array:
  """Per-image SSIM (B,) of NHWC images in [-1, 1] (at least 11x11), on uint8 levels."""
  if min(x.shape[1:3]) < 2 * SSIM_RADIUS + 1:
    raise ValueError(f"ssim needs images of at least 11x11 pixels, got {x.shape}.")
  x, y = _unit_uint8_levels(x), _unit_uint8_levels(y)
  mu_x, mu_y = _gaussian_blur_valid(x), _gaussian_blur_valid(y)
  var_x = _gaussian_blur_valid(x * x) - mu_x * mu_x
  var_y = _gaussian_blur_valid(y * y) - mu_y * mu_y
  cov_xy = _gaussian_blur_valid(x * y) - mu_x * mu_y
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
              / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)))
  return jnp.mean(ssim_map, axis=(1, 2, 3))


@functools.lru_cache(maxsize=1)
def _lpips_fn():
  from vqgan_jax.models.lpips import LPIPS, load_lpips_params  # pylint: disable=g-import-not-at-top
  params = jax.device_put(load_lpips_params())
  distance = jax.jit(lambda p, a, b: LPIPS().apply({"params": p}, a, b))
  return functools.partial(distance, params)


def lpips(x: jax.Array, y: jax.Array) -> jax.Array:
  """Per-image LPIPS (VGG16, v0.1) distances (B,) of NHWC images in [-1, 1]."""
  return _lpips_fn()(x, y)
