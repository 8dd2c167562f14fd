"""PSNR, SSIM and LPIPS against skimage and the published LPIPS value."""
import numpy as np
import pytest
import skimage.data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from vqgan_jax import metrics


def _photo_pairs() -> tuple[np.ndarray, np.ndarray]:
  """Real photo crops (uint8) and noisy versions of them."""
  photos = np.stack([skimage.data.astronaut()[:40, 180:228],
                     skimage.data.chelsea()[60:100, 200:248],
                     skimage.data.coffee()[100:140, 300:348]])
  noise = np.random.default_rng(0).normal(0, 12, photos.shape)
  return photos, np.clip(np.round(photos + noise), 0, 255).astype(np.uint8)


def _to_model_range(images: np.ndarray) -> np.ndarray:
  return images.astype(np.float32) / 127.5 - 1


def test_psnr_and_ssim_match_skimage():
  clean, noisy = _photo_pairs()
  pairs = ((clean, noisy), (clean, np.roll(clean, 1, axis=0)))  # noisy copies; unrelated photos
  for x, y in pairs:
    psnr = np.asarray(metrics.psnr(_to_model_range(x), _to_model_range(y)))
    ssim = np.asarray(metrics.ssim(_to_model_range(x), _to_model_range(y)))
    for i in range(len(x)):
      a, b = x[i] / 255.0, y[i] / 255.0
      want_ssim = structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, data_range=1, channel_axis=-1)
      assert ssim[i] == pytest.approx(want_ssim, abs=2e-5)
      assert psnr[i] == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1), abs=1e-4)


def test_psnr_and_ssim_quantise_to_uint8_levels():
  clean, noisy = _photo_pairs()
  x, y = _to_model_range(clean), _to_model_range(noisy)
  jitter = np.random.default_rng(1).uniform(-0.003, 0.003, x.shape).astype(np.float32)
  np.testing.assert_allclose(metrics.ssim(x + jitter, y), metrics.ssim(x, y), rtol=1e-6)
  np.testing.assert_allclose(metrics.psnr(x + jitter, y), metrics.psnr(x, y), rtol=1e-6)
  np.testing.assert_allclose(metrics.ssim(x, x), 1.0, rtol=1e-6)
  assert np.all(np.isinf(metrics.psnr(x, x)))


def test_lpips_of_shifted_crops():
  astronaut = skimage.data.astronaut()
  x = _to_model_range(astronaut[None, 0:256, 100:356])
  y = _to_model_range(astronaut[None, 8:264, 108:364])
  assert float(metrics.lpips(x, y)[0]) == pytest.approx(0.344800, abs=1e-4)
  assert float(metrics.lpips(x, x)[0]) == 0.0
