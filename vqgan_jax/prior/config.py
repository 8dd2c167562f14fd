"""Every prior (second-stage transformer) config field with its default, and its checks.

`configs/tiny_prior.py` and `configs/imagenet_prior.py` start from `base_prior_config()`. The
fields shared with the tokenizer (cadences, batch, dtype, data, ...) are documented in
`vqgan_jax.runtime.trainer_config`.
"""
from __future__ import annotations

import ml_collections
from jax.sharding import Mesh

from vqgan_jax.prior.conditions import CONDITIONINGS, TOKENIZED, kind
from vqgan_jax.runtime import trainer_config


def base_prior_config() -> ml_collections.ConfigDict:
  """All prior fields with defaults (minGPT-like AdamW recipe)."""
  config = trainer_config.base_trainer_config()
  # Selects the prior trainer (and --mode=sample) in `vqgan_jax.main`.
  config.stage = "prior"
  # Workdir of the trained or converted tokenizer whose codes are modelled.
  config.tokenizer_workdir = ""
  # 'none' | 'class' | 'low_res' (alias 'image') | 'segmentation' | 'edges' | 'sketch' | 'text';
  # see vqgan_jax.prior.conditions.
  config.conditioning = "none"
  # Tokenized conditions: the workdir of the condition tokenizer (trained on small images, label
  # maps, edge maps or drawings), and for 'low_res' the downsampling factor of the image.
  config.cond_tokenizer_workdir = ""
  config.cond_downsample = 4
  # 'class': probability of the null label in training (classifier-free guidance needs > 0).
  config.label_dropout = 0.1
  # 'text': probability of the empty caption in training (classifier-free guidance needs > 0).
  config.caption_dropout = 0.1
  # Tokenized conditions ('low_res', 'segmentation', 'edges', 'sketch'): probability of the
  # null code map in training. > 0 adds the null code (one more condition token id), which
  # classifier-free guidance and the eval's bits without the condition need.
  config.condition_dropout = 0.0
  # taming's token corruption: each input token is kept with probability pkeep, else replaced
  # by a random code (targets stay clean); 1.0: off.
  config.pkeep = 1.0
  # Samples drawn for the grid every `image_every_steps`.
  config.num_image_samples = 8
  # Transformer (vqgan_jax.models.transformer).
  config.model = ml_collections.ConfigDict(dict(
      num_layers=12, num_heads=12, embed_dim=768, mlp_ratio=4, dropout=0.0,
      attention_window=0,  # Each token attends to the previous W tokens only (0: full causal).
      mingpt_numerics=False,  # minGPT exactly (eps 1e-5, erf GELU, no head bias): taming GPTs load.
  ))
  # AdamW; weight decay on weight matrices only.
  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=4.5e-4, b1=0.9, b2=0.95, weight_decay=0.01, warmup_steps=1000,
      schedule="cosine", grad_clip_norm=1.0))
  # `--mode=tokenize` writes the train and eval codes here (empty: WORKDIR/codes); train from
  # them with --config.data.source=codes --config.data.codes_dir=<this dir>.
  config.codes_dir = ""
  with config.ignore_type():
    config.tokenize = ml_collections.ConfigDict(dict(
        # Code sets stored per train image, one of which each epoch picks per example:
        # 'none' (center crop), 'flip', 'cropK' (K-th random crop); see vqgan_jax.data.code_images.
        augmentations=("none", "flip"),
        # Train records per host and shard file (a rerun skips the shards already written).
        shard_size=4096,
    ))
    # `--mode=sample`.
    config.sample = ml_collections.ConfigDict(dict(
        num_samples=16,  # Split over every device of every host.
        batch_size=8,  # Global rows per step, rounded up to a multiple of the device count.
        temperature=1.0,  # 0: greedy.
        top_k=0,  # 0: off.
        top_p=1.0,  # 1.0: off.
        guidance_scale=1.0,  # Classifier-free guidance (a null condition): 1 cond., 0 uncond.
        classes=(),  # Labels to draw, cycled; empty: every class in turn.
        grid_shape=(),  # (H, W) tokens; empty: the training grid; larger: sliding window.
        completion=0,  # Eval images whose bottom half is resampled (0: off).
        grid_images=64,  # The first samples, tiled in grid.png (and conditions.png).
        fid=False,  # Sample FID against the eval split (or `fid_reference_stats`).
        use_cache=True,  # KV cache (False recomputes the sequence for every token).
        seed=0,
        # A condition file every sample is drawn from (else sample i uses eval example i's):
        # a label map PNG ('segmentation'), a drawing ('sketch'), an image whose edges are
        # taken ('edges') or a small image to upscale by cond_downsample ('low_res'). Larger
        # than the training size: the sliding window (grid-aligned conditions).
        condition="",
        prompt="",  # 'text': the caption every sample is drawn from (else eval captions).
    ))
  return config


def validate_prior_config(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
  """Every check of the prior trainer; raises ValueError with a fix."""
  trainer_config.validate_trainer_config(config, mesh)
  if config.conditioning not in CONDITIONINGS:
    raise ValueError(f"config.conditioning={config.conditioning!r}; use one of {CONDITIONINGS}.")
  if not 0.0 < config.pkeep <= 1.0:
    raise ValueError(f"config.pkeep={config.pkeep} must be in (0, 1].")
  for field in ("label_dropout", "caption_dropout", "condition_dropout"):
    if not 0.0 <= config[field] < 1.0:
      raise ValueError(f"config.{field}={config[field]} must be in [0, 1).")
  if config.data.source == "codes" and kind(config) not in ("none", "class"):
    raise ValueError(f"config.data.source='codes' supports config.conditioning 'none' and "
                     f"'class' for now; train a {config.conditioning!r}-conditioned prior from "
                     "images.")
  if kind(config) in TOKENIZED and not config.cond_tokenizer_workdir:
    raise ValueError(f"config.conditioning={config.conditioning!r} needs "
                     "config.cond_tokenizer_workdir: the workdir of a tokenizer trained on the "
                     "condition (see vqgan_jax.prior.conditions).")
  if config.model.embed_dim % config.model.num_heads:
    raise ValueError(f"config.model.embed_dim={config.model.embed_dim} is not divisible by "
                     f"config.model.num_heads={config.model.num_heads}.")
