"""The loop every trainer runs: sharded state with auto-resume, logging, images, evaluation,
non-finite guard, checkpoints and preemption. Trainers supply only their state and step.

A trainer's state must have `step` and `nonfinite_streak` fields and its step must return
metrics with a `nonfinite_streak` entry (see `vqgan_jax.train` for the tokenizer).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np
from clu import periodic_actions

from vqgan_jax import checkpoints, input_pipeline, sharding, trainer_lib


def create_or_restore(init_fn: Callable[[jax.Array], Any], config: ml_collections.ConfigDict,
                      workdir: str, mesh, *, init_from: Callable[[Any, Any], Any] | None = None):
  """(checkpointer, state, state_shardings, data position): the latest checkpoint of WORKDIR,
  else `init_from(state, shardings)` (fine-tuning), else a fresh state, created sharded."""
  checkpointer = checkpoints.Checkpointer(
      workdir, every_steps=config.checkpoint_every_steps, keep=config.keep_checkpoints)
  state, abstract_state, shardings = trainer_lib.create_sharded_state(
      init_fn, jax.random.PRNGKey(config.seed), mesh, config.param_sharding)
  position = 0
  if checkpointer.latest_step() is not None:
    logging.info("Resuming from %s, step %d.", workdir, checkpointer.latest_step())
    state, position = checkpointer.restore(abstract_state)
  elif init_from is not None:
    state = init_from(state, shardings)
  return checkpointer, state, shardings, position


def train_iterator(config: ml_collections.ConfigDict, position: int) -> Iterator[dict]:
  """This host's share of the global batch, continuing at `position`."""
  return input_pipeline.create_train_iterator(
      config, local_batch_size=config.batch_size // jax.process_count(),
      process_index=jax.process_index(), process_count=jax.process_count(),
      start_position=position)


def run(config: ml_collections.ConfigDict, workdir: str, *, mesh, state, step_fn, train_iter,
        checkpointer: checkpoints.Checkpointer,
        images_fn: Callable[[Any, int], dict[str, np.ndarray]] | None = None,
        eval_fn: Callable[[Any], dict[str, float]] | None = None) -> Any:
  """Trains from `state.step` to `config.num_train_steps`; returns the final state.

  `step_fn(state, global_batch) -> (state, metrics)` is the jitted step. Every
  `log_every_steps` the metrics are averaged and written; every `image_every_steps`
  `images_fn(state, step)` returns {name: uint8 image}, written to TensorBoard and
  WORKDIR/images/<name>_<step>.png; every `eval_every_steps` (and at the end, unless it is -1)
  `eval_fn(state)` returns scalars. Checkpoints every `checkpoint_every_steps`, at the end and
  on SIGTERM; the run stops after `max_nonfinite_steps` non-finite steps in a row.
  """
  writer = trainer_lib.create_writer(workdir)
  step = int(jax.device_get(state.step))
  if step == 0:
    writer.write_hparams({k: str(v) for k, v in config.to_dict().items()})
  hooks = [periodic_actions.ReportProgress(num_train_steps=config.num_train_steps, writer=writer)]
  if jax.process_index() == 0 and config.profile_first_step >= 0:
    hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=3,
                                          first_profile=config.profile_first_step))
  preemption = trainer_lib.PreemptionWatcher(checkpointer)
  buffer, previous_metrics, position = [], None, None
  try:
    while step < config.num_train_steps:
      batch = next(train_iter)
      position = int(batch["_position"])
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, metrics = step_fn(state, sharding.global_batch(batch, mesh))
      step += 1
      # The guard reads the previous step's counter, so dispatch is never blocked.
      if previous_metrics is not None:
        trainer_lib.check_finite_streak(previous_metrics, config.max_nonfinite_steps, step - 1)
      previous_metrics = metrics
      buffer.append(metrics)
      for hook in hooks:
        hook(step)
      last = step == config.num_train_steps
      if step % config.log_every_steps == 0 or last:
        scalars = trainer_lib.mean_metrics(buffer)
        scalars["data/skipped_files"] = float(input_pipeline.num_skipped_files())
        writer.write_scalars(step, scalars)
        buffer = []
      if images_fn is not None and config.image_every_steps > 0 and (
          step % config.image_every_steps == 0 or last):
        images = images_fn(state, step)
        writer.write_images(step, {k: v[None] for k, v in images.items()})
        if jax.process_index() == 0:
          for name, image in images.items():
            trainer_lib.save_png(os.path.join(workdir, "images", f"{name}_{step:08d}.png"), image)
      if eval_fn is not None and config.eval_every_steps >= 0 and (
          (config.eval_every_steps > 0 and step % config.eval_every_steps == 0) or last):
        writer.write_scalars(step, eval_fn(state))
      stop = preemption.should_stop(step)
      if checkpointer.should_save(step) or last or stop:
        streak = int(jax.device_get(metrics["nonfinite_streak"]))
        trainer_lib.check_finite_streak(metrics, config.max_nonfinite_steps, step)
        if streak and not (last or stop):
          # Keep the last checkpoint written from a healthy step rather than rotating it out.
          logging.warning("Step %d: skipping the periodic checkpoint, the last %d steps were "
                          "non-finite.", step, streak)
        else:
          checkpointer.save(step, state, position, force=last or stop)
      if stop:
        logging.warning("Preempted: checkpoint for step %d written, exiting cleanly.", step)
        break
    if previous_metrics is not None:
      trainer_lib.check_finite_streak(previous_metrics, config.max_nonfinite_steps, step)
  finally:
    checkpointer.close()
    writer.flush()
    preemption.close()
  return state
