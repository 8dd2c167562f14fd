"""Orbax checkpoints of a workdir: `WORKDIR/checkpoints/<step>/{state,data}` and `WORKDIR/config.json`.

Orbax writes each checkpoint into a temporary directory and renames it only once every host has
finished, so a crash mid-save leaves the previous checkpoint as the latest one; stale temporary
directories are removed on the next start. The `state` item is the training state pytree
(generator `params`, discriminator, optimizer states, ...); the `data` item records, per process,
how many source examples the input pipeline had consumed, so a resumed run continues the exact
same data sequence.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

CONFIG_FILE = "config.json"


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir) if "://" not in workdir else workdir, "checkpoints")


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def is_finite(tree: Any) -> bool:
  """True when every floating-point leaf of the tree is finite."""
  return bool(_all_finite(tree))


class Checkpointer:
  """Async Orbax checkpointing with exact data-position resume and a finiteness guard."""

  def __init__(self, workdir: str, *, every_steps: int, keep: int, read_only: bool = False):
    self._every_steps = max(1, every_steps)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=not read_only,
        read_only=read_only,
        cleanup_tmp_directories=not read_only,
        enable_async_checkpointing=not read_only,
    )
    self.manager = ocp.CheckpointManager(
        checkpoint_dir(workdir), options=options, item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, int]:
    """Restores into `abstract_state` (ShapeDtypeStructs with shardings) and this process's
    input-pipeline position."""
    step = self.latest_step() if step is None else step
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=ocp.args.JsonRestore()))
    positions = restored["data"]["positions"]
    if len(positions) != jax.process_count():
      raise ValueError(
          f"Checkpoint step {step} was written by {len(positions)} processes but this run has "
          f"{jax.process_count()}; the exact data sequence cannot be continued. Resume with "
          f"the same number of hosts, or start a new workdir with --config.init_from.")
    return restored["state"], int(positions[jax.process_index()])

  def should_save(self, step: int) -> bool:
    """Every `every_steps` steps (Orbax's own policy would also save the first step)."""
    return step % self._every_steps == 0

  def save(self, step: int, state: Any, data_position: int, *, force: bool = False) -> bool:
    """Starts an async save; refuses (and says so) when the state is not finite."""
    if not (force or self.should_save(step)):
      return False
    if not is_finite(state):
      logging.error("Step %d: the training state has non-finite values; NOT saving it. "
                    "The last good checkpoint is kept.", step)
      return False
    positions = multihost_utils.process_allgather(np.asarray(data_position, np.int64))
    data = {"positions": np.atleast_1d(positions).tolist()}
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data)), force=True)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

  def reached_preemption(self, step: int) -> bool:
    """JAX's multi-host preemption sync point (all hosts agree on the step to stop at)."""
    if jax.process_count() == 1:
      return False
    return self.manager.reached_preemption(step)


def restore_raw_state(workdir: str, step: int | None = None) -> tuple[dict[str, Any], int]:
  """Restores a checkpoint's `state` item as nested dicts of numpy arrays (no target needed)."""
  manager = ocp.CheckpointManager(
      checkpoint_dir(workdir),
      options=ocp.CheckpointManagerOptions(read_only=True, create=False),
      item_handlers={"state": ocp.StandardCheckpointHandler(),
                     "data": ocp.JsonCheckpointHandler()})
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(
        f"No checkpoint under {checkpoint_dir(workdir)}: train one with "
        "`python -m vqgan_jax.main --config=... --workdir=...` or convert one with "
        "`python -m vqgan_jax.tokenizer.convert_taming`.")
  if step not in manager.all_steps():
    raise FileNotFoundError(
        f"No checkpoint for step {step} under {checkpoint_dir(workdir)}; "
        f"available steps: {list(manager.all_steps())}.")
  # Restore onto this process's first device, whatever topology wrote the checkpoint (a pod
  # slice's checkpoint loads on a laptop).
  metadata = manager.item_metadata(step)["state"]
  metadata = getattr(metadata, "tree", metadata)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device), metadata)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target)))
  manager.close()
  # Host arrays: callers place them (a committed single-device array would clash with a mesh).
  return jax.device_get(restored["state"]), step


def write_config(workdir: str, config_dict: dict[str, Any]) -> None:
  """Writes the run's config as JSON (process 0 only) so restores know the architecture."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(config_dict, f, indent=2, sort_keys=True, default=list)
  os.replace(tmp, path)


def read_config(workdir: str) -> dict[str, Any]:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} not found: {workdir!r} is not a vqgan_jax workdir (it is written by training "
        "and by `python -m vqgan_jax.tokenizer.convert_taming`).")
  with open(path) as f:
    return json.load(f)
