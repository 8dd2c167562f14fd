"""Conditions a user gives `--mode=sample`: `config.sample.condition=PATH` (a label map, a
drawing, an image to translate or a small image to upscale) or `config.sample.prompt="..."`.

Each becomes a one-row batch of the feature the prior's conditioning reads (as the data
pipeline would deliver it), the image size the samples will have, and a picture of the condition
for `conditions.png`. Errors name the file and what to change.
"""
from __future__ import annotations

import dataclasses
import io
import logging

import ml_collections
import numpy as np

from vqgan_jax.data import condition_files, text
from vqgan_jax.prior import conditions
from vqgan_jax.runtime import storage


@dataclasses.dataclass
class UserCondition:
  batch: dict[str, np.ndarray]  # One row, keyed like a pipeline batch.
  image_hw: tuple[int, int]  # The size of the images sampled from it.
  picture: np.ndarray | None  # uint8 (H, W, 3) to show above the samples (None for captions).
  description: str


def read_label_map(path: str, num_classes: int) -> np.ndarray:
  """uint8 (h, w) class ids of a user's label map; ValueError naming the file if unreadable or
  an id is unknown."""
  ids, problem = condition_files.decode_label_map(storage.read_bytes(path))
  if problem == condition_files.OK and ids.max() >= num_classes:
    problem = condition_files.UNKNOWN_ID
  if problem != condition_files.OK:
    detail = (f" (max id {ids.max()}, {num_classes} classes)"
              if problem == condition_files.UNKNOWN_ID else "")
    raise ValueError(f"The segmentation map {path}: {condition_files.PROBLEMS[problem]}{detail}.")
  return ids[:, :, 0]


def _read_rgb(path: str) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(io.BytesIO(storage.read_bytes(path))) as image:
      return np.asarray(image.convert("RGB"), np.uint8)
  except (OSError, ValueError, SyntaxError) as e:
    raise ValueError(f"config.sample.condition={path} is not a readable image ({e}).") from e


def _model_range(image: np.ndarray) -> np.ndarray:
  return image.astype(np.float32) / 127.5 - 1.0


def load(config: ml_collections.ConfigDict) -> UserCondition:
  """The user's condition for `config.conditioning` (ValueError naming the file if unusable)."""
  s, kind = config.sample, conditions.kind(config)
  if kind == "text":
    if s.condition:
      raise ValueError("conditioning='text' samples from --config.sample.prompt, not "
                       "config.sample.condition.")
    if not s.prompt.strip():
      raise ValueError("config.sample.prompt is empty; give the caption to draw from.")
    prompt = " ".join(s.prompt.split())
    if len(prompt.encode("utf-8")) > config.data.caption_length:
      logging.warning("config.sample.prompt is %d bytes; the prior reads its first %d "
                      "(config.data.caption_length).", len(prompt.encode("utf-8")),
                      config.data.caption_length)
    tokens = text.encode(prompt, config.data.caption_length)
    from vqgan_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
    return UserCondition({"caption": tokens[None]},
                         input_pipeline.crop_shape(config.data.image_size), None,
                         f"prompt {s.prompt!r}")
  if s.prompt:
    raise ValueError(f"config.sample.prompt is for conditioning='text'; this prior is "
                     f"conditioned on {config.conditioning!r} (give --config.sample.condition).")
  if kind not in conditions.TOKENIZED:
    raise ValueError(f"config.sample.condition needs a prior conditioned on one of "
                     f"{conditions.TOKENIZED} or 'text', not {config.conditioning!r}.")
  path = s.condition
  if kind == "segmentation":
    ids = read_label_map(path, config.data.num_segmentation_classes)
    from vqgan_jax.tokenizer import modality  # pylint: disable=g-import-not-at-top
    picture = np.asarray(modality.colorize(ids[None], config.data.num_segmentation_classes))[0]
    return UserCondition({"segmentation": ids[None].astype(np.int32)}, ids.shape, picture,
                         f"label map {path}")
  image = _read_rgb(path)
  if kind == "sketch":
    return UserCondition({"sketch": _model_range(image)[None]}, image.shape[:2], image,
                         f"drawing {path}")
  if kind == "edges":
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from vqgan_jax.data import derived  # pylint: disable=g-import-not-at-top
    edges = derived.edge_map(tf.constant(image)).numpy()
    return UserCondition({"edges": _model_range(edges)[None]}, image.shape[:2], edges,
                         f"edges of {path}")
  d = config.cond_downsample  # low_res: the small image itself; samples are d times larger.
  return UserCondition({"low_res": _model_range(image)[None]},
                       (image.shape[0] * d, image.shape[1] * d), image.repeat(d, 0).repeat(d, 1),
                       f"low-resolution image {path}")
