"""The prior as the entropy coder's probability model: integer counts for every code of a batch
of code grids, token by token with the KV cache, identical in the encoder and the decoder.

Both directions run one compiled program: a `lax.fori_loop` over the grid's tokens, on every
device its own rows (shard_map over the data axis). Token g's counts come from a prefill of its
window (the window moved, or g = 0) or one KV-cache step (the next token in the same window);
then an `io_callback` hands them to the host, where the encoder codes the code it knows and the
decoder decodes one from the bitstream, and the callback's answer is token g, fed back into the
loop. The host is in the loop because the decoder's next input is a code only the range decoder
can give; the encoder runs the very same program (only the host side of the callback differs),
so it computes the same bits, where a faster teacher-forced pass would round differently.

A row's numerics must not depend on how many images are coded together or on how many devices
share the work: every call computes exactly `rows_per_device` rows on each device (the batch
padded), so a row always runs in a program of the same shape, whatever the batch or the mesh
(the file records `rows_per_device`). Tokens a row has not placed yet are zeros in both
directions. Grids larger than the prior's training grid use taming's sliding window, as
`vqgan_jax.prior.samplers.sample_grid` does: token (i, j) is predicted at its raster position
inside the window with top-left (clip(i - h//2), clip(j - w//2)).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback
from jax.sharding import Mesh, PartitionSpec as P

from vqgan_jax.codec.entropy_coding import quantize_probabilities
from vqgan_jax.models.transformer import Transformer
from vqgan_jax.runtime import sharding

# choose(g, first_row, counts (rows, V) int32 numpy) -> token g of those rows, (rows,) int32.
Chooser = Callable[[int, int, np.ndarray], np.ndarray]


def window(g, grid: tuple[int, int], train_grid: tuple[int, int]):
  """(top, left, local raster index) of token g's window (ints, or traced int32)."""
  (grid_h, grid_w), (h, w) = grid, train_grid
  i, j = g // grid_w, g % grid_w
  top = jnp.clip(i - h // 2, 0, grid_h - h)
  left = jnp.clip(j - w // 2, 0, grid_w - w)
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
    self.rows_per_device, self.rows = rows_per_device, rows_per_device * mesh.size
    self.precision = precision
    self._compiled: dict[tuple[int, int], Callable] = {}
    self._choose: Chooser | None = None

  def _host_choose(self, device, g, counts) -> np.ndarray:
    """The callback's host side: one device's rows of token g."""
    first = int(device) * self.rows_per_device
    return np.asarray(self._choose(int(g), first, np.asarray(counts)), np.int32)

  def _loop(self, grid: tuple[int, int]) -> Callable:
    """The compiled loop over a grid's tokens (one per grid shape)."""
    if grid in self._compiled:
      return self._compiled[grid]
    model, precision, (h, w), (grid_h, grid_w) = self.model, self.precision, self.train_grid, grid
    # A class-conditional prior codes with its null label (label dropout trains it): the file
    # then needs no label.
    null = model.num_classes if model.num_classes > 0 else None
    local = self.rows_per_device

    def apply(params, *args, **kwargs):
      return model.apply({"params": params}, *args, **kwargs)

    def prefill(params, tokens, top, left, t):
      crop = jax.lax.dynamic_slice(tokens.reshape(local, grid_h, grid_w), (0, top, left),
                                   (local, h, w)).reshape(local, h * w)[:, :h * w - 1]
      cond = None if null is None else jnp.full((local,), null, jnp.int32)
      logits, kv = apply(params, crop, cond, t, method="prefill")
      return quantize_probabilities(logits, precision), kv

    def step(params, token, kv):
      logits, kv = apply(params, token, kv, method="decode_step")
      return quantize_probabilities(logits, precision), kv

    def loop(params):
      device = jax.lax.axis_index(sharding.DATA_AXIS)
      tokens = jnp.zeros((local, grid_h * grid_w), jnp.int32)
      kv_shape = jax.eval_shape(lambda: prefill(params, tokens, 0, 0, 0)[1])
      kv = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), kv_shape)

      def body(g, carry):
        tokens, kv, previous = carry
        where = jnp.stack(window(g, grid, self.train_grid)).astype(jnp.int32)
        same_window = jnp.all(where[:2] == previous[:2]) & (where[2] == previous[2] + 1)
        counts, kv = jax.lax.cond(
            same_window, lambda: step(params, tokens[:, g - 1], kv),
            lambda: prefill(params, tokens, where[0], where[1], where[2]))
        token = io_callback(self._host_choose, jax.ShapeDtypeStruct((local,), jnp.int32),
                            device, g, counts)
        return tokens.at[:, g].set(token), kv, where

      start = jnp.array([-1, -1, -2], jnp.int32)
      return jax.lax.fori_loop(0, grid_h * grid_w, body, (tokens, kv, start))[0]

    compiled = jax.jit(jax.shard_map(loop, mesh=self.mesh, in_specs=(P(),),
                                     out_specs=P(sharding.DATA_AXIS), check_vma=False))
    self._compiled[grid] = compiled
    return compiled

  def run(self, grid: tuple[int, int], choose: Chooser) -> np.ndarray:
    """Places every token of `self.rows` grids of shape `grid` in raster order; returns them
    (rows, H*W). `choose(g, first_row, counts)` returns token g of the rows first_row, ...
    (one device's rows; devices call it concurrently, each for its own rows, in token order)."""
    (grid_h, grid_w), (h, w) = grid, self.train_grid
    if grid_h < h or grid_w < w:
      raise ValueError(f"The code grid {grid} is smaller than the prior's window {self.train_grid}"
                       "; pad the image to at least the prior's training size.")
    self._choose = choose
    try:
      return np.asarray(self._loop(tuple(grid))(self.params))
    finally:
      self._choose = None
