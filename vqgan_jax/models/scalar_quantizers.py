"""Lookup-free quantizers with the VectorQuantizer interface (indices, straight-through values,
usage statistics, `lookup`): no codebook to learn, so none to collapse.

FSQ (Mentzer et al. 2023, "Finite Scalar Quantization"): each of d channels is bounded with
tanh and rounded to one of L_i levels; the code is the tuple of levels, K = prod(L_i).
LFQ (Yu et al. 2023, MAGVIT-v2): each of d = log2(K) channels is quantized to its sign, the
code is the bit pattern; an entropy penalty (`entropy_temperature` > 0 plus
`config.loss.entropy_weight`) spreads the codes. Its soft assignment softmax(-|z - c|^2 / t)
over the 2^d corners c factorises into independent bits, p_i(+1) = sigmoid(4 z_i / t), so the
'factorized' entropy terms cost O(d) per token instead of O(2^d d) (`lfq_entropy`).

When `embed_dim` differs from the quantizer's own dimension, Dense layers project in and out.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vqgan_jax.models import codebook_ops
from vqgan_jax.models.quantizer import (QuantizerOutput, UsageWindow, make_output,
                                        state_is_tracked, updates_state)

# How LookupFreeQuantizer computes its entropy terms: per bit, or over all 2^bits corners.
LFQ_ENTROPIES = ('factorized', 'exact')


class _Projected(nn.Module):
  """Shared plumbing: optional in/out projections and the usage window."""

  def _setup_common(self, dim: int):
    if dim != self.embed_dim:
      self.project_in = nn.Dense(dim, name='project_in')
      self.project_out = nn.Dense(self.embed_dim, name='project_out')
    self.tracked = state_is_tracked(self)
    if self.tracked:
      self.window = UsageWindow(self, self.codebook_size, self.usage_window_steps)

  def _in(self, z: jax.Array, dim: int) -> jax.Array:
    if z.shape[-1] != self.embed_dim:
      raise ValueError(f'{type(self).__name__} expects inputs with last axis {self.embed_dim}, '
                       f'got shape {z.shape}.')
    z = z.astype(jnp.float32)
    return self.project_in(z) if dim != self.embed_dim else z

  def _out(self, codes: jax.Array, dim: int) -> jax.Array:
    return self.project_out(codes) if dim != self.embed_dim else codes

  def _tracker(self, indices: jax.Array, train: bool):
    if not updates_state(self, train):
      return None
    usage, dead = self.window.update(codebook_ops.code_counts(indices, self.codebook_size))
    return usage, dead, jnp.zeros((), jnp.int32)


def fsq_codebook_size(levels: Sequence[int]) -> int:
  return int(np.prod(levels))


class FiniteScalarQuantizer(_Projected):
  """FSQ over the last axis; `codebook_size` must equal prod(levels)."""
  levels: Sequence[int]
  embed_dim: int
  codebook_size: int
  usage_window_steps: int = 100

  def setup(self):
    if fsq_codebook_size(self.levels) != self.codebook_size:
      raise ValueError(f'FSQ levels {tuple(self.levels)} give {fsq_codebook_size(self.levels)} '
                       f'codes but codebook_size={self.codebook_size}; set codebook_size to '
                       'the product of the levels.')
    self._setup_common(len(self.levels))

  def _constants(self):
    levels = np.asarray(self.levels, np.float32)
    basis = np.concatenate([[1], np.cumprod(self.levels[:-1])]).astype(np.int32)
    return levels, np.floor(levels / 2), basis

  def bound(self, z: jax.Array) -> jax.Array:
    """tanh-bounds each channel so that rounding yields exactly L_i values."""
    levels, _, _ = self._constants()
    half = (levels - 1) * (1 + 1e-3) / 2
    offset = np.where(self.levels_even, 0.5, 0.0)
    shift = np.arctanh(offset / half)
    return jnp.tanh(z + shift) * half - offset

  @property
  def levels_even(self) -> np.ndarray:
    return np.asarray(self.levels) % 2 == 0

  def __call__(self, z: jax.Array, train: bool = False) -> QuantizerOutput:
    dim = len(self.levels)
    z = self._in(z, dim)
    _, half_width, basis = self._constants()
    bounded = self.bound(z)
    rounded = bounded + jax.lax.stop_gradient(jnp.round(bounded) - bounded)
    codes = rounded / half_width
    indices = jnp.sum((jnp.round(bounded) + half_width).astype(jnp.int32) * basis, axis=-1)
    return make_output(quantized=self._out(codes, dim), indices=indices,
                       codebook_size=self.codebook_size, commitment_loss=0.0,
                       usage_tracker=self._tracker(indices, train))

  def codes(self, indices: jax.Array) -> jax.Array:
    """Normalised codes in [-1, 1] per channel for integer indices (before projection)."""
    levels, half_width, basis = self._constants()
    digits = (indices[..., None] // basis) % levels.astype(np.int32)
    return (digits - half_width) / half_width

  def lookup(self, indices: jax.Array) -> jax.Array:
    return self._out(self.codes(indices), len(self.levels))


def factorized_lfq_entropy(z: jax.Array, temperature: float) -> tuple[jax.Array, jax.Array]:
  """LFQ's entropy terms from the per-bit Bernoullis p_i = sigmoid(4 z_i / t) of (n, d) `z`.

  Returns (mean per-token entropy, codebook entropy). The first equals the all-corners one
  exactly (a product distribution's entropy is the sum of its factors'). The second is
  MAGVIT-v2's sum over bits of H(mean_n p_i): an upper bound of the entropy of the mean
  assignment, which need not factorise. O(n d) memory and time.
  """
  logits = 4.0 * z / temperature
  log_on, log_off = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
  on, off = jnp.exp(log_on), jnp.exp(log_off)
  sample_entropy = -jnp.mean(jnp.sum(on * log_on + off * log_off, axis=-1))
  mean_on, mean_off = jnp.mean(on, axis=0), jnp.mean(off, axis=0)
  # Logs clamped as in codebook_ops.search: finite gradients where a mean has underflowed.
  log = lambda p: jnp.log(jnp.maximum(p, 1e-30))
  codebook_entropy = -jnp.sum(mean_on * log(mean_on) + mean_off * log(mean_off))
  return sample_entropy, codebook_entropy


class LookupFreeQuantizer(_Projected):
  """LFQ: sign quantization of log2(codebook_size) channels; code bit i = channel i > 0.

  `lfq_entropy` picks how the entropy terms are computed (training with entropy_temperature >
  0): 'factorized' per bit (`factorized_lfq_entropy`, O(N d), MAGVIT-v2's form, fits 2^18
  codes) or 'exact' over all 2^d corners (O(N 2^d d) through `codebook_ops.search`, in chunks
  of `lookup_chunk_size` tokens; for small codebooks and reproducing runs made with it).
  """
  codebook_size: int
  embed_dim: int
  beta: float = 0.25
  entropy_temperature: float = 0.0
  lookup_chunk_size: int = 0
  lfq_entropy: str = 'factorized'
  usage_window_steps: int = 100

  @property
  def dim(self) -> int:
    return int(np.log2(self.codebook_size))

  def setup(self):
    if self.codebook_size < 2 or 2**self.dim != self.codebook_size:
      raise ValueError(f'LFQ needs codebook_size to be a power of two (K = 2^bits), got '
                       f'{self.codebook_size}; e.g. 1024 or 16384.')
    if self.lfq_entropy not in LFQ_ENTROPIES:
      raise ValueError(f'LookupFreeQuantizer lfq_entropy={self.lfq_entropy!r}; use one of '
                       f'{LFQ_ENTROPIES}.')
    self._setup_common(self.dim)

  def __call__(self, z: jax.Array, train: bool = False) -> QuantizerOutput:
    z = self._in(z, self.dim)
    bits = z > 0
    codes = jnp.where(bits, 1.0, -1.0)
    indices = jnp.sum(bits.astype(jnp.int32) << np.arange(self.dim, dtype=np.int32), axis=-1)
    sg = jax.lax.stop_gradient
    entropy = None
    if train and self.entropy_temperature > 0:
      entropy = self._entropy(z.reshape(-1, self.dim))
    return make_output(quantized=self._out(z + sg(codes - z), self.dim), indices=indices,
                       codebook_size=self.codebook_size,
                       commitment_loss=self.beta * jnp.mean((z - sg(codes))**2),
                       entropy=entropy, usage_tracker=self._tracker(indices, train))

  def _entropy(self, flat: jax.Array) -> tuple[jax.Array, jax.Array]:
    if self.lfq_entropy == 'factorized':
      return factorized_lfq_entropy(flat, self.entropy_temperature)
    corners = self.codes(jnp.arange(self.codebook_size))
    _, entropy = codebook_ops.search(flat, corners, chunk_size=self.lookup_chunk_size,
                                     entropy_temperature=self.entropy_temperature)
    return entropy

  def codes(self, indices: jax.Array) -> jax.Array:
    """The +-1 corner of each index (before projection)."""
    bits = (indices[..., None] >> np.arange(self.dim, dtype=np.int32)) & 1
    return jnp.where(bits > 0, 1.0, -1.0)

  def lookup(self, indices: jax.Array) -> jax.Array:
    return self._out(self.codes(indices), self.dim)


class NoQuantizer(nn.Module):
  """The identity bottleneck (`quantizer_type='none'`): the same network with continuous latents,
  the reference ceiling of what its quantizers could reconstruct. It has no codes: `indices` are
  all zero and `lookup` is an error, so it cannot feed a prior or the codec."""
  codebook_size: int
  embed_dim: int
  usage_window_steps: int = 100

  def __call__(self, z: jax.Array, train: bool = False) -> QuantizerOutput:
    del train
    if z.shape[-1] != self.embed_dim:
      raise ValueError(f'NoQuantizer expects inputs with last axis {self.embed_dim}, got shape '
                       f'{z.shape}.')
    z = z.astype(jnp.float32)
    return make_output(quantized=z, indices=jnp.zeros(z.shape[:-1], jnp.int32),
                       codebook_size=self.codebook_size, commitment_loss=0.0)

  def lookup(self, indices: jax.Array) -> jax.Array:
    raise ValueError("quantizer_type='none' has continuous latents and no codes to look up; "
                     "train a quantized tokenizer for the prior or the codec.")
