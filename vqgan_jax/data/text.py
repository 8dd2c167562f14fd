"""Byte-level text tokens for caption conditioning: no vocabulary file, nothing to download.

A caption becomes its UTF-8 bytes (ids 0-255), cut to `length` and filled with `PAD` (256).
The empty caption, all `PAD`, is the null condition of classifier-free guidance (caption
dropout trains it). Bytes are what DALL-E-style byte models and ByT5 read; a BPE would shorten
the prefix on long captions, but captions here are short and bytes need no training.
"""
from __future__ import annotations

import numpy as np

PAD = 256
VOCAB_SIZE = 257


def encode(text: str, length: int) -> np.ndarray:
  """(length,) int32 tokens of `text` (UTF-8 bytes, truncated, then PAD)."""
  data = np.frombuffer(text.encode("utf-8")[:length], np.uint8).astype(np.int32)
  return np.concatenate([data, np.full(length - len(data), PAD, np.int32)])


def decode(tokens) -> str:
  """The caption of a token row (PAD dropped; a multi-byte character cut by truncation is
  replaced, never an error)."""
  tokens = np.asarray(tokens)
  return bytes(tokens[tokens < PAD].astype(np.uint8).tolist()).decode("utf-8", "replace")


def tf_encode(text, length: int):
  """`encode` as a TensorFlow op on a scalar tf.string (inside the data pipeline)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  data = tf.cast(tf.io.decode_raw(tf.strings.substr(text, 0, length), tf.uint8), tf.int32)
  padded = tf.concat([data, tf.fill([length], PAD)], axis=0)[:length]
  return tf.ensure_shape(padded, (length,))
