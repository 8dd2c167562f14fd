"""Conditions stored beside a folder dataset's images, found and checked before training starts.

For an image `FOLDER/<rel>/<name>.<ext>` (any split or class subfolder):
  segmentation  `SEGMENTATION_FOLDER/<rel>/<name>.png`: a single-channel (L) or palette (P)
                PNG of class ids (palette PNGs keep their indices, as VOC/ADE20k ship them),
                the image's size; ids must lie in [0, config.data.num_segmentation_classes).
  sketch        `SKETCH_FOLDER/<rel>/<name>.png` (or .jpg): a line drawing, the image's size.
  caption       `FOLDER/<rel>/<name>.txt` beside the image (the web-dataset layout), UTF-8,
                not empty.
A missing file or an empty caption is an error naming the file, raised before anything
compiles; a map of the wrong size or with an unknown id is an error naming it when it is read
(`PROBLEMS`: the pipeline flags the example and the host raises).
"""
from __future__ import annotations

import io
import os

import numpy as np

# `_problem` codes of an example, and what they mean.
OK, WRONG_SIZE, UNKNOWN_ID, UNREADABLE, EMPTY_CAPTION = 0, 1, 2, 3, 4
PROBLEMS = {WRONG_SIZE: "its condition map has a different size than the image",
            UNKNOWN_ID: "its label map holds a class id >= config.data.num_segmentation_classes",
            UNREADABLE: "its label map is not a readable single-channel or palette PNG",
            EMPTY_CAPTION: "its caption is empty"}
MAP_EXTENSIONS = {"segmentation": (".png",), "sketch": (".png", ".jpg", ".jpeg")}


def companion_path(image_path: str, root: str, folder: str, kind: str) -> str:
  """Where the `kind` map of `image_path` (under dataset `root`) lives in `folder`; the first
  existing extension, else the first one (for the error message)."""
  stem = os.path.splitext(os.path.relpath(image_path, root))[0]
  candidates = [os.path.join(folder, stem + ext) for ext in MAP_EXTENSIONS[kind]]
  return next((c for c in candidates if os.path.exists(c)), candidates[0])


def caption_path(image_path: str) -> str:
  return os.path.splitext(image_path)[0] + ".txt"


def find_maps(image_paths, root: str, folder: str, kind: str, setting: str) -> list[str]:
  """The `kind` map path of every image; ValueError naming the first missing one."""
  if not folder:
    raise ValueError(f"config.conditioning/modality {kind!r} with config.data.source='folder' "
                     f"needs --config.data.{setting}=DIR (a folder mirroring "
                     f"config.data.folder with one .png per image).")
  paths = [companion_path(p, root, folder, kind) for p in image_paths]
  missing = [(image, path) for image, path in zip(image_paths, paths) if not os.path.exists(path)]
  if missing:
    raise ValueError(f"No {kind} map for image {missing[0][0]}: expected {missing[0][1]} "
                     f"({len(missing)} of {len(paths)} images have none).")
  return paths


def read_captions(image_paths) -> list[str]:
  """The caption beside every image; ValueError naming a missing or empty caption file."""
  captions = []
  for image in image_paths:
    path = caption_path(image)
    if not os.path.exists(path):
      raise ValueError(f"No caption for image {image}: expected {path} (conditioning 'text' "
                       "reads a .txt beside each image).")
    with open(path, encoding="utf-8") as f:
      caption = " ".join(f.read().split())
    if not caption:
      raise ValueError(f"The caption file {path} is empty; write the image's caption in it or "
                       "remove the image.")
    captions.append(caption)
  return captions


def decode_label_map(data: bytes) -> tuple[np.ndarray, int]:
  """(uint8 (h, w, 1) class ids, problem code) of PNG bytes; ids of a palette PNG are its
  indices. Never raises: an unreadable file returns UNREADABLE with a 1x1 map."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(io.BytesIO(data)) as image:
      if image.mode not in ("L", "P"):
        return np.zeros((1, 1, 1), np.uint8), UNREADABLE
      ids = np.asarray(image, np.uint8)
  except (OSError, ValueError, SyntaxError):
    return np.zeros((1, 1, 1), np.uint8), UNREADABLE
  return ids[:, :, None], OK
