"""Multi-host training proven on one machine: 2 processes x 4 CPU devices over gloo.

Each process reads only its shard of the data, checkpoints go through Orbax's multi-process path,
a second launch resumes, and the parameters equal one process with 8 devices stepping on the
same global batches (host 0's local batch followed by host 1's). The tokenizer first, then the
prior on that tokenizer's codes.
"""
import functools

import jax
import numpy as np
import pytest

from tests.helpers import launch_main, load_config
from vqgan_jax.data import input_pipeline
from vqgan_jax.prior import frozen_tokenizers, model as prior_model, train as prior_train
from vqgan_jax.runtime import checkpoints, sharding
from vqgan_jax.tokenizer import train
from vqgan_jax.models.lpips import load_lpips_params

pytestmark = pytest.mark.multiprocess

PROCESSES = 2


def _launch(workdir, num_train_steps: int, config: str = "configs/tiny.py:test",
            extra: tuple[str, ...] = ()) -> None:
  """Runs the 2-process job to completion (each process with 4 CPU devices)."""
  launch_main([f"--config={config}", f"--workdir={workdir}",
               f"--config.num_train_steps={num_train_steps}", "--config.image_every_steps=-1",
               *extra], devices=4, processes=PROCESSES, timeout=600)


def _reference_params(config, num_steps: int):
  """One process, 8 devices, global batch = concatenation of the two hosts' local batches."""
  model, disc = train.build_models(config)
  tx, disc_tx, schedule = train.build_optimizers(config)
  mesh = sharding.create_mesh()
  init = functools.partial(train.init_state, config=config, model=model, disc=disc, tx=tx,
                           disc_tx=disc_tx)
  state, _, shardings = sharding.create_sharded_state(
      init, jax.random.PRNGKey(config.seed), mesh, config.param_sharding)
  step = jax.jit(functools.partial(train.train_step, config=config, model=model, disc=disc,
                                   tx=tx, disc_tx=disc_tx, lr_schedule=schedule),
                 out_shardings=(shardings, sharding.replicated(mesh)))
  lpips_params = jax.device_put(load_lpips_params(), sharding.replicated(mesh))
  local = config.batch_size // PROCESSES
  hosts = [input_pipeline.create_train_iterator(config, local_batch_size=local, process_index=i,
                                                process_count=PROCESSES) for i in range(PROCESSES)]
  for _ in range(num_steps):
    images = np.concatenate([next(h)["image"] for h in hosts])
    state, _ = step(state, sharding.global_batch({"image": images}, mesh), lpips_params)
  return jax.device_get(state)


def _global_batches(config, num_steps: int):
  """The global batches the two hosts feed together: host 0's local batch, then host 1's."""
  local = config.batch_size // PROCESSES
  hosts = [input_pipeline.create_train_iterator(config, local_batch_size=local, process_index=i,
                                                process_count=PROCESSES) for i in range(PROCESSES)]
  for _ in range(num_steps):
    parts = [next(h) for h in hosts]
    yield {key: np.concatenate([p[key] for p in parts]) for key in ("image", "label")}


def _reference_prior_params(config, num_steps: int):
  """The prior on one process with 8 devices, as `prior_train.train_and_evaluate` builds it."""
  mesh = sharding.create_mesh()
  tokenizers = frozen_tokenizers.load_tokenizers(config)
  grid = prior_model.token_grid(config, tokenizers.model)
  num_classes = input_pipeline.num_classes(config)
  model = prior_model.build_model(config, tokenizers, num_classes)
  tx, schedule = prior_train.build_optimizer(config)
  init = functools.partial(prior_train.init_state, config=config, model=model, tx=tx,
                           tokens_shape=(1, grid[0] * grid[1]),
                           cond_example=np.zeros((1,), np.int32))
  state, _, shardings = sharding.create_sharded_state(
      init, jax.random.PRNGKey(config.seed), mesh, config.param_sharding)
  step = jax.jit(functools.partial(prior_train.prior_step, config=config, tokenizers=tokenizers,
                                   model=model, tx=tx, lr_schedule=schedule,
                                   num_classes=num_classes),
                 out_shardings=(shardings, sharding.replicated(mesh)))
  tok_params = jax.device_put(tokenizers.params, sharding.replicated(mesh))
  for batch in _global_batches(config, num_steps):
    state, _ = step(state, sharding.global_batch(batch, mesh), tok_params)
  return jax.device_get(state)


def test_two_processes_train_resume_and_match_one_process(tmp_path):
  config = load_config("tiny", "test")
  workdir = tmp_path / "multihost"
  _launch(workdir, 2)
  assert checkpoints.Checkpointer(str(workdir), every_steps=1, keep=3).all_steps() == [2]
  _launch(workdir, 4)  # Resumes from step 2 on both hosts.
  raw, step = checkpoints.restore_raw_state(str(workdir))
  assert step == 4

  expected = _reference_params(config, 4)
  lr_sum = sum(float(train.build_optimizers(config)[2](i)) for i in range(4))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2 * lr_sum),
               raw["params"], expected.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2 * lr_sum),
               raw["disc_params"], expected.disc_params)
  assert int(raw["step"]) == 4

  # The prior, on the tokenizer just trained by the two processes.
  prior_config = load_config("tiny_prior", "test")
  prior_config.tokenizer_workdir = str(workdir)
  prior_workdir = tmp_path / "multihost_prior"
  flags = (f"--config.tokenizer_workdir={workdir}", "--config.eval_every_steps=-1")
  _launch(prior_workdir, 2, "configs/tiny_prior.py:test", flags)
  _launch(prior_workdir, 4, "configs/tiny_prior.py:test", flags)
  raw, step = checkpoints.restore_raw_state(str(prior_workdir))
  assert step == 4
  expected = _reference_prior_params(prior_config, 4)
  prior_lr_sum = sum(float(prior_train.build_optimizer(prior_config)[1](i)) for i in range(4))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2 * prior_lr_sum),
               raw["params"], expected.params)
