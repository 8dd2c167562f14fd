"""`--mode=sample`: images from a trained prior, drawn on every device of every host, written
under WORKDIR/samples/.

    python -m vqgan_jax.main --config=configs/tiny_prior.py --workdir=workdirs/tiny_prior \
        --mode=sample --config.sample.top_k=100 --config.sample.guidance_scale=2.0

`config.sample.num_samples` images are drawn in global batches of `config.sample.batch_size`
rows (rounded up to a multiple of the device count; the last batch padded, the padding dropped)
split over the mesh's data axis: each device samples and decodes its own rows. Sample i is
drawn from its own key, `fold_in(PRNGKey(config.sample.seed), i)`, with class
`classes[i % len(classes)]` or eval image i as its condition, so it is the same image whatever
the device count, host count or batch size.

Each host writes the PNGs of its own rows, `sample_{i:05d}.png`, and keeps no images past their
batch; with `config.sample.fid` it adds their Inception pool3 features to running sums, which
are summed over hosts at the end for the sample FID against the eval split or
`config.fid_reference_stats`. Process 0 alone writes `grid.png` (the first
`config.sample.grid_images` samples, gathered as they are drawn) and `samples.json` (the
options, the tokens/s of all hosts together, the FID). `config.sample.grid_shape` larger than
the training grid samples larger images with taming's sliding window;
`config.sample.completion=N` also writes `completion.png`: N eval images (top row), their bottom
half resampled (bottom row). With `conditioning='image'` sample i is conditioned on eval image i
(downsampled and tokenized as in training; every host reads the eval images in order, one batch
at a time), and `conditions.png` shows the first grid's conditions above their samples.
"""
from __future__ import annotations

import logging
import time
from typing import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

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


def _class_list(config, num_classes: int) -> list[int] | None:
  if config.conditioning != "class":
    return None
  classes = list(config.sample.classes) or list(range(num_classes))
  bad = [c for c in classes if not 0 <= c < num_classes]
  if bad:
    raise ValueError(f"config.sample.classes has labels {bad} outside [0, {num_classes}).")
  return classes


def _restore_params(workdir: str, step: int | None, sharding):
  raw, step = checkpoints.restore_raw_state(workdir, step, fields=("params",), sharding=sharding)
  return raw["params"], step


def rows_per_step(batch_size: int, num_samples: int, num_devices: int) -> int:
  """Rows of each global batch: `batch_size` (at most `num_samples`) rounded up to a multiple of
  the device count, so no device idles on padding except in the last batch."""
  rows = min(batch_size, num_samples)
  return -(-rows // num_devices) * num_devices


def row_keys(seed: int, indices: np.ndarray) -> np.ndarray:
  """The raw key of each sample, `fold_in(PRNGKey(seed), global index)` (host numpy, (N, 2))."""
  keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.PRNGKey(seed),
                                                 jnp.asarray(indices, jnp.uint32))
  return np.asarray(keys)


def _check_sample_config(config: ml_collections.ConfigDict) -> None:
  s = config.sample
  if s.num_samples < 1 or s.batch_size < 1 or s.grid_images < 0:
    raise ValueError(f"config.sample.num_samples={s.num_samples} and batch_size={s.batch_size} "
                     f"must be >= 1, grid_images={s.grid_images} >= 0.")
  if s.fid and s.num_samples < 2:
    raise ValueError("config.sample.fid needs at least 2 samples (config.sample.num_samples).")
  if config.conditioning == "image":
    available = input_pipeline.num_eval_examples(config)
    if available < s.num_samples:
      raise ValueError(f"config.sample.num_samples={s.num_samples} but the eval split has only "
                       f"{available} condition images.")


def _on_rows(mesh: Mesh, fn, num_row_args: int):
  """fn(replicated, *rows) jitted, each device on its own rows (shard_map over the data axis):
  sampling, decoding and Inception need no communication, and a device computes the same rows
  the same way whatever the mesh or the host layout."""
  rows = P(sharding.DATA_AXIS)
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(P(),) + (rows,) * num_row_args,
                               out_specs=rows, check_vma=False))


def _eval_image_batches(config, rows: int) -> Iterator[np.ndarray]:
  """Eval images in eval order, `rows` at a time (the conditions of samples 0, 1, ...)."""
  pending = []
  for batch in input_pipeline.create_eval_iterator(config, local_batch_size=rows,
                                                   process_index=0, process_count=1):
    pending.extend(np.asarray(batch["image"])[np.asarray(batch["mask"]) > 0])
    while len(pending) >= rows:
      yield np.stack(pending[:rows])
      pending = pending[rows:]
  if pending:  # The last samples' conditions, padded by repeating the last one.
    yield np.stack(pending + pending[-1:] * (rows - len(pending)))


