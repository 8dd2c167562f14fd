"""How many bytes a sharded train step needs on each device, and whether that fits the chip.

Two measures, both per device:
- the state's bytes, from its shapes and shardings alone (nothing allocated): what a restore or
  a fresh state occupies before the step is even compiled;
- XLA's buffer assignment of the compiled step (`compiled.memory_analysis()`): its arguments
  (state, batch, frozen weights), outputs, the outputs that reuse donated arguments (alias),
  temporaries (activations kept for the backward pass and scratch) and generated code. The
  step's peak is `argument + output - alias + temp + generated_code`.

The chip's memory is `config.device_memory_gb` (GiB), else the device's own allocator limit
(`memory_stats()['bytes_limit']` on GPU and TPU); on CPU there is none and nothing is checked.
The trainer checks the state before creating it (`check_state_fits`) and the compiled step
before its first call (`MemoryCheckedStep`); `python -m vqgan_jax.plan` prints both measures for
a config on any device count.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from vqgan_jax.runtime import sharding

GIB = 2**30


def bytes_per_device(tree: Any) -> int:
  """Bytes one device holds of a pytree of sharded arrays or ShapeDtypeStructs with shardings
  (an array without a sharding counts in full, as a replicated one does)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = tuple(leaf.shape)
    leaf_sharding = getattr(leaf, "sharding", None)
    if leaf_sharding is not None:
      shape = tuple(leaf_sharding.shard_shape(shape))
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return total


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `abstract` (shapes, dtypes, weak types) carrying `shardings`: what
  `.lower(...)` takes in place of the arrays."""
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s,
                                        weak_type=getattr(a, "weak_type", False)),
      abstract, shardings)


@dataclasses.dataclass(frozen=True)
class CompiledMemory:
  """XLA's buffer assignment of one compiled SPMD program, in bytes per device."""
  argument: int
  output: int
  alias: int  # Outputs written into donated arguments (counted once, in `argument`).
  temp: int  # Activations and scratch.
  generated_code: int

  @property
  def peak(self) -> int:
    return self.argument + self.output - self.alias + self.temp + self.generated_code

  @classmethod
  def of(cls, compiled) -> "CompiledMemory":
    stats = compiled.memory_analysis()
    if isinstance(stats, (list, tuple)):
      stats = stats[0]
    return cls(argument=int(stats.argument_size_in_bytes), output=int(stats.output_size_in_bytes),
               alias=int(stats.alias_size_in_bytes), temp=int(stats.temp_size_in_bytes),
               generated_code=int(stats.generated_code_size_in_bytes))

  def to_dict(self) -> dict[str, int]:
    return {**dataclasses.asdict(self), "peak": self.peak}


def device_memory_limit(config: ml_collections.ConfigDict) -> int | None:
  """Bytes one device may use: `config.device_memory_gb` GiB when > 0, else the allocator's
  limit of the first local device, else None (CPU: no limit to check against)."""
  gigabytes = config.get("device_memory_gb", 0)
  if gigabytes and gigabytes > 0:
    return int(gigabytes * GIB)
  stats = jax.local_devices()[0].memory_stats() or {}
  return int(stats["bytes_limit"]) if stats.get("bytes_limit") else None


def gib(num_bytes: float) -> str:
  return f"{num_bytes / GIB:.2f} GiB"


def check_state_fits(abstract_state: Any, mesh: Mesh, strategy: str, limit: int | None) -> None:
  """Raises before the state exists when its parameters and optimizer state alone do not fit
  one device, naming what to change (FSDP, with the bytes it would leave; more devices)."""
  if limit is None:
    return
  needed = bytes_per_device(abstract_state)
  if needed <= limit:
    return
  advice = []
  if strategy != "fsdp":
    fsdp = bytes_per_device(with_shardings(
        abstract_state, sharding.tree_shardings(mesh, abstract_state, "fsdp")))
    advice.append(f"set --config.param_sharding=fsdp ({gib(fsdp)} per device on this mesh)")
  advice.append(f"train on more than {mesh.devices.size} devices")
  raise ValueError(
      f"The train state (parameters, optimizer state, EMA) needs {gib(needed)} per device with "
      f"config.param_sharding={strategy!r} on {mesh.devices.size} devices, more than the "
      f"{gib(limit)} of one device (config.device_memory_gb, or the device's limit when 0): "
      f"{' or '.join(advice)}.")


