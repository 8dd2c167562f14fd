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
half resampled (bottom row). With a tokenized condition or captions (`vqgan_jax.prior.conditions`)
sample i is conditioned on eval example i's (its low-resolution copy, label map, edges, drawing or
caption, made as in training; every host reads the eval examples in order, one batch at a time),
or every sample on the user's `config.sample.condition` file / `config.sample.prompt`
(`vqgan_jax.prior.user_conditions`); a condition larger than the training size gives larger
samples through the sliding window, the condition's code grid cropped with each window.
`conditions.png` shows the first grid's conditions above their samples (and, for eval
conditions, the eval image below each); samples.json lists the captions.
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

from vqgan_jax.data import input_pipeline, text
from vqgan_jax.metrics import fid
from vqgan_jax.models.autoencoder import downsampling_factor
from vqgan_jax.prior import condition_agreement, conditions, samplers, user_conditions
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
  if _conditions_from_eval(config):
    available = input_pipeline.num_eval_examples(config)
    if available < s.num_samples:
      raise ValueError(f"config.sample.num_samples={s.num_samples} but the eval split has only "
                       f"{available} condition examples (or give --config.sample.condition / "
                       "prompt).")


def _conditions_from_eval(config) -> bool:
  """Whether sample i takes eval example i's condition (no user condition given)."""
  s = config.sample
  return (conditions.is_tokenized(config) or conditions.kind(config) == "text") and not (
      s.condition or s.prompt)


