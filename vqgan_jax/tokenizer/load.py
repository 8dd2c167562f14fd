"""A tokenizer workdir as a saved model: `load_tokenizer` for notebooks and other jobs, and
`save_tokenizer`, which writes one from variables (the taming converter, tests)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from vqgan_jax.runtime import checkpoints


def load_tokenizer(workdir: str, step: int | None = None, *, use_ema: bool = True,
                   dtype: Any = jnp.float32, sharding: jax.sharding.Sharding | None = None):
  """Returns `(model, variables)` of the tokenizer in WORKDIR (latest checkpoint unless `step`).

  Works for workdirs written by training and by `vqgan_jax.tokenizer.convert_taming`, local or
  gs://. With `use_ema` the EMA generator weights are used when the run kept them. Only those
  weights are read (not the optimizer, discriminator or the other copy), straight onto
  `sharding` (default: this process's first device).
  """
  model, variables, _ = restore_tokenizer(workdir, step, use_ema=use_ema, dtype=dtype,
                                          sharding=sharding)
  return model, variables


def restore_tokenizer(workdir: str, step: int | None = None, *, use_ema: bool = True,
                      dtype: Any = jnp.float32, sharding: jax.sharding.Sharding | None = None):
  """`load_tokenizer` that also returns the step of the restored checkpoint."""
  from vqgan_jax.models.autoencoder import VQModel  # pylint: disable=g-import-not-at-top
  config = checkpoints.read_config(workdir)
  model_kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config["model"].items()}
  model = VQModel(**model_kwargs, dtype=dtype)
  saved, step = checkpoints.state_metadata(workdir, step)
  field = "ema_params" if use_ema and "ema_params" in saved else "params"
  state, step = checkpoints.restore_raw_state(workdir, step, fields=(field,), sharding=sharding)
  return model, {"params": state[field]}, step


def save_tokenizer(workdir: str, variables: dict[str, Any], config_dict: dict[str, Any]) -> None:
  """Writes a tokenizer (e.g. a converted taming model) as step 0 of WORKDIR in the trainer's
  layout.

  `variables` is `{'params': ..., 'discriminator': {'params': ..., 'batch_stats': ...}}` (the
  discriminator is optional); it is stored as the state fields `params`, `disc_params` and
  `disc_batch_stats` so fine-tuning (`--config.init_from`) and evaluation read it like a
  trained checkpoint.
  """
  state = {"params": variables["params"]}
  if "discriminator" in variables:
    state["disc_params"] = variables["discriminator"]["params"]
    state["disc_batch_stats"] = variables["discriminator"].get("batch_stats", {})
  checkpoints.write_config(workdir, config_dict)
  checkpointer = checkpoints.Checkpointer(workdir, every_steps=1, keep=1)
  checkpointer.save(0, jax.tree.map(jnp.asarray, state), data_position=0, force=True)
  checkpointer.close()
