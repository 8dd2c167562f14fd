"""The non-finite guard: a step with a NaN/Inf loss or gradient changes nothing, and too many in
a row stop the run with the last good checkpoint kept.

Inside the jitted step, `guarded_update` keeps the old value of every updated field when the
step was not finite and counts the streak; the loop reads that counter on the host with
`check_finite_streak`.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


class NonFiniteError(RuntimeError):
  """Raised after `max_nonfinite_steps` consecutive non-finite steps."""


def guarded_update(state: Any, finite: jax.Array, **updates: Any) -> Any:
  """`state` advanced one step: `updates` where `finite`, the old fields elsewhere.

  The state needs `step`, `nonfinite_streak` and `skipped_steps` fields; every other updated
  field is selected elementwise (`jnp.where`), so no Python branch sees a traced value.
  """
  kept = {name: jax.tree.map(lambda new, old: jnp.where(finite, new, old), value,
                             getattr(state, name))
          for name, value in updates.items()}
  streak = jnp.where(finite, 0, state.nonfinite_streak + 1).astype(jnp.int32)
  return state.replace(step=state.step + 1, nonfinite_streak=streak,
                       skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32), **kept)


def check_finite_streak(metrics: dict[str, jax.Array], max_nonfinite_steps: int, step: int) -> None:
  """Stops the run (keeping the last good checkpoint) after too many non-finite steps in a row."""
  streak = int(jax.device_get(metrics["nonfinite_streak"]))
  if streak >= max_nonfinite_steps:
    raise NonFiniteError(
        f"{streak} consecutive training steps (up to step {step}) had a non-finite loss or "
        f"gradient; each was skipped, and the run stops here (config.max_nonfinite_steps="
        f"{max_nonfinite_steps}). The last good checkpoint is kept. Lower the learning rate, "
        "enable --config.optimizer.grad_clip_norm, use float32, or check the data for NaNs.")
