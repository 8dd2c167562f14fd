"""Host memory during restores: hand the freed staging buffers back to the OS (glibc only).

A restore reads each array through TensorStore's staging buffers (a few MiB each) and frees
them. glibc's malloc raises its mmap threshold dynamically once such a buffer is freed (up to
32 MiB), so the following buffers come from the heap and stay resident after `free`: measured
with `python -m vqgan_jax.restore_memory` on `configs/imagenet.py` (float32), that kept the
peak at 1.5-1.9x the restored bytes. Inside `freed_memory_returned()` buffers above 1 MiB are
mmapped (returned on `free`); on exit the threshold is pinned where glibc's dynamic rule tops
out, so a training step allocates from the heap as it would anyway. A user's own
`MALLOC_MMAP_THRESHOLD_` wins; non-glibc platforms are left as they are. Hand-written because no
library wraps `mallopt`.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
RESTORE_MMAP_THRESHOLD = 1 << 20
STEADY_MMAP_THRESHOLD = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit.


def _glibc() -> ctypes.CDLL | None:
  try:
    libc = ctypes.CDLL(None)
    libc.gnu_get_libc_version  # pylint: disable=pointless-statement
    return libc
  except (OSError, AttributeError):
    return None


def _set_thresholds(libc: ctypes.CDLL, mmap_threshold: int) -> bool:
  # glibc ties the trim threshold to twice the mmap threshold while its rule is dynamic.
  return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
              and libc.mallopt(_M_TRIM_THRESHOLD, 2 * mmap_threshold))


def applies() -> bool:
  """Whether `freed_memory_returned` changes anything in this process."""
  return _glibc() is not None and "MALLOC_MMAP_THRESHOLD_" not in os.environ


@contextlib.contextmanager
def freed_memory_returned() -> Iterator[bool]:
  """Within the block, buffers over 1 MiB are returned to the OS when freed; yields whether
  that was applied."""
  libc = _glibc() if applies() else None
  applied = libc is not None and _set_thresholds(libc, RESTORE_MMAP_THRESHOLD)
  try:
    yield applied
  finally:
    if applied:
      libc.malloc_trim(0)
      _set_thresholds(libc, STEADY_MMAP_THRESHOLD)
