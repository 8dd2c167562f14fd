"""The 'codes' source: a dataset tokenized once by `--mode=tokenize`, read back as code batches.

Layout of a codes dir (written whole by `vqgan_jax.prior.tokenize` through
`vqgan_jax.runtime.storage`; read here through etils.epath, the same backend, since `data/` sits
below `runtime/`), local or gs://:
  spec.json                     what the codes are of (tokenizer, grid, augmentations, data, ...)
  train/codes-pPPPPP-sKKKKK.npz  host P's K-th shard: `codes` (n, A, h*w) int16/int32 (one code
                                set per augmentation), `label` (n,) int32, `id` (n,) int64 (the
                                source record: photo, file or TFDS example index)
  eval/codes-pPPPPP-s00000.npz   host P's eval crops (A = 1, `id`: its eval order)
  manifest.json                 spec + shard files and counts, written last: the dir is complete

Train stream of a host: its contiguous share of all train examples (held in memory: codes are
small), position -> (epoch, index) -> a per-epoch permutation from (seed, host, epoch), and per
epoch one stored augmentation set per example from (seed, host, epoch). Resuming at a position
reads nothing before it; the stream is the same for the same seed and host count.
"""
from __future__ import annotations

import io
import json
import math
from typing import Any, Iterator

from etils import epath
import ml_collections
import numpy as np

MANIFEST, SPEC = "manifest.json", "spec.json"
SPLITS = ("train", "eval")
_ORDER_STREAM, _AUGMENTATION_STREAM = 0, 1


def shard_name(split: str, process_index: int, shard: int) -> str:
  return f"{split}/codes-p{process_index:05d}-s{shard:05d}.npz"


def _load_npz(path: epath.Path) -> dict[str, np.ndarray]:
  with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as data:
    return {k: data[k] for k in data.files}


def read_manifest(codes_dir: str) -> dict[str, Any]:
  """The manifest of a complete codes dir; ValueError saying how to make one otherwise."""
  path = epath.Path(codes_dir or ".") / MANIFEST
  if not codes_dir or not path.exists():
    raise ValueError(
        f"config.data.codes_dir={codes_dir!r} holds no {MANIFEST}: tokenize the dataset first "
        "(python -m vqgan_jax.main --mode=tokenize --config=PRIOR_CONFIG, which writes "
        "WORKDIR/codes or --config.codes_dir) and point --config.data.codes_dir at it.")
  return json.loads(path.read_text())


def _host_range(total: int, process_index: int, process_count: int) -> tuple[int, int]:
  return total * process_index // process_count, total * (process_index + 1) // process_count


def load_examples(codes_dir: str, manifest: dict[str, Any], split: str, process_index: int,
                  process_count: int) -> dict[str, np.ndarray]:
  """This host's contiguous share of a split (`codes`, `label`, `id`), reading only the shards
  that overlap it."""
  start, stop = _host_range(manifest[split]["num_examples"], process_index, process_count)
  parts, offset = [], 0
  for shard in manifest[split]["shards"]:
    lo, hi = max(start, offset), min(stop, offset + shard["count"])
    if lo < hi:
      arrays = _load_npz(epath.Path(codes_dir) / shard["file"])
      parts.append({k: v[lo - offset:hi - offset] for k, v in arrays.items()})
    offset += shard["count"]
  if not parts:
    return {}
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class CodesTrainIterator:
  """Infinite iterator of `codes` (B, h*w) int32, `label` (B,) int32 and `_position`."""

  def __init__(self, examples: dict[str, np.ndarray], *, seed: int, process_index: int,
               local_batch_size: int, start_position: int):
    self._codes, self._labels = examples["codes"], examples["label"].astype(np.int32)
    self._key = (seed, process_index)
    self._batch = local_batch_size
    self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    self.position = start_position

  def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(example order, augmentation set per example) of one epoch."""
    if epoch not in self._epochs:
      n, sets = self._codes.shape[:2]
      order = np.random.default_rng([*self._key, epoch, _ORDER_STREAM]).permutation(n)
      choice = np.random.default_rng([*self._key, epoch, _AUGMENTATION_STREAM]).integers(
          0, sets, n)
      self._epochs = {e: v for e, v in self._epochs.items() if e >= epoch - 1}
      self._epochs[epoch] = (order, choice)
    return self._epochs[epoch]

  def __iter__(self) -> CodesTrainIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    positions = np.arange(self.position, self.position + self._batch)
    epochs, indices = np.divmod(positions, len(self._codes))
    rows, sets = np.empty_like(indices), np.empty_like(indices)
    for epoch in np.unique(epochs):
      order, choice = self._epoch(int(epoch))
      here = epochs == epoch
      rows[here] = order[indices[here]]
      sets[here] = choice[rows[here]]
    self.position += self._batch
    return {"codes": self._codes[rows, sets].astype(np.int32), "label": self._labels[rows],
            "_position": np.int64(self.position)}


def _manifest(data: ml_collections.ConfigDict) -> dict[str, Any]:
  manifest = read_manifest(data.codes_dir)
  if not manifest["train"]["num_examples"]:
    raise ValueError(f"{data.codes_dir} holds no train codes; tokenize a non-empty train split.")
  return manifest


def create_train_iterator(config: ml_collections.ConfigDict, *, local_batch_size: int,
                          process_index: int, process_count: int,
                          start_position: int = 0) -> CodesTrainIterator:
  """This host's infinite train stream of codes, starting at example `start_position`."""
  examples = load_examples(config.data.codes_dir, _manifest(config.data), "train", process_index,
                           process_count)
  if not examples:
    raise ValueError(f"Process {process_index} of {process_count} has no codes in "
                     f"{config.data.codes_dir}; tokenize a split with an example per process.")
  return CodesTrainIterator(examples, seed=config.seed, process_index=process_index,
                            local_batch_size=local_batch_size, start_position=start_position)


def create_eval_iterator(config: ml_collections.ConfigDict, *, local_batch_size: int,
                         process_index: int, process_count: int
                         ) -> Iterator[dict[str, np.ndarray]]:
  """This host's eval batches (`codes`, `label`, `mask`), the same count on every host."""
  manifest = _manifest(config.data)
  total = manifest["eval"]["num_examples"]
  examples = load_examples(config.data.codes_dir, manifest, "eval", process_index, process_count)
  length = int(np.prod(manifest["grid"]))
  codes = examples["codes"][:, 0].astype(np.int32) if examples else np.zeros((0, length), np.int32)
  labels = examples["label"].astype(np.int32) if examples else np.zeros((0,), np.int32)
  num_batches = math.ceil(math.ceil(total / process_count) / local_batch_size)
  padded = num_batches * local_batch_size
  mask = np.arange(padded) < len(codes)
  codes = np.concatenate([codes, np.zeros((padded - len(codes), length), np.int32)])
  labels = np.concatenate([labels, np.zeros((padded - len(labels),), np.int32)])
  for b in range(num_batches):
    rows = slice(b * local_batch_size, (b + 1) * local_batch_size)
    yield {"codes": codes[rows], "label": labels[rows], "mask": mask[rows].astype(np.float32)}


def num_classes(data: ml_collections.ConfigDict) -> int:
  return int(read_manifest(data.codes_dir)["num_classes"])


def num_eval_examples(data: ml_collections.ConfigDict) -> int:
  return int(read_manifest(data.codes_dir)["eval"]["num_examples"])
