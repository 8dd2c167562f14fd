"""Every tokenizer config field with its default; `configs/*.py` override what they need.

Configs are locked by `ml_collections.config_flags`, so a misspelt `--config.KEY=VALUE` is an
error rather than a silently ignored setting. The fields:

Top level
  seed                    Seeds parameters, data order and augmentation.
  dtype                   Compute dtype of the networks: 'float32' or 'bfloat16' (params stay
                          float32; quantizer, losses and metrics always run in float32).
  num_train_steps         Total optimizer steps (a resumed run continues up to this).
  batch_size              Global batch size over all devices and hosts.
  log_every_steps         Scalars to TensorBoard and the console.
  checkpoint_every_steps  Async Orbax checkpoint cadence (the last step is always saved).
  keep_checkpoints        How many recent checkpoints to keep.
  eval_every_steps        Evaluation on `num_eval_images` held-out images (0: only at the end).
  num_eval_images         Images used by the periodic evaluation (-1: the whole split;
                          `--mode=eval` always uses the whole split).
  eval_metrics            Evaluators (vqgan_jax.evaluators): 'reconstruction' (l1, lpips, psnr,
                          ssim), 'codebook' (codebook_usage, perplexity), 'rfid'.
  fid_reference_stats     Optional .npz of reference Inception statistics (vqgan_jax.fid_stats)
                          for rFID; empty: the originals of the evaluated images.
  image_every_steps       Reconstruction grids (TensorBoard and WORKDIR/images/*.png).
  max_nonfinite_steps     Consecutive non-finite steps tolerated (each one is skipped).
  param_sharding          'replicate' or 'fsdp' (shard large arrays over the data axis).
  ema_decay               Generator EMA decay; 0 disables EMA.
  init_from               Workdir of a trained or converted tokenizer to start from
                          (fine-tuning); ignored when WORKDIR already has a checkpoint.
  profile_first_step      Step at which to capture a profiler trace (-1: never).

model            VQModel fields (see vqgan_jax.models.autoencoder.VQModel); the bottleneck:
                 quantizer_type ('vq' | 'fsq' | 'lfq'), fsq_levels, and for 'vq' the codebook
                 options l2_normalize, codebook_dim, ema_decay, ema_epsilon, codebook_init
                 ('uniform' | 'random_outputs' | 'kmeans++'), kmeans_iterations,
                 restart_unused_steps, buffer_size, entropy_temperature (also 'lfq'),
                 usage_window_steps (see vqgan_jax.models.quantizer.VectorQuantizer);
                 remat (recompute block activations in the backward pass: less memory).
discriminator    PatchGAN depth (`num_layers`) and width (`ndf`).
loss             reconstruction ('l1' | 'l2'), perceptual_weight, codebook_weight,
                 gan_loss ('hinge' | 'vanilla' | 'non_saturating'), disc_weight (times the
                 adaptive weight), adaptive_weight (False: use disc_weight alone), disc_factor,
                 disc_start (step at which the GAN loss reaches the generator),
                 disc_train_start (step at which the discriminator starts learning; -1: same as
                 disc_start, as taming), entropy_weight (quantizer entropy penalty; needs
                 model.entropy_temperature > 0), entropy_schedule ('constant' | 'linear' |
                 'cosine' decay to 0 over entropy_decay_steps), entropy_warmup_steps.
optimizer        learning_rate, disc_learning_rate (-1: same), b1, b2 (Adam), warmup_steps,
                 schedule ('constant' | 'cosine'), grad_clip_norm (0: off), weight_decay.
data             See vqgan_jax.input_pipeline.
"""
from __future__ import annotations

import ml_collections

from vqgan_jax import input_pipeline


def base_config() -> ml_collections.ConfigDict:
  """All tokenizer fields with defaults (taming's f16 recipe where taming has one)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.dtype = "float32"
  config.num_train_steps = 100_000
  config.batch_size = 8
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.eval_every_steps = 5000
  config.num_eval_images = -1
  config.eval_metrics = ("reconstruction", "codebook", "rfid")
  config.fid_reference_stats = ""
  config.image_every_steps = 1000
  config.max_nonfinite_steps = 20
  config.param_sharding = "replicate"
  config.ema_decay = 0.0
  config.init_from = ""
  config.profile_first_step = -1

  config.model = ml_collections.ConfigDict(dict(
      ch=128,
      out_ch=3,
      ch_mult=(1, 1, 2, 2, 4),
      num_res_blocks=2,
      attn_resolutions=(16,),
      dropout=0.0,
      in_channels=3,
      resolution=256,
      z_channels=256,
      embed_dim=256,
      codebook_size=16384,
      beta=0.25,
      legacy=True,
      l2_normalize=False,
      lookup_chunk_size=0,
      quantizer_type="vq",
      fsq_levels=(),
      codebook_dim=0,
      ema_decay=0.0,
      ema_epsilon=1e-5,
      codebook_init="uniform",
      kmeans_iterations=5,
      restart_unused_steps=0,
      buffer_size=0,
      entropy_temperature=0.0,
      usage_window_steps=100,
      remat=False,
  ))
  config.discriminator = ml_collections.ConfigDict(dict(num_layers=3, ndf=64))
  config.loss = ml_collections.ConfigDict(dict(
      reconstruction="l1",
      perceptual_weight=1.0,
      codebook_weight=1.0,
      gan_loss="hinge",
      disc_weight=0.8,
      adaptive_weight=True,
      disc_factor=1.0,
      disc_start=250_001,
      disc_train_start=-1,
      entropy_weight=0.0,
      entropy_schedule="constant",
      entropy_warmup_steps=0,
      entropy_decay_steps=0,
  ))
  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=4.5e-6 * 8,
      disc_learning_rate=-1.0,
      b1=0.5,
      b2=0.9,
      warmup_steps=0,
      schedule="constant",
      grad_clip_norm=0.0,
      weight_decay=0.0,
  ))
  config.data = input_pipeline.default_data_config()
  return config
