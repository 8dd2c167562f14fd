"""Range coding of codes under integer probability tables (`constriction`'s range coder).

The coder only ever sees integer counts, so encoder and decoder agree bit for bit whenever they
compute the same counts: `quantize_probabilities` turns float logits into counts inside the
jitted prior (floor of softmax * 2^precision, plus 1 so every code stays codable), and the
fallback models for a tokenizer without a prior are integer arithmetic on the host. constriction
rescales a table to its own fixed-point precision deterministically (`perfect=False`), the same
way in both directions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_PRECISION = 20  # 2^20 levels: the +1 floor costs < 0.002 bits per token at K = 1024.
ADAPTIVE_INCREMENT = 32  # Count added to a code each time it occurs (the adaptive model).


def _constriction():
  try:
    import constriction  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("vqgan_jax.compress needs the range coder: pip install constriction") from e
  return constriction


def _family():
  return _constriction().stream.model.Categorical(perfect=False)


def quantize_probabilities(logits: jax.Array, precision: int) -> jax.Array:
  """Integer counts (..., V) int32 from float logits: floor(softmax * 2^precision) + 1.

  Scaling by a power of two and flooring are exact, so the counts are a function of the
  softmax's float32 bits alone."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return (jnp.floor(probs * float(2**precision)) + 1.0).astype(jnp.int32)


def _table(counts: np.ndarray) -> np.ndarray:
  return np.asarray(counts, np.float64).reshape(1, -1)


class Encoder:
  """One image's range encoder: `push(code, counts)` in decoding order, then `finish()`."""

  def __init__(self):
    self._coder = _constriction().stream.queue.RangeEncoder()
    self._family = _family()

  def push(self, code: int, counts: np.ndarray) -> None:
    self._coder.encode(np.asarray([code], np.int32), self._family, _table(counts))

  def finish(self) -> bytes:
    """The payload: the coder's 32-bit words, little-endian. Its termination costs ~16 bits
    per image over the codes' ideal size (measured; cutting bytes off the last word breaks the
    stream)."""
    return self._coder.get_compressed().astype("<u4").tobytes()


class Decoder:
  """One image's range decoder over a payload: `pop(counts)` returns the next code."""

  def __init__(self, payload: bytes):
    if len(payload) % 4:
      raise ValueError(f"a range-coded payload is whole 32-bit words, got {len(payload)} bytes.")
    words = np.frombuffer(payload, "<u4").astype(np.uint32)
    self._coder = _constriction().stream.queue.RangeDecoder(words)
    self._family = _family()

  def pop(self, counts: np.ndarray) -> int:
    return int(self._coder.decode(self._family, _table(counts))[0])


class UniformModel:
  """Every code equally likely: log2(K) bits per code (a tokenizer without a prior)."""

  def __init__(self, vocab_size: int):
    self._counts = np.ones(vocab_size, np.int64)

  def counts(self) -> np.ndarray:
    return self._counts

  def update(self, code: int) -> None:
    del code


class AdaptiveModel:
  """Counts of the codes seen so far in this image (every code starts at 1): pays off when an
  image repeats codes (flat regions of large images)."""

  def __init__(self, vocab_size: int, increment: int = ADAPTIVE_INCREMENT):
    self._counts = np.ones(vocab_size, np.int64)
    self._increment = increment

  def counts(self) -> np.ndarray:
    return self._counts

  def update(self, code: int) -> None:
    self._counts[code] += self._increment


def host_model(name: str, vocab_size: int):
  if name == "uniform":
    return UniformModel(vocab_size)
  if name == "adaptive":
    return AdaptiveModel(vocab_size)
  raise ValueError(f"Unknown host probability model {name!r}; use 'uniform' or 'adaptive'.")


def code_bits(counts: np.ndarray, codes: np.ndarray) -> float:
  """-log2 of each code's probability under its counts, summed: the ideal size in bits."""
  counts = np.asarray(counts, np.float64)
  chosen = np.take_along_axis(counts, np.asarray(codes)[..., None], axis=-1)[..., 0]
  return float(np.sum(np.log2(counts.sum(-1)) - np.log2(chosen)))
