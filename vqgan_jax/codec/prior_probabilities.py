"""The prior as the entropy coder's probability model: integer counts for every code of a batch
of code grids, token by token with the KV cache, identical in the encoder and the decoder.

Both directions run the same loop: token g's counts come from the compiled `prefill` (the window
moved, or g = 0) or `step` (the next token in the same window) on the tokens placed so far, then
`choose(g, counts)` places token g of every row: the encoder returns the codes it knows (and
codes them under those counts), the decoder decodes them from the bitstream. The loop runs on the
host because the decoder's next input is a code the range decoder yields only after it has seen
this token's counts; the encoder mirrors it call for call, so it feeds the same compiled programs
the same inputs and gets the same bits.

A row's numerics must not depend on how many images are coded together or on how many devices
share the work: every call computes exactly `rows_per_device` rows on each device (shard_map over
the data axis, the batch padded), so a row always runs in a program of the same shape, whatever
the batch or the mesh (the file records `rows_per_device`). Tokens a row has not placed yet are
zeros in both directions. Grids larger than the prior's training grid use taming's sliding
window, as `vqgan_jax.prior.samplers.sample_grid` does: token (i, j) is predicted at its raster
position inside the window with top-left (clip(i - h//2), clip(j - w//2)).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from vqgan_jax.codec.entropy_coding import quantize_probabilities
from vqgan_jax.models.transformer import KVCache, Transformer
from vqgan_jax.runtime import sharding


def window(g: int, grid: tuple[int, int], train_grid: tuple[int, int]) -> tuple[int, int, int]:
  """(top, left, local raster index) of token g's window."""
  (grid_h, grid_w), (h, w) = grid, train_grid
  i, j = divmod(g, grid_w)
  top, left = min(max(i - h // 2, 0), grid_h - h), min(max(j - w // 2, 0), grid_w - w)
  return top, left, (i - top) * w + (j - left)


class PriorProbabilities:
  """Counts from a `Transformer` prior over `train_grid`-sized windows, on `mesh`."""

  def __init__(self, model: Transformer, params, train_grid: tuple[int, int], mesh: Mesh, *,
               rows_per_device: int, precision: int):
    if model.cond_len > 0:
      raise ValueError("A prior conditioned on a low-resolution image cannot code an image on "
                       "its own (the decoder would need the condition); use an unconditional or "
                       "class-conditional prior.")
    self.model, self.params, self.train_grid, self.mesh = model, params, train_grid, mesh
    self.rows = rows_per_device * mesh.size
    self.precision = precision
    # A class-conditional prior codes with its null label (label dropout trains it): the file
    # then needs no label.
    null = model.num_classes if model.num_classes > 0 else None
    rows, cache = P(sharding.DATA_AXIS), KVCache(k=P(None, sharding.DATA_AXIS),
                                                 v=P(None, sharding.DATA_AXIS), positions=P(),
                                                 length=P())

    def apply(params, *args, **kwargs):
      return model.apply({"params": params}, *args, **kwargs)

    def prefill(params, tokens, t):
      cond = None if null is None else jnp.full(tokens.shape[:1], null, jnp.int32)
      logits, kv = apply(params, tokens, cond, t, method="prefill")
      return quantize_probabilities(logits, precision), kv

    def step(params, token, kv):
      logits, kv = apply(params, token, kv, method="decode_step")
      return quantize_probabilities(logits, precision), kv

    def on_rows(fn, in_specs):
      return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=(rows, cache),
                                   check_vma=False))

    self._prefill = on_rows(prefill, (P(), rows, P()))
    self._step = on_rows(step, (P(), rows, cache))

  def _put(self, rows: np.ndarray) -> jax.Array:
    return sharding.shard_host_batch(np.ascontiguousarray(rows, np.int32), self.mesh)

  def run(self, grid: tuple[int, int], choose: Callable[[int, np.ndarray], np.ndarray]
          ) -> np.ndarray:
    """Places every token of `self.rows` grids of shape `grid` in raster order; returns them
    (rows, H*W). `choose(g, counts (rows, V) int32)` returns token g of every row."""
    (grid_h, grid_w), (h, w) = grid, self.train_grid
    if grid_h < h or grid_w < w:
      raise ValueError(f"The code grid {grid} is smaller than the prior's window {self.train_grid}"
                       "; pad the image to at least the prior's training size.")
    tokens = np.zeros((self.rows, grid_h * grid_w), np.int32)
    previous, kv = None, None
    for g in range(grid_h * grid_w):
      top, left, t = window(g, grid, self.train_grid)
      if previous is not None and previous[:2] == (top, left) and previous[2] + 1 == t:
        counts, kv = self._step(self.params, self._put(tokens[:, g - 1]), kv)
      else:
        crop = tokens.reshape(self.rows, grid_h, grid_w)[:, top:top + h, left:left + w]
        counts, kv = self._prefill(self.params, self._put(crop.reshape(self.rows, h * w)[
            :, :h * w - 1]), jnp.int32(t))
      tokens[:, g] = choose(g, np.asarray(counts))
      previous = (top, left, t)
    return tokens
