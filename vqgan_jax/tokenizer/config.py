"""Every tokenizer config field with its default, and the checks that run before anything compiles.

`configs/tiny.py`, `configs/imagenet.py` and `configs/taming_f16.py` start from `base_config()`
and override what they need. The fields shared with the prior (cadences, batch, dtype, data, ...)
are documented in `vqgan_jax.runtime.trainer_config`.
"""
from __future__ import annotations

import math

import ml_collections
from jax.sharding import Mesh

from vqgan_jax.models.autoencoder import downsampling_factor
from vqgan_jax.models.group_norm import GroupNorm
from vqgan_jax.models.quantizer import CODEBOOK_INITS
from vqgan_jax.models.scalar_quantizers import LFQ_ENTROPIES
from vqgan_jax.runtime import storage, trainer_config
from vqgan_jax.tokenizer import losses, modality

QUANTIZER_TYPES = ("vq", "fsq", "lfq", "none")  # none: continuous (the ceiling row).


def base_config() -> ml_collections.ConfigDict:
  """All tokenizer fields with defaults (taming's f16 recipe where taming has one)."""
  config = trainer_config.base_trainer_config()
  # What the tokenizer encodes (vqgan_jax.tokenizer.modality): 'image' | 'edges' | 'sketch' |
  # 'segmentation' (one-hot label maps of config.data.num_segmentation_classes classes).
  config.modality = "image"
  # Evaluators (vqgan_jax.tokenizer.evaluators): 'reconstruction' (l1, lpips, psnr, ssim),
  # 'codebook' (codebook_usage, perplexity, unused_codes), 'rfid'; for segmentation
  # 'segmentation' (pixel_accuracy, miou) and 'codebook'.
  config.eval_metrics = ("reconstruction", "codebook", "rfid")
  # Generator EMA decay (evaluation and `load_tokenizer` use the EMA weights); 0 disables it.
  config.ema_decay = 0.0
  # Workdir of a trained or converted tokenizer to start from (fine-tuning); ignored once
  # WORKDIR has a checkpoint of its own.
  config.init_from = ""

  # VQModel (vqgan_jax.models.autoencoder): taming's ddconfig, the bottleneck and its options.
  config.model = ml_collections.ConfigDict(dict(
      ch=128,  # Base width; level i has ch * ch_mult[i] channels.
      out_ch=3,
      ch_mult=(1, 1, 2, 2, 4),  # One stride-2 downsample between levels: f = 2**(len - 1).
      num_res_blocks=2,
      attn_resolutions=(16,),  # Feature-map sizes (of `resolution`) with attention blocks.
      dropout=0.0,
      in_channels=3,
      resolution=256,  # Nominal input size; only places attn_resolutions.
      z_channels=256,
      embed_dim=256,  # Latent width after quant_conv.
      codebook_size=16384,
      beta=0.25,  # Commitment (legacy=True: codebook) weight of the VQ loss.
      legacy=True,  # taming's weighting: commitment 1, codebook beta.
      l2_normalize=False,  # Cosine codes: latents and codes unit-normalised before lookup.
      lookup_chunk_size=0,  # Nearest-code search in chunks of this many tokens (0: at once).
      quantizer_type="vq",  # 'vq' | 'fsq' | 'lfq' | 'none' (no bottleneck: the ceiling).
      fsq_levels=(),  # FSQ: levels per channel; prod == codebook_size.
      codebook_dim=0,  # Factorised lookup: Dense embed_dim -> codebook_dim (0: off).
      ema_decay=0.0,  # EMA codebook instead of the codebook loss (0: off).
      ema_epsilon=1e-5,  # Laplace smoothing of the EMA counts.
      codebook_init="uniform",  # 'uniform' | 'random_outputs' | 'kmeans++' (data init).
      kmeans_iterations=5,  # Lloyd steps after k-means++ seeding.
      restart_unused_steps=0,  # Re-seed codes unchosen for this many steps (0: off).
      buffer_size=0,  # Encoder outputs kept for data init and restarts (0: 4 * codebook_size).
      entropy_temperature=0.0,  # Soft-assignment temperature of the entropy terms (0: off).
      lfq_entropy="factorized",  # LFQ entropy terms: 'factorized' per bit | 'exact' (2^bits).
      usage_window_steps=100,  # Window of `codebook/window_usage` and dead-code counting.
      simvq=False,  # SimVQ: frozen random basis times a learned linear map (whole codebook moves).
      index_backprop=False,  # IBQ: straight-through over the one-hot of all codes.
      remat=False,  # Recompute block activations in the backward pass (less memory).
      norm_groups=32,  # GroupNorm groups (taming: 32; keep ch / norm_groups >= 4 channels).
      zero_init_residual=False,  # Res/attention blocks start as the identity (ADM); taming: off.
      output_norm=True,  # GroupNorm before the encoder's and decoder's conv_out (taming: on).
  ))
  # PatchGAN depth and width.
  config.discriminator = ml_collections.ConfigDict(dict(num_layers=3, ndf=64))
  config.loss = ml_collections.ConfigDict(dict(
      reconstruction="l1",  # 'l1' | 'l2'; segmentation: 'bce' (taming's) | 'cross_entropy'.
      perceptual_weight=1.0,  # LPIPS-VGG weight in the nll.
      codebook_weight=1.0,  # Weight of the quantizer loss.
      gan_loss="hinge",  # 'hinge' | 'vanilla' | 'non_saturating'.
      disc_weight=0.8,  # Times the adaptive weight (or alone with adaptive_weight=False).
      adaptive_weight=True,  # taming's lambda = |grad nll| / |grad g| at conv_out.
      disc_factor=1.0,  # 0: no GAN (the discriminator never runs).
      disc_start=250_001,  # Step at which the GAN loss reaches the generator.
      disc_train_start=-1,  # Step at which the discriminator learns (-1: disc_start, as taming).
      lecam_weight=0.0,  # LeCAM regularisation of the discriminator (0: off; 0.001 MAGVIT-v2).
      lecam_decay=0.99,  # EMA decay of its anchors (the mean real and fake logits).
      entropy_weight=0.0,  # Quantizer entropy penalty (needs model.entropy_temperature > 0).
      entropy_schedule="constant",  # 'constant' | 'linear' | 'cosine' decay to 0.
      entropy_warmup_steps=0,
      entropy_decay_steps=0,
  ))
  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=4.5e-6 * 8,  # taming: base lr 4.5e-6 times the batch size.
      disc_learning_rate=-1.0,  # -1: learning_rate.
      b1=0.5,  # taming's Adam betas.
      b2=0.9,
      warmup_steps=0,  # Linear warm-up from 0.
      schedule="constant",  # 'constant' | 'cosine' (decay to 0 at num_train_steps).
      grad_clip_norm=0.0,  # Global-norm clipping (0: off).
      weight_decay=0.0,  # > 0: AdamW.
  ))
  return config


