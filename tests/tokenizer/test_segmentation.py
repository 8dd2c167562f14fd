"""The segmentation tokenizer (taming's VQSegmentationModel) and the modalities: model inputs,
the BCE / cross-entropy losses, pixel accuracy and mIoU over masked sharded batches, config
errors, a sharded step equal to one device, and the main job end to end."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from PIL import Image

from tests.helpers import load_config
from vqgan_jax.models.quantizer import STATE as CODEBOOK_STATE
from vqgan_jax.runtime import sharding
from vqgan_jax.tokenizer import evaluate, evaluators, losses, modality, train

K = 8


@pytest.fixture
def config():
  return load_config("tiny_segmentation", "test")


def _labels(seed, shape=(8, 16, 16)):
  return np.random.default_rng(seed).integers(0, K, shape).astype(np.int32)


def _segmentation_batch(seed, batch_size=8):
  images = np.random.default_rng(seed).uniform(-1, 1, (batch_size, 16, 16, 3)).astype(np.float32)
  return {"image": images, "segmentation": _labels(seed, (batch_size, 16, 16))}


def _mesh1():
  return jax.make_mesh((1,), ("data",), axis_types=(AxisType.Auto,), devices=jax.devices()[:1])


def test_model_input_of_each_modality():
  rng = np.random.default_rng(0)
  batch = {k: rng.uniform(-1, 1, (2, 4, 4, 3)).astype(np.float32)
           for k in ("image", "edges", "sketch")}
  batch["segmentation"] = _labels(0, (2, 4, 4))
  for kind in ("image", "edges", "sketch"):
    x = modality.model_input(batch, kind, 0)
    assert x.dtype == jnp.float32
    np.testing.assert_array_equal(x, batch[kind])
  one_hot = modality.model_input(batch, "segmentation", K)
  assert one_hot.shape == (2, 4, 4, K) and one_hot.dtype == jnp.float32
  np.testing.assert_array_equal(one_hot, np.eye(K, dtype=np.float32)[batch["segmentation"]])
  with pytest.raises(ValueError, match="config.modality='depth'"):
    modality.model_input(batch, "depth", 0)


def test_colorize_gives_each_class_its_own_fixed_colour():
  for k in (2, K, 256):
    colours = modality.palette(k)
    assert colours.shape == (k, 3) and colours.dtype == np.uint8
    assert len({tuple(c) for c in colours}) == k
  np.testing.assert_array_equal(modality.palette(K), modality.palette(256)[:K])
  labels = _labels(1, (2, 4, 4))
  pictures = modality.colorize(labels, K)
  assert pictures.shape == (2, 4, 4, 3) and pictures.dtype == np.uint8
  np.testing.assert_array_equal(pictures[1, 2, 3], modality.palette(K)[labels[1, 2, 3]])
  # Logits are drawn as their argmax, one-hot inputs as their class.
  one_hot = np.eye(K, dtype=np.float32)[labels]
  np.testing.assert_array_equal(modality.to_pictures(one_hot, "segmentation"), pictures)
  np.testing.assert_array_equal(modality.to_pictures(3.0 * one_hot - 1.0, "segmentation"),
                                pictures)


def test_segmentation_losses_match_direct_computation():
  labels = _labels(2, (2, 4, 4))
  one_hot = np.eye(K, dtype=np.float32)[labels]
  logits = np.random.default_rng(3).normal(0, 3, (2, 4, 4, K)).astype(np.float32)
  x = logits.astype(np.float64)
  # torch's binary_cross_entropy_with_logits (taming's BCELossWithQuant), in float64.
  bce = np.mean(np.maximum(x, 0) - x * one_hot + np.log1p(np.exp(-np.abs(x))))
  log_softmax = x - x.max(-1, keepdims=True)
  log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
  cross_entropy = -np.mean(np.take_along_axis(log_softmax, labels[..., None], -1))
  np.testing.assert_allclose(losses.reconstruction_loss(one_hot, logits, "bce"), bce, rtol=1e-6)
  np.testing.assert_allclose(losses.reconstruction_loss(one_hot, logits, "cross_entropy"),
                             cross_entropy, rtol=1e-6)
  with pytest.raises(ValueError, match="segmentation loss"):
    losses.segmentation_loss(one_hot, logits, "l1")


def _numpy_confusion(labels, predictions):
  confusion = np.zeros((K, K), np.int64)
  np.add.at(confusion, (labels.ravel(), predictions.ravel()), 1)
  return confusion


def test_segmentation_scores_of_a_known_confusion_matrix():
  confusion = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])  # Class 2: neither labelled nor predicted.
  scores = evaluators.segmentation_scores(confusion)
  assert scores["pixel_accuracy"] == pytest.approx(5 / 6)
  assert scores["miou"] == pytest.approx((3 / 4 + 2 / 3) / 2)


def test_segmentation_metrics_on_8_devices_ignore_padding_rows():
  """Two batches split over 8 devices, the last with 3 padding rows (zeros, mask 0) whose
  logits disagree with their label: the result is the numpy confusion of the real rows."""
  assert jax.device_count() == 8
  mesh = sharding.create_mesh()
  metric = evaluators.SegmentationMetrics(num_classes=K)
  fn = jax.jit(metric.device_fn, out_shardings=sharding.replicated(mesh))
  rng = np.random.default_rng(4)
  metric.reset()
  real_labels, real_predictions = [], []
  for seed, real in ((5, 8), (6, 5)):
    labels = _labels(seed)
    # Mostly right, so the scores are far from 0 and 1.
    predictions = np.where(rng.random(labels.shape) < 0.6, labels, rng.integers(0, K, labels.shape))
    one_hot = np.eye(K, dtype=np.float32)[labels]
    one_hot[real:] = 0.0  # Eval padding rows are zeros.
    logits = np.eye(K, dtype=np.float32)[(predictions + 1) % K] * 5.0
    logits[:real] = np.eye(K, dtype=np.float32)[predictions[:real]] * 5.0
    mask = (np.arange(8) < real).astype(np.float32)
    batch = sharding.global_batch({"x": one_hot, "logits": logits, "mask": mask}, mesh)
    metric.update(jax.device_get(fn({}, batch["x"], batch["logits"], None, batch["mask"])), mask)
    real_labels.append(labels[:real])
    real_predictions.append(predictions[:real])
  expected = _numpy_confusion(np.concatenate(real_labels), np.concatenate(real_predictions))
  np.testing.assert_array_equal(metric.confusion, expected)
  hits = np.diag(expected)
  union = expected.sum(0) + expected.sum(1) - hits
  result = metric.result()
  assert result["pixel_accuracy"] == pytest.approx(hits.sum() / (13 * 16 * 16))
  assert result["miou"] == pytest.approx(np.mean(hits[union > 0] / union[union > 0]))
  assert 0.5 < result["pixel_accuracy"] < 0.8


def _rgb(config, kind, **fields):
  """The config as an RGB tokenizer of `kind` (3 channels, L1), with `fields` set."""
  config.update(dict(modality=kind, **fields))
  config.model.update(dict(in_channels=3, out_ch=3))
  config.loss.reconstruction = "l1"


@pytest.mark.parametrize("change, message", [
    (lambda c: setattr(c, "modality", "depth"), "config.modality='depth'"),
    (lambda c: setattr(c.data, "num_segmentation_classes", 1),
     "num_segmentation_classes >= 2"),
    (lambda c: setattr(c.model, "in_channels", 3), "--config.model.in_channels=8"),
    (lambda c: setattr(c.model, "out_ch", 7), "--config.model.out_ch=8"),
    (lambda c: setattr(c.loss, "perceptual_weight", 1.0), "--config.loss.perceptual_weight=0"),
    (lambda c: setattr(c.loss, "disc_factor", 1.0), "--config.loss.disc_factor=0"),
    (lambda c: setattr(c.loss, "reconstruction", "l1"), "'bce'"),
    (lambda c: setattr(c, "eval_metrics", ("reconstruction", "codebook")),
     "do not apply to config.modality='segmentation'"),
    (lambda c: setattr(c, "modality", "edges"), "--config.model.in_channels=3"),
    (lambda c: _rgb(c, "sketch", eval_metrics=("segmentation",)),
     "do not apply to config.modality='sketch'"),
    (lambda c: (_rgb(c, "image"), setattr(c.loss, "reconstruction", "bce")), "label-map loss"),
])
def test_config_errors_say_what_to_change(config, tmp_path, change, message):
  change(config)
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists()


def _steps_on_mesh(config, mesh, state, batches):
  model, disc = train.build_models(config)
  tx, disc_tx, schedule = train.build_optimizers(config)
  state = jax.device_put(state, sharding.tree_shardings(mesh, state, "replicate"))
  step = jax.jit(functools.partial(train.train_step, config=config, model=model, disc=disc,
                                   tx=tx, disc_tx=disc_tx, lr_schedule=schedule))
  for batch in batches:
    state, metrics = step(state, sharding.global_batch(batch, mesh), {})
  return jax.device_get(state), jax.device_get(metrics)


def test_sharded_segmentation_step_equals_single_device(config):
  """Three steps on one-hot maps: 8 devices == 1 device; the loss is the BCE (+ quantizer
  loss), the discriminator never runs, the k-means++ codebook initialises from global data."""
  config.model.restart_unused_steps = 1
  config.optimizer.update(dict(warmup_steps=100, schedule="constant"))  # Small first steps.
  model, disc = train.build_models(config)
  tx, disc_tx, _ = train.build_optimizers(config)
  state = jax.device_get(train.init_state(jax.random.PRNGKey(0), config=config, model=model,
                                          disc=disc, tx=tx, disc_tx=disc_tx))
  batches = [_segmentation_batch(seed) for seed in range(3)]
  s8, m8 = _steps_on_mesh(config, sharding.create_mesh(), state, batches)
  s1, m1 = _steps_on_mesh(config, _mesh1(), state, batches)
  lr_sum = sum(float(train.build_optimizers(config)[2](i)) for i in range(len(batches)))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2 * lr_sum),
               (s8.params, s8.codebook_state), (s1.params, s1.codebook_state))
  for key in ("loss/total", "loss/reconstruction", "loss/quantizer", "grad_norm/generator",
              "codebook/perplexity", "codebook/restarts"):
    np.testing.assert_allclose(m8[key], m1[key], rtol=1e-4, atol=1e-6)
  # The last step's BCE, recomputed from the parameters it started from.
  last = _steps_on_mesh(config, _mesh1(), state, batches[:2])[0]
  rng = jax.random.fold_in(last.rng, 2)  # The step's own randomness.
  (recon, _), _ = model.apply(
      {"params": last.params, CODEBOOK_STATE: last.codebook_state},
      modality.model_input(batches[2], "segmentation", K), train=True,
      rngs={"dropout": rng, "codebook": jax.random.fold_in(rng, 1)}, mutable=[CODEBOOK_STATE])
  one_hot = np.eye(K, dtype=np.float32)[batches[2]["segmentation"]]
  np.testing.assert_allclose(m1["loss/reconstruction"],
                             losses.reconstruction_loss(one_hot, recon, "bce"), rtol=1e-5)
  np.testing.assert_allclose(m1["loss/total"], m1["loss/reconstruction"]
                             + config.loss.codebook_weight * m1["loss/quantizer"], rtol=1e-6)
  for key in ("loss/perceptual", "loss/generator_gan", "loss/discriminator",
              "gan/adaptive_weight", "grad_norm/discriminator"):
    assert m8[key] == 0.0, key
  assert bool(s8.codebook_state["quantizer"]["initialized"])
  jax.tree.map(np.testing.assert_array_equal, s8.disc_params, state.disc_params)
  jax.tree.map(np.testing.assert_array_equal, s8.disc_batch_stats, state.disc_batch_stats)


def test_main_job_trains_and_evaluates_label_maps(config, tmp_path):
  """`configs/tiny_segmentation.py:test` on the embedded label maps: train on 8 devices,
  coloured grids, then `--mode=eval` with pixel accuracy, mIoU and codebook usage only."""
  from vqgan_jax.runtime import host_data  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "seg"
  state = train.train_and_evaluate(config, str(workdir))
  assert int(state.step) == config.num_train_steps
  grid = np.asarray(Image.open(workdir / "images" / "reconstructions_00000004.png"))
  labels = next(iter(host_data.eval_batches(config)))["segmentation"][:8]
  top = np.concatenate(list(modality.colorize(labels, K)), axis=1)
  np.testing.assert_array_equal(grid[:16, :, :3], top)  # Coloured input maps above ...
  assert grid.shape[0] == 32  # ... their coloured argmax reconstructions.

  results = evaluate.evaluate_checkpoint(config, str(workdir))
  assert set(results) >= {"pixel_accuracy", "miou", "codebook_usage", "perplexity"}
  assert not {"lpips", "psnr", "ssim", "rfid", "l1"} & set(results)
  assert 0.0 < results["pixel_accuracy"] <= 1.0 and 0.0 < results["miou"] <= 1.0
  saved = json.loads((workdir / "eval" / "metrics_4.json").read_text())
  assert saved["miou"] == results["miou"]
  assert (workdir / "eval" / "reconstructions_4.png").exists()

  image_config = config.copy_and_resolve_references()
  image_config.update(dict(modality="image", eval_metrics=("codebook",)))
  with pytest.raises(ValueError, match="--config.modality=segmentation"):
    evaluate.evaluate_checkpoint(image_config, str(workdir))
