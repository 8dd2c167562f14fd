"""Reference rows for the tokenizer table: what the eval metrics read for a reconstruction that
carries (almost) nothing, through the same `Evaluation` as a trained tokenizer.

    python -m vqgan_jax.tokenizer.baselines --config=configs/tiny.py

`flat_mean_colour`: every image replaced by its own mean colour, 3 numbers per image. A
tokenizer that does not beat it on PSNR, SSIM and LPIPS has learnt less than the mean colour.
(The other reference row, the same network without a quantizer, is a training run:
`--config.model.quantizer_type=none`.)
"""
from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from vqgan_jax.runtime import host_data, sharding, trainer_config
from vqgan_jax.tokenizer.evaluate import Evaluation

BASELINES = ("flat_mean_colour",)


class FlatMeanColour(nn.Module):
  """(B, H, W, C) images -> each image's mean colour everywhere; one 'code' per image."""
  codebook_size: int = 1

  @nn.compact
  def __call__(self, images: jax.Array):
    mean = jnp.mean(images.astype(jnp.float32), axis=(1, 2), keepdims=True)
    indices = jnp.zeros(images.shape[:1] + (1, 1), jnp.int32)
    return jnp.broadcast_to(mean, images.shape), _QuantizerLike(indices)


class _QuantizerLike:
  """The one field of `QuantizerOutput` the evaluators read."""

  def __init__(self, indices: jax.Array):
    self.indices = indices


def baseline_metrics(config: ml_collections.ConfigDict, kind: str = "flat_mean_colour") -> dict:
  """Reconstruction metrics (l1, PSNR, SSIM, LPIPS) of baseline `kind` on the whole eval split."""
  if kind not in BASELINES:
    raise ValueError(f"Unknown baseline {kind!r}; use one of {BASELINES}.")
  mesh = sharding.create_mesh()
  trainer_config.validate_batch_and_data(config, mesh)
  evaluation = Evaluation(FlatMeanColour(), ("reconstruction",), mesh)
  results = evaluation.run({}, host_data.eval_batches(config))
  return {"baseline": kind, "eval_split": config.data.eval_split,
          "image_size": config.data.image_size, **results}


def main(argv):
  del argv
  print(json.dumps(baseline_metrics(flags.FLAGS.config), indent=2))


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "A tokenizer config (its data block).")
  flags.mark_flags_as_required(["config"])
  app.run(main)
