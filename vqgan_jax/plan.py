"""Memory plan of the tokenizer train step per device, for any device count (nothing runs).

    python -m vqgan_jax.plan --config=configs/imagenet.py --devices=16 [--batch_size=256] \
        [--remat=false,true] [--dtype=float32,bfloat16] [--out=plan.json]

`--devices=N` forces N CPU devices (before JAX starts), so a laptop plans a pod slice's step:
the mesh, the sharded state and the global batch of `--batch_size` (default: the config's)
split N ways, exactly as the trainer builds them. The step is lowered from ShapeDtypeStructs
and compiled, never run; nothing the size of the state is allocated. `--devices=0` plans on
the machine's own devices instead (on a TPU VM: XLA:TPU's own buffer assignment, which is what
the chip will hold; XLA:CPU's count is an estimate of it).

For each variant (every `--remat` x `--dtype` pair) it reports, per device: the generator's and
discriminator's parameters, their optimizer state, the EMA parameters, the codebook state, the
batch and the frozen LPIPS weights (from shapes and shardings), then XLA's buffer assignment of
the compiled step (`vqgan_jax.runtime.memory_plan.CompiledMemory`: arguments, outputs, alias,
temp = activations and scratch, generated code) and its peak. With `--config.device_memory_gb`
set it also says whether each variant fits.

The plan is of the GAN phase: `disc_start` and `disc_train_start` are set to 0, so the
discriminator, its backward pass and the adaptive weight are straight-line code in the step.
(Before `disc_start` the trainer's step holds the GAN passes in a `lax.cond`; XLA assigns
buffers to both branches of a conditional, so its memory analysis already counts the GAN
branch. Measured on `configs/tiny.py:test`: the same argument bytes, and temp bytes within
a few percent of the GAN phase's: see `tests/runtime/test_memory_plan.py`.)
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from vqgan_jax.models.conv_paths import plain_convs
from vqgan_jax.models.lpips import load_lpips_params
from vqgan_jax.runtime import memory_plan, sharding, storage
from vqgan_jax.tokenizer import train
from vqgan_jax.tokenizer.config import (validate_model_config, validate_modality_config,
                                        validate_quantizer_config)

FLAGS = flags.FLAGS
DTYPES = ("float32", "bfloat16")


def _define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Tokenizer config (configs/*.py).",
                                  lock_config=True)
  flags.DEFINE_integer("devices", 0, "Plan for this many forced CPU devices (0: the devices "
                       "this machine has).")
  flags.DEFINE_integer("batch_size", 0, "Global batch over all devices (0: config.batch_size).")
  flags.DEFINE_list("remat", ["false", "true"], "config.model.remat values to plan.")
  flags.DEFINE_list("dtype", list(DTYPES), "config.dtype values to plan.")
  flags.DEFINE_string("out", None, "Write the plan as JSON here.")
  flags.mark_flags_as_required(["config"])


def force_cpu_devices(count: int) -> None:
  """Makes JAX start on `count` CPU devices; must run before anything initialises a backend."""
  try:
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError as error:  # The backend already started: too late to choose devices.
    raise RuntimeError(f"--devices={count} must be set before JAX starts its backend, but it has "
                       f"started already ({error}); run the planner in a fresh process.") from error


def variant_config(config: ml_collections.ConfigDict, *, remat: bool, dtype: str,
                   batch_size: int = 0) -> ml_collections.ConfigDict:
  """`config` with `model.remat`, `dtype` and the global batch set, in the GAN phase."""
  config = config.copy_and_resolve_references()
  config.model.remat = remat
  config.dtype = dtype
  if batch_size:
    config.batch_size = batch_size
  if config.loss.disc_factor != 0:  # With a GAN at all: plan the step that runs it.
    config.loss.disc_start = 0
    config.loss.disc_train_start = 0
  return config


def abstract_batch(config: ml_collections.ConfigDict, mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """The global train batch the step reads, as ShapeDtypeStructs split over the data axis."""
  h, w = train.image_shape(config)
  batch_sharding = sharding.batch_sharding(mesh)
  if config.modality == "segmentation":
    return {"segmentation": jax.ShapeDtypeStruct((config.batch_size, h, w), jnp.int32,
                                                 sharding=batch_sharding)}
  return {config.modality: jax.ShapeDtypeStruct((config.batch_size, h, w, config.model.in_channels),
                                                jnp.float32, sharding=batch_sharding)}


@dataclasses.dataclass
class StepArguments:
  """What the train step is lowered with, as ShapeDtypeStructs carrying their shardings."""
  state: Any
  state_shardings: Any
  batch: dict[str, jax.ShapeDtypeStruct]
  lpips_params: Any


def step_arguments(config: ml_collections.ConfigDict, mesh, model, disc, tx,
                   disc_tx) -> StepArguments:
  """The sharded abstract state (as the trainer creates it), the batch and the LPIPS weights."""
  init = functools.partial(train.init_state, config=config, model=model, disc=disc, tx=tx,
                           disc_tx=disc_tx)
  abstract = jax.eval_shape(init, jax.random.PRNGKey(config.seed))
  shardings = sharding.tree_shardings(mesh, abstract, config.param_sharding)
  lpips = {}
  if config.loss.perceptual_weight != 0:
    lpips = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                        sharding=sharding.replicated(mesh)),
                         load_lpips_params())
  return StepArguments(memory_plan.with_shardings(abstract, shardings), shardings,
                       abstract_batch(config, mesh), lpips)


def state_bytes(state) -> dict[str, int]:
  """Bytes per device of each part of a (sharded, abstract) tokenizer TrainState."""
  per_field = {f.name: memory_plan.bytes_per_device(getattr(state, f.name))
               for f in dataclasses.fields(state)}
  parts = {
      "generator_params": per_field.pop("params"),
      "discriminator_params": per_field.pop("disc_params") + per_field.pop("disc_batch_stats"),
      "optimizer_state": per_field.pop("opt_state") + per_field.pop("disc_opt_state"),
      "ema_params": per_field.pop("ema_params"),
      "codebook_state": per_field.pop("codebook_state"),
  }
  parts["other_state"] = sum(per_field.values())  # Step, rng, counters, LeCAM anchors.
  parts["state"] = sum(parts.values())
  return parts


def plan_variant(config: ml_collections.ConfigDict, mesh, *, compile_step: bool = True
                 ) -> dict[str, Any]:
  """The memory plan of `config`'s train step on `mesh`, per device (see the module doc).

  `compile_step=False` gives only the bytes known from shapes and shardings.
  """
  validate_modality_config(config)
  validate_model_config(config.model, config.data.image_size)
  validate_quantizer_config(config.model, config.loss)
  sharding.check_batch_divisible(config.batch_size, mesh)
  model, disc = train.build_models(config)
  tx, disc_tx, schedule = train.build_optimizers(config)
  args = step_arguments(config, mesh, model, disc, tx, disc_tx)
  devices = mesh.devices.size
  plan = {"remat": bool(config.model.remat), "dtype": config.dtype, "devices": devices,
          "global_batch": config.batch_size, "per_device_batch": config.batch_size // devices,
          "param_sharding": config.param_sharding,
          "bytes_per_device": {**state_bytes(args.state),
                               "batch": memory_plan.bytes_per_device(args.batch),
                               "lpips_params": memory_plan.bytes_per_device(args.lpips_params)}}
  if compile_step:
    step = train.jit_train_step(config, model, disc, tx, disc_tx, schedule,
                                args.state_shardings, mesh)
    # Traced as the training loop traces it, but with the accelerators' convs: the CPU-only
    # conv paths (`models/conv_paths.py`) would plan a program no TPU or GPU runs.
    with jax.set_mesh(mesh), plain_convs():
      compiled = step.lower(args.state, args.batch, args.lpips_params).compile()
    memory = memory_plan.CompiledMemory.of(compiled)
    plan["xla"] = memory.to_dict()
    plan["peak_bytes"] = memory.peak
  if config.get("device_memory_gb", 0) > 0:
    limit = memory_plan.device_memory_limit(config)
    plan["device_memory_bytes"] = limit
    plan["fits"] = plan.get("peak_bytes", plan["bytes_per_device"]["state"]) <= limit
  return plan


def plan_variants(config: ml_collections.ConfigDict, mesh, *, remats=(False, True),
                  dtypes=DTYPES, batch_size: int = 0) -> list[dict[str, Any]]:
  """`plan_variant` for every (remat, dtype) pair."""
  plans = []
  for remat in remats:
    for dtype in dtypes:
      logging.info("Planning remat=%s dtype=%s ...", remat, dtype)
      plans.append(plan_variant(variant_config(config, remat=remat, dtype=dtype,
                                               batch_size=batch_size), mesh))
  return plans


def format_table(plans: list[dict[str, Any]]) -> str:
  """The plans as a fixed-width table, in GiB per device."""
  columns = [("params G+D", lambda p: p["bytes_per_device"]["generator_params"]
              + p["bytes_per_device"]["discriminator_params"]),
             ("opt state", lambda p: p["bytes_per_device"]["optimizer_state"]),
             ("EMA", lambda p: p["bytes_per_device"]["ema_params"]),
             ("batch", lambda p: p["bytes_per_device"]["batch"]),
             ("XLA args", lambda p: p["xla"]["argument"]),
             ("temp", lambda p: p["xla"]["temp"]),
             ("out-alias", lambda p: p["xla"]["output"] - p["xla"]["alias"]),
             ("code", lambda p: p["xla"]["generated_code"]),
             ("peak", lambda p: p["xla"]["peak"])]
  first = plans[0]
  lines = [f"Per device (GiB): {first['devices']} devices, global batch {first['global_batch']} "
           f"({first['per_device_batch']} per device), param_sharding="
           f"{first['param_sharding']}, GAN phase",
           f"{'remat':>5} {'dtype':>8} " + " ".join(f"{name:>10}" for name, _ in columns)
           + ("  fits" if "fits" in first else "")]
  for p in plans:
    row = f"{str(p['remat']):>5} {p['dtype']:>8} " + " ".join(
        f"{value(p) / memory_plan.GIB:>10.3f}" for _, value in columns)
    if "fits" in p:
      row += f"  {'yes' if p['fits'] else 'NO'}"
    lines.append(row)
  return "\n".join(lines)


def _bools(values: list[str]) -> tuple[bool, ...]:
  known = {"true": True, "false": False}
  if any(v.lower() not in known for v in values):
    raise app.UsageError(f"--remat takes true and/or false, got {values}.")
  return tuple(known[v.lower()] for v in values)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.devices < 0:
    raise app.UsageError(f"--devices={FLAGS.devices}: use a positive count (0: this machine's).")
  if FLAGS.devices:
    force_cpu_devices(FLAGS.devices)
  unknown = [d for d in FLAGS.dtype if d not in DTYPES]
  if unknown:
    raise app.UsageError(f"--dtype {unknown}: use some of {DTYPES}.")
  mesh = sharding.create_mesh()
  plans = plan_variants(FLAGS.config, mesh, remats=_bools(FLAGS.remat), dtypes=FLAGS.dtype,
                        batch_size=FLAGS.batch_size)
  print(format_table(plans))
  if FLAGS.out:
    storage.write_json(FLAGS.out, {"platform": jax.devices()[0].platform, "variants": plans},
                       indent=2)
    logging.info("Wrote %s", FLAGS.out)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
