"""Every file a job writes or reads outside Orbax goes through here, so a workdir can be local or
`gs://...` (any filesystem etils.epath reaches: TF's gfile on a TPU VM, fsspec/gcsfs elsewhere).

Paths are plain strings; `join` keeps `gs://` URLs intact. Writes of whole files are atomic: a
local file is written beside its target and renamed; an object store replaces an object in one
upload, so a reader never sees half a file either way.
"""
from __future__ import annotations

import io
import json
import os
import posixpath
import uuid
from typing import Any

from etils import epath
import numpy as np


def is_remote(path: str) -> bool:
  """True for URLs such as gs://bucket/dir (anything with a scheme)."""
  return "://" in str(path)


def join(base: str, *parts: str) -> str:
  """`base/part/...` for local paths and URLs alike."""
  base = str(base)
  if is_remote(base):
    return posixpath.join(base, *parts)
  return os.path.join(base, *parts)


def absolute(path: str) -> str:
  """An absolute local path, or the URL unchanged."""
  return str(path) if is_remote(path) else os.path.abspath(path)


def exists(path: str) -> bool:
  return epath.Path(path).exists()


def makedirs(path: str) -> None:
  epath.Path(path).mkdir(parents=True, exist_ok=True)


def write_bytes(path: str, data: bytes) -> None:
  """Writes `data` as the whole file at `path` (parent folders created), atomically."""
  target = epath.Path(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(path):
    target.write_bytes(data)
    return
  tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
  tmp.write_bytes(data)
  os.replace(tmp, target)


def read_bytes(path: str) -> bytes:
  return epath.Path(path).read_bytes()


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def read_text(path: str) -> str:
  return read_bytes(path).decode("utf-8")


def write_json(path: str, value: Any, **kwargs) -> None:
  write_text(path, json.dumps(value, **kwargs))


def read_json(path: str) -> Any:
  return json.loads(read_text(path))


def save_png(path: str, image_uint8: np.ndarray) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(image_uint8).save(buffer, format="PNG")
  write_bytes(path, buffer.getvalue())


def save_figure(path: str, figure) -> None:
  """A matplotlib figure as PNG."""
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png")
  write_bytes(path, buffer.getvalue())


def save_npz(path: str, **arrays: np.ndarray) -> None:
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  write_bytes(path, buffer.getvalue())


def load_npz(path: str) -> dict[str, np.ndarray]:
  with np.load(io.BytesIO(read_bytes(path)), allow_pickle=False) as data:
    return {k: data[k] for k in data.files}


def glob(pattern_dir: str, pattern: str) -> list[str]:
  """Sorted paths in `pattern_dir` matching the glob `pattern`."""
  return sorted(str(p) for p in epath.Path(pattern_dir).glob(pattern))
