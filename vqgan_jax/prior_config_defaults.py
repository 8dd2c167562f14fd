"""Every prior (second-stage transformer) config field with its default.

Top level: the trainer fields of `vqgan_jax.config_defaults` (num_train_steps, batch_size,
log/checkpoint/eval/image cadence, keep_checkpoints, max_nonfinite_steps, param_sharding,
dtype, seed, profile_first_step), plus
  stage                 'prior' (selects this trainer in `vqgan_jax.main`).
  tokenizer_workdir     Workdir of the trained or converted tokenizer whose codes are modelled.
  conditioning          'none' (a start token), 'class' (labels of the dataset), or 'image'
                        (a prefix of codes of a downsampled copy of the image, from
                        `cond_tokenizer_workdir`, as taming's low-resolution cond stage).
  cond_tokenizer_workdir, cond_downsample
                        'image' conditioning: the conditioning tokenizer and the factor by which
                        the image is downsampled (area) before it is tokenized.
  label_dropout         'class': probability of the null label in training (classifier-free
                        guidance needs > 0).
  pkeep                 taming's token corruption: each input token is kept with probability
                        pkeep, else replaced by a random code (targets stay clean); 1.0: off.
  num_eval_images       Images for the eval loss (-1: the whole eval split).
  num_image_samples     Samples drawn for the grid every `image_every_steps`.
model      Transformer fields (vqgan_jax.models.transformer): num_layers, num_heads, embed_dim,
           mlp_ratio, dropout, attention_window (0: full causal), mingpt_numerics.
optimizer  AdamW: learning_rate, b1, b2, weight_decay (matrices only), warmup_steps, schedule,
           grad_clip_norm.
sample     `--mode=sample`: num_samples, batch_size, temperature (0: greedy), top_k (0: off),
           top_p (1.0: off), guidance_scale (1: conditional only; 'class' conditioning),
           classes (labels to draw, cycled; empty: all classes in turn), grid_shape ((H, W)
           tokens; empty: the training grid, larger: sliding-window sampling), completion
           (number of eval images whose bottom half is resampled; 0: off), fid (sample FID
           against the eval split, or `fid_reference_stats`), use_cache, seed.
"""
from __future__ import annotations

import ml_collections

from vqgan_jax import config_defaults


def base_prior_config() -> ml_collections.ConfigDict:
  """All prior fields with defaults (minGPT-like AdamW recipe)."""
  config = config_defaults.base_config()
  # The tokenizer-only fields do not apply to a prior.
  for key in ("model", "discriminator", "loss", "ema_decay", "init_from", "eval_metrics"):
    del config[key]
  config.stage = "prior"
  config.tokenizer_workdir = ""
  config.conditioning = "none"
  config.cond_tokenizer_workdir = ""
  config.cond_downsample = 4
  config.label_dropout = 0.1
  config.pkeep = 1.0
  config.num_image_samples = 8
  config.model = ml_collections.ConfigDict(dict(
      num_layers=12, num_heads=12, embed_dim=768, mlp_ratio=4, dropout=0.0, attention_window=0,
      mingpt_numerics=False))
  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=4.5e-4, b1=0.9, b2=0.95, weight_decay=0.01, warmup_steps=1000,
      schedule="cosine", grad_clip_norm=1.0))
  with config.ignore_type():
    config.sample = ml_collections.ConfigDict(dict(
        num_samples=16, batch_size=8, temperature=1.0, top_k=0, top_p=1.0, guidance_scale=1.0,
        classes=(), grid_shape=(), completion=0, fid=False, use_cache=True, seed=0))
  return config
