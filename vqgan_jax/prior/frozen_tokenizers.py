"""The frozen tokenizer(s) a prior models: codes of the images, codes of the conditioning images,
and decoding for the sample grids. Their params are passed into jitted code as an argument,
never baked in and never in the optimizer or the checkpoint."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from vqgan_jax.runtime import trainer_config
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

  def cond_codes(self, params, images: jax.Array) -> jax.Array:
    """(B, cond_len) codes of the downsampled images (image conditioning)."""
    b, h, w, c = images.shape
    d = self.cond_downsample
    small = jax.image.resize(images, (b, h // d, w // d, c), "linear", antialias=True)
    idx = self.cond_model.apply({"params": params["cond"]}, small, method="encode_to_indices")
    return jax.lax.stop_gradient(idx.reshape(b, -1))

  def decode(self, params, codes: jax.Array) -> jax.Array:
    """Images from (B, h, w) codes."""
    return self.model.apply({"params": params["main"]}, codes, method="decode_indices")

  def conditioning(self, config: ml_collections.ConfigDict, params,
                   batch: dict[str, jax.Array]) -> jax.Array | None:
    """The prior's `cond` argument for a batch: None, the labels, or condition codes."""
    if config.conditioning == "class":
      return batch["label"].astype(jnp.int32)
    if config.conditioning == "image":
      return self.cond_codes(params, batch["image"].astype(jnp.float32))
    return None


def load_tokenizers(config: ml_collections.ConfigDict,
                    sharding: jax.sharding.Sharding | None = None) -> Tokenizers:
  """The tokenizer of `config.tokenizer_workdir` (and, for 'image' conditioning, the one of
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
  if config.conditioning == "image":
    if not config.cond_tokenizer_workdir:
      raise ValueError("config.conditioning='image' needs config.cond_tokenizer_workdir (the "
                       "tokenizer of the downsampled conditioning images).")
    cond_model, cond_vars = load_tokenizer(config.cond_tokenizer_workdir, sharding=sharding,
                                           dtype=dtype)
    cond_params = cond_vars["params"]
  return Tokenizers(model, variables["params"], cond_model, cond_params, config.cond_downsample,
                    step)
