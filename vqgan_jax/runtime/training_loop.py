"""The loop every trainer runs: sharded state with auto-resume, logging, images, evaluation,
non-finite guard, checkpoints and preemption. Trainers supply only their state and step.

A trainer's state must have `step`, `nonfinite_streak` and `skipped_steps` fields (updated by
`nonfinite.guarded_update`) and its step must return metrics with a `nonfinite_streak` entry
(see `vqgan_jax.tokenizer.train` and `vqgan_jax.prior.train`).
"""
from __future__ import annotations

import collections
import logging
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np
from clu import periodic_actions
from jax.sharding import Mesh

from vqgan_jax.data import input_pipeline
from vqgan_jax.runtime import checkpoints, memory_plan, metric_writer, nonfinite, preemption
from vqgan_jax.runtime import sharding, storage


def create_or_restore(init_fn: Callable[[jax.Array], Any], config: ml_collections.ConfigDict,
                      workdir: str, mesh: Mesh, *,
                      init_from: Callable[[Any, Any], Any] | None = None):
  """(checkpointer, state, state_shardings, data position): the latest checkpoint of WORKDIR,
  else `init_from(state, abstract_state)` (fine-tuning), else a fresh state, created sharded.

  A resume restores straight into the sharded target: no fresh state is built beside it. A
  state that cannot fit one device (`memory_plan.check_state_fits`) is an error before either.
  """
  rng = jax.random.PRNGKey(config.seed)
  abstract_state, shardings = sharding.abstract_sharded_state(init_fn, rng, mesh,
                                                              config.param_sharding)
  memory_plan.check_state_fits(abstract_state, mesh, config.param_sharding,
                               memory_plan.device_memory_limit(config))
  checkpointer = checkpoints.Checkpointer(
      workdir, every_steps=config.checkpoint_every_steps, keep=config.keep_checkpoints)
  if checkpointer.latest_step() is not None:
    logging.info("Resuming from %s, step %d.", workdir, checkpointer.latest_step())
    state, position = checkpointer.restore(abstract_state)
    return checkpointer, state, shardings, position
  state = sharding.materialize_state(init_fn, rng, shardings)
  if init_from is not None:
    state = init_from(state, abstract_state)
  return checkpointer, state, shardings, 0


def jit_step(step_fn: Callable[..., Any], state_shardings: Any, mesh: Mesh,
             num_constants: int = 1) -> Callable[..., Any]:
  """`step_fn(state, batch, *constants) -> (state, metrics)` jitted for the loop.

  The state is donated and its shardings are pinned on both sides, so the output state feeds
  the next call (and an AOT-compiled one) unchanged; the batch is split over the data axis, the
  constants (frozen weights) and the metrics are replicated.
  """
  replicated = sharding.replicated(mesh)
  return jax.jit(
      step_fn,
      in_shardings=(state_shardings, sharding.batch_sharding(mesh)) + (replicated,) * num_constants,
      out_shardings=(state_shardings, replicated),
      donate_argnums=(0,))


# The non-finite guard reads the streak counter of the step this many steps back, so the host
# never waits for the step it just dispatched.
GUARD_LAG_STEPS = 2
# Global batches assembled on the devices ahead of the step that consumes them.
PREFETCH_BATCHES = 2


def prefetch_to_mesh(batches: Iterator[dict[str, np.ndarray]], mesh: Mesh,
                     size: int = PREFETCH_BATCHES) -> Iterator[tuple[dict[str, jax.Array], int]]:
  """(global batch on the mesh, data position after it) for each host batch, `size` ahead:
  the host-to-device copies of the next batches overlap the running step."""
  queue = collections.deque()

  def enqueue() -> None:
    batch = next(batches)
    queue.append((sharding.global_batch(batch, mesh), int(batch["_position"])))

  for _ in range(size):
    enqueue()
  while True:
    ready = queue.popleft()
    enqueue()
    yield ready


