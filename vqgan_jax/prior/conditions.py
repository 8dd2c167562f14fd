"""What a prior is conditioned on (`config.conditioning`), in one place.

  none          a learned start token.
  class         the dataset's label (one embedding; the null label trains guidance).
  low_res       codes of a `cond_downsample`-times smaller copy of the image, by a tokenizer of
                such small images (taming's super-resolution; 'image' is the same, its old name).
  segmentation  codes of the label map by a segmentation tokenizer (taming's
                VQSegmentationModel: `configs/tiny_segmentation.py`); semantic image synthesis.
  edges         codes of the image's edge map (`vqgan_jax.data.derived.edge_map`) by a
                tokenizer trained on edge maps (`config.modality='edges'`).
  sketch        codes of a line drawing per image by a tokenizer trained on drawings.
  text          the caption's byte tokens (`vqgan_jax.data.text`) as the prefix; caption
                dropout (the empty, all-PAD caption) trains classifier-free guidance.
The four tokenized conditions are a prefix of condition codes (taming's cond stage). Those of
the same downsampling factor as the image tokenizer form a grid aligned with the image's codes,
so sampling from a larger condition slides the window over both (taming's landscapes). With
`condition_dropout` > 0 they get a null code too (one more condition token, after the
tokenizer's codes), so a map-conditioned prior is also an unconditional one and samples with
classifier-free guidance like the labels and captions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqgan_jax.data import text

CONDITIONINGS = ("none", "class", "low_res", "image", "segmentation", "edges", "sketch", "text")
TOKENIZED = ("low_res", "segmentation", "edges", "sketch")
# The tokenizer modality (`config.modality` of the condition tokenizer's run) each expects.
COND_MODALITY = {"low_res": "image", "segmentation": "segmentation", "edges": "edges",
                 "sketch": "sketch"}


def kind(config: ml_collections.ConfigDict) -> str:
  """`config.conditioning` with the alias resolved ('image' is 'low_res')."""
  return "low_res" if config.conditioning == "image" else config.conditioning


def is_tokenized(config: ml_collections.ConfigDict) -> bool:
  return kind(config) in TOKENIZED


def dropout_rate(config: ml_collections.ConfigDict) -> float:
  """Probability that a training example's condition is replaced by the null condition (the
  null label, the empty caption, an all-null-code map): what trains classifier-free guidance."""
  rates = {"class": config.label_dropout, "text": config.caption_dropout}
  rates.update({k: config.condition_dropout for k in TOKENIZED})
  return rates.get(kind(config), 0.0)


def has_null(config: ml_collections.ConfigDict) -> bool:
  """Whether the condition has a null value: labels and captions always, tokenized conditions
  when `condition_dropout` > 0 trains their null code."""
  return kind(config) in ("class", "text") or (is_tokenized(config) and dropout_rate(config) > 0)


def cond_input(config: ml_collections.ConfigDict, batch: dict[str, jax.Array],
               downsample: int) -> jax.Array:
  """float32 (B, h, w, C) the condition tokenizer encodes: the downsampled image, the one-hot
  label map, the edge map or the drawing."""
  if kind(config) == "low_res":
    if "low_res" in batch:  # Already small (a user's image to upscale).
      return batch["low_res"].astype(jnp.float32)
    images = batch["image"].astype(jnp.float32)
    b, h, w, c = images.shape
    return jax.image.resize(images, (b, h // downsample, w // downsample, c), "linear",
                            antialias=True)
  from vqgan_jax.tokenizer import modality  # pylint: disable=g-import-not-at-top
  return modality.model_input(batch, kind(config), config.data.num_segmentation_classes)


def caption_tokens(batch: dict[str, jax.Array]) -> jax.Array:
  return batch["caption"].astype(jnp.int32)


def drop_conditions(cond: jax.Array, null: jax.Array | int, rate: float,
                    rng: jax.Array) -> jax.Array:
  """Each example's condition (row of `cond`: a label, a caption, a map's codes) replaced by
  `null` with probability `rate`, the same draw for every token of the row."""
  dropped = jax.random.bernoulli(rng, rate, cond.shape[:1])
  return jnp.where(dropped.reshape((-1,) + (1,) * (cond.ndim - 1)), null, cond)


def drop_captions(tokens: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
  """Each row replaced by the empty caption (all PAD) with probability `rate`."""
  return drop_conditions(tokens, text.PAD, rate, rng)


def pictures(config: ml_collections.ConfigDict, batch: dict[str, np.ndarray]
             ) -> np.ndarray | None:
  """uint8 (B, H, W, 3) pictures of a batch's conditions for grids (None for labels/captions):
  the image a low-res copy is made of, the coloured label map, the edge map or the drawing."""
  from vqgan_jax.runtime import images as image_utils  # pylint: disable=g-import-not-at-top
  k = kind(config)
  if k == "low_res":  # The low-resolution copy, shown at the image's size.
    d = config.cond_downsample
    images = np.asarray(batch["image"], np.float32)
    b, h, w, c = images.shape
    small = images.reshape(b, h // d, d, w // d, d, c).mean(axis=(2, 4))
    return image_utils.to_uint8(small.repeat(d, 1).repeat(d, 2))
  if k == "segmentation":
    from vqgan_jax.tokenizer import modality  # pylint: disable=g-import-not-at-top
    return np.asarray(modality.colorize(batch["segmentation"],
                                        config.data.num_segmentation_classes))
  if k in ("edges", "sketch"):
    return image_utils.to_uint8(batch[k])
  return None
