"""`--mode=sample`: images from a trained prior, written under WORKDIR/samples/.

    python -m vqgan_jax.main --config=configs/tiny_prior.py --workdir=workdirs/tiny_prior \
        --mode=sample --config.sample.top_k=100 --config.sample.guidance_scale=2.0

Writes `sample_00000.png`, ... (one per image), `grid.png`, and `samples.json` (the options,
the tokens/s of the sampler and, with `config.sample.fid`, the sample FID against the eval split
or `config.fid_reference_stats`). `config.sample.grid_shape` larger than the training grid
samples larger images with taming's sliding window; `config.sample.completion=N` also writes
`completion.png`: N eval images (top row), their bottom half resampled (bottom row). With
`conditioning='image'` the conditions are the first `num_samples` eval images (downsampled and
tokenized as in training), shown above their samples in `conditions.png`.
"""
from __future__ import annotations

import logging
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqgan_jax.data import input_pipeline
from vqgan_jax.metrics import fid
from vqgan_jax.prior import samplers
from vqgan_jax.prior.frozen_tokenizers import load_tokenizers
from vqgan_jax.prior.model import build_model, token_grid
from vqgan_jax.runtime import checkpoints, images as image_utils, sharding, storage


def _options(config: ml_collections.ConfigDict) -> dict:
  s = config.sample
  return dict(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
              guidance_scale=s.guidance_scale)


def _labels(config, num_classes: int, n: int) -> np.ndarray | None:
  if config.conditioning != "class":
    return None
  classes = list(config.sample.classes) or list(range(num_classes))
  bad = [c for c in classes if not 0 <= c < num_classes]
  if bad:
    raise ValueError(f"config.sample.classes has labels {bad} outside [0, {num_classes}).")
  return np.asarray([classes[i % len(classes)] for i in range(n)], np.int32)


def _restore_params(workdir: str, step: int | None, sharding):
  raw, step = checkpoints.restore_raw_state(workdir, step, fields=("params",), sharding=sharding)
  return raw["params"], step


def sample_images(config: ml_collections.ConfigDict, workdir: str,
                  step: int | None = None) -> dict:
  """Draws `config.sample.num_samples` images; returns what samples.json records."""
  saved = checkpoints.read_config(workdir)
  if saved.get("stage") != "prior":
    raise ValueError(f"{workdir} is not a prior workdir (its config.json has no stage='prior'); "
                     "--mode=sample needs a workdir trained with a prior config.")
  replicated = sharding.replicated(sharding.create_mesh())
  tokenizers = load_tokenizers(config, replicated)
  grid = token_grid(config, tokenizers.model)
  num_classes = input_pipeline.num_classes(config) if config.conditioning == "class" else 0
  model = build_model(config, tokenizers, num_classes)
  params, step = _restore_params(workdir, step, replicated)
  s = config.sample
  out_dir = storage.join(workdir, "samples")
  big_grid = tuple(s.grid_shape) or grid
  decode = jax.jit(tokenizers.decode)
  rng = jax.random.PRNGKey(s.seed)
  labels = _labels(config, num_classes, s.num_samples)
  cond_images = None
  if config.conditioning == "image":
    if big_grid != grid:
      raise ValueError("config.sample.grid_shape larger than the training grid is not supported "
                       "with conditioning='image' from the command line.")
    cond_images = _eval_images(config, s.num_samples)

  images, elapsed, tokens_drawn = [], 0.0, 0
  for start in range(0, s.num_samples, s.batch_size):
    n = min(s.batch_size, s.num_samples - start)
    cond = None if labels is None else jnp.asarray(labels[start:start + n])
    if cond_images is not None:
      cond = tokenizers.cond_codes(tokenizers.params, jnp.asarray(cond_images[start:start + n]))
    rng, key = jax.random.split(rng)
    t0 = time.perf_counter()
    if big_grid == grid:
      tokens = samplers.sample(model, params, key, batch_size=n, cond=cond,
                               use_cache=s.use_cache, **_options(config))
    else:
      tokens = samplers.sample_grid(model, params, key, grid_shape=big_grid, train_grid=grid,
                                    cond=cond, batch_size=n, **_options(config))
    tokens = jax.block_until_ready(tokens)
    if start > 0:  # The first batch includes compilation.
      elapsed += time.perf_counter() - t0
      tokens_drawn += int(np.prod(tokens.shape))
    images.append(image_utils.to_uint8(np.asarray(decode(
        tokenizers.params, tokens.reshape(n, *big_grid)))))
  images = np.concatenate(images)
  writes = jax.process_index() == 0  # Every host drew the same samples; one writes them.
  if writes:
    for i, image in enumerate(images):
      storage.save_png(storage.join(out_dir, f"sample_{i:05d}.png"), image)
    per_row = int(np.ceil(np.sqrt(len(images))))
    rows = [images[i:i + per_row] for i in range(0, len(images), per_row)]
    if len(rows[-1]) < per_row:
      rows[-1] = np.concatenate([rows[-1], np.zeros((per_row - len(rows[-1]),) + images.shape[1:],
                                                    np.uint8)])
    storage.save_png(storage.join(out_dir, "grid.png"), image_utils.image_grid(rows))
  if writes and cond_images is not None:  # Which eval image conditioned each sample.
    storage.save_png(storage.join(out_dir, "conditions.png"), image_utils.image_grid(
        [image_utils.to_uint8(cond_images), images]))

  result = {"step": step, "num_samples": len(images), "grid_shape": list(big_grid),
            "use_cache": bool(s.use_cache), **_options(config),
            "labels": None if labels is None else labels.tolist(),
            "tokens_per_second": tokens_drawn / elapsed if elapsed else None}
  if s.completion > 0:
    result["completion"] = _complete(config, model, params, tokenizers, grid, out_dir)
  if s.fid:
    result["fid"] = _sample_fid(config, images)
  if writes:
    storage.write_json(storage.join(out_dir, "samples.json"), result, indent=2)
  logging.info("Wrote %d samples to %s: %s", len(images), out_dir, result)
  return result


