"""Orbax checkpoints of a workdir: `WORKDIR/checkpoints/<step>/{state,data}` and `WORKDIR/config.json`.

Orbax writes each checkpoint into a temporary directory and renames it only once every host has
finished, so a crash mid-save leaves the previous checkpoint as the latest one; stale temporary
directories are removed on the next start. The `state` item is the training state pytree
(generator `params`, discriminator, optimizer states, ...); the `data` item records, per process,
how many source examples the input pipeline had consumed, so a resumed run continues the exact
same data sequence.
"""
from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from vqgan_jax.runtime import host_memory, storage

CONFIG_FILE = "config.json"


def checkpoint_dir(workdir: str) -> str:
  return storage.join(storage.absolute(workdir), "checkpoints")


def _locally_finite(tree: Any) -> bool:
  """Every floating-point value this host holds (its replica-0 shards) is finite."""
  for leaf in jax.tree.leaves(tree):
    if not jnp.issubdtype(leaf.dtype, jnp.inexact):
      continue
    shards = [s.data for s in leaf.addressable_shards if s.replica_id == 0] if isinstance(
        leaf, jax.Array) else [leaf]
    if not all(np.isfinite(np.asarray(shard)).all() for shard in shards):
      return False
  return True


def is_finite(tree: Any) -> bool:
  """True when every floating-point leaf of the tree is finite, on every host.

  Read on the host shard by shard: a jitted reduction over a whole training state (hundreds of
  leaves) took 26 s to compile on 8 CPU devices, at every process's first save.
  """
  finite = _locally_finite(tree)
  if jax.process_count() > 1:
    finite = bool(np.all(multihost_utils.process_allgather(np.asarray(finite))))
  return finite


def _state_handler() -> ocp.PyTreeCheckpointHandler:
  """The handler of the `state` item (the on-disk format of Orbax's StandardCheckpointHandler).

  On CPU, arrays are saved without Orbax's replica-parallel slicing: it splits every replicated
  array over its replicas with a small program per shape, which on forced CPU devices made the
  first save of a process take 15-56 s for 8 MB (0.4 s without). Accelerators keep Orbax's
  defaults, where spreading the writes of replicated arrays over the hosts is the point.
  """
  if jax.default_backend() != "cpu":
    return ocp.PyTreeCheckpointHandler()
  handlers = ocp.type_handlers
  scalar = handlers.ScalarHandler()
  registry = handlers.create_type_handler_registry(
      (int, scalar), (float, scalar), (bytes, scalar), (np.number, scalar),
      (np.ndarray, handlers.NumpyHandler()),
      (jax.Array, handlers.ArrayHandler(use_replica_parallel=False)),
      (str, handlers.StringHandler()))
  return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


def _restore_args(target: Any) -> ocp.args.PyTreeRestore:
  return ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target))


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
        checkpoint_dir(workdir), options=options,
        item_handlers={"state": _state_handler(), "data": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, int]:
    """Restores into `abstract_state` (ShapeDtypeStructs with shardings) and this process's
    input-pipeline position."""
    step = self.latest_step() if step is None else step
    with host_memory.freed_memory_returned():
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=_restore_args(abstract_state), data=ocp.args.JsonRestore()))
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
        state=ocp.args.PyTreeSave(state), data=ocp.args.JsonSave(data)), force=True)

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


def _read_only_manager(workdir: str) -> ocp.CheckpointManager:
  # The PyTree handler can restore a subset of the state.
  return ocp.CheckpointManager(
      checkpoint_dir(workdir),
      options=ocp.CheckpointManagerOptions(read_only=True, create=False),
      item_handlers={"state": _state_handler(), "data": ocp.JsonCheckpointHandler()})


def _resolve_step(manager: ocp.CheckpointManager, workdir: str, step: int | None) -> int:
  latest = manager.latest_step() if step is None else step
  if latest is None:
    raise FileNotFoundError(
        f"No checkpoint under {checkpoint_dir(workdir)}: train one with "
        "`python -m vqgan_jax.main --config=... --workdir=...` or convert one with "
        "`python -m vqgan_jax.tokenizer.convert_taming`.")
  if latest not in manager.all_steps():
    raise FileNotFoundError(
        f"No checkpoint for step {latest} under {checkpoint_dir(workdir)}; "
        f"available steps: {list(manager.all_steps())}.")
  return latest


def _state_metadata(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  metadata = manager.item_metadata(step)["state"]
  return dict(getattr(metadata, "tree", metadata))


def state_metadata(workdir: str, step: int | None = None) -> tuple[dict[str, Any], int]:
  """(the `state` tree of a checkpoint as array metadata (shape, dtype), its step); nothing is
  read but the metadata. Fields saved empty (e.g. `ema_params` without EMA) are left out."""
  manager = _read_only_manager(workdir)
  try:
    step = _resolve_step(manager, workdir, step)
    tree = _state_metadata(manager, step)
  finally:
    manager.close()
  return {k: v for k, v in tree.items() if jax.tree.leaves(v)}, step


def restore_into(workdir: str, target: dict[str, Any], step: int | None = None
                 ) -> tuple[dict[str, Any], int]:
  """Restores the top-level fields named by `target` (trees of ShapeDtypeStructs carrying
  shardings) straight into those shardings: the checkpoint's other fields are never read, and
  nothing is staged on one device first."""
  manager = _read_only_manager(workdir)
  try:
    step = _resolve_step(manager, workdir, step)
    args = _restore_args(target)
    with host_memory.freed_memory_returned():
      restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=args.item, restore_args=args.restore_args, partial_restore=True)))
  finally:
    manager.close()
  return dict(restored["state"]), step


def restore_raw_state(workdir: str, step: int | None = None, *,
                      fields: tuple[str, ...] | None = None,
                      sharding: jax.sharding.Sharding | None = None
                      ) -> tuple[dict[str, Any], int]:
  """Restores a checkpoint's `state` item without a target from the trainer: the top-level
  `fields` asked for (all when None; absent or empty ones are left out), each array placed with
  `sharding`, by default on this process's first device whatever topology wrote the checkpoint
  (a pod slice's checkpoint loads on a laptop). Returns (state, step)."""
  metadata, step = state_metadata(workdir, step)
  if fields is not None:
    metadata = {k: v for k, v in metadata.items() if k in fields}
  if not metadata:
    return {}, step
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding), metadata)
  return restore_into(workdir, target, step)


def write_config(workdir: str, config_dict: dict[str, Any]) -> None:
  """Writes the run's config as JSON (process 0 only) so restores know the architecture."""
  if jax.process_index() != 0:
    return
  storage.write_json(storage.join(workdir, CONFIG_FILE), config_dict, indent=2, sort_keys=True,
                     default=list)


def read_config(workdir: str) -> dict[str, Any]:
  path = storage.join(workdir, CONFIG_FILE)
  if not storage.exists(path):
    raise FileNotFoundError(
        f"{path} not found: {workdir!r} is not a vqgan_jax workdir (it is written by training "
        "and by `python -m vqgan_jax.tokenizer.convert_taming`).")
  return storage.read_json(path)
