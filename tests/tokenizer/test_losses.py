"""Loss terms against hand computations of taming's formulas."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqgan_jax.tokenizer import losses


def test_reconstruction_losses():
  x = jnp.array([[0.5, -0.5], [1.0, 0.0]])
  y = jnp.array([[0.0, 0.0], [0.0, 0.0]])
  assert losses.reconstruction_loss(x, y, "l1") == pytest.approx(0.5)
  assert losses.reconstruction_loss(x, y, "l2") == pytest.approx((0.25 + 0.25 + 1.0) / 4)
  with pytest.raises(ValueError, match="l1"):
    losses.reconstruction_loss(x, y, "l3")


def test_hinge_and_vanilla_discriminator_losses():
  real = jnp.array([2.0, 0.5, -1.0])
  fake = jnp.array([-2.0, 0.0, 1.0])
  hinge = 0.5 * (np.mean(np.maximum(0, 1 - np.asarray(real)))
                 + np.mean(np.maximum(0, 1 + np.asarray(fake))))
  assert losses.discriminator_loss(real, fake, "hinge") == pytest.approx(hinge)
  vanilla = 0.5 * (np.mean(np.log1p(np.exp(-np.asarray(real))))
                   + np.mean(np.log1p(np.exp(np.asarray(fake)))))
  assert losses.discriminator_loss(real, fake, "vanilla") == pytest.approx(vanilla, rel=1e-6)


def test_generator_losses():
  fake = jnp.array([-2.0, 0.0, 1.0])
  assert losses.generator_loss(fake, "hinge") == pytest.approx(1.0 / 3)
  assert losses.generator_loss(fake, "vanilla") == pytest.approx(1.0 / 3)
  ns = np.mean(np.log1p(np.exp(-np.asarray(fake))))
  assert losses.generator_loss(fake, "non_saturating") == pytest.approx(ns, rel=1e-6)


def test_adaptive_weight_ratio_clip_and_no_gradient():
  a = jnp.full((3, 3, 4, 3), 2.0)
  b = jnp.full((3, 3, 4, 3), 0.5)
  expected = np.linalg.norm(np.full(108, 2.0)) / (np.linalg.norm(np.full(108, 0.5)) + 1e-4) * 0.8
  assert losses.adaptive_weight(a, b, 0.8) == pytest.approx(expected, rel=1e-6)
  assert losses.adaptive_weight(a, jnp.zeros_like(b), 1.0) == pytest.approx(1e4)
  grad = jax.grad(lambda s: losses.adaptive_weight(a * s, b, 1.0))(1.0)
  assert grad == 0.0


def test_gated_factor_is_traced():
  gate = jax.jit(lambda step: losses.gated_factor(step, 10, 0.7))
  assert gate(9) == 0.0 and gate(10) == pytest.approx(0.7) and gate(11) == pytest.approx(0.7)


def test_entropy_weight_schedules():
  import ml_collections
  config = lambda **kw: ml_collections.ConfigDict(dict(
      dict(entropy_weight=0.1, entropy_schedule="constant", entropy_warmup_steps=0,
           entropy_decay_steps=0), **kw))
  constant = losses.entropy_weight_schedule(config())
  np.testing.assert_allclose([constant(s) for s in (0, 10**6)], [0.1, 0.1])
  linear = losses.entropy_weight_schedule(config(entropy_schedule="linear",
                                                 entropy_decay_steps=900))
  np.testing.assert_allclose([linear(s) for s in (0, 450, 900, 1200)], [0.1, 0.05, 0.0, 0.0],
                             atol=1e-8)
  assert all(float(linear(s)) >= 0.0 for s in range(0, 1200, 7))
  warm = losses.entropy_weight_schedule(config(entropy_schedule="cosine", entropy_warmup_steps=100,
                                               entropy_decay_steps=100))
  np.testing.assert_allclose([warm(s) for s in (0, 50, 100, 150, 200)],
                             [0.0, 0.05, 0.1, 0.05, 0.0], atol=1e-6)
  with pytest.raises(ValueError, match="entropy_schedule"):
    losses.entropy_weight_schedule(config(entropy_schedule="step"))


def test_lecam_terms_and_anchors_against_the_formula():
  real = jnp.array([2.0, 0.5, -1.0])
  fake = jnp.array([-2.0, 0.0, 1.0])
  anchor_real, anchor_fake = 0.4, -0.3
  want_real = np.mean(np.maximum(np.asarray(real) - anchor_fake, 0.0)**2)
  want_fake = np.mean(np.maximum(anchor_real - np.asarray(fake), 0.0)**2)
  assert losses.lecam_real(real, anchor_fake) == pytest.approx(want_real)
  assert losses.lecam_fake(fake, anchor_real) == pytest.approx(want_fake)
  anchors = losses.updated_anchors(jnp.array([anchor_real, anchor_fake]), real, fake, 0.9)
  np.testing.assert_allclose(anchors, [0.9 * 0.4 + 0.1 * 0.5, 0.9 * -0.3 + 0.1 * (-1 / 3)],
                             rtol=1e-6)
  # Only logits beyond the other side's anchor are pulled back.
  grad = jax.grad(losses.lecam_real)(real, anchor_fake)
  np.testing.assert_allclose(grad, 2 * np.maximum(np.asarray(real) - anchor_fake, 0) / 3,
                             rtol=1e-6)
