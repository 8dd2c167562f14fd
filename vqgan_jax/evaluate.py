"""Reconstruction metrics over the evaluation split, jitted once, masked so every image counts once.

`TrainingEvaluator` runs during training (every `config.eval_every_steps` on
`config.num_eval_images` images, and at the end). Per-image sums are accumulated on device with
the padding mask, so a last partial batch is padded and masked, never dropped.
"""
from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqgan_jax import input_pipeline, sharding
from vqgan_jax.models.lpips import LPIPS


def _to_unit_uint8_grid(x: jax.Array) -> jax.Array:
  """[-1, 1] -> uint8 levels -> [0, 1], as images are stored and compared."""
  return jnp.clip(jnp.round((x.astype(jnp.float32) + 1.0) * 127.5), 0, 255) / 255.0


def batch_sums(params, lpips_params, batch, *, model) -> dict[str, jax.Array]:
  """Masked per-batch sums of reconstruction metrics and the code histogram."""
  images, mask = batch["image"], batch["mask"].astype(jnp.float32)
  recon, qout = model.apply({"params": params}, images)
  recon = recon.astype(jnp.float32)
  l1 = jnp.mean(jnp.abs(images - recon), axis=(1, 2, 3))
  lp = LPIPS().apply({"params": lpips_params}, images, recon)
  mse = jnp.mean(jnp.square(_to_unit_uint8_grid(images) - _to_unit_uint8_grid(recon)), axis=(1, 2, 3))
  psnr = 10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-10))
  indices = qout.indices.reshape(images.shape[0], -1)
  weights = jnp.broadcast_to(mask[:, None], indices.shape)
  histogram = jnp.zeros((model.codebook_size,), jnp.float32).at[indices.ravel()].add(weights.ravel())
  return {"count": mask.sum(), "l1": (l1 * mask).sum(), "lpips": (lp * mask).sum(),
          "psnr": (psnr * mask).sum(), "histogram": histogram}


def summarize(sums: dict[str, np.ndarray]) -> dict[str, float]:
  count = float(sums["count"])
  hist = np.asarray(sums["histogram"], np.float64)
  probs = hist / max(hist.sum(), 1.0)
  entropy = -np.sum(probs[probs > 0] * np.log(probs[probs > 0]))
  return {
      "eval/num_images": count,
      "eval/l1": float(sums["l1"]) / count,
      "eval/lpips": float(sums["lpips"]) / count,
      "eval/psnr": float(sums["psnr"]) / count,
      "eval/codebook_usage": float(np.mean(hist > 0)),
      "eval/perplexity": float(np.exp(entropy)),
  }


class TrainingEvaluator:
  """Reconstruction metrics on held-out images during training."""

  def __init__(self, config: ml_collections.ConfigDict, model, mesh, lpips_params: Any):
    self._config = config
    self._mesh = mesh
    self._lpips_params = lpips_params
    self._sums = jax.jit(lambda p, l, b: batch_sums(p, l, b, model=model),
                         out_shardings=sharding.replicated(mesh))

  def evaluate(self, params) -> dict[str, float]:
    config = self._config
    local_batch = config.batch_size // jax.process_count()
    iterator = input_pipeline.create_eval_iterator(
        config, local_batch_size=local_batch, process_index=jax.process_index(),
        process_count=jax.process_count())
    if config.num_eval_images > 0:
      iterator = itertools.islice(iterator, -(-config.num_eval_images // config.batch_size))
    total = None
    for batch in iterator:
      sums = self._sums(params, self._lpips_params, sharding.global_batch(batch, self._mesh))
      total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    return summarize(jax.device_get(total))
