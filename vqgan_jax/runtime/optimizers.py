"""Learning-rate schedules and optimizers from a `config.optimizer` block (optax only)."""
from __future__ import annotations

from typing import Any, Callable

import jax
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
    if warmup_steps <= 0:  # The same values, without optax's zero-length warm-up warning.
      return optax.cosine_decay_schedule(learning_rate, max(num_train_steps, 1))
    return optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, warmup_steps, max(num_train_steps, warmup_steps + 1), end_value=0.0)
  raise ValueError(f"config.optimizer.schedule={opt.schedule!r}; use one of {SCHEDULES}.")


def matrices_only(params: Any) -> Any:
  """Weight-decay mask: weight matrices and kernels only (not biases, norms, embeddings or
  position tables)."""
  def decays(path, leaf):
    names = [str(getattr(p, "key", p)).lower() for p in path]
    return leaf.ndim >= 2 and not any("embed" in n or "pos" in n for n in names)
  return jax.tree_util.tree_map_with_path(decays, params)


def adam(schedule: optax.Schedule, opt: ml_collections.ConfigDict, *,
         decay_mask: Callable[[Any], Any] | None = None) -> optax.GradientTransformation:
  """Adam from `opt` (b1, b2, weight_decay, grad_clip_norm), with an optional global-norm clip.

  AdamW when `weight_decay > 0` (every parameter decays) or when a `decay_mask` is given (only
  the masked ones do; the prior's AdamW keeps its state layout even at weight_decay 0).
  """
  if opt.weight_decay > 0 or decay_mask is not None:
    base = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay,
                       mask=decay_mask)
  else:
    base = optax.adam(schedule, b1=opt.b1, b2=opt.b2)
  if opt.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), base)
  return base
