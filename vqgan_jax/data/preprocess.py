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


def cover_size(shape: tf.Tensor, shorter_side, crop_hw: tuple[int, int]) -> tf.Tensor:
  """(h, w) int32 an image of spatial `shape` is resized to: shorter side `shorter_side`,
  never below the crop."""
  size = tf.cast(shape[:2], tf.float32)
  crop = tf.constant(crop_hw, tf.float32)
  scale = tf.maximum(tf.cast(shorter_side, tf.float32) / tf.reduce_min(size),
                     tf.reduce_max(crop / size))
  return tf.maximum(tf.cast(tf.round(size * scale), tf.int32), tf.constant(crop_hw))


def resize_uint8(image: tf.Tensor, size: tf.Tensor, labels: bool = False) -> tf.Tensor:
  """uint8 (h, w, c) resized to `size`: bicubic with antialiasing (area-like when shrinking),
  rounded back to uint8 so every output is a real 8-bit image; nearest neighbour for label
  maps (`labels`), whose values are ids, not intensities."""
  if labels:
    return tf.image.resize(image, size, method="nearest")
  resized = tf.image.resize(tf.cast(image, tf.float32), size, method="bicubic", antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def resize_to_cover(image: tf.Tensor, shorter_side, crop_hw: tuple[int, int]) -> tf.Tensor:
  """Resizes uint8 `image` so its shorter side is `shorter_side`, and never below the crop."""
  return resize_uint8(image, cover_size(tf.shape(image), shorter_side, crop_hw))


def center_crop(image: tf.Tensor, crop_hw: tuple[int, int]) -> tf.Tensor:
  height, width = crop_hw
  shape = tf.shape(image)
  top, left = (shape[0] - height) // 2, (shape[1] - width) // 2
  return tf.ensure_shape(image[top:top + height, left:left + width],
                         (height, width, image.shape[-1]))


def _resize_aligned(image: tf.Tensor, aligned: dict[str, tf.Tensor], size: tf.Tensor):
  """The image and its pixel-aligned maps (label maps by nearest neighbour), all at `size`."""
  image = resize_uint8(image, size)
  return image, {name: resize_uint8(x, size, labels=name == "segmentation")
                 for name, x in aligned.items()}


def _split_channels(stacked: tf.Tensor, aligned: dict[str, tf.Tensor]):
  parts = tf.split(stacked, [3] + [x.shape[-1] for x in aligned.values()], axis=-1)
  return parts[0], dict(zip(aligned, parts[1:]))


def random_train_crop(image: tf.Tensor, key: tf.Tensor, *, crop_hw: tuple[int, int],
                      resize_size: int, scale_jitter: float, flip: bool,
                      aligned: dict[str, tf.Tensor] | None = None):
  """Random-scale resize, random crop and optional horizontal flip, all keyed by `key`.

  The shorter side is drawn uniformly from [resize_size, resize_size * (1 + scale_jitter)].
  `aligned` maps (uint8 (h, w, c) at the image's size: label maps, sketches) get exactly the
  same resize, crop and flip; then (image, aligned) is returned, else the image alone.
  """
  scale_key, crop_key, flip_key = tf.unstack(
      tf.random.experimental.stateless_split(key, 3))
  shorter = resize_size * (1.0 + scale_jitter * tf.random.stateless_uniform([], scale_key))
  size = cover_size(tf.shape(image), shorter, crop_hw)
  image, resized = _resize_aligned(image, aligned or {}, size)
  stacked = tf.concat([image, *resized.values()], axis=-1)
  stacked = tf.image.stateless_random_crop(stacked, (*crop_hw, stacked.shape[-1]), crop_key)
  if flip:
    stacked = tf.image.stateless_random_flip_left_right(stacked, flip_key)
  image, cropped = _split_channels(stacked, resized)
  return image if aligned is None else (image, cropped)


def eval_crop(image: tf.Tensor, *, shorter_side: int, crop_hw: tuple[int, int],
              aligned: dict[str, tf.Tensor] | None = None):
  """Resize the shorter side, center crop; `aligned` maps follow exactly (see
  `random_train_crop`)."""
  size = cover_size(tf.shape(image), shorter_side, crop_hw)
  image, resized = _resize_aligned(image, aligned or {}, size)
  image = center_crop(image, crop_hw)
  cropped = {name: center_crop(x, crop_hw) for name, x in resized.items()}
  return image if aligned is None else (image, cropped)


def to_model_range(image: tf.Tensor) -> tf.Tensor:
  """uint8 [0, 255] to float32 [-1, 1] (x / 127.5 - 1), the range the tokenizer sees."""
  return tf.cast(image, tf.float32) / 127.5 - 1.0
