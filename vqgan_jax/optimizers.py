"""Learning-rate schedules and optimizers from a `config.optimizer` block (optax only)."""
from __future__ import annotations

import ml_collections
import optax

SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(learning_rate: float, opt: ml_collections.ConfigDict,
                           num_train_steps: int) -> optax.Schedule:
  """Linear warmup from 0 over `warmup_steps`, then constant or cosine decay to 0."""
  warmup_steps = int(opt.warmup_steps)
  if opt.schedule == "constant":
    if warmup_steps <= 0:
      return optax.constant_schedule(learning_rate)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, learning_rate, warmup_steps),
         optax.constant_schedule(learning_rate)], [warmup_steps])
  if opt.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, warmup_steps, max(num_train_steps, warmup_steps + 1), end_value=0.0)
  raise ValueError(f"config.optimizer.schedule={opt.schedule!r}; use one of {SCHEDULES}.")


def adam(schedule: optax.Schedule, opt: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam (taming: betas (0.5, 0.9)), AdamW when weight_decay > 0, optional global-norm clip."""
  if opt.weight_decay > 0:
    base = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay)
  else:
    base = optax.adam(schedule, b1=opt.b1, b2=opt.b2)
  if opt.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), base)
  return base
