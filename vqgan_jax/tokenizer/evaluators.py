"""Pluggable reconstruction metrics: one small class per metric, run by
`vqgan_jax.tokenizer.evaluate`.

An evaluator has
  - `constants`: arrays its device code needs (weights), passed into the jitted step as an
    argument (never baked into the program as constants);
  - `device_fn(constants, images, recon, indices, mask)`: jittable, per batch; returns a pytree
    (masked sums, or per-example features that the host filters with the mask);
  - `reset()`, `update(outputs, mask)` on the host, and `result()` -> {name: float}.
Adding a metric is one class here and one entry in `EVALUATORS`.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vqgan_jax.metrics import fid, image_quality
from vqgan_jax.models import inception


def _masked_sum(per_image: jax.Array, mask: jax.Array) -> jax.Array:
  """Sum over the real rows; padding rows are left out even where their value is inf or NaN
  (a padding image reconstructed exactly has infinite PSNR, and inf * 0 is NaN)."""
  return jnp.sum(jnp.where(mask > 0, per_image, 0.0))


class ReconstructionMetrics:
  """Mean per-image L1 (in [-1, 1]), LPIPS-VGG, PSNR and SSIM (uint8 levels, data_range 1)."""

  names = ("l1", "lpips", "psnr", "ssim")

  def __init__(self, **_):
    from vqgan_jax.models.lpips import load_lpips_params  # pylint: disable=g-import-not-at-top
    self.constants = load_lpips_params()
    self.reset()

  @staticmethod
  def device_fn(constants, images, recon, indices, mask):
    del indices
    from vqgan_jax.models.lpips import LPIPS  # pylint: disable=g-import-not-at-top
    per_image = {
        "l1": jnp.mean(jnp.abs(images - recon), axis=(1, 2, 3)),
        "lpips": LPIPS().apply({"params": constants}, images, recon),
        "psnr": image_quality.psnr(images, recon),
        "ssim": image_quality.ssim(images, recon),
    }
    return {k: _masked_sum(v, mask) for k, v in per_image.items()}

  def reset(self):
    self._sums = {k: 0.0 for k in self.names}
    self._count = 0.0

  def update(self, outputs, mask: np.ndarray):
    self._count += float(mask.sum())
    for k in self.names:
      self._sums[k] += float(outputs[k])

  def result(self) -> dict[str, float]:
    return {k: self._sums[k] / max(self._count, 1.0) for k in self.names}


class CodebookMetrics:
  """Code histogram over the whole split: fraction of the K codes used, its perplexity and the
  number of codes never chosen."""

  def __init__(self, *, codebook_size: int, **_):
    self.codebook_size = codebook_size
    self.constants = {}
    self.reset()

  def device_fn(self, constants, images, recon, indices, mask):
    del constants, images, recon
    indices = indices.reshape(indices.shape[0], -1)
    weights = jnp.broadcast_to(mask[:, None], indices.shape)
    return jnp.zeros((self.codebook_size,), jnp.float32).at[indices.ravel()].add(weights.ravel())

  def reset(self):
    self._histogram = np.zeros(self.codebook_size, np.float64)

  def update(self, outputs, mask: np.ndarray):
    del mask
    self._histogram += np.asarray(outputs, np.float64)

  @property
  def histogram(self) -> np.ndarray:
    """Tokens per code over everything seen since `reset` (float64, length K)."""
    return self._histogram.copy()

  def result(self) -> dict[str, float]:
    hist = self._histogram
    probs = hist[hist > 0] / max(hist.sum(), 1.0)
    return {"codebook_usage": float(np.mean(hist > 0)),
            "perplexity": float(np.exp(-np.sum(probs * np.log(probs)))),
            "unused_codes": float(np.sum(hist == 0))}


class ReconstructionFID:
  """rFID: Fréchet distance between Inception pool3 statistics of the reconstructions and of the
  originals (or of `reference_stats`, an `.npz` from `vqgan_jax.metrics.fid_stats`)."""

  def __init__(self, *, reference_stats: str = "", **_):
    self.constants = inception.load_inception_params()  # InceptionWeightsNotFound if missing.
    self._reference = fid.load_stats(reference_stats) if reference_stats else None
    self.reset()

  @staticmethod
  def device_fn(constants, images, recon, indices, mask):
    del indices, mask

    def pool3(x):
      levels = jnp.clip(jnp.round((x + 1.0) * 127.5), 0.0, 255.0)
      resized = fid.resize_bilinear_tf1(levels, inception.INPUT_SIZE)
      return inception.FIDInceptionV3().apply({"params": constants}, resized / 128.0 - 1.0)

    return {"real": pool3(images), "recon": pool3(recon)}

  def reset(self):
    self._real = fid.RunningStats()
    self._recon = fid.RunningStats()

  def update(self, outputs, mask: np.ndarray):
    keep = mask > 0
    self._recon.update(np.asarray(outputs["recon"])[keep])
    if self._reference is None:
      self._real.update(np.asarray(outputs["real"])[keep])

  def result(self) -> dict[str, float]:
    reference = (self._reference[:2] if self._reference is not None else self._real.stats())
    return {"rfid": fid.fid_from_stats(*self._recon.stats(), *reference)}


class SegmentationMetrics:
  """Pixel accuracy and mIoU of the argmax label map over the whole split, from one confusion
  matrix (label x prediction) summed over every real pixel; the IoU is averaged over the
  classes present in the labels or the predictions."""

  names = ("pixel_accuracy", "miou")

  def __init__(self, *, num_classes: int, **_):
    self.num_classes = num_classes
    self.constants = {}
    self.reset()

  def device_fn(self, constants, images, recon, indices, mask):
    del constants, indices
    labels = jnp.argmax(images, axis=-1).ravel()  # The input is the one-hot label map.
    predictions = jnp.argmax(recon, axis=-1).ravel()
    weights = jnp.broadcast_to((mask > 0)[:, None, None], images.shape[:3]).ravel()
    k = self.num_classes
    return jnp.zeros((k, k), jnp.int32).at[labels, predictions].add(weights.astype(jnp.int32))

  def reset(self):
    self._confusion = np.zeros((self.num_classes, self.num_classes), np.int64)

  def update(self, outputs, mask: np.ndarray):
    del mask
    self._confusion += np.asarray(outputs, np.int64)

  @property
  def confusion(self) -> np.ndarray:
    """int64 (K, K) pixel counts, rows the labels and columns the predictions."""
    return self._confusion.copy()

  def result(self) -> dict[str, float]:
    return segmentation_scores(self._confusion)


def segmentation_scores(confusion: np.ndarray) -> dict[str, float]:
  """Pixel accuracy and mean IoU (over classes labelled or predicted) of a confusion matrix."""
  confusion = np.asarray(confusion, np.float64)
  hits = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - hits
  present = union > 0
  return {"pixel_accuracy": float(hits.sum() / max(confusion.sum(), 1.0)),
          "miou": float(np.mean(hits[present] / union[present])) if present.any() else 0.0}


EVALUATORS = {
    "reconstruction": ReconstructionMetrics,
    "codebook": CodebookMetrics,
    "rfid": ReconstructionFID,
    "segmentation": SegmentationMetrics,
}
# The evaluators that apply to each modality (vqgan_jax.tokenizer.modality).
IMAGE_EVALUATORS = ("reconstruction", "codebook", "rfid")
SEGMENTATION_EVALUATORS = ("segmentation", "codebook")


def for_modality(modality: str) -> tuple[str, ...]:
  """The evaluator names that apply to a tokenizer of `modality`."""
  return SEGMENTATION_EVALUATORS if modality == "segmentation" else IMAGE_EVALUATORS
# What a metric reports when its weights are not installed, and how to install them.
UNAVAILABLE_KEYS = {"rfid": ("rfid",)}


def make_evaluators(names, **kwargs: Any) -> tuple[dict[str, Any], dict[str, str]]:
  """Builds the named evaluators; returns them and {metric key: why it is unavailable}."""
  unknown = [n for n in names if n not in EVALUATORS]
  if unknown:
    raise ValueError(f"Unknown evaluator(s) {unknown} in config.eval_metrics; choose from "
                     f"{sorted(EVALUATORS)}.")
  built, unavailable = {}, {}
  for name in names:
    try:
      built[name] = EVALUATORS[name](**kwargs)
    except inception.InceptionWeightsNotFound as e:
      for key in UNAVAILABLE_KEYS.get(name, (name,)):
        unavailable[key] = str(e)
  return built, unavailable
