"""tf.data graphs for the train stream and the eval pass, over any source.

Train: stream positions start_position.. (epoch * num_train + i); each position names one source
record through that epoch's permutation (`preprocess.stream_index`), so a resume starts at its
position directly and reads nothing before it. Undecodable records are dropped by
`ignore_errors`; each example keeps its position so the caller can see which were dropped.
"""
from __future__ import annotations

import tensorflow as tf

from vqgan_jax.data import preprocess
from vqgan_jax.data.sources import Settings

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
    image, label = source.decode(source.train_record(index))
    image = preprocess.random_train_crop(
        image, preprocess.fold_in(augment_key, position), crop_hw=settings.crop_hw,
        resize_size=settings.resize_size, scale_jitter=settings.scale_jitter,
        flip=settings.random_flip)
    return {"image": preprocess.to_model_range(image), "label": tf.cast(label, tf.int32),
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
    image, label = source.eval_example(record)
    return {"image": preprocess.to_model_range(image), "label": tf.cast(label, tf.int32),
            "mask": tf.constant(1.0), "_index": index}

  padding = {"image": tf.zeros((*settings.crop_hw, 3)), "label": tf.constant(0),
             "mask": tf.constant(0.0), "_index": tf.constant(-1, tf.int64)}
  dataset = source.eval_records().enumerate().map(
      example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
  dataset = dataset.concatenate(tf.data.Dataset.from_tensors(padding).repeat())
  dataset = dataset.take(num_batches * local_batch_size).batch(local_batch_size)
  return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options())