def _sampling_grid(config, tokenizers, grid, user) -> tuple[int, int]:
  """The token grid of the samples: the user condition's, else config.sample.grid_shape, else
  the training grid; ValueError when a condition cannot give it."""
  big_grid = tuple(config.sample.grid_shape) or grid
  if user is not None and conditions.kind(config) != "text":
    factor = downsampling_factor(tokenizers.model.ch_mult)
    h, w = user.image_hw
    if h % factor or w % factor:
      raise ValueError(f"The {user.description} gives {h}x{w} images, not divisible by the "
                       f"tokenizer's factor {factor}; crop or pad it to a multiple of {factor}.")
    if config.sample.grid_shape and tuple(config.sample.grid_shape) != (h // factor, w // factor):
      raise ValueError(f"config.sample.grid_shape={tuple(config.sample.grid_shape)} disagrees "
                       f"with the {user.description} ({h}x{w}); leave grid_shape empty.")
    big_grid = (h // factor, w // factor)
  if big_grid[0] < grid[0] or big_grid[1] < grid[1]:
    raise ValueError(f"Samples of {big_grid} tokens are smaller than the training grid {grid}; "
                     "give a condition / grid_shape at least the training size.")
  if big_grid != grid and _conditions_from_eval(config):
    raise ValueError("config.sample.grid_shape larger than the training grid needs a condition "
                     "that large: give --config.sample.condition=PATH (eval conditions have the "
                     "training size).")
  return big_grid


def _user_rows(config, tokenizers, model, user, big_grid, grid, rows, mesh, replicated):
  """The user's condition as the sampler's `cond`, the same for all `rows` rows (sharded)."""
  batch = jax.device_put({k: jnp.asarray(v) for k, v in user.batch.items()}, replicated)
  cond = np.asarray(jax.jit(lambda p, b: tokenizers.conditioning(config, p, b))(
      tokenizers.params, batch))
  if conditions.is_tokenized(config):
    cond_hw = (user.image_hw[0] // tokenizers.cond_downsample,
               user.image_hw[1] // tokenizers.cond_downsample)
    factor = downsampling_factor(tokenizers.cond_model.ch_mult)
    cond_grid = (cond_hw[0] // factor, cond_hw[1] // factor)
    if big_grid != grid:  # Sliding window: the condition's grid must align with the image's.
      if cond_grid != big_grid:
        raise ValueError(f"The {user.description} is larger than the training size, which needs "
                         f"condition codes aligned with the image codes; its grid {cond_grid} "
                         f"differs from the samples' {big_grid} (conditioning "
                         f"{config.conditioning!r}); give a condition of the training size.")
      cond = cond.reshape(1, *big_grid)
    elif cond.shape[1] != model.cond_len:
      raise ValueError(f"The {user.description} gives {cond.shape[1]} condition codes; the "
                       f"prior takes {model.cond_len}.")
  return sharding.shard_host_batch(np.broadcast_to(cond, (rows,) + cond.shape[1:]), mesh)


def _on_rows(mesh: Mesh, fn, num_row_args: int):
  """fn(replicated, *rows) jitted, each device on its own rows (shard_map over the data axis):
  sampling, decoding and Inception need no communication, and a device computes the same rows
  the same way whatever the mesh or the host layout."""
  rows = P(sharding.DATA_AXIS)
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(P(),) + (rows,) * num_row_args,
                               out_specs=rows, check_vma=False))


def _eval_example_batches(config, rows: int) -> Iterator[dict[str, np.ndarray]]:
  """Eval examples (image, label, condition features) in eval order, `rows` at a time (the
  conditions of samples 0, 1, ...)."""
  pending = []
  for batch in input_pipeline.create_eval_iterator(config, local_batch_size=rows,
                                                   process_index=0, process_count=1):
    real = np.asarray(batch.pop("mask")) > 0
    pending.extend({k: np.asarray(v)[i] for k, v in batch.items()} for i in np.flatnonzero(real))
    while len(pending) >= rows:
      yield _stack(pending[:rows])
      pending = pending[rows:]
  if pending:  # The last samples' conditions, padded by repeating the last one.
    yield _stack(pending + pending[-1:] * (rows - len(pending)))


def _stack(examples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


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
  user = user_conditions.load(config) if (s.condition or s.prompt) else None
  big_grid = _sampling_grid(config, tokenizers, grid, user)
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
  conditioning = _on_rows(mesh, lambda p, batch: tokenizers.conditioning(config, p, batch), 1)
  features = _on_rows(mesh, fid.pool3_of_uint8, 1)
  cond_batches = _eval_example_batches(config, rows) if _conditions_from_eval(config) else None
  user_rows = None
  if user is not None:
    user_rows = _user_rows(config, tokenizers, model, user, big_grid, grid, rows, mesh,
                           replicated)
  captions = [text.decode(user.batch["caption"][0])] if user and "caption" in user.batch else []
  agreement = None
  if condition_agreement.measurable(config):
    num_seg = config.data.num_segmentation_classes
    agreement = np.zeros((num_seg, num_seg), np.int64)

  running = fid.RunningStats() if inception_params is not None else None
  preview, preview_conditions, preview_originals, written = [], [], [], []
  compiled, elapsed, tokens_drawn = None, 0.0, 0
  for start in range(0, s.num_samples, rows):
    indices = np.arange(start, start + rows)
    real = min(rows, s.num_samples - start)
    inputs = [sharding.shard_host_batch(row_keys(s.seed, indices), mesh)]
    if classes is not None:
      labels = np.asarray([classes[i % len(classes)] for i in indices], np.int32)
      inputs.append(sharding.shard_host_batch(labels, mesh))
    if cond_batches is not None:
      examples = next(cond_batches)
      inputs.append(conditioning(tokenizers.params, {
          k: sharding.shard_host_batch(v, mesh) for k, v in examples.items()}))
      pictures = conditions.pictures(config, examples)
      room = min(real, s.grid_images - len(preview_originals))
      if writes and room > 0:
        if pictures is not None:
          preview_conditions.extend(pictures[:room])
        preview_originals.extend(image_utils.to_uint8(examples["image"][:room]))
      if "caption" in examples:
        captions.extend(text.decode(t) for t in examples["caption"][:real])
    elif user_rows is not None:
      inputs.append(user_rows)
      room = min(real, s.grid_images - len(preview_conditions))
      if writes and user.picture is not None and room > 0:
        preview_conditions.extend([user.picture] * room)
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
    if agreement is not None:  # This host's samples against their label maps.
      maps = (examples["segmentation"][local_indices[keep] - start] if user is None else
              np.broadcast_to(user.batch["segmentation"], (int(keep.sum()),) + user.image_hw))
      agreement += condition_agreement.confusion(
          maps, condition_agreement.segment(local_images[keep], num_seg), num_seg)
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
    # Each sample between its condition (above) and the eval image it came from (below).
    # Rows of up to 8 (not the square grid), so one conditioning fits in one strip.
    strip = min(8, len(preview))
    groups = [_tile(np.stack(p), strip) for p in (preview_conditions, preview_originals) if p]
    if groups:
      sample_rows = _tile(preview, strip)
      parts = [groups[0], sample_rows] + groups[1:] if preview_conditions else [sample_rows,
                                                                                 *groups]
      storage.save_png(storage.join(out_dir, "conditions.png"), image_utils.image_grid(
          [row for rows in zip(*parts) for row in rows]))

  result = {"step": step, "num_samples": s.num_samples, "grid_shape": list(big_grid),
            "use_cache": bool(s.use_cache), **_options(config),
            "labels": None if classes is None else [classes[i % len(classes)]
                                                    for i in range(s.num_samples)],
            "condition": None if user is None else user.description,
            "captions": captions or None,
            "tokens_per_second": tokens_drawn / elapsed if elapsed else None,
            "devices": mesh.size, "processes": jax.process_count()}
  if agreement is not None:
    result["condition_miou"] = condition_agreement.miou(sharding.sum_over_hosts([agreement])[0])
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
  if config.conditioning != "none":  # Each image completed under its own condition.
    batch = jax.device_put({k: jnp.asarray(v) for k, v in examples.items()}, replicated)
    cond = jax.jit(lambda p, b: tokenizers.conditioning(config, p, b))(tokenizers.params, batch)
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
