"""The frozen tokenizer(s) a prior models: codes of the images, codes of the conditioning images,
and decoding for the sample grids. Their params are passed into jitted code as an argument,
never baked in and never in the optimizer or the checkpoint."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from vqgan_jax.prior import conditions
from vqgan_jax.runtime import checkpoints, trainer_config
from vqgan_jax.tokenizer.load import load_tokenizer, restore_tokenizer


class Tokenizers:
  """The frozen tokenizer(s): modules here, params (`self.params`) passed to jitted code."""

  def __init__(self, model, params, cond_model=None, cond_params=None, cond_downsample=1,
               step: int | None = None):
    self.model, self.cond_model, self.cond_downsample = model, cond_model, cond_downsample
    self.step = step  # The tokenizer checkpoint's step (None: not known).
    self.params = {"main": params, "cond": cond_params or {}}

  def codes(self, params, images: jax.Array) -> jax.Array:
    """(B, h*w) int32 raster-order codes of images in [-1, 1]."""
    idx = self.model.apply({"params": params["main"]}, images, method="encode_to_indices")
    return jax.lax.stop_gradient(idx.reshape(idx.shape[0], -1))

  def cond_codes(self, params, inputs: jax.Array) -> jax.Array:
    """(B, cond_len) raster-order codes of condition inputs (`conditions.cond_input`)."""
    idx = self.cond_model.apply({"params": params["cond"]}, inputs, method="encode_to_indices")
    return jax.lax.stop_gradient(idx.reshape(inputs.shape[0], -1))

  def decode(self, params, codes: jax.Array) -> jax.Array:
    """Images from (B, h, w) codes."""
    return self.model.apply({"params": params["main"]}, codes, method="decode_indices")

  def conditioning(self, config: ml_collections.ConfigDict, params,
                   batch: dict[str, jax.Array]) -> jax.Array | None:
    """The prior's `cond` argument for a batch: None, the labels, condition codes or caption
    tokens."""
    kind = conditions.kind(config)
    if kind == "class":
      return batch["label"].astype(jnp.int32)
    if kind == "text":
      return conditions.caption_tokens(batch)
    if kind in conditions.TOKENIZED:
      return self.cond_codes(params, conditions.cond_input(config, batch, self.cond_downsample))
    return None


def load_tokenizers(config: ml_collections.ConfigDict,
                    sharding: jax.sharding.Sharding | None = None) -> Tokenizers:
  """The tokenizer of `config.tokenizer_workdir` (and, for a tokenized condition, the one of
  `config.cond_tokenizer_workdir`), its weights restored straight onto `sharding`; the encoders
  and decoders compute in `config.dtype` (the quantizer's code search stays float32)."""
  if not config.tokenizer_workdir:
    raise ValueError("config.tokenizer_workdir is empty: set it to the workdir of a trained "
                     "(python -m vqgan_jax.main --config=configs/tiny.py) or converted tokenizer.")
  dtype = trainer_config.compute_dtype(config)
  model, variables, step = restore_tokenizer(config.tokenizer_workdir, sharding=sharding,
                                             dtype=dtype)
  if model.quantizer_type == "none":
    raise ValueError(f"{config.tokenizer_workdir} was trained with quantizer_type='none' "
                     "(continuous latents, the reference ceiling): it has no codes for a prior. "
                     "Set config.tokenizer_workdir to a quantized tokenizer.")
  cond_model, cond_params = None, {}
  if conditions.is_tokenized(config):
    if not config.cond_tokenizer_workdir:
      raise ValueError(f"config.conditioning={config.conditioning!r} needs "
                       "config.cond_tokenizer_workdir (the tokenizer of the condition).")
    check_cond_tokenizer(config)
    cond_model, cond_vars = load_tokenizer(config.cond_tokenizer_workdir, sharding=sharding,
                                           dtype=dtype)
    cond_params = cond_vars["params"]
  downsample = config.cond_downsample if conditions.kind(config) == "low_res" else 1
  return Tokenizers(model, variables["params"], cond_model, cond_params, downsample, step)


def check_cond_tokenizer(config: ml_collections.ConfigDict) -> None:
  """The condition tokenizer must have been trained on the condition's modality (and, for label
  maps, on the same number of classes)."""
  saved = checkpoints.read_config(config.cond_tokenizer_workdir)
  expected = conditions.COND_MODALITY[conditions.kind(config)]
  trained_on = saved.get("modality", "image")
  if trained_on != expected:
    raise ValueError(f"config.cond_tokenizer_workdir={config.cond_tokenizer_workdir} was trained "
                     f"with modality={trained_on!r}; conditioning={config.conditioning!r} needs "
                     f"a tokenizer trained with --config.modality={expected}.")
  if expected == "segmentation":
    classes = saved.get("data", {}).get("num_segmentation_classes")
    if classes != config.data.num_segmentation_classes:
      raise ValueError(f"The segmentation tokenizer {config.cond_tokenizer_workdir} was trained "
                       f"on {classes} classes, config.data.num_segmentation_classes="
                       f"{config.data.num_segmentation_classes}; set them equal.")