def _tile(images: np.ndarray, per_row: int) -> list[np.ndarray]:
  """Rows of `per_row` images, the last one filled with black."""
  rows = [images[i:i + per_row] for i in range(0, len(images), per_row)]
  if len(rows[-1]) < per_row:
    blank = np.zeros((per_row - len(rows[-1]),) + images.shape[1:], np.uint8)
    rows[-1] = np.concatenate([rows[-1], blank])
  return rows


def _ranges(indices: list[int]) -> str:
  """'0-3,8-10' for [0, 1, 2, 3, 8, 9, 10] (sorted)."""
  spans, start = [], None
  for i, index in enumerate(indices):
    if start is None:
      start = index
    if i + 1 == len(indices) or indices[i + 1] != index + 1:
      spans.append(str(start) if start == index else f"{start}-{index}")
      start = None
  return ",".join(spans) or "none"


def sample_images(config: ml_collections.ConfigDict, workdir: str, step: int | None = None,
                  *, mesh: Mesh | None = None) -> dict:
  """Draws `config.sample.num_samples` images on `mesh` (default: every device of every host);
  returns what samples.json records (on every host)."""
  saved = checkpoints.read_config(workdir)
  if saved.get("stage") != "prior":
    raise ValueError(f"{workdir} is not a prior workdir (its config.json has no stage='prior'); "
                     "--mode=sample needs a workdir trained with a prior config.")
  _check_sample_config(config)
  s = config.sample
  mesh = mesh or sharding.create_mesh()
  replicated = sharding.replicated(mesh)
  tokenizers = load_tokenizers(config, replicated)
  grid = token_grid(config, tokenizers.model)
  big_grid = tuple(s.grid_shape) or grid
  if config.conditioning == "image" and big_grid != grid:
    raise ValueError("config.sample.grid_shape larger than the training grid is not supported "
                     "with conditioning='image' from the command line.")
  num_classes = input_pipeline.num_classes(config) if config.conditioning == "class" else 0
  classes = _class_list(config, num_classes)
  model = build_model(config, tokenizers, num_classes)
  params, step = _restore_params(workdir, step, replicated)
  inception_params = _inception_params(replicated) if s.fid else None
  out_dir = storage.join(workdir, "samples")
  writes = jax.process_index() == 0
  rows = rows_per_step(s.batch_size, s.num_samples, mesh.size)
  logging.info("Sampling %d images in %d global batches of %d rows over %d devices.",
               s.num_samples, -(-s.num_samples // rows), rows, mesh.size)

  def draw(params, keys, *cond):
    cond = cond[0] if cond else None
    n = keys.shape[0]
    if big_grid == grid:
      tokens = samplers.sample(model, params, keys, batch_size=n, cond=cond,
                               use_cache=s.use_cache, **_options(config))
      return tokens.reshape(n, *grid)
    return samplers.sample_grid(model, params, keys, grid_shape=big_grid, train_grid=grid,
                                cond=cond, batch_size=n, **_options(config))

  with_cond = config.conditioning != "none"
  draw_tokens = _on_rows(mesh, draw, 2 if with_cond else 1)
  decode = _on_rows(mesh, lambda p, codes: image_utils.to_uint8_on_device(
      tokenizers.decode(p, codes)), 1)
  cond_codes = _on_rows(mesh, tokenizers.cond_codes, 1)
  features = _on_rows(mesh, fid.pool3_of_uint8, 1)
  cond_batches = _eval_image_batches(config, rows) if config.conditioning == "image" else None

  running = fid.RunningStats() if inception_params is not None else None
  preview, preview_conditions, written = [], [], []
  compiled, elapsed, tokens_drawn = None, 0.0, 0
  for start in range(0, s.num_samples, rows):
    indices = np.arange(start, start + rows)
    real = min(rows, s.num_samples - start)
    inputs = [sharding.shard_host_batch(row_keys(s.seed, indices), mesh)]
    if classes is not None:
      labels = np.asarray([classes[i % len(classes)] for i in indices], np.int32)
      inputs.append(sharding.shard_host_batch(labels, mesh))
    if cond_batches is not None:
      cond_images = next(cond_batches)
      inputs.append(cond_codes(tokenizers.params, sharding.shard_host_batch(cond_images, mesh)))
      if writes and len(preview_conditions) < s.grid_images:
        preview_conditions.extend(image_utils.to_uint8(cond_images[:real]))
    if compiled is None:  # Compiled ahead, so the tokens/s below time sampling alone.
      compiled = draw_tokens.lower(params, *inputs).compile()
    jax.block_until_ready(inputs)
    t0 = time.perf_counter()
    tokens = jax.block_until_ready(compiled(params, *inputs))
    elapsed += time.perf_counter() - t0
    tokens_drawn += real * int(np.prod(big_grid))
    images = decode(tokenizers.params, tokens)
    batch_features = features(inception_params, images) if running is not None else None
    local_indices, local_images = sharding.local_rows(images)
    local_indices = start + local_indices  # Batch rows -> global sample indices.
    keep = local_indices < s.num_samples
    for index, image in zip(local_indices[keep], local_images[keep]):
      storage.save_png(storage.join(out_dir, f"sample_{index:05d}.png"), image)
    written.extend(local_indices[keep].tolist())
    if running is not None:
      feature_rows, local_features = sharding.local_rows(batch_features)
      running.update(local_features[start + feature_rows < s.num_samples])
    if start < s.grid_images:  # Every host takes part in the gather; process 0 keeps them.
      preview.extend(sharding.gather_to_host(images)[:min(real, s.grid_images - start)])
    del images, local_images, batch_features  # Nothing of a batch outlives it.

  if writes and preview:
    preview = np.stack(preview)
    per_row = int(np.ceil(np.sqrt(len(preview))))
    storage.save_png(storage.join(out_dir, "grid.png"),
                     image_utils.image_grid(_tile(preview, per_row)))
    if preview_conditions:  # Which eval image conditioned each sample: above it.
      conditions = _tile(np.stack(preview_conditions), per_row)
      storage.save_png(storage.join(out_dir, "conditions.png"), image_utils.image_grid(
          [row for pair in zip(conditions, _tile(preview, per_row)) for row in pair]))

  result = {"step": step, "num_samples": s.num_samples, "grid_shape": list(big_grid),
            "use_cache": bool(s.use_cache), **_options(config),
            "labels": None if classes is None else [classes[i % len(classes)]
                                                    for i in range(s.num_samples)],
            "tokens_per_second": tokens_drawn / elapsed if elapsed else None,
            "devices": mesh.size, "processes": jax.process_count()}
  if s.completion > 0:
    result["completion"] = _complete(config, model, params, tokenizers, grid, out_dir, replicated)
  if s.fid:
    result["fid"] = None if running is None else _sample_fid(config, running.summed_over_hosts())
  if writes:
    storage.write_json(storage.join(out_dir, "samples.json"), result, indent=2)
  logging.info("Process %d of %d wrote %d of the %d samples (%s)%s to %s.", jax.process_index(),
               jax.process_count(), len(written), s.num_samples, _ranges(sorted(written)),
               " and grid.png, samples.json" if writes else "", out_dir)
  logging.info("Samples: %s", result)
  return result


def _inception_params(replicated):
  """The FID Inception weights on the mesh, or None (with a warning) when not installed."""
  from vqgan_jax.models import inception  # pylint: disable=g-import-not-at-top
  try:
    return jax.device_put(inception.load_inception_params(), replicated)
  except inception.InceptionWeightsNotFound as e:
    logging.warning("Sample FID not computed: %s", e)
    return None


def _complete(config, model, params, tokenizers, grid, out_dir, replicated) -> str:
  """Bottom-half completion of the first `config.sample.completion` eval images (a few images,
  computed replicated on every host; process 0 writes them)."""
  examples = input_pipeline.first_eval_examples(config, config.sample.completion)
  images = jax.device_put(examples["image"], replicated)
  n = len(examples["image"])
  tokens = jax.jit(tokenizers.codes)(tokenizers.params, images)
  mask = np.zeros(grid, bool)
  mask[grid[0] // 2:] = True
  mask = jax.device_put(np.broadcast_to(mask.reshape(-1), tokens.shape), replicated)
  cond = None
  if config.conditioning == "class":
    cond = jax.device_put(examples["label"].astype(np.int32), replicated)
  completed = samplers.complete(model, params, jax.random.PRNGKey(config.sample.seed + 1),
                                tokens, mask, cond=cond, **_options(config))
  decoded = jax.jit(tokenizers.decode)(tokenizers.params, completed.reshape(n, *grid))
  rows = [image_utils.to_uint8(examples["image"]), image_utils.to_uint8(np.asarray(decoded))]
  path = storage.join(out_dir, "completion.png")
  if jax.process_index() == 0:
    storage.save_png(path, image_utils.image_grid(rows))
  return path


def _sample_fid(config, stats: fid.RunningStats) -> float:
  if config.fid_reference_stats:
    reference = fid.load_stats(config.fid_reference_stats)[:2]
  else:
    from vqgan_jax.metrics import fid_stats  # pylint: disable=g-import-not-at-top
    reference = fid_stats.eval_split_stats(config)[:2]
  return fid.fid_from_stats(*stats.stats(), *reference)
