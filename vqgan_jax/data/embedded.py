"""The embedded default dataset: real RGB photos bundled with scikit-image and scikit-learn.

It works right after `pip install`, with no network: only photos whose files lie inside the
wheels are used (scikit-image would fetch its other images with pooch). Grayscale photos
(camera, moon, coins, ...) are skipped rather than converted, so the tokenizer only learns real
colour statistics; `stereo_motorcycle` contributes its left view only (the right view is almost
the same picture). A photo's label is its index in `PHOTOS`.

`EVAL_PHOTOS` are held out whole, so evaluation crops never share pixels with training photos.
"""
from __future__ import annotations

import functools

import numpy as np

PHOTOS = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry",
          "motorcycle", "retina", "rocket", "china", "flower")
EVAL_PHOTOS = ("chelsea", "rocket")


def _load(name: str) -> np.ndarray:
  if name in ("china", "flower"):
    from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
    bundle = load_sample_images()
    return next(image for image, path in zip(bundle.images, bundle.filenames)
                if path.endswith(f"{name}.jpg"))
  import skimage.data  # pylint: disable=g-import-not-at-top
  if name == "motorcycle":
    return skimage.data.stereo_motorcycle()[0]
  return getattr(skimage.data, name)()


@functools.cache
def load_photos() -> tuple[np.ndarray, ...]:
  """All photos in `PHOTOS` order as read-only uint8 (h, w, 3) arrays (loaded once)."""
  photos = []
  for name in PHOTOS:
    photo = np.ascontiguousarray(_load(name), dtype=np.uint8)
    assert photo.ndim == 3 and photo.shape[2] == 3, (name, photo.shape)
    photo.setflags(write=False)
    photos.append(photo)
  return tuple(photos)


def split_indices(split: str) -> tuple[int, ...]:
  """Indices into `PHOTOS` of the 'train' or 'eval' photos."""
  if split not in ("train", "eval"):
    raise ValueError(f"Unknown embedded split {split!r}; use 'train' or 'eval'.")
  held_out = split == "eval"
  return tuple(i for i, name in enumerate(PHOTOS) if (name in EVAL_PHOTOS) == held_out)
