"""`--mode=tokenize`: encode a prior config's dataset once with its frozen tokenizer, so the prior
trains on stored codes (`config.data.source='codes'`) instead of encoding images every step.

    python -m vqgan_jax.main --config=configs/tiny_prior.py --workdir=workdirs/tiny_prior \
        --mode=tokenize [--config.tokenize.augmentations='("none", "flip")']

The train split (every augmentation of `config.tokenize.augmentations` as its own code set) and
the eval split (center crops) are encoded in `config.dtype` on all devices of all hosts (each
global batch padded to the device count); every host writes its own shards to
`config.codes_dir` (default WORKDIR/codes; layout in `vqgan_jax.data.codes`). Resumable: a rerun
skips the shards every host has already written; `manifest.json` is written last.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from vqgan_jax.data import code_images, codes as codes_data, input_pipeline
from vqgan_jax.prior.frozen_tokenizers import Tokenizers, load_tokenizers
from vqgan_jax.prior.model import token_grid
from vqgan_jax.runtime import host_data, sharding, storage, trainer_config

_SPEC_DATA_FIELDS = ("source", "image_size", "resize_size", "scale_jitter", "train_split",
                     "eval_split", "tfds_name", "folder", "folder_eval_fraction")


def codes_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  return config.codes_dir or storage.join(workdir, "codes")


def _spec(config, tokenizers: Tokenizers, grid: tuple[int, int]) -> dict[str, Any]:
  """What the codes are of (as JSON reads it back); a rerun into the same dir must match it."""
  return json.loads(json.dumps({
      "tokenizer_workdir": storage.absolute(config.tokenizer_workdir),
      "tokenizer_step": tokenizers.step,
      "codebook_size": int(tokenizers.model.codebook_size),
      "grid": list(grid),
      "augmentations": list(config.tokenize.augmentations),
      "dtype": config.dtype,
      "seed": config.seed,
      "process_count": jax.process_count(),
      "shard_size": config.tokenize.shard_size,
      "data": {k: config.data[k] for k in _SPEC_DATA_FIELDS},
  }))


def _validate(config: ml_collections.ConfigDict) -> None:
  trainer_config.compute_dtype(config)
  if config.data.source == "codes":
    raise ValueError("--mode=tokenize reads images: set config.data.source to the image source "
                     "('embedded', 'folder' or 'tfds'), not 'codes'.")
  if config.conditioning not in ("none", "class"):
    raise ValueError("--mode=tokenize supports config.conditioning 'none' and 'class' for now; "
                     f"train a {config.conditioning!r}-conditioned prior from images.")
  code_images.validate_augmentations(config.tokenize.augmentations)
  if config.tokenize.shard_size <= 0:
    raise ValueError(f"config.tokenize.shard_size={config.tokenize.shard_size} must be positive.")
  if config.batch_size % jax.process_count():
    raise ValueError(f"config.batch_size={config.batch_size} is not divisible by the "
                     f"{jax.process_count()} processes; set it to a multiple of that.")
  input_pipeline.validate_data_config(config)


def _check_or_write_spec(directory: str, spec: dict[str, Any]) -> None:
  path = storage.join(directory, codes_data.SPEC)
  found = storage.read_json(path) if storage.exists(path) else None
  multihost_utils.sync_global_devices("tokenize: spec read")
  if found is not None and found != spec:
    changed = sorted(k for k in spec if found.get(k) != spec[k])
    raise ValueError(f"{directory} holds codes of a different tokenization (differs in "
                     f"{changed}); set --config.codes_dir to a new dir or delete this one.")
  if found is None and jax.process_index() == 0:
    storage.write_json(path, spec, indent=2)
  multihost_utils.sync_global_devices("tokenize: spec written")


def _gather(values: np.ndarray) -> np.ndarray:
  """(process_count, ...) stack of every host's `values`."""
  if jax.process_count() == 1:
    return values[None]
  return np.asarray(multihost_utils.process_allgather(values))


class _Encoder:
  """Encodes this host's slice of a global batch and returns this host's codes."""

  def __init__(self, tokenizers: Tokenizers, mesh, code_dtype):
    self._mesh, self.code_dtype = mesh, code_dtype
    self._params = jax.device_put(tokenizers.params, sharding.replicated(mesh))
    self._encode = jax.jit(tokenizers.codes, out_shardings=sharding.batch_sharding(mesh))

  def __call__(self, images: np.ndarray) -> np.ndarray:
    batch, real = sharding.padded_global_batch({"image": images}, self._mesh)
    with jax.set_mesh(self._mesh):
      codes = self._encode(self._params, batch["image"])
    return sharding.process_local_rows(codes)[:real].astype(self.code_dtype)


class _ShardWriter:
  """Collects the real rows of encoded batches and writes them as one shard."""

  def __init__(self, directory: str, spec: dict[str, Any], code_dtype):
    self._directory, self._dtype = directory, code_dtype
    self._length = int(np.prod(spec["grid"]))

  def path(self, split: str, shard: int) -> str:
    return storage.join(self._directory, codes_data.shard_name(split, jax.process_index(), shard))

  def count(self, split: str, shard: int) -> int:
    return len(storage.load_npz(self.path(split, shard))["id"])

  def write(self, split: str, shard: int, parts: list[dict[str, np.ndarray]], sets: int) -> int:
    """Writes the shard (also when empty) and returns its example count."""
    arrays = {"codes": np.zeros((0, sets, self._length), self._dtype),
              "label": np.zeros((0,), np.int32), "id": np.zeros((0,), np.int64)}
    arrays = {k: np.concatenate([v] + [p[k] for p in parts]) for k, v in arrays.items()}
    storage.save_npz(self.path(split, shard), **arrays)
    return len(arrays["id"])


