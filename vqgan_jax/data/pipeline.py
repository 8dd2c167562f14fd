"""tf.data graphs for the train stream and the eval pass, over any source.

Train: stream positions start_position.. (epoch * num_train + i); each position names one source
record through that epoch's permutation (`preprocess.stream_index`), so a resume starts at its
position directly and reads nothing before it. Undecodable records are dropped by
`ignore_errors`; each example keeps its position so the caller can see which were dropped.
"""
from __future__ import annotations

import tensorflow as tf

from vqgan_jax.data import condition_files, derived, preprocess, text
from vqgan_jax.data.sources import Conditions, Settings

_NO_END = 2**62  # End of the "infinite" train stream.


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  return options


def train_dataset(source, settings: Settings, *, local_batch_size: int,
                  start_position: int) -> tf.data.Dataset:
  """Batches of `image`, `label` and `_positions` (each example's stream position)."""
  num_train = source.num_train
  augment_key = preprocess.base_key(settings.seed, settings.process_index,
                                    preprocess.AUGMENT_STREAM)

  def example(position):
    index = preprocess.stream_index(position, num_train, settings.seed, settings.process_index)
    record = source.train_record(index)
    image, label = source.decode(record)
    conditions = source.conditions(record, image)
    image, conditions.maps = preprocess.random_train_crop(
        image, preprocess.fold_in(augment_key, position), crop_hw=settings.crop_hw,
        resize_size=settings.resize_size, scale_jitter=settings.scale_jitter,
        flip=settings.random_flip, aligned=conditions.maps)
    return {"image": preprocess.to_model_range(image), "label": tf.cast(label, tf.int32),
            **condition_features(image, label, conditions, settings, source.derives_conditions),
            "_positions": position}

  dataset = tf.data.Dataset.range(start_position, _NO_END)
  dataset = dataset.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  dataset = dataset.ignore_errors().batch(local_batch_size, drop_remainder=True)
  return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options())


def eval_dataset(source, settings: Settings, *, local_batch_size: int,
                 num_batches: int) -> tf.data.Dataset:
  """`num_batches` batches of `image`, `label`, `mask` and `_index` (-1 for padding).

  Every process yields the same number of batches (collectives need that); examples run out
  first and the rest is padding with mask 0.
  """
  def example(index, record):
    image, label, conditions = source.eval_example(record)
    return {"image": preprocess.to_model_range(image), "label": tf.cast(label, tf.int32),
            **condition_features(image, label, conditions, settings, source.derives_conditions),
            "mask": tf.constant(1.0), "_index": index}

  padding = {"image": tf.zeros((*settings.crop_hw, 3)), "label": tf.constant(0),
             **condition_padding(settings),
             "mask": tf.constant(0.0), "_index": tf.constant(-1, tf.int64)}
  dataset = source.eval_records().enumerate().map(
      example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
  dataset = dataset.concatenate(tf.data.Dataset.from_tensors(padding).repeat())
  dataset = dataset.take(num_batches * local_batch_size).batch(local_batch_size)
  return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options())


def condition_features(image: tf.Tensor, label: tf.Tensor, conditions: Conditions,
                       settings: Settings, derive: bool) -> dict[str, tf.Tensor]:
  """The requested condition features of a cropped uint8 image: `segmentation` (h, w) int32,
  `edges` / `sketch` (h, w, 3) float32 in [-1, 1], `caption` (caption_length,) int32 byte
  tokens, and `_problem` (a `condition_files` code, checked by the host). Stored conditions
  come from `conditions`; with `derive` (the embedded photos) they are computed from the
  pixels (`vqgan_jax.data.derived`). Edges are always computed."""
  features, out = settings.features, {}
  if not features:
    return out
  problem = tf.cast(conditions.problem, tf.int32)
  if "segmentation" in features:
    k = settings.num_segmentation_classes
    ids = (derived.palette_labels(image, derived.embedded_palette(k)) if derive else
           conditions.maps["segmentation"][:, :, 0])
    ids = tf.cast(ids, tf.int32)
    unknown = tf.reduce_max(ids) >= k
    problem = tf.where((problem == condition_files.OK) & unknown, condition_files.UNKNOWN_ID,
                       problem)
    out["segmentation"] = tf.minimum(ids, k - 1)  # Flagged above; clipped to stay in range.
  if "edges" in features:
    out["edges"] = preprocess.to_model_range(derived.edge_map(image))
  if "sketch" in features:
    drawing = derived.pseudo_sketch(image) if derive else conditions.maps["sketch"]
    out["sketch"] = preprocess.to_model_range(drawing)
  if "caption" in features:
    caption = derived.embedded_caption(image, label) if derive else conditions.caption
    empty = tf.strings.length(tf.strings.strip(caption)) == 0
    problem = tf.where((problem == condition_files.OK) & empty, condition_files.EMPTY_CAPTION,
                       problem)
    out["caption"] = text.tf_encode(caption, settings.caption_length)
  out["_problem"] = problem
  return out


def condition_padding(settings: Settings) -> dict[str, tf.Tensor]:
  """Zeros shaped like `condition_features` for the eval padding rows (captions: all PAD)."""
  h, w = settings.crop_hw
  shapes = {"segmentation": ((h, w), tf.int32), "edges": ((h, w, 3), tf.float32),
            "sketch": ((h, w, 3), tf.float32)}
  out = {name: tf.zeros(*shapes[name]) for name in settings.features if name in shapes}
  if "caption" in settings.features:
    out["caption"] = tf.fill((settings.caption_length,), text.PAD)
  if settings.features:
    out["_problem"] = tf.constant(condition_files.OK)
  return out
