"""Fine-tuning (`config.init_from`) keeps what it loads: weights bitwise, the codebook state (or
one rebuilt to agree with the loaded codebook), every codebook option, converted taming
workdirs, and a generator EMA that is a copy, never an alias, so the donated step runs."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import load_config
from tests.tokenizer.test_train import CODEBOOK_OPTIONS, _random_batch
from vqgan_jax.runtime import checkpoints, sharding
from vqgan_jax.tokenizer import finetune, train
from vqgan_jax.tokenizer.load import save_tokenizer
from vqgan_jax.models.lpips import load_lpips_params


def _config(option: str):
  config = load_config("tiny", "test")
  model, loss = CODEBOOK_OPTIONS[option]
  config.model.update(model)
  config.loss.update(loss)
  return config


def _source_state(config, seed: int = 7):
  """A state unlike the fine-tune's fresh one (another seed), with a non-trivial codebook state."""
  model, disc = train.build_models(config)
  tx, disc_tx, _ = train.build_optimizers(config)
  init = functools.partial(train.init_state, config=config, model=model, disc=disc, tx=tx,
                           disc_tx=disc_tx)
  with jax.threefry_partitionable(False):  # As the trainer initialises (seed 0: its fresh state).
    state = jax.device_get(jax.jit(init)(jax.random.PRNGKey(seed)))
  params = state.params
  if "embedding" in params.get("quantizer", {}):  # A trained codebook, far from the init's.
    embedding = np.random.default_rng(seed).normal(
        0, 0.5, params["quantizer"]["embedding"].shape).astype(np.float32)
    params = {**params, "quantizer": {**params["quantizer"], "embedding": embedding}}
    state = state.replace(params=params)
  quantizer = dict(state.codebook_state.get("quantizer", {}))
  if "cluster_size" in quantizer:  # Counts and sums a trained run would have.
    quantizer["cluster_size"] = quantizer["cluster_size"] * 3.0
    quantizer["embed_sum"] = params["quantizer"]["embedding"] * 3.0
  if "initialized" in quantizer:
    quantizer["initialized"] = np.asarray(True)
  if quantizer:
    state = state.replace(codebook_state={**state.codebook_state, "quantizer": quantizer})
  return state


def _write_trained(workdir: str, config, state) -> None:
  checkpoints.write_config(workdir, config.to_dict())
  checkpointer = checkpoints.Checkpointer(workdir, every_steps=1, keep=1)
  checkpointer.save(5, jax.tree.map(jnp.asarray, state), 0, force=True)
  checkpointer.close()


def _fine_tune_state(config, source: str, workdir: str, ema_decay: float = 0.99):
  config = config.copy_and_resolve_references()
  config.init_from, config.ema_decay = source, ema_decay
  model, disc = train.build_models(config)
  tx, disc_tx, _ = train.build_optimizers(config)
  _, state, shardings, _ = train.create_train_state(
      config, workdir, sharding.create_mesh(), model=model, disc=disc, tx=tx, disc_tx=disc_tx)
  return config, state, shardings


def _assert_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


@pytest.mark.parametrize("option", sorted(CODEBOOK_OPTIONS))
def test_loads_weights_and_codebook_state_of_a_trained_workdir(option, tmp_path):
  config = _config(option)
  source = _source_state(config)
  _write_trained(str(tmp_path / "source"), config, source)
  _, state, _ = _fine_tune_state(config, str(tmp_path / "source"), str(tmp_path / "ft"))
  _assert_equal(state.params, source.params)
  _assert_equal(state.disc_params, source.disc_params)
  _assert_equal(state.disc_batch_stats, source.disc_batch_stats)
  _assert_equal(state.codebook_state, source.codebook_state)
  _assert_equal(state.ema_params, source.params)
  assert int(state.step) == 0  # A new run: optimizer states and step start fresh.
  for ema, param in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(state.params)):
    for ema_shard, param_shard in zip(ema.addressable_shards, param.addressable_shards):
      assert ema_shard.data.unsafe_buffer_pointer() != param_shard.data.unsafe_buffer_pointer()


