"""Every conditioning of the prior: trains, resumes, evaluates (with and without the condition)
and samples from eval conditions or from a user's file / prompt; sharded == single device."""
import functools

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


@pytest.mark.parametrize("shape, null", [
    ((400,), 8),  # Class labels: the null label.
    ((400, 6), text.PAD),  # Captions: the empty caption.
    ((400, 4, 4), 64),  # A map's grid of codes: all null code.
])
def test_condition_dropout_replaces_whole_rows_by_the_null_condition(shape, null):
  cond = jnp.arange(np.prod(shape)).reshape(shape) % null
  dropped = np.asarray(conditions.drop_conditions(cond, null, 0.3, jax.random.PRNGKey(0)))
  rows = dropped.reshape(shape[0], -1)
  empty = (rows == null).all(1)
  np.testing.assert_array_equal(rows[~empty], np.asarray(cond).reshape(shape[0], -1)[~empty])
  assert not (rows[~empty] == null).any()  # A row is dropped whole or not at all.
  assert 0.2 < empty.mean() < 0.4
  np.testing.assert_array_equal(  # The caption helper is the same draw.
      conditions.drop_captions(cond, 0.3, jax.random.PRNGKey(0)) if len(shape) == 2 else dropped,
      dropped)


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


NUM_CLASSES = 8


@pytest.fixture(scope="module")
def condition_tokenizers(tmp_path_factory):
  """Randomly initialised `configs/tiny.py:test` tokenizers of each condition modality (their
  saved configs say which), as a trained condition tokenizer's workdir would."""
  from vqgan_jax.models.autoencoder import VQModel  # pylint: disable=g-import-not-at-top
  from vqgan_jax.tokenizer.load import save_tokenizer  # pylint: disable=g-import-not-at-top
  workdirs = {}
  for kind in ("segmentation", "edges", "sketch"):
    config = load_config("tiny", "test")
    config.modality = kind
    channels = 3
    if kind == "segmentation":
      channels = config.model.in_channels = config.model.out_ch = NUM_CLASSES
      config.data.num_segmentation_classes = NUM_CLASSES
    model = VQModel(**config.model.to_dict())
    params = model.init(jax.random.PRNGKey(1), jnp.zeros((1, 16, 16, channels)))["params"]
    workdirs[kind] = str(tmp_path_factory.mktemp("cond_tokenizer") / kind)
    save_tokenizer(workdirs[kind], {"params": params}, config.to_dict())
  return workdirs


def _map_config(kind, random_tokenizer, condition_tokenizers):
  config = load_config("tiny_prior", "test")
  config.tokenizer_workdir = random_tokenizer
  config.conditioning = kind
  config.cond_tokenizer_workdir = condition_tokenizers[kind]
  config.data.num_segmentation_classes = NUM_CLASSES
  config.num_train_steps = 2
  config.image_every_steps = 2
  config.sample.guidance_scale = 1.0
  return config


def _write_condition(kind, path, size):
  rng = np.random.default_rng(0)
  if kind == "segmentation":
    PIL.Image.fromarray(rng.integers(0, NUM_CLASSES, size).astype(np.uint8), "L").save(path)
  else:
    PIL.Image.fromarray(rng.integers(0, 256, (*size, 3)).astype(np.uint8)).save(path)
  return str(path)


@pytest.fixture(scope="module")
def map_priors(random_tokenizer, condition_tokenizers, tmp_path_factory):
  """kind -> (config, workdir) of a map-conditioned prior trained for 2 steps, once per module;
  tests copy the config before changing it."""
  trained = {}

  def get(kind):
    if kind not in trained:
      config = _map_config(kind, random_tokenizer, condition_tokenizers)
      workdir = tmp_path_factory.mktemp(f"prior_{kind}") / "prior"
      prior_train.train_and_evaluate(config, str(workdir))
      trained[kind] = (config, workdir)
    config, workdir = trained[kind]
    return config.copy_and_resolve_references(), workdir

  return get


@pytest.mark.parametrize("kind", ["segmentation", "edges", "sketch"])
def test_map_conditioned_prior_trains_and_samples(kind, map_priors, tmp_path):
  config, workdir = map_priors(kind)
  assert (workdir / "images" / "samples_00000002.png").exists()
  model = prior_model.build_model(config, frozen_tokenizers.load_tokenizers(config), 0)
  assert model.cond_len == 64 and model.cond_vocab_size == 64  # Grid-aligned 8x8 codes.
  result = sample.sample_images(config, str(workdir))  # Conditions of eval examples 0, 1, 2.
  picture = PIL.Image.open(workdir / "samples" / "conditions.png")
  assert picture.size == (3 * 16, 3 * 16)  # Condition | sample | original rows of 3.
  if kind == "segmentation":
    assert 0.0 <= result["condition_miou"] <= 1.0

  # A user's condition larger than the training size: the sliding window, 24x32 samples.
  config.sample.condition = _write_condition(kind, tmp_path / "condition.png", (24, 32))
  config.sample.num_samples = 2
  result = sample.sample_images(config, str(workdir))
  assert result["grid_shape"] == [12, 16] and result["condition"].endswith("condition.png")
  assert PIL.Image.open(workdir / "samples" / "sample_00001.png").size == (32, 24)


