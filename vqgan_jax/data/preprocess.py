"""Image ops shared by every source: decode, resize, crop, flip, scale to [-1, 1].

All randomness comes from stateless ops keyed by explicit seeds, so an example's augmentation
depends only on (config.seed, process, stream position), never on TF's global state.
"""
from __future__ import annotations

import tensorflow as tf

# TF must never take accelerator memory that JAX needs; it only runs input ops on the host CPU.
tf.config.set_visible_devices([], "GPU")

AUGMENT_STREAM, EPOCH_STREAM = 0, 1


def fold_in(key: tf.Tensor, data) -> tf.Tensor:
  """A new [2] int64 stateless seed from `key` and an integer (tensor or Python)."""
  return tf.random.experimental.stateless_fold_in(key, tf.cast(data, tf.int64))


def base_key(seed: int, process_index: int, stream: int) -> tf.Tensor:
  """The root seed of one random stream (augmentation or epoch order) of one process."""
  return fold_in(tf.constant([seed, process_index], tf.int64), stream)


def stream_index(position, num_records: int, seed: int, process_index: int) -> tf.Tensor:
  """The source record at train stream `position` of this process: epoch `position //
  num_records` visits every record once, in a permutation drawn from (seed, process, epoch).

  `tf.random.experimental.index_shuffle` computes one element of the permutation without
  materialising it, so any position (a resume) costs the same as the first. Identical in eager
  and graph mode.
  """
  position = tf.cast(position, tf.int64)
  epoch, index = position // num_records, position % num_records
  key = fold_in(base_key(seed, process_index, EPOCH_STREAM), epoch)
  return tf.random.experimental.index_shuffle(index, key, tf.constant(num_records - 1, tf.int64))


def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
  """Any JPEG/PNG/GIF/BMP (gray, RGBA, animated: first frame) to uint8 (h, w, 3).

  Undecodable bytes raise inside the dataset; the pipeline drops and counts those elements.
  """
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def resize_to_cover(image: tf.Tensor, shorter_side, crop_hw: tuple[int, int]) -> tf.Tensor:
  """Resizes uint8 `image` so its shorter side is `shorter_side`, and never below the crop.

  Bicubic with antialiasing (area-like when shrinking), rounded back to uint8 so that every
  output is a real 8-bit image.
  """
  size = tf.cast(tf.shape(image)[:2], tf.float32)
  crop = tf.constant(crop_hw, tf.float32)
  scale = tf.maximum(tf.cast(shorter_side, tf.float32) / tf.reduce_min(size),
                     tf.reduce_max(crop / size))
  new_size = tf.maximum(tf.cast(tf.round(size * scale), tf.int32), tf.constant(crop_hw))
  resized = tf.image.resize(tf.cast(image, tf.float32), new_size, method="bicubic",
                            antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def center_crop(image: tf.Tensor, crop_hw: tuple[int, int]) -> tf.Tensor:
  height, width = crop_hw
  shape = tf.shape(image)
  top, left = (shape[0] - height) // 2, (shape[1] - width) // 2
  return tf.ensure_shape(image[top:top + height, left:left + width], (height, width, 3))


def random_train_crop(image: tf.Tensor, key: tf.Tensor, *, crop_hw: tuple[int, int],
                      resize_size: int, scale_jitter: float, flip: bool) -> tf.Tensor:
  """Random-scale resize, random crop and optional horizontal flip, all keyed by `key`.

  The shorter side is drawn uniformly from [resize_size, resize_size * (1 + scale_jitter)].
  """
  scale_key, crop_key, flip_key = tf.unstack(
      tf.random.experimental.stateless_split(key, 3))
  shorter = resize_size * (1.0 + scale_jitter * tf.random.stateless_uniform([], scale_key))
  image = resize_to_cover(image, shorter, crop_hw)
  image = tf.image.stateless_random_crop(image, (*crop_hw, 3), crop_key)
  if flip:
    image = tf.image.stateless_random_flip_left_right(image, flip_key)
  return image


def to_model_range(image: tf.Tensor) -> tf.Tensor:
  """uint8 [0, 255] to float32 [-1, 1] (x / 127.5 - 1), the range the tokenizer sees."""
  return tf.cast(image, tf.float32) / 127.5 - 1.0
