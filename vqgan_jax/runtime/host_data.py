"""This host's share of the data, as every job reads it (the pipeline itself takes explicit
process indices; this is where JAX's process layout and the global batch size come in)."""
from __future__ import annotations

import itertools
from typing import Iterator

import jax
import ml_collections
import numpy as np

from vqgan_jax.data import input_pipeline


def train_iterator(config: ml_collections.ConfigDict, position: int) -> Iterator[dict]:
  """This host's share of the global train batch, continuing at source record `position`."""
  return input_pipeline.create_train_iterator(
      config, local_batch_size=config.batch_size // jax.process_count(),
      process_index=jax.process_index(), process_count=jax.process_count(),
      start_position=position)


def eval_batches(config: ml_collections.ConfigDict,
                 num_images: int = -1) -> Iterator[dict[str, np.ndarray]]:
  """This host's eval batches: the whole split, or the batches covering its first `num_images`."""
  batches = input_pipeline.create_eval_iterator(
      config, local_batch_size=config.batch_size // jax.process_count(),
      process_index=jax.process_index(), process_count=jax.process_count())
  if num_images > 0:
    batches = itertools.islice(batches, -(-num_images // config.batch_size))
  return batches
