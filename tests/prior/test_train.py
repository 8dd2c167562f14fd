"""The prior trainer: end to end with sampling, exact resume, sharded == single device."""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from tests.helpers import load_config
from vqgan_jax.prior import frozen_tokenizers, model as prior_model, sample, train as prior_train
from vqgan_jax.runtime import checkpoints, optimizers, sharding


@pytest.fixture
def tokenizer_workdir(random_tokenizer):
  return random_tokenizer


@pytest.fixture
def config(tokenizer_workdir):
  config = load_config("tiny_prior", "test")
  config.tokenizer_workdir = tokenizer_workdir
  return config


def test_end_to_end_train_and_sample(config, tmp_path):
  workdir = tmp_path / "prior"
  state = prior_train.train_and_evaluate(config, str(workdir))
  assert int(state.step) == config.num_train_steps
  assert checkpoints.Checkpointer(str(workdir), every_steps=1, keep=3).all_steps() == [2, 4]
  assert (workdir / "images" / "samples_00000004.png").exists()

  result = sample.sample_images(config, str(workdir))
  samples = workdir / "samples"
  assert sorted(os.listdir(samples)) == [
      "grid.png", "sample_00000.png", "sample_00001.png", "sample_00002.png", "samples.json"]
  with open(samples / "samples.json") as f:
    written = json.load(f)
  assert written["num_samples"] == 3 and written["step"] == 4 == result["step"]
  assert isinstance(written["tokens_per_second"], float)  # Reported, never asserted on.
  assert len(written["labels"]) == 3


def test_resume_is_bitwise_exact(config, tmp_path):
  straight = tmp_path / "straight"
  prior_train.train_and_evaluate(config, str(straight))
  resumed = tmp_path / "resumed"
  half = config.copy_and_resolve_references()
  half.num_train_steps = 2
  prior_train.train_and_evaluate(half, str(resumed))
  prior_train.train_and_evaluate(config, str(resumed))
  a, step_a = checkpoints.restore_raw_state(str(straight))
  b, step_b = checkpoints.restore_raw_state(str(resumed))
  assert step_a == step_b == 4
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_sharded_step_equals_single_device(config):
  config.pkeep = 0.9  # Exercise corruption and label dropout too.
  tokenizers = frozen_tokenizers.load_tokenizers(config)
  model = prior_model.build_model(config, tokenizers, num_classes=10)
  tx, schedule = prior_train.build_optimizer(config)
  state = jax.device_get(prior_train.init_state(
      jax.random.PRNGKey(0), config=config, model=model, tx=tx, tokens_shape=(1, 64),
      cond_example=jnp.zeros((1,), jnp.int32)))
  rng = np.random.default_rng(0)
  batches = [{"image": rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32),
              "label": rng.integers(0, 10, (8,)).astype(np.int32)} for _ in range(2)]

  def run(mesh):
    step = jax.jit(functools.partial(
        prior_train.prior_step, config=config, tokenizers=tokenizers, model=model, tx=tx,
        lr_schedule=schedule, num_classes=10), donate_argnums=(0,))
    s = jax.device_put(state, sharding.tree_shardings(mesh, state, "replicate"))
    tok = jax.device_put(tokenizers.params, sharding.replicated(mesh))
    for batch in batches:
      s, metrics = step(s, sharding.global_batch(batch, mesh), tok)
    return jax.device_get((s, metrics))

  s8, m8 = run(sharding.create_mesh())
  s1, m1 = run(jax.make_mesh((1,), ("data",), axis_types=(AxisType.Auto,),
                             devices=jax.devices()[:1]))
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               s8.params, s1.params)


def test_weight_decay_only_on_matrices(config):
  tokenizers = frozen_tokenizers.load_tokenizers(config)
  model = prior_model.build_model(config, tokenizers, num_classes=10)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64), jnp.int32),
                      jnp.zeros((1,), jnp.int32))["params"]
  flat = jax.tree_util.tree_flatten_with_path(optimizers.matrices_only(params))[0]
  decayed = [jax.tree_util.keystr(p) for p, v in flat if v]
  assert decayed and all("kernel" in p for p in decayed)
  assert not any("embed" in p.lower() or "bias" in p or "scale" in p for p in decayed)


@pytest.mark.parametrize("change, message", [
    (lambda c: setattr(c, "tokenizer_workdir", ""), "tokenizer_workdir"),
    (lambda c: setattr(c, "conditioning", "depth"), "conditioning"),
    (lambda c: setattr(c.data, "image_size", 17), "downsampling factor 2"),
    (lambda c: setattr(c, "batch_size", 12), "not divisible by the 8 devices"),
])
def test_config_errors_say_what_to_change(config, tmp_path, change, message):
  change(config)
  with pytest.raises(ValueError, match=message):
    prior_train.train_and_evaluate(config, str(tmp_path / "run"))


def test_larger_grid_and_completion(config, tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "prior"
  config.num_train_steps = 2
  config.image_every_steps = -1
  prior_train.train_and_evaluate(config, str(workdir))
  config.sample.grid_shape = (10, 12)  # Training grid: 8x8 codes of 16x16 images.
  config.sample.completion = 2
  config.sample.num_samples = 2
  result = sample.sample_images(config, str(workdir))
  assert result["grid_shape"] == [10, 12]
  assert Image.open(workdir / "samples" / "sample_00000.png").size == (24, 20)
  assert Image.open(workdir / "samples" / "completion.png").size == (2 * 16, 2 * 16)


def test_image_conditional_prior_trains_and_samples(config, tmp_path, tokenizer_workdir):
  """A low-resolution copy (8x8, tokenized by a second tokenizer) conditions the prior."""
  config.conditioning = "image"
  config.cond_tokenizer_workdir = tokenizer_workdir
  config.cond_downsample = 2
  config.num_train_steps = 2
  config.sample.guidance_scale = 1.0
  workdir = tmp_path / "prior"
  prior_train.train_and_evaluate(config, str(workdir))
  model = prior_model.build_model(config, frozen_tokenizers.load_tokenizers(config), 0)
  assert model.cond_len == 16 and model.cond_vocab_size == 64
  result = sample.sample_images(config, str(workdir))
  assert result["num_samples"] == 3
  assert (workdir / "samples" / "conditions.png").exists()