def _eval_images(config, n: int) -> np.ndarray:
  """The first `n` images of the eval split (image conditioning of samples)."""
  images = input_pipeline.first_eval_examples(config, n)["image"]
  if len(images) < n:
    raise ValueError(f"config.sample.num_samples={n} but the eval split has only {len(images)} "
                     "condition images.")
  return images


def _complete(config, model, params, tokenizers, grid, out_dir) -> str:
  """Bottom-half completion of the first `config.sample.completion` eval images."""
  examples = input_pipeline.first_eval_examples(config, config.sample.completion)
  images = jnp.asarray(examples["image"])
  n = len(images)
  tokens = tokenizers.codes(tokenizers.params, images)
  mask = np.zeros(grid, bool)
  mask[grid[0] // 2:] = True
  mask = jnp.broadcast_to(jnp.asarray(mask.reshape(-1)), tokens.shape)
  cond = jnp.asarray(examples["label"]) if config.conditioning == "class" else None
  completed = samplers.complete(model, params, jax.random.PRNGKey(config.sample.seed + 1),
                                tokens, mask, cond=cond, **_options(config))
  decode = jax.jit(tokenizers.decode)
  rows = [image_utils.to_uint8(np.asarray(images)),
          image_utils.to_uint8(np.asarray(decode(tokenizers.params,
                                                 completed.reshape(n, *grid))))]
  path = storage.join(out_dir, "completion.png")
  if jax.process_index() == 0:
    storage.save_png(path, image_utils.image_grid(rows))
  return path


def _sample_fid(config, images: np.ndarray) -> float | None:
  from vqgan_jax.models import inception  # pylint: disable=g-import-not-at-top
  if len(images) < 2:
    raise ValueError("config.sample.fid needs at least 2 samples (config.sample.num_samples).")
  try:
    features = fid.inception_pool3(images)
  except inception.InceptionWeightsNotFound as e:
    logging.warning("Sample FID not computed: %s", e)
    return None
  if config.fid_reference_stats:
    reference = fid.load_stats(config.fid_reference_stats)[:2]
  else:
    from vqgan_jax.metrics import fid_stats  # pylint: disable=g-import-not-at-top
    reference = fid_stats.eval_split_stats(config)[:2]
  return fid.fid_from_stats(*fid.feature_stats(features), *reference)
