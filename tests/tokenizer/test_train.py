"""The tokenizer trainer: sharding, adaptive weight, exact resume, crash safety, guards, config errors."""
import functools
import glob
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from tests.helpers import load_config
from vqgan_jax.data import input_pipeline
from vqgan_jax.runtime import checkpoints, nonfinite, sharding
from vqgan_jax.tokenizer import losses, train
from vqgan_jax.models.lpips import LPIPS, load_lpips_params


@pytest.fixture
def config():
  config = load_config("tiny", "test")
  # Small first steps (a 100-step warm-up, as the tiny recipe had): Adam turns float noise in
  # near-zero gradients into full-size steps, and at the tiny recipe's full rate three steps
  # amplify the 8-vs-1-device rounding past the metric tolerances. Sharding is under test here.
  config.optimizer.update(dict(warmup_steps=100, schedule="constant"))
  return config


def _random_batch(config, seed=0, batch_size=None):
  h, w = train.image_shape(config)
  rng = np.random.default_rng(seed)
  images = rng.uniform(-1, 1, (batch_size or config.batch_size, h, w, 3)).astype(np.float32)
  return {"image": images}


def _raw_params(workdir):
  state, step = checkpoints.restore_raw_state(str(workdir))
  return state, step


def test_end_to_end_on_8_devices(config, tmp_path):
  assert jax.device_count() == 8
  workdir = tmp_path / "run"
  state = train.train_and_evaluate(config, str(workdir))
  assert int(state.step) == config.num_train_steps
  assert sorted(checkpoints.Checkpointer(str(workdir), every_steps=1, keep=3).all_steps()) == [2, 4]
  assert glob.glob(str(workdir / "events.out.tfevents.*")), "no TensorBoard events"
  pngs = sorted(glob.glob(str(workdir / "images" / "*.png")))
  assert [os.path.basename(p) for p in pngs] == [
      "reconstructions_00000002.png", "reconstructions_00000004.png"]
  params = state.params["decoder"]["conv_out"]["kernel"]
  assert len(params.sharding.device_set) == 8

  from vqgan_jax import load_tokenizer
  model, variables = load_tokenizer(str(workdir))
  images = jnp.asarray(_random_batch(config, batch_size=2)["image"])
  codes = model.apply(variables, images, method="encode_to_indices")
  assert codes.shape == (2, 8, 8) and codes.dtype == jnp.int32
  decoded = model.apply(variables, codes, method="decode_indices")
  assert decoded.shape == images.shape
  np.testing.assert_allclose(decoded, model.apply(variables, images)[0], atol=1e-5)


def _step_on_mesh(config, mesh, state, batches):
  model, disc = train.build_models(config)
  tx, disc_tx, schedule = train.build_optimizers(config)
  shardings = sharding.tree_shardings(mesh, state, "replicate")
  state = jax.device_put(state, shardings)
  step = jax.jit(functools.partial(train.train_step, config=config, model=model, disc=disc,
                                   tx=tx, disc_tx=disc_tx, lr_schedule=schedule))
  lpips_params = jax.device_put(load_lpips_params(), sharding.replicated(mesh))
  for batch in batches:
    state, metrics = step(state, sharding.global_batch(batch, mesh), lpips_params)
  return jax.device_get(state), jax.device_get(metrics)


def _initial_state(config):
  model, disc = train.build_models(config)
  tx, disc_tx, _ = train.build_optimizers(config)
  return jax.device_get(train.init_state(jax.random.PRNGKey(0), config=config, model=model,
                                         disc=disc, tx=tx, disc_tx=disc_tx))


CODEBOOK_OPTIONS = {
    # Every VQ option at once: cosine, factorised 8 -> 4, EMA, k-means++ init at step 0,
    # restarts from step 1, entropy penalty.
    "vq_all_options": (dict(l2_normalize=True, codebook_dim=4, ema_decay=0.9,
                            codebook_init="kmeans++", restart_unused_steps=1, buffer_size=512,
                            codebook_size=256,
                            entropy_temperature=0.1), dict(entropy_weight=0.1)),
    "taming": (dict(l2_normalize=False, codebook_dim=0, codebook_init="uniform",
                    restart_unused_steps=0, entropy_temperature=0.0), dict(entropy_weight=0.0)),
    "fsq": (dict(quantizer_type="fsq", fsq_levels=(4, 4, 4), codebook_dim=0,
                 codebook_init="uniform", restart_unused_steps=0), {}),
    "lfq": (dict(quantizer_type="lfq", codebook_dim=0, codebook_init="uniform",
                 restart_unused_steps=0, entropy_temperature=0.05), dict(entropy_weight=0.1)),
    # SimVQ's map, IBQ's one-hot gradient and the entropy penalty, with a LeCAM discriminator.
    "simvq_ibq_lecam": (dict(simvq=True, index_backprop=True, codebook_dim=0,
                             codebook_init="uniform", restart_unused_steps=0,
                             entropy_temperature=0.05),
                        dict(entropy_weight=0.1, lecam_weight=0.5, lecam_decay=0.5)),
}


