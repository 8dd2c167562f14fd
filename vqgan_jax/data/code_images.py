"""The images `--mode=tokenize` encodes: every train record once, in a fixed order, as a stack
of augmented crops (one per `config.tokenize.augmentations` entry).

Augmentations:
  'none'    resize the shorter side to `resize_size`, center crop (the eval crop).
  'flip'    'none' flipped left-right.
  'cropK'   (K = 1, 2, ...) the K-th random-scale random crop, as training draws them (no flip),
            keyed by (config.seed, K, record id) only: the same whatever the host count.
Host p of P takes every P-th record (TFDS: its `split_for_jax_process` shard); record ids are
global (photo index, index in the folder's train file list, TFDS example index in the split).
Records are read by index through the train pipeline's sources, so nothing is read twice.
"""
from __future__ import annotations

import re

import ml_collections
import numpy as np
import tensorflow as tf

from vqgan_jax.data import embedded, input_pipeline, preprocess

_CROP = re.compile(r"crop([1-9][0-9]*)")
_CROP_STREAM = 2  # After preprocess.AUGMENT_STREAM and EPOCH_STREAM.


def validate_augmentations(augmentations) -> None:
  names = tuple(augmentations)
  bad = [a for a in names if a not in ("none", "flip") and not _CROP.fullmatch(a)]
  if not names or bad or len(set(names)) != len(names):
    raise ValueError(f"config.tokenize.augmentations={names!r}: list distinct entries of 'none', "
                     "'flip' and 'cropK' (K = 1, 2, ...), e.g. ('none', 'flip').")


def _records(config: ml_collections.ConfigDict, process_index: int, process_count: int):
  """(this host's source, its record indices in order, their global ids).

  Records are read by index through the same `vqgan_jax.data.sources` the train pipeline uses,
  so a resumed tokenize run reads nothing before its first unwritten shard.
  """
  source, _ = input_pipeline.train_source(config, process_index, process_count)
  if config.data.source == "embedded":  # Every process holds every photo: take every P-th.
    indices = np.arange(process_index, source.num_train, process_count)
    return source, indices, np.asarray(embedded.split_indices("train"))[indices]
  indices = np.arange(source.num_train)
  if config.data.source == "folder":  # Host p holds files p, p + P, ... of the sorted list.
    return source, indices, process_index + process_count * indices
  # TFDS: host p holds a contiguous `split_for_jax_process` shard after the earlier hosts'.
  earlier = sum(input_pipeline.train_source(config, p, process_count)[0].num_train
                for p in range(process_index))
  return source, indices, earlier + indices


def num_records(config: ml_collections.ConfigDict, process_index: int, process_count: int) -> int:
  """Train records of one host (what its shards cover)."""
  return len(_records(config, process_index, process_count)[1])


def _augment(image: tf.Tensor, record_id: tf.Tensor, name: str, settings) -> tf.Tensor:
  crop = _CROP.fullmatch(name)
  if crop:
    key = preprocess.fold_in(preprocess.fold_in(
        preprocess.base_key(settings.seed, 0, _CROP_STREAM), int(crop.group(1))), record_id)
    return preprocess.random_train_crop(image, key, crop_hw=settings.crop_hw,
                                        resize_size=settings.resize_size,
                                        scale_jitter=settings.scale_jitter, flip=False)
  image = preprocess.center_crop(
      preprocess.resize_to_cover(image, settings.resize_size, settings.crop_hw), settings.crop_hw)
  return tf.image.flip_left_right(image) if name == "flip" else image


def train_shard(config: ml_collections.ConfigDict, *, process_index: int, process_count: int,
                start: int, count: int, local_batch_size: int) -> tf.data.Dataset:
  """Batches of this host's records [start, start + count) (skipped ones never decoded):
  `image` (B, A, H, W, 3) float32 in [-1, 1], `label`, `id` and `mask` (0.0: padding).

  Always ceil(count / local_batch_size) batches, so every host encodes in step; undecodable
  records are dropped (their ids are missing from the shard).
  """
  settings = input_pipeline.example_settings(config, process_index, process_count)
  names = tuple(config.tokenize.augmentations)
  source, indices, ids = _records(config, process_index, process_count)
  records = tf.data.Dataset.from_tensor_slices(
      {"index": indices[start:start + count], "id": ids[start:start + count].astype(np.int64)})

  def example(item):
    image, label = source.decode(source.train_record(item["index"]))
    crops = tf.stack([_augment(image, item["id"], n, settings) for n in names])
    return {"image": preprocess.to_model_range(crops), "label": tf.cast(label, tf.int32),
            "id": item["id"], "mask": tf.constant(1.0)}

  padding = {"image": tf.zeros((len(names), *settings.crop_hw, 3)), "label": tf.constant(0),
             "id": tf.constant(-1, tf.int64), "mask": tf.constant(0.0)}
  num_batches = -(-count // local_batch_size)
  dataset = records.map(
      example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
  dataset = dataset.concatenate(tf.data.Dataset.from_tensors(padding).repeat())
  return dataset.take(num_batches * local_batch_size).batch(local_batch_size).prefetch(2)