def run(config: ml_collections.ConfigDict, workdir: str, *, mesh, state, step_fn, train_iter,
        checkpointer: checkpoints.Checkpointer,
        images_fn: Callable[[Any, int], dict[str, np.ndarray]] | None = None,
        eval_fn: Callable[[Any], dict[str, float]] | None = None) -> Any:
  """Trains from `state.step` to `config.num_train_steps`; returns the final state.

  Checkpoints every `checkpoint_every_steps`, at the end and on SIGTERM; the run stops after
  `max_nonfinite_steps` non-finite steps in a row (the last good checkpoint is kept).

  Args:
    config: the trainer config (cadences, `num_train_steps`, `max_nonfinite_steps`, ...).
    workdir: where TensorBoard events and WORKDIR/images/<name>_<step>.png go.
    mesh: the device mesh the global batches are assembled on.
    state: the (sharded) state to start from; its `step` says where the run is.
    step_fn: the jitted step, `(state, global_batch) -> (state, metrics)`.
    train_iter: this host's batches (with `_position`, the data position to checkpoint).
    checkpointer: the workdir's `checkpoints.Checkpointer`.
    images_fn: every `image_every_steps`, `(state, step) -> {name: uint8 image}` for
      TensorBoard and PNGs; None: no images.
    eval_fn: every `eval_every_steps` and at the end (unless it is -1), `state -> scalars`;
      None: no evaluation.
  """
  writer = metric_writer.create_writer(workdir)
  step = int(jax.device_get(state.step))
  if step == 0:
    writer.write_hparams({k: str(v) for k, v in config.to_dict().items()})
  hooks = [periodic_actions.ReportProgress(num_train_steps=config.num_train_steps, writer=writer)]
  if jax.process_index() == 0 and config.profile_first_step >= 0:
    hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=3,
                                          first_profile=config.profile_first_step))
  watcher = preemption.PreemptionWatcher(checkpointer)
  buffer, in_flight, position = [], collections.deque(), None
  batches = prefetch_to_mesh(train_iter, mesh)
  try:
    while step < config.num_train_steps:
      batch, position = next(batches)
      # The mesh in context lets per-device code (the chunked code search) find its axis;
      # the guard: batch and constants are already on the devices.
      with jax.profiler.StepTraceAnnotation("train", step_num=step), jax.set_mesh(mesh), (
          jax.transfer_guard("disallow")):
        state, metrics = step_fn(state, batch)
      step += 1
      in_flight.append((step, metrics))
      if len(in_flight) > GUARD_LAG_STEPS:  # A step that has finished by now: no stall.
        nonfinite.check_finite_streak(in_flight[0][1], config.max_nonfinite_steps,
                                      in_flight.popleft()[0])
      buffer.append(metrics)
      for hook in hooks:
        hook(step)
      last = step == config.num_train_steps
      if step % config.log_every_steps == 0 or last:
        scalars = metric_writer.mean_metrics(buffer)
        scalars["data/skipped_files"] = float(input_pipeline.num_skipped_files())
        writer.write_scalars(step, scalars)
        buffer = []
      if images_fn is not None and config.image_every_steps > 0 and (
          step % config.image_every_steps == 0 or last):
        pictures = images_fn(state, step)
        writer.write_images(step, {k: v[None] for k, v in pictures.items()})
        if jax.process_index() == 0:
          for name, picture in pictures.items():
            storage.save_png(storage.join(workdir, "images", f"{name}_{step:08d}.png"), picture)
      stop = watcher.should_stop(step)
      if checkpointer.should_save(step) or last or stop:
        streak = int(jax.device_get(metrics["nonfinite_streak"]))
        nonfinite.check_finite_streak(metrics, config.max_nonfinite_steps, step)
        if streak and not (last or stop):
          # Keep the last checkpoint written from a healthy step rather than rotating it out.
          logging.warning("Step %d: skipping the periodic checkpoint, the last %d steps were "
                          "non-finite.", step, streak)
        else:
          checkpointer.save(step, state, position, force=last or stop)
      # After the checkpoint: an eval that fails (a bad eval file, a crash) loses no steps.
      if eval_fn is not None and config.eval_every_steps >= 0 and (
          (config.eval_every_steps > 0 and step % config.eval_every_steps == 0) or last):
        writer.write_scalars(step, eval_fn(state))
      if stop:
        logging.warning("Preempted: checkpoint for step %d written, exiting cleanly.", step)
        break
    for done_step, done_metrics in in_flight:
      nonfinite.check_finite_streak(done_metrics, config.max_nonfinite_steps, done_step)
  finally:
    checkpointer.close()
    writer.flush()
    watcher.close()
  return state
