"""The memory planner on 8 forced CPU devices: per-device bytes from shardings, the state check
before creation, the compiled-step check, and a full plan of the tiny test config."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vqgan_jax import plan
from vqgan_jax.models import conv_paths
from vqgan_jax.runtime import memory_plan, sharding
from configs import tiny


@pytest.fixture(scope="module")
def mesh():
  assert jax.device_count() == 8
  return sharding.create_mesh()


def test_bytes_per_device_counts_one_shard(mesh):
  full = jax.ShapeDtypeStruct((64, 32), jnp.float32, sharding=sharding.replicated(mesh))
  split = jax.ShapeDtypeStruct((64, 32), jnp.float32,
                               sharding=NamedSharding(mesh, P(mesh.axis_names[0])))
  assert memory_plan.bytes_per_device(full) == 64 * 32 * 4
  assert memory_plan.bytes_per_device(split) == 64 * 32 * 4 // 8
  assert memory_plan.bytes_per_device({"a": np.zeros((3,), np.int32)}) == 12


def test_state_check_names_fsdp_with_its_bytes(mesh):
  abstract = {"w": jax.ShapeDtypeStruct((1024, 1024), jnp.float32)}
  state = memory_plan.with_shardings(abstract, sharding.tree_shardings(mesh, abstract))
  memory_plan.check_state_fits(state, mesh, "replicate", limit=None)
  memory_plan.check_state_fits(state, mesh, "replicate", limit=8 * 2**20)
  with pytest.raises(ValueError, match=r"param_sharding=fsdp \(0\.00 GiB per device"):
    memory_plan.check_state_fits(state, mesh, "replicate", limit=2**20)


def _config(**overrides):
  config = ml_collections.ConfigDict({"batch_size": 16, "dtype": "float32",
                                      "param_sharding": "replicate", **overrides})
  return config


def test_step_check_raises_before_running_with_advice(mesh):
  calls = []

  @jax.jit
  def step(state, batch):
    calls.append(1)  # Traced (not run) by lower(): counted once per trace.
    return state + batch.sum(), {"loss": batch.mean()}

  checked = memory_plan.MemoryCheckedStep(step, (), config=_config(), mesh=mesh, limit=16,
                                          advice=("--config.model.remat=True",))
  with pytest.raises(ValueError, match=r"remat=True.*per-device batch \(2 now.*bfloat16.*fsdp"):
    checked(jnp.zeros(()), jnp.ones((16, 1024)))
  assert checked.memory is not None and checked.memory.peak > 16

  roomy = memory_plan.MemoryCheckedStep(step, (), config=_config(), mesh=mesh, limit=2**30)
  state, _ = roomy(jnp.zeros(()), jnp.ones((16, 1024)))
  state, _ = roomy(state, jnp.ones((16, 1024)))
  assert float(state) == 2 * 16 * 1024
  unlimited = memory_plan.MemoryCheckedStep(step, (), config=_config(), mesh=mesh, limit=None)
  assert float(unlimited(jnp.zeros(()), jnp.ones((16, 1024)))[0]) == 16 * 1024


def test_device_memory_limit_from_config():
  assert memory_plan.device_memory_limit(_config(device_memory_gb=2.0)) == 2 * 2**30
  # CPU devices report no allocator limit: nothing to check.
  assert memory_plan.device_memory_limit(_config(device_memory_gb=0.0)) is None


def test_plan_of_tiny_config_on_eight_devices(mesh, monkeypatch):
  config = plan.variant_config(tiny.get_config("test"), remat=True, dtype="bfloat16",
                               batch_size=16)
  config.device_memory_gb = 64.0
  # The plan is of the accelerators' program: the CPU-only conv paths are off while the step
  # traces (the last convs traced; the state's shapes are traced before, with them on).
  conv_paths_enabled = []
  real_prefers_im2col = conv_paths.prefers_im2col
  monkeypatch.setattr(conv_paths, "prefers_im2col", lambda shape: (
      conv_paths_enabled.append(conv_paths._enabled), real_prefers_im2col(shape))[1])
  result = plan.plan_variant(config, mesh)
  assert conv_paths_enabled and not conv_paths_enabled[-1]
  per = result["bytes_per_device"]
  assert result["per_device_batch"] == 2 and result["devices"] == 8
  h, w = plan.train.image_shape(config)
  assert per["batch"] == 2 * h * w * config.model.in_channels * 4
  assert per["generator_params"] > 0 and per["optimizer_state"] >= per["generator_params"]
  assert per["state"] == sum(v for k, v in per.items()
                             if k in ("generator_params", "discriminator_params",
                                      "optimizer_state", "ema_params", "codebook_state",
                                      "other_state"))
  xla = result["xla"]
  # Arguments hold at least the state, the batch shard and LPIPS; activations need scratch.
  assert xla["argument"] >= per["state"] + per["batch"] + per["lpips_params"] - 1024
  assert xla["temp"] > 0 and result["peak_bytes"] == xla["peak"]
  assert result["fits"] is True
  table = plan.format_table([result])
  assert "8 devices, global batch 16 (2 per device)" in table and "yes" in table