def _step_advice(config: ml_collections.ConfigDict, mesh: Mesh, extra: tuple[str, ...]) -> str:
  per_device = config.batch_size // mesh.devices.size
  advice = list(extra)
  if per_device > 1:
    advice.append(f"a smaller per-device batch ({per_device} now: lower --config.batch_size or "
                  "add devices)")
  if config.get("dtype", "float32") != "bfloat16":
    advice.append("--config.dtype=bfloat16")
  if config.get("param_sharding", "replicate") != "fsdp":
    advice.append("--config.param_sharding=fsdp")
  return "; ".join(advice) or "more devices"


class MemoryCheckedStep:
  """A jitted step compiled ahead of its first call and checked against the device's memory.

  On the first call the step is lowered and compiled for the actual arguments (no execution),
  and XLA's peak (`CompiledMemory.peak`) is compared with `limit`: a step that cannot fit raises
  a ValueError with the numbers and what to change before anything runs, as does an XLA
  RESOURCE_EXHAUSTED while compiling or dispatching that first step. Every call runs the
  compiled executable, so nothing compiles twice.

  Args:
    jitted: the `jax.jit` step, `(state, batch, *constants) -> (state, metrics)`.
    constants: trailing arguments passed on every call (frozen weights).
    config: the trainer config (its batch size, dtype and sharding shape the advice).
    mesh: the device mesh the step runs on.
    limit: bytes one device may use (`device_memory_limit`); None (CPU without
      `config.device_memory_gb`) calls the jitted step unchanged and only translates a
      RESOURCE_EXHAUSTED of its first call.
    advice: config changes specific to the trainer, most useful first (e.g. remat).
  """

  def __init__(self, jitted, constants: tuple, *, config: ml_collections.ConfigDict, mesh: Mesh,
               limit: int | None, advice: tuple[str, ...] = ()):
    self._jitted, self._constants, self._limit = jitted, tuple(constants), limit
    self._advice = _step_advice(config, mesh, advice)
    self._compiled: Callable[..., Any] | None = None
    self.memory: CompiledMemory | None = None

  def _exhausted(self, error: Exception, when: str) -> ValueError:
    return ValueError(f"The train step ran out of device memory {when} (XLA: "
                      f"{str(error).splitlines()[0][:300]}); to fit it: {self._advice}.")

  def __call__(self, state, batch):
    args = (state, batch, *self._constants)
    if self._compiled is not None:
      return self._compiled(*args)
    if self._limit is None:  # Nothing to check against: the plain jitted step, as before.
      try:
        result = self._jitted(*args)
      except jax.errors.JaxRuntimeError as error:
        if "RESOURCE_EXHAUSTED" in str(error):
          raise self._exhausted(error, "in its first call") from error
        raise
      self._compiled = self._jitted
      return result
    try:
      compiled = self._jitted.lower(*args).compile()
    except jax.errors.JaxRuntimeError as error:
      if "RESOURCE_EXHAUSTED" in str(error):
        raise self._exhausted(error, "while compiling") from error
      raise
    self.memory = CompiledMemory.of(compiled)
    if self._limit is not None and self.memory.peak > self._limit:
      m = self.memory
      raise ValueError(
          f"The compiled train step needs {gib(m.peak)} per device (XLA: arguments "
          f"{gib(m.argument)}, activations and scratch {gib(m.temp)}, outputs not in donated "
          f"buffers {gib(m.output - m.alias)}), more than the {gib(self._limit)} of one device "
          f"(config.device_memory_gb, or the device's limit when 0); to fit it: "
          f"{self._advice}. `python -m vqgan_jax.plan` compares the options.")
    try:
      result = compiled(*args)
    except jax.errors.JaxRuntimeError as error:
      if "RESOURCE_EXHAUSTED" in str(error):
        raise self._exhausted(error, "in its first call") from error
      raise
    self._compiled = compiled
    return result
