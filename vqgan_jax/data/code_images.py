"""The images `--mode=tokenize` encodes: every train record once, in a fixed order, as a stack
of augmented crops (one per `config.tokenize.augmentations` entry).

Augmentations:
  'none'    resize the shorter side to `resize_size`, center crop (the eval crop).
  'flip'    'none' flipped left-right.
  'cropK'   (K = 1, 2, ...) the K-th random-scale random crop, as training draws them (no flip),
            keyed by (config.seed, K, record id) only: the same whatever the host count.
Host p of P takes every P-th record (TFDS: its `split_for_jax_process` shard); record ids are
global (photo index, index in the folder's train file list, TFDS example index in the split).
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
  """(tf.data of {'id', 'record'}, decode(record) -> (uint8 image, label), record count)."""
  data = config.data
  if data.source == "embedded":
    ids = embedded.split_indices("train")[process_index::process_count]
    photos = embedded.load_photos()
    records = tf.data.Dataset.from_generator(
        lambda: ({"id": i, "record": photos[i]} for i in ids),
        output_signature={"id": tf.TensorSpec((), tf.int64),
                          "record": tf.TensorSpec((None, None, 3), tf.uint8)})
    return records, lambda r, i: (r, tf.cast(i, tf.int32)), len(ids)
  if data.source == "folder":
    from vqgan_jax.data import folder  # pylint: disable=g-import-not-at-top
    train = folder.scan(data.folder, data.train_split, data.eval_split,
                        data.folder_eval_fraction).train
    ids = np.arange(len(train.paths))[process_index::process_count]
    records = tf.data.Dataset.from_tensor_slices(
        {"id": ids.astype(np.int64), "record": {
            "path": tf.constant([train.paths[i] for i in ids], tf.string),
            "label": tf.constant(np.asarray(train.labels)[ids], tf.int32)}})
    return records, lambda r, i: (preprocess.decode_rgb(tf.io.read_file(r["path"])),
                                  r["label"]), len(ids)
  return _tfds_records(data, process_index, process_count)


def _tfds_records(data: ml_collections.ConfigDict, process_index: int, process_count: int):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from vqgan_jax.data import tfds_data  # pylint: disable=g-import-not-at-top
  builder = tfds_data.prepared_builder(data, process_count)
  splits = [tfds.split_for_jax_process(data.train_split, process_index=i,
                                       process_count=process_count) for i in range(process_count)]
  counts = [builder.info.splits[s].num_examples for s in splits]
  has_label = tfds_data.LABEL_KEY in builder.info.features
  dataset = builder.as_dataset(split=splits[process_index], shuffle_files=False,
                               decoders={tfds_data.IMAGE_KEY: tfds.decode.SkipDecoding()},
                               read_config=tfds.ReadConfig(try_autocache=False))
  records = dataset.enumerate(start=sum(counts[:process_index])).map(
      lambda i, example: {"id": i, "record": example})

  def decode(record, _):
    label = record[tfds_data.LABEL_KEY] if has_label else 0
    return preprocess.decode_rgb(record[tfds_data.IMAGE_KEY]), tf.cast(label, tf.int32)

  return records, decode, counts[process_index]


def num_records(config: ml_collections.ConfigDict, process_index: int, process_count: int) -> int:
  """Train records of one host (what its shards cover)."""
  return _records(config, process_index, process_count)[2]


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
  records, decode, _ = _records(config, process_index, process_count)

  def example(item):
    image, label = decode(item["record"], item["id"])
    crops = tf.stack([_augment(image, item["id"], n, settings) for n in names])
    return {"image": preprocess.to_model_range(crops), "label": tf.cast(label, tf.int32),
            "id": item["id"], "mask": tf.constant(1.0)}

  padding = {"image": tf.zeros((len(names), *settings.crop_hw, 3)), "label": tf.constant(0),
             "id": tf.constant(-1, tf.int64), "mask": tf.constant(0.0)}
  num_batches = -(-count // local_batch_size)
  dataset = records.skip(start).take(count).map(
      example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
  dataset = dataset.concatenate(tf.data.Dataset.from_tensors(padding).repeat())
  return dataset.take(num_batches * local_batch_size).batch(local_batch_size).prefetch(2)
