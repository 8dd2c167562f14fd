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


def abstract_sharded_state(init_fn: Callable[[jax.Array], Any], rng: jax.Array, mesh: Mesh,
                           strategy: str) -> tuple[Any, Any]:
  """(abstract state: ShapeDtypeStructs carrying their shardings, shardings) of `init_fn(rng)`,
  without computing anything: what a restore needs as its target."""
  abstract = jax.eval_shape(init_fn, rng)
  shardings = tree_shardings(mesh, abstract, strategy)
  abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  return abstract, shardings


def materialize_state(init_fn: Callable[[jax.Array], Any], rng: jax.Array, shardings: Any) -> Any:
  """`init_fn(rng)` created directly in its sharded layout (it never exists unsharded).

  Initialisation uses the non-partitionable threefry: it compiles the many 4-D random draws of
  conv kernels about 3x faster (40 s -> 13 s for the tiny model on CPU), and the values it
  draws are the same whatever the sharding.
  """
  with jax.threefry_partitionable(False):
    return jax.jit(init_fn, out_shardings=shardings)(rng)


def create_sharded_state(init_fn: Callable[[jax.Array], Any], rng: jax.Array, mesh: Mesh,
                         strategy: str) -> tuple[Any, Any, Any]:
  """(state, abstract state with shardings, shardings): `init_fn(rng)` created sharded."""
  abstract, shardings = abstract_sharded_state(init_fn, rng, mesh, strategy)
  return materialize_state(init_fn, rng, shardings), abstract, shardings


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles the global batch from each process's local slice (multi-host safe)."""
  sharding = batch_sharding(mesh)
  return {
      key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
      for key, value in local_batch.items()
      if not key.startswith("_")
  }


def padded_global_batch(local_batch: dict[str, np.ndarray],
                        mesh: Mesh) -> tuple[dict[str, jax.Array], int]:
  """The global batch of per-host slices of any (equal) size: each host's rows are padded, by
  repeating its last row, to a multiple of its devices, so the batch splits over any mesh.
  Returns (global batch, real rows per host); `drop_padding` undoes it after a gather."""
  local_devices = mesh.devices.size // jax.process_count()
  real = len(next(iter(local_batch.values())))
  padded = -(-real // local_devices) * local_devices
  extended = {k: np.concatenate([v, np.repeat(v[-1:], padded - real, axis=0)])
              for k, v in local_batch.items() if not k.startswith("_")}
  return global_batch(extended, mesh), real


def drop_padding(gathered: np.ndarray, real_per_host: int) -> np.ndarray:
  """The real rows of a gathered `padded_global_batch` (hosts in order)."""
  hosts = jax.process_count()
  per_host = gathered.shape[0] // hosts
  return gathered.reshape(hosts, per_host, *gathered.shape[1:])[:, :real_per_host].reshape(
      hosts * real_per_host, *gathered.shape[1:])


def process_local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded array, in order: what `padded_global_batch` put on
  its devices, without gathering the other hosts' rows."""
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  rows, seen = [], set()
  for shard in shards:
    start = shard.index[0].start or 0
    if start not in seen:  # A replicated array has the same rows on every device.
      seen.add(start)
      rows.append(np.asarray(shard.data))
  return np.concatenate(rows)


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


def shard_host_batch(batch: np.ndarray, mesh: Mesh) -> jax.Array:
  """A batch every process holds in full (e.g. computed from global row indices) as a global
  array split over the data axis; each process uploads only the rows of its own devices."""
  batch = np.asarray(batch)
  return jax.make_array_from_callback(batch.shape, batch_sharding(mesh), lambda index: batch[index])


def local_rows(x: jax.Array) -> tuple[np.ndarray, np.ndarray]:
  """(row indices in `x`, rows) of this process's shards of a batch-sharded array, in row
  order, each row once over all processes (replicated shards are read from replica 0 only)."""
  shards = sorted((s for s in x.addressable_shards if s.replica_id == 0),
                  key=lambda s: s.index[0].indices(x.shape[0])[0] if s.index else 0)
  if not shards:
    return np.zeros((0,), np.int64), np.zeros((0,) + x.shape[1:], x.dtype)
  indices = np.concatenate([np.arange(*s.index[0].indices(x.shape[0])) for s in shards])
  return indices, np.concatenate([np.asarray(s.data) for s in shards])


def sum_over_hosts(arrays: list[np.ndarray]) -> list[np.ndarray]:
  """Each array summed over all processes, in process order, so every process gets the same
  bits (a collective: every process calls it with arrays of the same shapes and dtypes).

  The arrays travel as raw 32-bit words, so float64 values arrive unrounded (JAX without x64
  would round them to float32) and are added on the host in float64. Every process receives every process's arrays (for FID
  statistics, 32 MiB per process).
  """
  arrays = [np.array(a) for a in arrays]  # Copies: the caller's arrays are never aliased.
  if jax.process_count() == 1:
    return arrays
  if any(a.dtype.itemsize % 4 for a in arrays):
    raise ValueError("sum_over_hosts takes arrays of 32- or 64-bit dtypes.")
  words = np.concatenate([np.ascontiguousarray(a).reshape(-1).view(np.uint32) for a in arrays])
  gathered = np.asarray(multihost_utils.process_allgather(words))  # (processes, words)
  sums, offset = [], 0
  for a in arrays:
    n = a.size * a.dtype.itemsize // 4
    per_host = np.ascontiguousarray(gathered[:, offset:offset + n]).view(a.dtype)
    sums.append(np.sum(per_host, axis=0).reshape(a.shape))
    offset += n
  return sums


def gather_to_host(x: jax.Array) -> np.ndarray:
  """The full value of a (possibly multi-host sharded) array on every host."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
