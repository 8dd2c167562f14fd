"""Tokenizer evaluation: rFID, LPIPS, PSNR, SSIM, L1 and codebook usage over an eval split.

    python -m vqgan_jax.main --config=configs/tiny.py --workdir=workdirs/tiny --mode=eval [--step=N]

`--mode=eval` restores a checkpoint (trained, or converted by `vqgan_jax.tokenizer.convert_taming`;
the architecture comes from WORKDIR/config.json, the data from --config), reconstructs every
image of the eval split exactly once (the last partial batch is padded and masked, never dropped)
and writes WORKDIR/eval/metrics_<step>.json, TensorBoard scalars under WORKDIR/eval and a PNG
grid of originals above reconstructions. During training, `TrainingEvaluator` runs the same code
on `config.num_eval_images` images. The metrics are the plug-ins of
`vqgan_jax.tokenizer.evaluators`, picked by `config.eval_metrics`; one jitted step runs the model
once and every metric on its output.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqgan_jax.runtime import checkpoints, host_data, images as image_utils, metric_writer
from vqgan_jax.runtime import sharding, storage, trainer_config
from vqgan_jax.tokenizer import evaluators
from vqgan_jax.tokenizer.config import (validate_eval_config, validate_model_config,
                                        validate_saved_modality)
from vqgan_jax.tokenizer.modality import gather_pictures, model_input
from vqgan_jax.tokenizer.load import restore_tokenizer

GRID_IMAGES = 8


class Evaluation:
  """The model and the configured metrics as one jitted step, over any stream of eval batches."""

  def __init__(self, model, metric_names: Iterable[str], mesh, *, reference_stats: str = "",
               modality: str = "image"):
    self._mesh = mesh
    metric_names = tuple(metric_names)
    num_classes = getattr(model, "out_ch", 0)  # Of a segmentation tokenizer's label maps.
    continuous = getattr(model, "quantizer_type", "vq") == "none"
    if continuous:  # No codes: no usage to count.
      metric_names = tuple(n for n in metric_names if n != "codebook")
    self.evaluators, self.unavailable = evaluators.make_evaluators(
        metric_names, codebook_size=model.codebook_size, reference_stats=reference_stats,
        num_classes=num_classes)
    for key, reason in self.unavailable.items():
      logging.warning("Metric %r is not computed: %s", key, reason)
    replicated = sharding.replicated(mesh)
    self._constants = jax.device_put(
        {name: e.constants for name, e in self.evaluators.items()}, replicated)

    def step(params, constants, batch):
      images = model_input(batch, modality, num_classes)
      mask = batch["mask"].astype(jnp.float32)
      recon, qout = model.apply({"params": params}, images)
      recon = recon.astype(jnp.float32)
      outputs = {name: e.device_fn(constants[name], images, recon, qout.indices, mask)
                 for name, e in self.evaluators.items()}
      return outputs, mask, recon

    self._step = jax.jit(step, out_shardings=(replicated, replicated, sharding.batch_sharding(mesh)))
    self._inputs = jax.jit(lambda batch: model_input(batch, modality, num_classes))

  def run(self, params, batches: Iterable[dict[str, np.ndarray]],
          on_first_batch: Callable[[jax.Array, jax.Array], None] | None = None
          ) -> dict[str, float | None]:
    """Metrics over all `batches` (host-local, with `mask`), plus `num_images`.
    `on_first_batch(inputs, recon)` sees the first global batch in model space."""
    for e in self.evaluators.values():
      e.reset()
    params = _on_mesh(params, self._mesh)
    num_images, pending = 0.0, None

    def consume(item):
      outputs, mask = jax.device_get(item)
      for name, e in self.evaluators.items():
        e.update(outputs[name], mask)
      return float(mask.sum())

    for i, batch in enumerate(batches):
      global_batch = sharding.global_batch(batch, self._mesh)
      with jax.set_mesh(self._mesh):  # The chunked code search runs per device.
        outputs, mask, recon = self._step(params, self._constants, global_batch)
      if i == 0 and on_first_batch is not None:
        on_first_batch(self._inputs(global_batch), recon)
      if pending is not None:  # Read the previous batch while this one computes.
        num_images += consume(pending)
      pending = (outputs, mask)
    if pending is not None:
      num_images += consume(pending)
    if num_images == 0:
      raise ValueError("The evaluation split is empty: check config.data (eval_split, folder).")
    results: dict[str, float | None] = {"num_images": num_images}
    for e in self.evaluators.values():
      results.update(e.result())
    for key in self.unavailable:
      results[key] = None
    return results


def _on_mesh(tree, mesh):
  """`tree` as is when every array already lives on the mesh's devices (a training state, or a
  restore onto the mesh: moving those across hosts is not possible); otherwise replicated onto
  it (host arrays, or one process's `load_tokenizer` result on its first device)."""
  devices = set(mesh.devices.flat)
  leaves = jax.tree.leaves(tree)
  if all(isinstance(x, jax.Array) and set(x.sharding.device_set) == devices for x in leaves):
    return tree
  return jax.device_put(tree, sharding.replicated(mesh))


class TrainingEvaluator:
  """The evaluation, during training, on `config.num_eval_images` held-out images."""

  def __init__(self, config: ml_collections.ConfigDict, model, mesh):
    self._config = config
    self._evaluation = Evaluation(model, config.eval_metrics, mesh,
                                  reference_stats=config.fid_reference_stats,
                                  modality=config.modality)

  def evaluate(self, params) -> dict[str, float]:
    batches = host_data.eval_batches(self._config, self._config.num_eval_images)
    results = self._evaluation.run(params, batches)
    return {f"eval/{k}": v for k, v in results.items() if v is not None}


def _grid_saver(path: str, modality: str) -> Callable[[jax.Array, jax.Array], None]:
  """Saves the first inputs above their reconstructions (label maps in colour)."""
  def save(inputs, recon):
    originals = gather_pictures(inputs, modality)[:GRID_IMAGES]
    recons = gather_pictures(recon, modality)[:GRID_IMAGES]
    if jax.process_index() == 0:
      storage.save_png(path, image_utils.image_grid([originals, recons]))
  return save


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        step: int | None = None) -> dict[str, Any]:
  """`--mode=eval`: metrics of WORKDIR's checkpoint (latest, or `step`) on the whole eval split.

  Returns the dict written to WORKDIR/eval/metrics_<step>.json.
  """
  mesh = sharding.create_mesh()
  trainer_config.validate_batch_and_data(config, mesh)
  validate_eval_config(config)
  model, variables, step = restore_tokenizer(workdir, step, sharding=sharding.replicated(mesh))
  saved = checkpoints.read_config(workdir)
  saved_model = ml_collections.ConfigDict(saved["model"])
  validate_model_config(saved_model, config.data.image_size)
  validate_saved_modality(config, saved, workdir)
  if saved_model.to_dict() != ml_collections.ConfigDict(config.model.to_dict()).to_dict():
    logging.info("Evaluating the architecture stored in %s/config.json (--config.model is only "
                 "used for training).", workdir)
  params = variables["params"]

  out_dir = storage.join(workdir, "eval")
  evaluation = Evaluation(model, config.eval_metrics, mesh,
                          reference_stats=config.fid_reference_stats, modality=config.modality)
  results = evaluation.run(params, host_data.eval_batches(config), on_first_batch=_grid_saver(
      storage.join(out_dir, f"reconstructions_{step}.png"), config.modality))
  results = {"step": step, **results,
             "eval_split": config.data.eval_split, "source": config.data.source,
             "image_size": config.data.image_size,
             "unavailable": evaluation.unavailable}
  num_images = int(results["num_images"])
  results["num_images"] = num_images

  writer = metric_writer.create_writer(out_dir)
  writer.write_scalars(step, {f"eval/{k}": v for k, v in results.items()
                              if isinstance(v, float)})
  writer.flush()
  if jax.process_index() == 0:
    path = storage.join(out_dir, f"metrics_{step}.json")
    storage.write_json(path, results, indent=2, default=list)
    logging.info("Wrote %s: %s", path, json.dumps(results, default=list))
  return results