def test_converted_taming_workdir_rebuilds_the_codebook_state(tmp_path):
  """taming's quantizer weights under EMA, k-means++ and restarts: the codebook is kept."""
  taming = _config("taming")
  source = _source_state(taming)
  save_tokenizer(str(tmp_path / "taming"),
                 {"params": source.params, "discriminator": {
                     "params": source.disc_params, "batch_stats": source.disc_batch_stats}},
                 taming.to_dict())
  config = _config("taming")
  config.model.update(dict(ema_decay=0.9, codebook_init="kmeans++", restart_unused_steps=1,
                           buffer_size=512))
  _, state, _ = _fine_tune_state(config, str(tmp_path / "taming"), str(tmp_path / "ft"))
  _assert_equal(state.params, source.params)
  quantizer = jax.device_get(state.codebook_state["quantizer"])
  embedding = np.asarray(source.params["quantizer"]["embedding"])
  assert bool(quantizer["initialized"])  # k-means++ must not re-seed a trained codebook.
  np.testing.assert_array_equal(quantizer["next_codebook"], embedding)
  np.testing.assert_allclose(quantizer["embed_sum"],
                             embedding * quantizer["cluster_size"][:, None])


def test_first_step_keeps_the_loaded_codebook(tmp_path):
  """EMA codebook + generator EMA + k-means++ whose buffer fills at the first step: the step
  runs (nothing donated twice) and the codebook stays the loaded one, moved by one EMA update,
  not replaced by averages of the random init or re-seeded."""
  config = _config("vq_all_options")
  config.model.restart_unused_steps = 50  # Restarts aside: they re-seed codes on purpose.
  source = _source_state(config)
  _write_trained(str(tmp_path / "source"), config, source)
  config, state, shardings = _fine_tune_state(config, str(tmp_path / "source"),
                                              str(tmp_path / "ft"))
  mesh = sharding.create_mesh()
  model, disc = train.build_models(config)
  tx, disc_tx, schedule = train.build_optimizers(config)
  step = train.jit_train_step(config, model, disc, tx, disc_tx, schedule, shardings, mesh)
  lpips = jax.device_put(load_lpips_params(), sharding.replicated(mesh))
  state, metrics = step(state, sharding.global_batch(_random_batch(config), mesh), lpips)
  assert int(metrics["nonfinite_streak"]) == 0
  loaded = np.asarray(source.params["quantizer"]["embedding"])
  after = np.asarray(jax.device_get(state.params["quantizer"]["embedding"]))
  # One EMA update (decay 0.9) moves each code by at most a tenth of its distance to the
  # batch; averaging the random init's sums or re-seeding would replace it.
  assert np.abs(after - loaded).mean() < 0.25 * np.abs(loaded).mean()
  assert int(metrics["codebook/restarts"]) == 0


def test_mismatched_architecture_says_what_to_change(tmp_path):
  config = _config("taming")
  _write_trained(str(tmp_path / "source"), config, _source_state(config))
  other = config.copy_and_resolve_references()
  other.model.ch = 64
  with pytest.raises(ValueError, match="does not match this config's architecture"):
    _fine_tune_state(other, str(tmp_path / "source"), str(tmp_path / "ft"))


def test_codebook_state_rebuild_is_consistent():
  params = {"quantizer": {"embedding": jnp.arange(6.0).reshape(3, 2)}}
  state = {"quantizer": {"initialized": jnp.asarray(False), "cluster_size": jnp.full((3,), 2.0),
                         "embed_sum": jnp.zeros((3, 2)), "next_codebook": jnp.zeros((3, 2))}}
  rebuilt = finetune.codebook_state_for_trained_codebook(state, params)["quantizer"]
  assert bool(rebuilt["initialized"])
  np.testing.assert_array_equal(rebuilt["embed_sum"], 2.0 * params["quantizer"]["embedding"])
  np.testing.assert_array_equal(rebuilt["next_codebook"], params["quantizer"]["embedding"])