def validate_model_config(model: ml_collections.ConfigDict, image_size) -> None:
  """Image size divisible by the downsampling factor; GroupNorm-compatible widths."""
  factor = downsampling_factor(model.ch_mult)
  sizes = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
  for name, size in zip(("height", "width"), sizes):
    if size % factor:
      suggestion = max(factor, round(size / factor) * factor)
      raise ValueError(
          f"Image {name} {size} is not divisible by the downsampling factor {factor} "
          f"(2**(len(config.model.ch_mult)-1) with ch_mult={tuple(model.ch_mult)}); set "
          f"--config.data.image_size to a multiple of {factor}, e.g. {suggestion}.")
  groups = model.get("norm_groups", GroupNorm.num_groups)
  for mult in sorted(set(model.ch_mult) | {1}):
    width = model.ch * mult
    if width % groups:
      raise ValueError(
          f"Channel count config.model.ch * {mult} = {width} is not divisible by the "
          f"{groups} GroupNorm groups (config.model.norm_groups); set --config.model.ch to a "
          f"multiple of {groups}.")


def validate_quantizer_config(model: ml_collections.ConfigDict, loss=None) -> None:
  """The bottleneck options are known and consistent with codebook_size."""
  if model.quantizer_type not in QUANTIZER_TYPES:
    raise ValueError(f"config.model.quantizer_type={model.quantizer_type!r}; use one of "
                     f"{QUANTIZER_TYPES}.")
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
  if model.lfq_entropy not in LFQ_ENTROPIES:
    raise ValueError(f"config.model.lfq_entropy={model.lfq_entropy!r}; use one of "
                     f"{LFQ_ENTROPIES} ('exact' sums over all codebook_size codes).")
  if model.codebook_init not in CODEBOOK_INITS:
    raise ValueError(f"config.model.codebook_init={model.codebook_init!r}; use one of "
                     f"{CODEBOOK_INITS}.")
  if not 0.0 <= model.ema_decay < 1.0:
    raise ValueError(f"config.model.ema_decay={model.ema_decay} must be in [0, 1) "
                     "(0: learn the codebook by its loss, as taming).")
  if model.usage_window_steps <= 0:
    raise ValueError(f"config.model.usage_window_steps={model.usage_window_steps} must be "
                     "positive.")
  uses_codebook_state = model.ema_decay > 0 or model.codebook_init != "uniform" or (
      model.restart_unused_steps > 0)
  if model.quantizer_type != "vq" and (uses_codebook_state or model.codebook_dim or
                                       model.simvq or model.index_backprop):
    raise ValueError(f"config.model.quantizer_type={model.quantizer_type!r} has no learned "
                     "codebook: ema_decay, codebook_init, restart_unused_steps, codebook_dim, "
                     "simvq and index_backprop apply to 'vq' only; reset them to their "
                     "defaults.")
  if model.simvq and uses_codebook_state:
    raise ValueError("config.model.simvq learns the codebook through its linear map; it cannot "
                     "be combined with ema_decay, codebook_init or restart_unused_steps (set "
                     "them to 0.0, 'uniform', 0).")
  if model.index_backprop and model.lookup_chunk_size:
    raise ValueError("config.model.index_backprop needs the soft assignment over all codes at "
                     "once; set config.model.lookup_chunk_size=0.")
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
    if model.quantizer_type in ("fsq", "none"):
      raise ValueError("config.loss.entropy_weight applies to 'vq' and 'lfq'; "
                       f"{model.quantizer_type!r} has no soft assignment. Set it to 0.")
    if loss.entropy_schedule not in losses.ENTROPY_SCHEDULES:
      raise ValueError(f"config.loss.entropy_schedule={loss.entropy_schedule!r}; use one of "
                       f"{losses.ENTROPY_SCHEDULES}.")


