"""What a tokenizer encodes (`config.modality`) and how its inputs and outputs are drawn.

  image         the photo, (B, H, W, 3) in [-1, 1] (the default).
  edges         the photo's edge map (`vqgan_jax.data.derived.edge_map`), RGB in [-1, 1].
  sketch        a line drawing of the photo, RGB in [-1, 1].
  segmentation  the one-hot label map, (B, H, W, K) of 0/1 (taming's VQSegmentationModel);
                the decoder outputs K logits per pixel.
The first three train as the normal VQGAN; segmentation trains with a per-pixel classification
loss and no LPIPS or GAN (`vqgan_jax.tokenizer.config.validate_modality_config`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vqgan_jax.runtime import images as image_utils, sharding

MODALITIES = ("image", "edges", "sketch", "segmentation")
# The first colours of the palette (then PASCAL VOC's bit-interleaved colour map).
_FIRST_COLOURS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                  (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60),
                  (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
                  (255, 250, 200), (128, 0, 0), (170, 255, 195))


def model_input(batch: dict[str, jax.Array], modality: str, num_classes: int) -> jax.Array:
  """float32 (B, H, W, C) the tokenizer encodes: the image, the edge map or drawing, or the
  one-hot (0/1) label map of `num_classes` classes (taming's segmentation input)."""
  if modality == "segmentation":
    return jax.nn.one_hot(batch["segmentation"], num_classes, dtype=jnp.float32)
  if modality not in MODALITIES:
    raise ValueError(f"config.modality={modality!r}; use one of {MODALITIES}.")
  return batch[modality].astype(jnp.float32)


def palette(num_classes: int) -> np.ndarray:
  """uint8 (num_classes, 3): a fixed, distinct colour per class id (the same in every run)."""
  colours = list(_FIRST_COLOURS[:num_classes])
  for i in range(len(colours), num_classes):
    r = g = b = 0
    c = i
    for bit in range(8):  # PASCAL VOC: the id's bits spread over the colour's high bits.
      r |= ((c >> 0) & 1) << (7 - bit)
      g |= ((c >> 1) & 1) << (7 - bit)
      b |= ((c >> 2) & 1) << (7 - bit)
      c >>= 3
    colours.append((r, g, b))
  return np.asarray(colours, np.uint8).reshape(num_classes, 3)


def colorize(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """uint8 (..., 3) RGB of integer class ids (...) in [0, num_classes)."""
  return palette(num_classes)[np.asarray(labels)]


def to_pictures(x: np.ndarray, modality: str) -> np.ndarray:
  """uint8 (B, H, W, 3) of model-space arrays on the host: the image itself, or the coloured
  argmax over the K channels (a one-hot input or K logits) for segmentation."""
  if modality == "segmentation":
    x = np.asarray(x)
    return colorize(np.argmax(x, axis=-1), x.shape[-1])
  return image_utils.to_uint8(x)


def gather_pictures(x: jax.Array, modality: str) -> np.ndarray:
  """`to_pictures` of a batch-sharded array, on every host. A label map is reduced to its
  argmax on the devices first, so K channels never travel."""
  if modality == "segmentation":
    labels = sharding.gather_to_host(jnp.argmax(x, axis=-1).astype(jnp.int32))
    return colorize(labels, x.shape[-1])
  return image_utils.to_uint8(sharding.gather_to_host(x))
