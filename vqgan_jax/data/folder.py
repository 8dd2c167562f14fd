"""Finds the images and labels of a local folder dataset (no decoding; pure Python).

Layouts, tried in order:
  root/<train_split>/<class>/*, root/<eval_split>/<class>/*   (both split folders present)
  root/<class>/*                                              (eval files held out)
  root/*                                                      (flat, label 0; eval files held out)
A split folder may itself be flat. Labels index the sorted class folder names (the union over
both splits, so a class has the same label in each). Held-out eval files are the
`eval_fraction` of files (at least one, never all) whose relative paths hash lowest: the choice
does not depend on the seed and a file keeps its split when other files are added.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import zlib

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


@dataclasses.dataclass(frozen=True)
class FolderSplit:
  paths: tuple[str, ...]
  labels: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class FolderDataset:
  train: FolderSplit
  eval: FolderSplit
  class_names: tuple[str, ...]


def _list_images(root: str) -> list[str]:
  """Image paths under `root`, relative to it, sorted (recursive; hidden entries skipped)."""
  found = []
  for directory, subdirs, files in os.walk(root, followlinks=True):
    subdirs[:] = [d for d in subdirs if not d.startswith(".")]
    found.extend(os.path.relpath(os.path.join(directory, f), root) for f in files
                 if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
  return sorted(found)


def _class_of(relative_path: str) -> str:
  """The class folder of a path ('' for a file directly in the split root)."""
  parts = relative_path.split(os.sep)
  return parts[0] if len(parts) > 1 else ""


def _check_layout(root: str, relative_paths: list[str]) -> None:
  if not relative_paths:
    raise ValueError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found under {root!r}; point "
                     "--config.data.folder at a folder of images.")
  flat = {_class_of(p) == "" for p in relative_paths}
  if len(flat) > 1:
    raise ValueError(f"{root!r} holds images both directly and in subfolders; put every image "
                     "in a class subfolder, or all of them directly in the folder.")


def _split(root: str, relative_paths: list[str], classes: list[str]) -> FolderSplit:
  index = {name: i for i, name in enumerate(classes)}
  return FolderSplit(tuple(os.path.join(root, p) for p in relative_paths),
                     tuple(index.get(_class_of(p), 0) for p in relative_paths))


def _hold_out(relative_paths: list[str], fraction: float) -> tuple[list[str], list[str]]:
  num_eval = min(len(relative_paths) - 1, max(1, round(fraction * len(relative_paths))))
  by_hash = sorted(relative_paths, key=lambda p: (zlib.crc32(p.encode()), p))
  held_out = set(by_hash[:num_eval])
  return ([p for p in relative_paths if p not in held_out],
          [p for p in relative_paths if p in held_out])


@functools.lru_cache(maxsize=4)
def scan(root: str, train_split: str, eval_split: str, eval_fraction: float) -> FolderDataset:
  """The folder's train and eval files with labels; ValueError (saying what to fix) if unusable."""
  if not root:
    raise ValueError("config.data.source='folder' needs --config.data.folder=/path/to/images.")
  if "://" in root:
    raise ValueError(f"config.data.folder={root!r}: folder sources read local disk only; copy "
                     "the images to the host, or use a TFDS source whose "
                     "config.data.tfds_data_dir is in the bucket.")
  if not os.path.isdir(root):
    raise ValueError(f"config.data.folder={root!r} is not a directory; set "
                     "--config.data.folder to a folder of images.")
  split_roots = [os.path.join(root, s) for s in (train_split, eval_split)]
  if all(os.path.isdir(d) for d in split_roots):
    train_files, eval_files = (_list_images(d) for d in split_roots)
    for directory, files in zip(split_roots, (train_files, eval_files)):
      _check_layout(directory, files)
  else:
    files = _list_images(root)
    _check_layout(root, files)
    if len(files) < 2:
      raise ValueError(f"{root!r} holds a single image; a train and an eval split need two.")
    train_files, eval_files = _hold_out(files, eval_fraction)
    split_roots = [root, root]
  classes = sorted({_class_of(p) for p in train_files + eval_files} - {""})
  return FolderDataset(_split(split_roots[0], train_files, classes),
                       _split(split_roots[1], eval_files, classes), tuple(classes))
