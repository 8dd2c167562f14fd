"""`host_memory.freed_memory_returned`: buffers freed inside it leave the process; outside it
glibc keeps them (the cause of restores peaking at 1.5-1.9x the restored bytes)."""
import os
import subprocess
import sys
import textwrap

import pytest

from vqgan_jax.runtime import host_memory

pytestmark = pytest.mark.skipif(not host_memory.applies(), reason="needs glibc malloc")

# Frees 48 staging-sized buffers that were interleaved with small long-lived arrays (as
# TensorStore's staging buffers are with the restored arrays), after one 8 MiB free has raised
# glibc's dynamic mmap threshold; prints the resident MiB the frees gave back.
_FRAGMENT_AND_FREE = textwrap.dedent("""
    import contextlib, os, sys
    import numpy as np
    from vqgan_jax.runtime import host_memory

    def resident_mib():
      with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    np.ones(8 << 20, np.uint8)  # Freed at once: glibc raises its mmap threshold past 4 MiB.
    mode = sys.argv[1]
    if mode == "after":  # A restore came and went; what follows is a training step.
      with host_memory.freed_memory_returned():
        pass
    context = host_memory.freed_memory_returned() if mode == "inside" else contextlib.nullcontext()
    with context:
      kept, staging = [], []
      for _ in range(48):
        staging.append(np.ones(4 << 20, np.uint8))
        kept.append(np.ones(256 << 10, np.uint8))  # Lies above each buffer in the heap.
      before = resident_mib()
      del staging
      returned = before - resident_mib()
    print(returned)
""")


def _returned_mib(mode: str) -> float:
  env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
  out = subprocess.run([sys.executable, "-c", _FRAGMENT_AND_FREE, mode], env=env, check=True,
                       capture_output=True, text=True).stdout
  return float(out.split()[-1])


def test_freed_buffers_leave_the_process_only_inside_the_context():
  assert _returned_mib("inside") > 0.9 * 192  # 48 x 4 MiB.
  assert _returned_mib("plain") < 0.25 * 192  # glibc keeps them on the heap.
  # After the context glibc allocates as it did before (heap, reused by the next step).
  assert _returned_mib("after") < 0.25 * 192


def test_a_users_malloc_setting_wins(monkeypatch):
  monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
  assert not host_memory.applies()
  with host_memory.freed_memory_returned() as applied:
    assert not applied

  monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
  with host_memory.freed_memory_returned() as applied:
    assert applied
