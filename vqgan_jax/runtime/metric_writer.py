"""Where scalars and images go: TensorBoard and the console (clu metric writers)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from clu import metric_writers


def create_writer(logdir: str) -> metric_writers.MetricWriter:
  """TensorBoard + console on process 0, console only elsewhere."""
  return metric_writers.create_default_writer(
      logdir, just_logging=jax.process_index() > 0, asynchronous=True)


def mean_metrics(buffer: list[dict[str, jax.Array]]) -> dict[str, float]:
  """Averages per-step scalar metrics over the logging interval (one device-to-host copy)."""
  stacked = jax.device_get(jax.tree.map(lambda *xs: jnp.stack(xs), *buffer))
  return {k: float(np.mean(v)) for k, v in stacked.items()}
