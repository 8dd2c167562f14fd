"""Restoring a tokenizer (trained or converted) from its workdir, for notebooks and other jobs."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from vqgan_jax import checkpoints


def load_tokenizer(workdir: str, step: int | None = None, *, use_ema: bool = True,
                   dtype: Any = jnp.float32):
  """Returns `(model, variables)` of the tokenizer in WORKDIR (latest checkpoint unless `step`).

  Works for workdirs written by training and by `vqgan_jax.convert_taming`. With `use_ema` the
  EMA generator weights are used when the run kept them.
  """
  model, variables, _ = restore_tokenizer(workdir, step, use_ema=use_ema, dtype=dtype)
  return model, variables


def restore_tokenizer(workdir: str, step: int | None = None, *, use_ema: bool = True,
                      dtype: Any = jnp.float32):
  """`load_tokenizer` that also returns the step of the restored checkpoint."""
  from vqgan_jax.models.autoencoder import VQModel  # pylint: disable=g-import-not-at-top
  config = checkpoints.read_config(workdir)
  model_kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config["model"].items()}
  model = VQModel(**model_kwargs, dtype=dtype)
  state, step = checkpoints.restore_raw_state(workdir, step)
  params = state["params"]
  if use_ema and state.get("ema_params"):
    params = state["ema_params"]
  return model, {"params": jax.tree.map(jnp.asarray, params)}, step
