"""How well samples follow their label map: the mIoU between the condition and a segmentation
of each sample, where a segmenter exists.

For the embedded photos the label maps are the nearest-palette-colour maps of
`vqgan_jax.data.derived`, so the same function segments a sample exactly as the condition was
made; a folder dataset's human label maps have no segmenter here (no offline weights), so no
agreement is reported for them.
"""
from __future__ import annotations

import ml_collections
import numpy as np

from vqgan_jax.prior import conditions


def measurable(config: ml_collections.ConfigDict) -> bool:
  return conditions.kind(config) == "segmentation" and config.data.source == "embedded"


def confusion(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
  """(K, K) int64 counts of (label, predicted) pixel pairs."""
  pairs = labels.astype(np.int64).reshape(-1) * num_classes + predicted.reshape(-1)
  return np.bincount(pairs, minlength=num_classes**2).reshape(num_classes, num_classes)


def miou(counts: np.ndarray) -> float:
  """Mean IoU over the classes present in the labels or the predictions (the segmentation
  tokenizer's eval metric)."""
  from vqgan_jax.tokenizer import evaluators  # pylint: disable=g-import-not-at-top
  return evaluators.segmentation_scores(counts)["miou"]


def segment(images_uint8: np.ndarray, num_classes: int) -> np.ndarray:
  """(B, H, W) label maps of uint8 samples, made as the embedded conditions are."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from vqgan_jax.data import derived  # pylint: disable=g-import-not-at-top
  palette = derived.embedded_palette(num_classes)
  return np.stack([derived.palette_labels(tf.constant(image), palette).numpy()
                   for image in images_uint8])