# The tiny default's quantizer options (cosine 4-d codes, k-means++, restarts, entropy) are all
# in vq_all_options (which adds EMA codes) on the same network, and its codebook-loss path is
# the taming case's, so it has no case of its own (each case compiles two train steps, ~50 s).
@pytest.mark.parametrize("option", sorted(CODEBOOK_OPTIONS))
def test_sharded_step_equals_single_device(config, option):
  """Each quantizer option: 8 devices == 1 device (statistics are global inside jit)."""
  config.model.update(CODEBOOK_OPTIONS[option][0])
  config.loss.update(CODEBOOK_OPTIONS[option][1])
  config.loss.disc_start = 1  # Exercise the GAN gradient and the adaptive weight too.
  if option != "taming":
    # LPIPS does not depend on the quantizer: the taming case checks it sharded, the others
    # skip it (a third of each step's compile).
    config.loss.perceptual_weight = 0.0
  state = _initial_state(config)
  batches = [_random_batch(config, seed) for seed in range(3)]
  mesh8 = sharding.create_mesh()
  mesh1 = jax.make_mesh((1,), ("data",), axis_types=(AxisType.Auto,), devices=jax.devices()[:1])
  s8, m8 = _step_on_mesh(config, mesh8, state, batches)
  s1, m1 = _step_on_mesh(config, mesh1, state, batches)
  assert m8["gan/generator_factor"] == 1.0
  # Adam turns float noise in a ~zero gradient (e.g. a conv bias before a GroupNorm) into a
  # step of up to ~1.6 lr, so parameters may differ by that much; everything else is tight.
  lr_sum = sum(float(train.build_optimizers(config)[2](i)) for i in range(len(batches)))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2 * lr_sum),
               (s8.params, s8.disc_params), (s1.params, s1.disc_params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               s8.disc_batch_stats, s1.disc_batch_stats)
  for key in ("loss/total", "loss/discriminator", "gan/adaptive_weight",
              "grad_norm/generator", "grad_norm/discriminator", "codebook/perplexity",
              "codebook/window_usage", "codebook/restarts", "loss/entropy"):
    # Gradient norms (and the adaptive weight, a ratio of two) are computed from parameters
    # that may differ by 2 * lr_sum (above): they inherit ~1e-3 of that noise. A sharding bug
    # (per-device statistics) moves them by far more.
    rtol = 2e-3 if key.startswith("grad_norm/") or key == "gan/adaptive_weight" else 1e-4
    np.testing.assert_allclose(m8[key], m1[key], rtol=rtol, atol=1e-6, err_msg=key)
  # The codebook state holds encoder outputs of those parameters (the k-means++ buffer), so
  # it inherits their tolerance.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2 * lr_sum),
               s8.codebook_state, s1.codebook_state)
  np.testing.assert_allclose(s8.gan_anchors, s1.gan_anchors, rtol=1e-4, atol=1e-6)
  if option == "simvq_ibq_lecam":
    assert np.all(s8.gan_anchors != 0.0)  # The discriminator trained with LeCAM's anchors.
    np.testing.assert_array_equal(s8.params["quantizer"]["embedding"],
                                  state.params["quantizer"]["embedding"])  # Frozen basis.
  if option == "vq_all_options":
    quantizer_state = s8.codebook_state["quantizer"]
    assert bool(quantizer_state["initialized"]) and int(quantizer_state["restarts_total"]) > 0
    assert m8["loss/entropy"] != 0.0


