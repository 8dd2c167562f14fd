"""The config fields every trainer has (tokenizer and prior), their defaults and their checks.

Each stage's `config.py` starts from `base_trainer_config()` and adds its own blocks; both run
`validate_trainer_config` before anything compiles. Configs are locked by
`ml_collections.config_flags`, so a misspelt `--config.KEY=VALUE` is an error, not a silently
ignored setting.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from vqgan_jax.data import input_pipeline
from vqgan_jax.runtime import sharding

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
POSITIVE_FIELDS = ("num_train_steps", "batch_size", "log_every_steps", "checkpoint_every_steps",
                   "keep_checkpoints", "max_nonfinite_steps")


def base_trainer_config() -> ml_collections.ConfigDict:
  """The fields of the shared training loop, with defaults."""
  config = ml_collections.ConfigDict()
  # Seeds parameters, data order and augmentation.
  config.seed = 0
  # Compute dtype of the networks: 'float32' or 'bfloat16' (parameters stay float32; the
  # quantizer, losses and metrics always run in float32).
  config.dtype = "float32"
  # Total optimizer steps (a resumed run continues up to this).
  config.num_train_steps = 100_000
  # Global batch size over all devices and hosts.
  config.batch_size = 8
  # Scalars to TensorBoard and the console.
  config.log_every_steps = 50
  # Async Orbax checkpoint cadence (the last step and a preempted step are always saved).
  config.checkpoint_every_steps = 1000
  # How many recent checkpoints to keep.
  config.keep_checkpoints = 3
  # Evaluation on `num_eval_images` held-out images (0: only at the end; -1: never).
  config.eval_every_steps = 5000
  # Images of the periodic evaluation (-1: the whole split; `--mode=eval` always uses all).
  config.num_eval_images = -1
  # Optional .npz of reference Inception statistics (`python -m vqgan_jax.metrics.fid_stats`)
  # for rFID / sample FID; empty: the evaluated split itself.
  config.fid_reference_stats = ""
  # Image grids to TensorBoard and WORKDIR/images/*.png (reconstructions or samples).
  config.image_every_steps = 1000
  # Consecutive non-finite steps tolerated (each one is skipped) before the run stops.
  config.max_nonfinite_steps = 20
  # 'replicate' (data parallel) or 'fsdp' (large arrays sharded over the data axis).
  config.param_sharding = "replicate"
  # Memory of one device in GiB, checked before the state is created and after the step
  # compiles (`vqgan_jax.runtime.memory_plan`); 0: the device's own limit (GPU/TPU; CPU: none).
  config.device_memory_gb = 0.0
  # Step at which to capture a profiler trace (-1: never).
  config.profile_first_step = -1
  # The input pipeline (`vqgan_jax.data.input_pipeline` documents each field).
  config.data = input_pipeline.default_data_config()
  return config


def compute_dtype(config: ml_collections.ConfigDict) -> Any:
  """The jnp dtype named by `config.dtype`."""
  if config.dtype not in COMPUTE_DTYPES:
    raise ValueError(f"config.dtype={config.dtype!r}; use one of {tuple(COMPUTE_DTYPES)}.")
  return COMPUTE_DTYPES[config.dtype]


def validate_trainer_config(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
  """The checks of the shared loop: dtype, positive cadences, memory, sharding, batch split,
  data."""
  compute_dtype(config)
  for key in POSITIVE_FIELDS:
    if config[key] <= 0:
      raise ValueError(f"config.{key}={config[key]} must be positive.")
  if config.get("device_memory_gb", 0) < 0:
    raise ValueError(f"config.device_memory_gb={config.device_memory_gb} must be >= 0 (0: the "
                     "device's own limit).")
  if config.param_sharding not in sharding.PARAM_SHARDING_STRATEGIES:
    raise ValueError(f"config.param_sharding={config.param_sharding!r}; use one of "
                     f"{sharding.PARAM_SHARDING_STRATEGIES}.")
  validate_batch_and_data(config, mesh)


def validate_batch_and_data(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
  """What every job that reads batches needs (training, eval, codebook view): a batch that
  splits over the mesh and a readable data source."""
  sharding.check_batch_divisible(config.batch_size, mesh)
  input_pipeline.validate_data_config(config)
