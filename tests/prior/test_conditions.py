"""Every conditioning of the prior: trains, resumes, evaluates (with and without the condition)
and samples from eval conditions or from a user's file / prompt; sharded == single device."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
from jax.sharding import AxisType

from tests.helpers import load_config
from vqgan_jax.data import input_pipeline, text
from vqgan_jax.prior import conditions, frozen_tokenizers, model as prior_model, sample
from vqgan_jax.prior import train as prior_train
from vqgan_jax.runtime import checkpoints, sharding


@pytest.fixture
def text_config(random_tokenizer):
  config = load_config("tiny_prior", "test")
  config.tokenizer_workdir = random_tokenizer
  config.conditioning = "text"
  config.data.caption_length = 40
  config.caption_dropout = 0.5
  config.num_train_steps = 2
  config.image_every_steps = 2
  return config


def test_text_prior_trains_evaluates_and_samples_from_a_prompt(text_config, tmp_path):
  workdir = tmp_path / "prior"
  prior_train.train_and_evaluate(text_config, str(workdir))
  tokenizers = frozen_tokenizers.load_tokenizers(text_config)
  model = prior_model.build_model(text_config, tokenizers, 0)
  assert (model.cond_len, model.cond_vocab_size, model.cond_null_token) == (40, 257, text.PAD)
  batch = next(iter(input_pipeline.create_eval_iterator(
      text_config, local_batch_size=8, process_index=0, process_count=1)))
  raw, _ = checkpoints.restore_raw_state(str(workdir), fields=("params",))
  sums = jax.jit(functools.partial(prior_train.eval_sums, config=text_config,
                                   tokenizers=tokenizers, model=model))(
                                       raw["params"], tokenizers.params, batch)
  metrics = prior_train.eval_metrics(jax.device_get(sums), (8, 8), 16)
  assert metrics["eval/bits_per_token_null_condition"] > 0
  assert metrics["eval/bits_per_token"] != metrics["eval/bits_per_token_null_condition"]

  text_config.sample.prompt = "a  bright red crop"
  text_config.sample.guidance_scale = 2.0
  result = sample.sample_images(text_config, str(workdir))
  assert result["captions"] == ["a bright red crop"]
  eval_conditioned = text_config.copy_and_resolve_references()
  eval_conditioned.sample.prompt = ""
  result = sample.sample_images(eval_conditioned, str(workdir))
  assert len(result["captions"]) == 3 and all(c.endswith(" photo") for c in result["captions"])


def test_caption_dropout_replaces_whole_rows_by_the_empty_caption():
  tokens = jnp.arange(400 * 6).reshape(400, 6) % 256
  dropped = np.asarray(conditions.drop_captions(tokens, 0.3, jax.random.PRNGKey(0)))
  empty = (dropped == text.PAD).all(1)
  np.testing.assert_array_equal(dropped[~empty], np.asarray(tokens)[~empty])
  assert 0.2 < empty.mean() < 0.4


def test_text_step_sharded_equals_single_device(text_config):
  tokenizers = frozen_tokenizers.load_tokenizers(text_config)
  model = prior_model.build_model(text_config, tokenizers, 0)
  tx, schedule = prior_train.build_optimizer(text_config)
  state = jax.device_get(prior_train.init_state(
      jax.random.PRNGKey(0), config=text_config, model=model, tx=tx, tokens_shape=(1, 64),
      cond_example=jnp.zeros((1, 40), jnp.int32)))
  rng = np.random.default_rng(0)
  batches = [{"image": rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32),
              "label": np.zeros(8, np.int32),
              "caption": rng.integers(0, 257, (8, 40)).astype(np.int32)} for _ in range(2)]

  def run(mesh):
    step = jax.jit(functools.partial(
        prior_train.prior_step, config=text_config, tokenizers=tokenizers, model=model, tx=tx,
        lr_schedule=schedule, num_classes=0))
    s = jax.device_put(state, sharding.tree_shardings(mesh, state, "replicate"))
    tok = jax.device_put(tokenizers.params, sharding.replicated(mesh))
    for batch in batches:
      s, metrics = step(s, sharding.global_batch(batch, mesh), tok)
    return jax.device_get((s, metrics))

  s8, m8 = run(sharding.create_mesh())
  s1, m1 = run(jax.make_mesh((1,), ("data",), axis_types=(AxisType.Auto,),
                             devices=jax.devices()[:1]))
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               s8.params, s1.params)


@pytest.mark.parametrize("change, message", [
    (lambda c: setattr(c.sample, "condition", "x.png"), "sample.prompt, not"),
    (lambda c: setattr(c.sample, "prompt", "   "), "prompt is empty"),
])
def test_text_sampling_errors(text_config, tmp_path, change, message):
  from vqgan_jax.prior import user_conditions  # pylint: disable=g-import-not-at-top
  change(text_config)
  with pytest.raises(ValueError, match=message):
    user_conditions.load(text_config)


def test_prompt_for_a_class_prior_is_refused(random_tokenizer):
  from vqgan_jax.prior import user_conditions  # pylint: disable=g-import-not-at-top
  config = load_config("tiny_prior", "test")
  config.sample.prompt = "a cat"
  with pytest.raises(ValueError, match="prompt is for conditioning='text'"):
    user_conditions.load(config)


def test_tokenized_condition_needs_its_tokenizer(random_tokenizer, tmp_path):
  config = load_config("tiny_prior", "test")
  config.tokenizer_workdir = random_tokenizer
  config.conditioning = "edges"
  with pytest.raises(ValueError, match="needs config.cond_tokenizer_workdir"):
    prior_train.train_and_evaluate(config, str(tmp_path / "run"))
  config.cond_tokenizer_workdir = random_tokenizer  # Trained on images, not edge maps.
  with pytest.raises(ValueError, match="--config.modality=edges"):
    prior_train.train_and_evaluate(config, str(tmp_path / "run"))
