"""The prior's Transformer, sized from its config and the frozen tokenizers: the code grid of a
training image, the conditioning prefix, the vocabularies."""
from __future__ import annotations

import ml_collections

from vqgan_jax.data import input_pipeline, text
from vqgan_jax.models.autoencoder import downsampling_factor
from vqgan_jax.models.transformer import Transformer
from vqgan_jax.prior import conditions
from vqgan_jax.prior.frozen_tokenizers import Tokenizers
from vqgan_jax.runtime import trainer_config


def token_grid(config: ml_collections.ConfigDict, tokenizer_model) -> tuple[int, int]:
  """The (h, w) code grid of one training image."""
  factor = downsampling_factor(tokenizer_model.ch_mult)
  h, w = input_pipeline.crop_shape(config.data.image_size)
  if h % factor or w % factor:
    raise ValueError(f"config.data.image_size={config.data.image_size} is not divisible by the "
                     f"tokenizer's downsampling factor {factor}; use a multiple of {factor}.")
  return h // factor, w // factor


def cond_grid(config: ml_collections.ConfigDict, tokenizers: Tokenizers) -> tuple[int, int]:
  """The (h, w) grid of condition codes of one training example (tokenized conditions)."""
  h, w = input_pipeline.crop_shape(config.data.image_size)
  d = tokenizers.cond_downsample
  factor = downsampling_factor(tokenizers.cond_model.ch_mult)
  if h % (d * factor) or w % (d * factor):
    what = "config.cond_downsample * " if d > 1 else ""
    raise ValueError(f"config.data.image_size={config.data.image_size} must be divisible by "
                     f"{what}the condition tokenizer's factor = {d * factor}.")
  return h // d // factor, w // d // factor


def cond_length(config: ml_collections.ConfigDict, tokenizers: Tokenizers) -> int:
  """Tokens of the conditioning prefix (condition codes or caption; 0 otherwise)."""
  if conditions.kind(config) == "text":
    return config.data.caption_length
  if not conditions.is_tokenized(config):
    return 0
  grid = cond_grid(config, tokenizers)
  return grid[0] * grid[1]


def cond_vocab_size(config: ml_collections.ConfigDict, tokenizers: Tokenizers) -> int:
  """Condition token ids: the caption bytes, or the condition tokenizer's codes (plus the null
  code when `condition_dropout` trains one)."""
  if conditions.kind(config) == "text":
    return text.VOCAB_SIZE
  if not conditions.is_tokenized(config):
    return 0
  return tokenizers.cond_model.codebook_size + int(conditions.has_null(config))


def cond_null_token(config: ml_collections.ConfigDict, tokenizers: Tokenizers) -> int:
  """The token whose all-`cond_len` row is the null condition (-1: none): the empty caption's
  PAD, or the null code after a condition tokenizer's codes."""
  if conditions.kind(config) == "text":
    return text.PAD
  if conditions.is_tokenized(config) and conditions.has_null(config):
    return tokenizers.cond_model.codebook_size
  return -1


def build_model(config: ml_collections.ConfigDict, tokenizers: Tokenizers,
                num_classes: int) -> Transformer:
  h, w = token_grid(config, tokenizers.model)
  return Transformer(
      vocab_size=tokenizers.model.codebook_size, seq_len=h * w,
      num_classes=num_classes if config.conditioning == "class" else 0,
      cond_vocab_size=cond_vocab_size(config, tokenizers),
      cond_len=cond_length(config, tokenizers),
      cond_null_token=cond_null_token(config, tokenizers),
      dtype=trainer_config.compute_dtype(config),
      **config.model.to_dict())
