"""The flat-mean-colour reference row: the metrics of each eval image's own mean colour, over the
whole split, against a direct numpy/scikit-image computation."""
import numpy as np
import skimage.metrics

from tests.helpers import load_config
from vqgan_jax.data import input_pipeline
from vqgan_jax.tokenizer import baselines


def test_flat_mean_colour_metrics_match_numpy():
  config = load_config("tiny", "test")
  config.batch_size = 8
  got = baselines.baseline_metrics(config)
  images = input_pipeline.first_eval_examples(config, 10**6)["image"]
  assert got["num_images"] == len(images) == input_pipeline.num_eval_examples(config)
  levels = lambda x: np.clip(np.round((x.astype(np.float32) + 1) * 127.5), 0, 255) / 255
  flat = np.broadcast_to(images.mean(axis=(1, 2), keepdims=True), images.shape)
  psnr = [skimage.metrics.peak_signal_noise_ratio(levels(x), levels(y), data_range=1)
          for x, y in zip(images, flat)]
  np.testing.assert_allclose(got["psnr"], np.mean(psnr), rtol=1e-4)
  np.testing.assert_allclose(got["l1"], np.mean(np.abs(images - flat)), rtol=1e-4)
  assert 0 < got["ssim"] < 1 and 0 < got["lpips"] < 1