def validate_modality_config(config: ml_collections.ConfigDict,
                             model: ml_collections.ConfigDict | None = None) -> None:
  """`config.modality` is known and matches the model's channels and the loss: a label map
  has K one-hot channels in and K logits out and trains without LPIPS or GAN (taming's
  VQSegmentationModel); images, edge maps and drawings are RGB and train as the VQGAN."""
  model = config.model if model is None else model
  kind = config.modality
  if kind not in modality.MODALITIES:
    raise ValueError(f"config.modality={kind!r}; use one of {modality.MODALITIES}.")
  recon = config.loss.reconstruction
  if kind != "segmentation":
    if (model.in_channels, model.out_ch) != (3, 3):
      raise ValueError(f"config.modality={kind!r} encodes RGB: set --config.model.in_channels=3 "
                       f"and --config.model.out_ch=3 (got {model.in_channels}, {model.out_ch}).")
    if recon in losses.SEGMENTATION_LOSSES:
      raise ValueError(f"config.loss.reconstruction={recon!r} is a label-map loss; with "
                       f"config.modality={kind!r} use one of {losses.IMAGE_LOSSES}.")
    return
  classes = config.data.get("num_segmentation_classes", 0)
  if classes < 2:
    raise ValueError(f"config.modality='segmentation' needs config.data.num_segmentation_classes "
                     f">= 2 (got {classes}); set it to the number of class ids of the label maps.")
  if model.in_channels != classes or model.out_ch != classes:
    raise ValueError(f"config.modality='segmentation' with {classes} classes encodes one-hot maps "
                     f"into {classes} logits: set --config.model.in_channels={classes} and "
                     f"--config.model.out_ch={classes} (got {model.in_channels}, {model.out_ch}).")
  if recon not in losses.SEGMENTATION_LOSSES:
    raise ValueError(f"config.loss.reconstruction={recon!r} with config.modality="
                     f"'segmentation'; use one of {losses.SEGMENTATION_LOSSES} ('bce' is taming's).")
  if config.loss.perceptual_weight != 0 or config.loss.disc_factor != 0:
    raise ValueError("config.modality='segmentation' trains without LPIPS and GAN (taming's "
                     "VQSegmentationModel): set --config.loss.perceptual_weight=0 and "
                     f"--config.loss.disc_factor=0 (got {config.loss.perceptual_weight}, "
                     f"{config.loss.disc_factor}).")