@pytest.mark.parametrize("condition_dropout", [0.0, 0.5])
def test_segmentation_step_sharded_equals_single_device(random_tokenizer, condition_tokenizers,
                                                        condition_dropout):
  config = _map_config("segmentation", random_tokenizer, condition_tokenizers)
  config.condition_dropout = condition_dropout
  tokenizers = frozen_tokenizers.load_tokenizers(config)
  model = prior_model.build_model(config, tokenizers, 0)
  tx, schedule = prior_train.build_optimizer(config)
  state = jax.device_get(prior_train.init_state(
      jax.random.PRNGKey(0), config=config, model=model, tx=tx, tokens_shape=(1, 64),
      cond_example=jnp.zeros((1, 64), jnp.int32)))
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32),
           "label": np.zeros(8, np.int32),
           "segmentation": rng.integers(0, NUM_CLASSES, (8, 16, 16)).astype(np.int32)}

  def run(mesh):
    step = jax.jit(functools.partial(
        prior_train.prior_step, config=config, tokenizers=tokenizers, model=model, tx=tx,
        lr_schedule=schedule, num_classes=0))
    s = jax.device_put(state, sharding.tree_shardings(mesh, state, "replicate"))
    tok = jax.device_put(tokenizers.params, sharding.replicated(mesh))
    return jax.device_get(step(s, sharding.global_batch(batch, mesh), tok))

  (s8, m8), (s1, m1) = run(sharding.create_mesh()), run(jax.make_mesh(
      (1,), ("data",), axis_types=(AxisType.Auto,), devices=jax.devices()[:1]))
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               s8.params, s1.params)


def test_condition_dropout_gives_a_map_prior_a_null_code_for_guidance(
    random_tokenizer, condition_tokenizers, map_priors, tmp_path):
  config = _map_config("edges", random_tokenizer, condition_tokenizers)
  config.condition_dropout = 0.5
  workdir = tmp_path / "prior"
  prior_train.train_and_evaluate(config, str(workdir))
  tokenizers = frozen_tokenizers.load_tokenizers(config)
  model = prior_model.build_model(config, tokenizers, 0)
  # The edge tokenizer's 64 codes, then the null code.
  assert (model.cond_vocab_size, model.cond_null_token, model.has_null_condition) == (65, 64, True)
  batch = next(iter(input_pipeline.create_eval_iterator(
      config, local_batch_size=8, process_index=0, process_count=1)))
  raw, _ = checkpoints.restore_raw_state(str(workdir), fields=("params",))
  sums = jax.jit(functools.partial(prior_train.eval_sums, config=config, tokenizers=tokenizers,
                                   model=model))(raw["params"], tokenizers.params, batch)
  metrics = prior_train.eval_metrics(jax.device_get(sums), (8, 8), 16)
  # The same prior scores the eval codes without the condition too.
  assert metrics["eval/bits_per_token_null_condition"] > 0
  assert metrics["eval/bits_per_token"] != metrics["eval/bits_per_token_null_condition"]

  # Guided samples from a user's drawing larger than the training size (the sliding window).
  config.sample.guidance_scale = 2.0
  config.sample.condition = _write_condition("edges", tmp_path / "condition.png", (16, 24))
  config.sample.num_samples = 2
  result = sample.sample_images(config, str(workdir))
  assert result["grid_shape"] == [8, 12]

  without, without_workdir = map_priors("edges")  # condition_dropout = 0: no null code.
  without.sample.guidance_scale = 2.0
  with pytest.raises(ValueError, match="condition_dropout > 0"):
    sample.sample_images(without, str(without_workdir))


@pytest.mark.parametrize("condition, message", [
    (lambda p: PIL.Image.fromarray(np.full((16, 16), NUM_CLASSES, np.uint8), "L").save(p),
     r"condition.png: its label map holds a class id >= .*max id 8, 8 classes"),
    (lambda p: PIL.Image.fromarray(np.zeros((15, 16), np.uint8), "L").save(p),
     r"gives 15x16 images, not divisible by the tokenizer's factor 2"),
    (lambda p: PIL.Image.fromarray(np.zeros((8, 16), np.uint8), "L").save(p),
     r"smaller than the training grid"),
    (lambda p: open(p, "wb").write(b"not a png"), "not a readable"),
])
def test_bad_user_conditions_name_the_file(map_priors, tmp_path, condition, message):
  config, workdir = map_priors("segmentation")
  path = tmp_path / "condition.png"
  condition(path)
  config.sample.condition = str(path)
  with pytest.raises(ValueError, match=message):
    sample.sample_images(config, str(workdir))


def test_condition_agreement_miou():
  from vqgan_jax.prior import condition_agreement  # pylint: disable=g-import-not-at-top
  labels = np.array([[0, 0, 1, 1], [2, 2, 2, 2]])
  predicted = np.array([[0, 1, 1, 1], [2, 2, 2, 0]])
  counts = condition_agreement.confusion(labels, predicted, 4)
  # IoU: class 0 1/3, class 1 2/3, class 2 3/4; class 3 absent from both.
  assert condition_agreement.miou(counts) == pytest.approx((1 / 3 + 2 / 3 + 3 / 4) / 3)


def test_segmentation_prior_resumes_exactly(random_tokenizer, condition_tokenizers, tmp_path):
  config = _map_config("segmentation", random_tokenizer, condition_tokenizers)
  config.num_train_steps, config.checkpoint_every_steps, config.image_every_steps = 4, 2, -1
  config.eval_every_steps = -1
  prior_train.train_and_evaluate(config, str(tmp_path / "straight"))
  half = config.copy_and_resolve_references()
  half.num_train_steps = 2
  prior_train.train_and_evaluate(half, str(tmp_path / "resumed"))
  prior_train.train_and_evaluate(config, str(tmp_path / "resumed"))
  a, step_a = checkpoints.restore_raw_state(str(tmp_path / "straight"))
  b, step_b = checkpoints.restore_raw_state(str(tmp_path / "resumed"))
  assert step_a == step_b == 4
  jax.tree.map(np.testing.assert_array_equal, a, b)