def test_adaptive_weight_equals_two_separate_grads(config):
  state = _initial_state(config)
  model, disc = train.build_models(config)
  batch = _random_batch(config, 1)
  images = jnp.asarray(batch["image"])
  lpips_params = load_lpips_params()
  lc = config.loss

  def recon_of(params):
    return model.apply({"params": params}, images, train=True,
                       rngs={"dropout": jax.random.PRNGKey(0)})[0].astype(jnp.float32)

  def nll(params):
    x_hat = recon_of(params)
    return (losses.reconstruction_loss(images, x_hat) + lc.perceptual_weight
            * jnp.mean(LPIPS().apply({"params": lpips_params}, images, x_hat)))

  def gan(params):
    # The discriminator sees the reconstruction after its real-batch pass, as in the step.
    _, stats = disc.apply({"params": state.disc_params, "batch_stats": state.disc_batch_stats},
                          images, train=True, mutable=["batch_stats"])
    logits, _ = disc.apply({"params": state.disc_params, **stats}, recon_of(params), train=True,
                           mutable=["batch_stats"])
    return losses.generator_loss(logits, lc.gan_loss)

  def kernel_grad(fn):
    return jax.grad(fn)(state.params)["decoder"]["conv_out"]["kernel"]

  expected = losses.adaptive_weight(kernel_grad(nll), kernel_grad(gan), lc.disc_weight)
  mesh1 = jax.make_mesh((1,), ("data",), axis_types=(AxisType.Auto,), devices=jax.devices()[:1])
  _, metrics = _step_on_mesh(config, mesh1, state, [batch])
  np.testing.assert_allclose(metrics["gan/adaptive_weight"], expected, rtol=1e-4)
  assert expected > 0


def test_resume_is_bitwise_exact(config, tmp_path):
  straight = tmp_path / "straight"
  train.train_and_evaluate(config, str(straight))
  resumed = tmp_path / "resumed"
  config_half = config.copy_and_resolve_references()
  config_half.num_train_steps = 2
  train.train_and_evaluate(config_half, str(resumed))
  _, step = _raw_params(resumed)
  assert step == 2
  train.train_and_evaluate(config, str(resumed))
  a, step_a = _raw_params(straight)
  b, step_b = _raw_params(resumed)
  assert step_a == step_b == 4
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_killed_save_leaves_previous_checkpoint_restorable(config, tmp_path):
  workdir = tmp_path / "run"
  config.num_train_steps = 2
  train.train_and_evaluate(config, str(workdir))
  # What a crash mid-save leaves behind: Orbax's temporary directory for the next step,
  # half written and never renamed into place.
  partial = pathlib.Path(checkpoints.checkpoint_dir(str(workdir))) / "4.orbax-checkpoint-tmp-123"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "half_written").write_bytes(b"\0" * 100)
  checkpointer = checkpoints.Checkpointer(str(workdir), every_steps=2, keep=3)
  assert checkpointer.latest_step() == 2
  checkpointer.close()
  config.num_train_steps = 4
  state = train.train_and_evaluate(config, str(workdir))  # Resumes from step 2.
  assert int(state.step) == 4
  # Orbax removes stale temporary directories before its first save of the new run.
  assert not partial.exists(), "stale temporary checkpoint not cleaned up"
  assert checkpoints.Checkpointer(str(workdir), every_steps=2, keep=3).all_steps() == [2, 4]


def test_nonfinite_batch_is_skipped(config):
  state = _initial_state(config)
  mesh1 = jax.make_mesh((1,), ("data",), axis_types=(AxisType.Auto,), devices=jax.devices()[:1])
  bad = _random_batch(config)
  bad["image"][0, 0, 0, 0] = np.nan
  after, metrics = _step_on_mesh(config, mesh1, state, [bad])
  assert int(after.step) == 1 and int(metrics["skipped_steps"]) == 1
  assert int(metrics["nonfinite_streak"]) == 1
  jax.tree.map(np.testing.assert_array_equal, after.params, state.params)
  jax.tree.map(np.testing.assert_array_equal, after.opt_state, state.opt_state)
  after2, metrics2 = _step_on_mesh(config, mesh1, after, [_random_batch(config)])
  assert int(metrics2["nonfinite_streak"]) == 0 and int(metrics2["skipped_steps"]) == 1


def test_persistent_nans_stop_the_run(config, tmp_path, monkeypatch):
  config.num_train_steps = 10
  config.max_nonfinite_steps = 3
  workdir = tmp_path / "run"
  real_iterator = input_pipeline.create_train_iterator

  def nan_after_two(*args, **kwargs):
    for i, batch in enumerate(real_iterator(*args, **kwargs)):
      if i >= 2:
        batch = dict(batch, image=np.full_like(batch["image"], np.nan))
      yield batch

  monkeypatch.setattr(input_pipeline, "create_train_iterator", nan_after_two)
  with pytest.raises(nonfinite.NonFiniteError, match="consecutive training steps"):
    train.train_and_evaluate(config, str(workdir))
  state, step = _raw_params(workdir)
  assert step == 2  # The last good checkpoint.
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


