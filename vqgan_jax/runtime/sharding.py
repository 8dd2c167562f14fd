"""One device mesh for every job: batch and parameter shardings, state created sharded, global
batches in, full arrays out.

The mesh has a single `data` axis over all devices of all hosts. Batches are split along it.
Parameters are replicated by default; `fsdp` shards each large array along its largest
dimension divisible by the axis size (ZeRO-3 style), which XLA turns into all-gathers in the
forward pass and reduce-scatters in the backward pass.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
PARAM_SHARDING_STRATEGIES = ("replicate", "fsdp")
# Arrays smaller than this stay replicated under FSDP: sharding them saves nothing.
FSDP_MIN_SIZE = 2**14


def create_mesh() -> Mesh:
  """A 1-D mesh over every device of every process."""
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def _fsdp_spec(shape: tuple[int, ...], axis_size: int) -> P:
  if int(np.prod(shape, dtype=np.int64)) < FSDP_MIN_SIZE:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % axis_size == 0:
      spec = [None] * len(shape)
      spec[dim] = DATA_AXIS
      return P(*spec)
  return P()


def tree_shardings(mesh: Mesh, abstract_tree: Any, strategy: str = "replicate") -> Any:
  """NamedShardings for a pytree of arrays (or ShapeDtypeStructs) under a strategy."""
  if strategy not in PARAM_SHARDING_STRATEGIES:
    raise ValueError(
        f"config.param_sharding={strategy!r} is unknown; use one of {PARAM_SHARDING_STRATEGIES}.")
  axis_size = mesh.shape[DATA_AXIS]

  def one(leaf):
    shape = tuple(getattr(leaf, "shape", ()))
    if strategy == "replicate" or not shape:
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, _fsdp_spec(shape, axis_size))

  return jax.tree.map(one, abstract_tree)


def create_sharded_state(init_fn: Callable[[jax.Array], Any], rng: jax.Array, mesh: Mesh,
                         strategy: str) -> tuple[Any, Any, Any]:
  """Creates the state directly in its sharded layout.

  Returns (state, abstract_state_with_shardings, shardings). The state never exists unsharded:
  `jax.eval_shape` gives its structure, `jax.jit(init, out_shardings=...)` materialises it.
  Initialisation uses the non-partitionable threefry: it compiles the many 4-D random draws of
  conv kernels about 3x faster (40 s -> 13 s for the tiny model on CPU), and the values it
  draws are the same whatever the sharding.
  """
  with jax.threefry_partitionable(False):
    abstract = jax.eval_shape(init_fn, rng)
    shardings = tree_shardings(mesh, abstract, strategy)
    state = jax.jit(init_fn, out_shardings=shardings)(rng)
  abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  return state, abstract, shardings


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles the global batch from each process's local slice (multi-host safe)."""
  sharding = batch_sharding(mesh)
  return {
      key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
      for key, value in local_batch.items()
      if not key.startswith("_")
  }


def check_batch_divisible(global_batch_size: int, mesh: Mesh) -> None:
  """Raises a message that says what to change when the batch cannot be split evenly."""
  num_devices = mesh.shape[DATA_AXIS]
  if global_batch_size % num_devices:
    raise ValueError(
        f"config.batch_size={global_batch_size} is not divisible by the {num_devices} devices "
        f"of the mesh; set --config.batch_size to a multiple of {num_devices} "
        f"(e.g. {max(num_devices, global_batch_size // num_devices * num_devices)}).")
  if global_batch_size % jax.process_count():
    raise ValueError(
        f"config.batch_size={global_batch_size} is not divisible by the {jax.process_count()} "
        "processes; set it to a multiple of the process count.")


def gather_to_host(x: jax.Array) -> np.ndarray:
  """The full value of a (possibly multi-host sharded) array on every host."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
