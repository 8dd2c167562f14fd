"""`--mode=codebook`: every code decoded on its own, ordered by usage, and a usage histogram.

    python -m vqgan_jax.main --config=configs/tiny.py --workdir=workdirs/tiny --mode=codebook

Usage is counted over the whole eval split (the same histogram as `--mode=eval`'s
codebook_usage). Each code is decoded from a constant map of that code, (tile + 2)^2 latent
cells, and the centre tile x tile cells are kept, so the zero padding of the decoder's border
convolutions does not tint the picture; `tile` makes each code at least 16 pixels wide.
Writes WORKDIR/codebook/{codes_<step>.png, usage_<step>.png, usage_<step>.json}.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqgan_jax.models.autoencoder import downsampling_factor
from vqgan_jax.runtime import checkpoints, host_data, sharding, storage, trainer_config
from vqgan_jax.tokenizer import evaluate
from vqgan_jax.tokenizer.config import validate_saved_modality
from vqgan_jax.tokenizer.modality import to_pictures
from vqgan_jax.tokenizer.load import restore_tokenizer

MIN_TILE_PIXELS = 16
DECODE_BATCH = 64


def decode_every_code(model, variables, order: np.ndarray, modality: str = "image") -> np.ndarray:
  """uint8 (K, s, s, 3) images of the codes in `order`, each decoded from a constant map
  (for a segmentation tokenizer, its coloured argmax label map)."""
  factor = downsampling_factor(model.ch_mult)
  tile = max(1, math.ceil(MIN_TILE_PIXELS / factor))
  decode = jax.jit(lambda v, idx: model.apply(v, idx, method="decode_indices"))
  size = tile + 2
  images = []
  for start in range(0, len(order), DECODE_BATCH):
    codes = order[start:start + DECODE_BATCH]
    padded = np.concatenate([codes, np.full(DECODE_BATCH - len(codes), codes[0])])
    maps = jnp.asarray(np.broadcast_to(padded[:, None, None], (DECODE_BATCH, size, size)))
    pixels = np.asarray(decode(variables, maps))[:len(codes), factor:-factor, factor:-factor]
    images.append(to_pictures(pixels, modality))
  return np.concatenate(images)


def tile_images(images: np.ndarray, columns: int) -> np.ndarray:
  """(N, s, s, 3) uint8 -> one picture, row-major, a 1-pixel white gap between tiles."""
  n, s = images.shape[:2]
  rows = -(-n // columns)
  canvas = np.full((rows * (s + 1) + 1, columns * (s + 1) + 1, 3), 255, np.uint8)
  for i, image in enumerate(images):
    r, c = divmod(i, columns)
    canvas[1 + r * (s + 1):1 + r * (s + 1) + s, 1 + c * (s + 1):1 + c * (s + 1) + s] = image
  return canvas


def plot_usage(histogram: np.ndarray, path: str, title: str) -> None:
  """Sorted per-code counts (log scale) with the share of codes used."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  counts = np.sort(histogram)[::-1]
  figure, axis = plt.subplots(figsize=(8, 3.5), dpi=100)
  axis.bar(np.arange(len(counts)), counts, width=1.0, color="#3b6ea8")  # 0: no bar.
  axis.set_yscale("log")
  axis.set_xlim(0, len(counts))
  axis.set_ylim(bottom=0.8)
  axis.set_xlabel("code rank (most used first)")
  axis.set_ylabel("tokens on the eval split")
  axis.set_title(title, fontsize=10)
  figure.tight_layout()
  storage.save_figure(path, figure)
  plt.close(figure)


def visualize_codebook(config: ml_collections.ConfigDict, workdir: str,
                       step: int | None = None) -> dict[str, Any]:
  """Counts code usage on the eval split and writes the code atlas and the histogram."""
  mesh = sharding.create_mesh()
  trainer_config.validate_batch_and_data(config, mesh)
  validate_saved_modality(config, checkpoints.read_config(workdir), workdir)
  model, variables, step = restore_tokenizer(workdir, step, sharding=sharding.replicated(mesh))
  params = variables["params"]
  evaluation = evaluate.Evaluation(model, ("codebook",), mesh, modality=config.modality)
  results = evaluation.run(params, host_data.eval_batches(config))
  histogram = evaluation.evaluators["codebook"].histogram
  order = np.argsort(-histogram, kind="stable")
  summary = {"step": step, "num_images": int(results["num_images"]),
             "codebook_size": int(len(histogram)), "codebook_usage": results["codebook_usage"],
             "perplexity": results["perplexity"], "unused_codes": int(np.sum(histogram == 0)),
             "counts": histogram.astype(int).tolist(), "order_by_usage": order.tolist()}
  if jax.process_index() != 0:
    return summary
  out_dir = storage.join(workdir, "codebook")
  atlas = tile_images(decode_every_code(model, variables, order, config.modality),
                      columns=math.ceil(math.sqrt(len(order))))
  storage.save_png(storage.join(out_dir, f"codes_{step}.png"), atlas)
  plot_usage(histogram, storage.join(out_dir, f"usage_{step}.png"),
             f"{summary['unused_codes']} of {len(histogram)} codes unused on "
             f"{summary['num_images']} eval images; usage {summary['codebook_usage']:.1%}, "
             f"perplexity {summary['perplexity']:.0f} (step {step})")
  storage.write_json(storage.join(out_dir, f"usage_{step}.json"), summary)
  logging.info("Wrote %s/{codes,usage}_%d.png and usage_%d.json: usage %.4f, %d unused codes.",
               out_dir, step, step, summary["codebook_usage"], summary["unused_codes"])
  return summary
