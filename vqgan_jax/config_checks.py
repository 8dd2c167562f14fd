"""Config errors a user can make, caught before anything compiles, with what to change."""
from __future__ import annotations

import os

import ml_collections
from jax.sharding import Mesh

from vqgan_jax import input_pipeline, losses, sharding

GROUPNORM_GROUPS = 32
DTYPES = ("float32", "bfloat16")


def validate_model_config(model: ml_collections.ConfigDict, image_size) -> None:
  """Image size divisible by the downsampling factor; GroupNorm-compatible widths."""
  factor = 2 ** (len(model.ch_mult) - 1)
  sizes = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
  for name, size in zip(("height", "width"), sizes):
    if size % factor:
      suggestion = max(factor, round(size / factor) * factor)
      raise ValueError(
          f"Image {name} {size} is not divisible by the downsampling factor {factor} "
          f"(2**(len(config.model.ch_mult)-1) with ch_mult={tuple(model.ch_mult)}); set "
          f"--config.data.image_size to a multiple of {factor}, e.g. {suggestion}.")
  for mult in sorted(set(model.ch_mult) | {1}):
    width = model.ch * mult
    if width % GROUPNORM_GROUPS:
      raise ValueError(
          f"Channel count config.model.ch * {mult} = {width} is not divisible by the "
          f"{GROUPNORM_GROUPS} GroupNorm groups; set --config.model.ch to a multiple of "
          f"{GROUPNORM_GROUPS}.")


def validate_quantizer_config(model: ml_collections.ConfigDict, loss=None) -> None:
  """The bottleneck options are known and consistent with codebook_size."""
  import math  # pylint: disable=g-import-not-at-top
  kinds = ("vq", "fsq", "lfq")
  if model.quantizer_type not in kinds:
    raise ValueError(f"config.model.quantizer_type={model.quantizer_type!r}; use one of {kinds}.")
  if model.quantizer_type == "fsq":
    levels = tuple(model.fsq_levels)
    if not levels or min(levels) < 2:
      raise ValueError(f"config.model.fsq_levels={levels}: FSQ needs levels >= 2 per channel, "
                       "e.g. (8, 5, 5, 5) for 1000 codes or (4, 4, 4, 4, 4) for 1024.")
    if math.prod(levels) != model.codebook_size:
      raise ValueError(f"config.model.fsq_levels={levels} give {math.prod(levels)} codes; set "
                       f"--config.model.codebook_size={math.prod(levels)}.")
  if model.quantizer_type == "lfq" and (model.codebook_size < 2 or
                                        model.codebook_size & (model.codebook_size - 1)):
    raise ValueError(f"config.model.codebook_size={model.codebook_size}: LFQ needs a power of "
                     "two (2^bits codes), e.g. 1024.")
  from vqgan_jax.models import quantizer  # pylint: disable=g-import-not-at-top
  if model.codebook_init not in quantizer.CODEBOOK_INITS:
    raise ValueError(f"config.model.codebook_init={model.codebook_init!r}; use one of "
                     f"{quantizer.CODEBOOK_INITS}.")
  if not 0.0 <= model.ema_decay < 1.0:
    raise ValueError(f"config.model.ema_decay={model.ema_decay} must be in [0, 1) "
                     "(0: learn the codebook by its loss, as taming).")
  if model.usage_window_steps <= 0:
    raise ValueError(f"config.model.usage_window_steps={model.usage_window_steps} must be "
                     "positive.")
  uses_codebook_state = model.ema_decay > 0 or model.codebook_init != "uniform" or (
      model.restart_unused_steps > 0)
  if model.quantizer_type != "vq" and (uses_codebook_state or model.codebook_dim):
    raise ValueError(f"config.model.quantizer_type={model.quantizer_type!r} has no learned "
                     "codebook: ema_decay, codebook_init, restart_unused_steps and codebook_dim "
                     "apply to 'vq' only; reset them to their defaults.")
  buffer = model.buffer_size or 4 * model.codebook_size
  if model.codebook_init == "kmeans++" and buffer < model.codebook_size:
    raise ValueError(f"config.model.buffer_size={model.buffer_size} is smaller than "
                     f"codebook_size={model.codebook_size}: k-means++ needs at least as many "
                     "encoder outputs as codes; use 0 (4 * codebook_size).")
  if loss is not None and loss.entropy_weight > 0:
    if model.entropy_temperature <= 0:
      raise ValueError(f"config.loss.entropy_weight={loss.entropy_weight} needs "
                       "config.model.entropy_temperature > 0 (e.g. 0.01): the quantizer only "
                       "computes the entropy terms when it has a temperature.")
    if model.quantizer_type == "fsq":
      raise ValueError("config.loss.entropy_weight applies to 'vq' and 'lfq'; FSQ has no "
                       "soft assignment. Set it to 0.")
    if loss.entropy_schedule not in losses.ENTROPY_SCHEDULES:
      raise ValueError(f"config.loss.entropy_schedule={loss.entropy_schedule!r}; use one of "
                       f"{losses.ENTROPY_SCHEDULES}.")


def validate_eval_config(config: ml_collections.ConfigDict) -> None:
  """Known evaluator names and an existing reference-statistics file."""
  from vqgan_jax import evaluators  # pylint: disable=g-import-not-at-top
  unknown = [n for n in config.eval_metrics if n not in evaluators.EVALUATORS]
  if unknown:
    raise ValueError(f"config.eval_metrics has unknown evaluator(s) {unknown}; choose from "
                     f"{sorted(evaluators.EVALUATORS)}.")
  path = config.fid_reference_stats
  if path and "://" not in path and not os.path.exists(path):
    raise ValueError(f"config.fid_reference_stats={config.fid_reference_stats!r} does not exist; "
                     "write it with `python -m vqgan_jax.fid_stats` or leave it empty.")


def validate_tokenizer_config(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
  """Every check of the tokenizer trainer; raises ValueError with a fix."""
  if config.dtype not in DTYPES:
    raise ValueError(f"config.dtype={config.dtype!r}; use one of {DTYPES}.")
  for key in ("num_train_steps", "batch_size", "log_every_steps", "checkpoint_every_steps",
              "keep_checkpoints", "max_nonfinite_steps"):
    if config[key] <= 0:
      raise ValueError(f"config.{key}={config[key]} must be positive.")
  if config.loss.reconstruction not in losses.RECONSTRUCTION_LOSSES:
    raise ValueError(f"config.loss.reconstruction={config.loss.reconstruction!r}; use one of "
                     f"{losses.RECONSTRUCTION_LOSSES}.")
  if config.loss.gan_loss not in losses.GAN_LOSSES:
    raise ValueError(f"config.loss.gan_loss={config.loss.gan_loss!r}; use one of "
                     f"{losses.GAN_LOSSES}.")
  if config.param_sharding not in sharding.PARAM_SHARDING_STRATEGIES:
    raise ValueError(f"config.param_sharding={config.param_sharding!r}; use one of "
                     f"{sharding.PARAM_SHARDING_STRATEGIES}.")
  if not 0.0 <= config.ema_decay < 1.0:
    raise ValueError(f"config.ema_decay={config.ema_decay} must be in [0, 1) (0 disables EMA).")
  validate_eval_config(config)
  validate_model_config(config.model, config.data.image_size)
  validate_quantizer_config(config.model, config.loss)
  sharding.check_batch_divisible(config.batch_size, mesh)
  input_pipeline.validate_data_config(config)