def validate_saved_modality(config: ml_collections.ConfigDict, saved: dict, workdir: str) -> None:
  """A restored tokenizer (its WORKDIR/config.json `saved`) is evaluated on what it encodes."""
  trained_on = saved.get("modality", "image")
  if trained_on != config.modality:
    raise ValueError(f"{workdir} was trained with modality={trained_on!r}; evaluate it with "
                     f"--config.modality={trained_on} (got {config.modality!r}).")
  validate_modality_config(config, ml_collections.ConfigDict(saved["model"]))


def validate_eval_config(config: ml_collections.ConfigDict) -> None:
  """Known evaluator names that apply to the modality, and an existing reference-statistics
  file."""
  from vqgan_jax.tokenizer import evaluators  # pylint: disable=g-import-not-at-top
  unknown = [n for n in config.eval_metrics if n not in evaluators.EVALUATORS]
  if unknown:
    raise ValueError(f"config.eval_metrics has unknown evaluator(s) {unknown}; choose from "
                     f"{sorted(evaluators.EVALUATORS)}.")
  kind = config.get("modality", "image")
  allowed = evaluators.for_modality(kind)
  wrong = [n for n in config.eval_metrics if n not in allowed]
  if wrong:
    raise ValueError(f"config.eval_metrics {wrong} do not apply to config.modality={kind!r}; "
                     f"use some of {allowed}, e.g. --config.eval_metrics=\"{allowed}\".")
  path = config.fid_reference_stats
  if path and not storage.exists(path):
    raise ValueError(f"config.fid_reference_stats={config.fid_reference_stats!r} does not exist; "
                     "write it with `python -m vqgan_jax.metrics.fid_stats` or leave it empty.")


def validate_tokenizer_config(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
  """Every check of the tokenizer trainer; raises ValueError with a fix."""
  validate_modality_config(config)
  trainer_config.validate_trainer_config(config, mesh)
  if config.loss.reconstruction not in losses.RECONSTRUCTION_LOSSES:
    raise ValueError(f"config.loss.reconstruction={config.loss.reconstruction!r}; use one of "
                     f"{losses.RECONSTRUCTION_LOSSES}.")
  if config.loss.gan_loss not in losses.GAN_LOSSES:
    raise ValueError(f"config.loss.gan_loss={config.loss.gan_loss!r}; use one of "
                     f"{losses.GAN_LOSSES}.")
  if not 0.0 <= config.ema_decay < 1.0:
    raise ValueError(f"config.ema_decay={config.ema_decay} must be in [0, 1) (0 disables EMA).")
  if config.loss.lecam_weight < 0 or not 0.0 <= config.loss.lecam_decay < 1.0:
    raise ValueError(f"config.loss.lecam_weight={config.loss.lecam_weight} must be >= 0 (0: off) "
                     f"and config.loss.lecam_decay={config.loss.lecam_decay} in [0, 1).")
  validate_eval_config(config)
  validate_model_config(config.model, config.data.image_size)
  validate_quantizer_config(config.model, config.loss)