def _write_train(config, writer: _ShardWriter, encode: _Encoder) -> np.ndarray:
  """Every train shard of this host (skipping those all hosts have); returns their counts."""
  size, local_batch = config.tokenize.shard_size, config.batch_size // jax.process_count()
  most = max(code_images.num_records(config, p, jax.process_count())
             for p in range(jax.process_count()))
  num_shards = -(-most // size)
  written = np.array([storage.exists(writer.path("train", k)) for k in range(num_shards)])
  done = np.all(_gather(written), axis=0)
  logging.info("Tokenize: %d of %d train shards per host already written.", done.sum(), num_shards)
  counts = np.zeros((num_shards,), np.int64)
  for k in range(num_shards):
    if done[k]:
      counts[k] = writer.count("train", k)
      continue
    parts = []
    for batch in code_images.train_shard(
        config, process_index=jax.process_index(), process_count=jax.process_count(),
        start=k * size, count=size, local_batch_size=local_batch).as_numpy_iterator():
      images = batch["image"]
      flat = encode(images.reshape(-1, *images.shape[2:]))
      real = batch["mask"] > 0
      parts.append({"codes": flat.reshape(*images.shape[:2], -1)[real],
                    "label": batch["label"][real].astype(np.int32),
                    "id": batch["id"][real].astype(np.int64)})
    counts[k] = writer.write("train", k, parts, len(config.tokenize.augmentations))
    logging.info("Tokenize: wrote train shard %d/%d.", k + 1, num_shards)
  return counts


def _write_eval(config, writer: _ShardWriter, encode: _Encoder) -> np.ndarray:
  """This host's eval crops as one shard (unless every host has it); returns its count."""
  if np.all(_gather(np.array([storage.exists(writer.path("eval", 0))]))):
    return np.array([writer.count("eval", 0)], np.int64)
  parts, seen = [], 0
  for batch in host_data.eval_batches(config):
    real = batch["mask"] > 0
    parts.append({"codes": encode(batch["image"])[real][:, None],
                  "label": batch["label"][real].astype(np.int32),
                  "id": np.arange(seen, seen + real.sum(), dtype=np.int64)})
    seen += int(real.sum())
  return np.array([writer.write("eval", 0, parts, 1)], np.int64)


def _write_manifest(config, directory: str, spec: dict[str, Any],
                    counts: dict[str, np.ndarray]) -> dict[str, Any]:
  """Process 0 lists every host's shards in host-major order with their counts."""
  manifest = dict(spec, num_classes=input_pipeline.num_classes(config))
  for split, mine in counts.items():
    everyone = _gather(mine)
    shards = [{"file": codes_data.shard_name(split, p, k), "count": int(n)}
              for p in range(everyone.shape[0]) for k, n in enumerate(everyone[p])]
    manifest[split] = {"shards": shards, "num_examples": int(everyone.sum())}
  multihost_utils.sync_global_devices("tokenize: shards written")
  if jax.process_index() == 0:
    storage.write_json(storage.join(directory, codes_data.MANIFEST), manifest, indent=2)
  multihost_utils.sync_global_devices("tokenize: manifest written")
  return manifest


def tokenize_dataset(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Writes the codes of `config`'s dataset (resuming a partial run); returns the manifest."""
  mesh = sharding.create_mesh()
  _validate(config)
  directory = codes_dir(config, workdir)
  tokenizers = load_tokenizers(config, sharding.replicated(mesh))
  spec = _spec(config, tokenizers, token_grid(config, tokenizers.model))
  _check_or_write_spec(directory, spec)
  manifest_path = storage.join(directory, codes_data.MANIFEST)
  if storage.exists(manifest_path):
    logging.info("Tokenize: %s is complete already.", directory)
    return storage.read_json(manifest_path)
  code_dtype = np.int16 if spec["codebook_size"] <= np.iinfo(np.int16).max + 1 else np.int32
  encode = _Encoder(tokenizers, mesh, code_dtype)
  writer = _ShardWriter(directory, spec, code_dtype)
  counts = {"train": _write_train(config, writer, encode),
            "eval": _write_eval(config, writer, encode)}
  return _write_manifest(config, directory, spec, counts)


def check_codes_manifest(config: ml_collections.ConfigDict, tokenizers: Tokenizers,
                         grid: tuple[int, int]) -> None:
  """Raises unless `config.data.codes_dir` holds codes of this prior's tokenizer and grid."""
  manifest = codes_data.read_manifest(config.data.codes_dir)
  expected = {"tokenizer_workdir": storage.absolute(config.tokenizer_workdir),
              "tokenizer_step": tokenizers.step,
              "codebook_size": int(tokenizers.model.codebook_size), "grid": list(grid)}
  wrong = {k: manifest.get(k) for k, v in expected.items() if manifest.get(k) != v}
  if wrong:
    raise ValueError(
        f"config.data.codes_dir={config.data.codes_dir} holds codes with {wrong}, but this prior "
        f"needs {({k: expected[k] for k in wrong})}: rerun --mode=tokenize with this config (and "
        "a new --config.codes_dir), or set config.tokenizer_workdir / config.data.image_size "
        "to what the codes were made with.")
