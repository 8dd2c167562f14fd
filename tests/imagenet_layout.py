"""A manual-download folder in the real ILSVRC2012 layout, from the embedded photos.

`ILSVRC2012_img_train.tar` holds one tar per class (`n01440764.tar`, ...) of
`<synset>_<k>.JPEG` files, `ILSVRC2012_img_val.tar` holds `ILSVRC2012_val_<8 digits>.JPEG`
files, whose labels TFDS's `imagenet2012` builder takes from its own validation_labels.txt in
file-name order. Each JPEG is a crop of a real photo at a random size and aspect ratio.
"""
import io
import pathlib
import tarfile

import numpy as np
import PIL.Image

from vqgan_jax.data import embedded

CLASSES = ("n01440764", "n01443537", "n01484850", "n01491361")  # labels.txt's first four.
TRAIN_PER_CLASS = 10
NUM_VAL = 32


def _jpegs(photos, n: int, rng: np.random.Generator) -> list[bytes]:
  out = []
  for _ in range(n):
    photo = photos[rng.integers(len(photos))]
    height, width = rng.integers(40, 72), rng.integers(40, 72)
    top = rng.integers(photo.shape[0] - height)
    left = rng.integers(photo.shape[1] - width)
    buffer = io.BytesIO()
    PIL.Image.fromarray(photo[top:top + height, left:left + width]).save(
        buffer, format="JPEG", quality=90)
    out.append(buffer.getvalue())
  return out


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def write_manual_dir(root: pathlib.Path) -> pathlib.Path:
  """Writes the two tars under `root`; returns `root`."""
  rng = np.random.default_rng(0)
  photos = embedded.load_photos()
  train_photos = [photos[i] for i in embedded.split_indices("train")]
  eval_photos = [photos[i] for i in embedded.split_indices("eval")]
  root.mkdir(parents=True, exist_ok=True)
  with tarfile.open(root / "ILSVRC2012_img_train.tar", "w") as train:
    for synset in CLASSES:
      class_tar = io.BytesIO()
      with tarfile.open(fileobj=class_tar, mode="w") as inner:
        for k, data in enumerate(_jpegs(train_photos, TRAIN_PER_CLASS, rng)):
          _add(inner, f"{synset}_{k + 1}.JPEG", data)
      _add(train, f"{synset}.tar", class_tar.getvalue())
  with tarfile.open(root / "ILSVRC2012_img_val.tar", "w") as val:
    for k, data in enumerate(_jpegs(eval_photos, NUM_VAL, rng)):
      _add(val, f"ILSVRC2012_val_{k + 1:08d}.JPEG", data)
  return root
