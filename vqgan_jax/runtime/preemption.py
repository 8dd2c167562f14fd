"""Turns SIGTERM (TPU preemption, `kill`, SLURM's pre-emption signal) into 'save and exit 0'."""
from __future__ import annotations

import logging
import signal
import threading

import jax

from vqgan_jax.runtime import checkpoints


class PreemptionWatcher:
  """Says at which step boundary the loop must save and stop.

  Single process: a Python signal handler sets a flag. Multi-process: JAX's preemption sync
  point makes all hosts agree on the step at which to stop (a flag on one host alone would
  leave the others waiting in a collective).
  """

  def __init__(self, checkpointer: checkpoints.Checkpointer):
    self._checkpointer = checkpointer
    self._flag = threading.Event()
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint at the next step boundary.")
    self._flag.set()

  def should_stop(self, step: int) -> bool:
    return self._flag.is_set() or self._checkpointer.reached_preemption(step)

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
