"""Images as the metrics and the PNGs see them: uint8 levels and row grids (PNG files are
written by `storage.save_png`)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[-1, 1] floats to uint8 with rounding, as every metric and PNG uses."""
  return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def to_uint8_on_device(images: jax.Array) -> jax.Array:
  """`to_uint8` inside jitted code, bit for bit: the same float32 operations in the same order
  (round half to even), so images can leave the devices as uint8."""
  levels = (jnp.asarray(images).astype(jnp.float32) + 1.0) * 127.5
  return jnp.clip(jnp.round(levels), 0, 255).astype(jnp.uint8)


def image_grid(rows: list[np.ndarray]) -> np.ndarray:
  """Tiles rows of (N, H, W, 3) uint8 images into one (rows*H, N*W, 3) picture."""
  return np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)