@pytest.mark.parametrize("change, message", [
    (lambda c: setattr(c.data, "image_size", 17), "not divisible by the downsampling factor 2"),
    (lambda c: setattr(c, "batch_size", 12), "not divisible by the 8 devices"),
    (lambda c: setattr(c.model, "ch", 48), "not divisible by the 32 GroupNorm groups"),
    (lambda c: (setattr(c.data, "source", "folder"), setattr(c.data, "folder", "/nonexistent")),
     "/nonexistent"),
    (lambda c: setattr(c.loss, "gan_loss", "wasserstein"), "gan_loss"),
    (lambda c: c.model.update(dict(quantizer_type="fsq", fsq_levels=(4, 4), codebook_dim=0,
                                   codebook_init="uniform", restart_unused_steps=0)),
     "codebook_size=16"),
    (lambda c: c.model.update(dict(quantizer_type="lfq", codebook_size=100, codebook_dim=0,
                                   codebook_init="uniform", restart_unused_steps=0)),
     "power of two"),
    (lambda c: (setattr(c.model, "entropy_temperature", 0.0),
                setattr(c.loss, "entropy_weight", 0.1)), "entropy_temperature > 0"),
    (lambda c: setattr(c.model, "quantizer_type", "rvq"), "quantizer_type"),
    (lambda c: setattr(c.model, "codebook_init", "zeros"), "codebook_init"),
    (lambda c: setattr(c.model, "quantizer_type", "fsq"), "fsq_levels"),
    (lambda c: c.model.update(dict(simvq=True, ema_decay=0.9)), "simvq"),
    (lambda c: c.model.update(dict(index_backprop=True, lookup_chunk_size=64)),
     "lookup_chunk_size=0"),
    (lambda c: setattr(c.loss, "lecam_weight", -1.0), "lecam_weight"),
])
def test_config_errors_say_what_to_change(config, tmp_path, change, message):
  change(config)
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_unknown_config_key_is_an_error(config):
  config.lock()
  with pytest.raises(AttributeError):
    config.num_train_stepz = 3


def test_train_step_makes_no_host_transfers(config):
  """Inside the loop, the step runs on device arrays only (no implicit host<->device copies)."""
  mesh1 = jax.make_mesh((1,), ("data",), axis_types=(AxisType.Auto,), devices=jax.devices()[:1])
  model, disc = train.build_models(config)
  tx, disc_tx, schedule = train.build_optimizers(config)
  state = jax.device_put(_initial_state(config), sharding.replicated(mesh1))
  batch = sharding.global_batch(_random_batch(config), mesh1)
  lpips_params = jax.device_put(load_lpips_params(), sharding.replicated(mesh1))
  step = jax.jit(functools.partial(train.train_step, config=config, model=model, disc=disc,
                                   tx=tx, disc_tx=disc_tx, lr_schedule=schedule))
  jax.block_until_ready(step(state, batch, lpips_params))  # Compile outside the guard.
  with jax.transfer_guard("disallow"):
    new_state, metrics = step(state, batch, lpips_params)
    jax.block_until_ready((new_state, metrics))
  assert int(jax.device_get(new_state.step)) == 1


def test_discriminator_passes_skipped_before_the_gan_starts_change_nothing(config, monkeypatch):
  """Before disc_start (taming: 250k steps) the step skips the discriminator with `lax.cond`;
  the parameters and optimizer states equal a step that runs it and multiplies it by 0."""
  config.loss.update(dict(disc_start=2, disc_train_start=-1))
  state = _initial_state(config)
  batches = [_random_batch(config, seed) for seed in range(3)]
  mesh = sharding.create_mesh()
  skipped, skipped_metrics = _step_on_mesh(config, mesh, state, batches)
  monkeypatch.setattr(jax.lax, "cond", lambda pred, true_fn, false_fn, *ops: true_fn(*ops))
  computed, computed_metrics = _step_on_mesh(config, mesh, state, batches)
  assert skipped_metrics["gan/discriminator_factor"] == 1.0  # The last step trained it.
  # Two compiled programs round differently; as in the sharded test, Adam may turn that noise
  # in a ~zero gradient into a step of up to ~1.6 lr.
  lr_sum = sum(float(train.build_optimizers(config)[2](i)) for i in range(len(batches)))
  for a, b in ((skipped.params, computed.params), (skipped.disc_params, computed.disc_params)):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=2 * lr_sum), a, b)
  for a, b in ((skipped.opt_state, computed.opt_state),
               (skipped.disc_opt_state, computed.disc_opt_state)):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), a, b)
  assert not np.array_equal(jax.tree.leaves(skipped.disc_opt_state)[0],
                            jax.tree.leaves(state.disc_opt_state)[0])  # It took its step.
  np.testing.assert_allclose(skipped_metrics["loss/total"], computed_metrics["loss/total"],
                             rtol=1e-5)
