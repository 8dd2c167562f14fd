"""VQGAN loss terms, in float32 (taming's `VQLPIPSWithDiscriminator`, term by term).

The generator objective is
    nll + disc_factor * lambda * g + codebook_weight * quantizer_loss,
with nll = mean|x - x_hat| + perceptual_weight * mean LPIPS(x, x_hat), g = generator GAN loss, and
lambda the adaptive weight |grad_W nll| / (|grad_W g| + 1e-4) at the decoder's last conv kernel W.
An optional entropy penalty of the quantizer adds entropy_weight(step) * (sample entropy -
codebook entropy). A segmentation tokenizer (taming's VQSegmentationModel) has nll = the
binary (or softmax) cross-entropy of its K logits against the one-hot label map, and no LPIPS or
GAN. The trainer computes the two kernel gradients from its single forward pass (`adaptive_weight`
takes them as inputs), so no loss here runs a network.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

IMAGE_LOSSES = ("l1", "l2")
# Of a label map: the K logits per pixel against its one-hot input.
SEGMENTATION_LOSSES = ("bce", "cross_entropy")
RECONSTRUCTION_LOSSES = IMAGE_LOSSES + SEGMENTATION_LOSSES
GAN_LOSSES = ("hinge", "vanilla", "non_saturating")


def reconstruction_loss(images: jax.Array, reconstructions: jax.Array, kind: str = "l1") -> jax.Array:
  """Mean absolute (l1) or squared (l2) error over every pixel and channel; for a one-hot label
  map and K logits, `segmentation_loss`."""
  if kind in SEGMENTATION_LOSSES:
    return segmentation_loss(images, reconstructions, kind)
  diff = images.astype(jnp.float32) - reconstructions.astype(jnp.float32)
  if kind == "l1":
    return jnp.mean(jnp.abs(diff))
  if kind == "l2":
    return jnp.mean(jnp.square(diff))
  raise ValueError(f"config.loss.reconstruction={kind!r}; use one of {RECONSTRUCTION_LOSSES}.")


def segmentation_loss(one_hot: jax.Array, logits: jax.Array, kind: str = "bce") -> jax.Array:
  """'bce': taming's BCELossWithQuant term, binary cross-entropy with logits of every channel
  against the 0/1 input, averaged over pixels and channels; 'cross_entropy': softmax
  cross-entropy of the K logits against the class, averaged over pixels."""
  one_hot, logits = one_hot.astype(jnp.float32), logits.astype(jnp.float32)
  if kind == "bce":
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, one_hot))
  if kind == "cross_entropy":
    return jnp.mean(optax.softmax_cross_entropy(logits, one_hot))
  raise ValueError(f"config.loss.reconstruction={kind!r} is not a segmentation loss; use one of "
                   f"{SEGMENTATION_LOSSES}.")


def generator_loss(logits_fake: jax.Array, kind: str = "hinge") -> jax.Array:
  """GAN loss of the generator. taming uses -mean D(x_hat) for both hinge and vanilla."""
  logits_fake = logits_fake.astype(jnp.float32)
  if kind in ("hinge", "vanilla"):
    return -jnp.mean(logits_fake)
  if kind == "non_saturating":
    return jnp.mean(jax.nn.softplus(-logits_fake))
  raise ValueError(f"config.loss.gan_loss={kind!r}; use one of {GAN_LOSSES}.")


def discriminator_loss_real(logits_real: jax.Array, kind: str = "hinge") -> jax.Array:
  """The real-image half of the discriminator loss (already weighted by taming's 0.5)."""
  logits_real = logits_real.astype(jnp.float32)
  if kind == "hinge":
    return 0.5 * jnp.mean(jax.nn.relu(1.0 - logits_real))
  if kind in ("vanilla", "non_saturating"):
    return 0.5 * jnp.mean(jax.nn.softplus(-logits_real))
  raise ValueError(f"config.loss.gan_loss={kind!r}; use one of {GAN_LOSSES}.")


def discriminator_loss_fake(logits_fake: jax.Array, kind: str = "hinge") -> jax.Array:
  """The reconstruction half of the discriminator loss (already weighted by taming's 0.5)."""
  logits_fake = logits_fake.astype(jnp.float32)
  if kind == "hinge":
    return 0.5 * jnp.mean(jax.nn.relu(1.0 + logits_fake))
  if kind in ("vanilla", "non_saturating"):
    return 0.5 * jnp.mean(jax.nn.softplus(logits_fake))
  raise ValueError(f"config.loss.gan_loss={kind!r}; use one of {GAN_LOSSES}.")


def discriminator_loss(logits_real: jax.Array, logits_fake: jax.Array, kind: str = "hinge") -> jax.Array:
  """taming's hinge_d_loss / vanilla_d_loss: 0.5 * (real term + fake term)."""
  return discriminator_loss_real(logits_real, kind) + discriminator_loss_fake(logits_fake, kind)


def lecam_real(logits_real: jax.Array, anchor_fake: jax.Array) -> jax.Array:
  """LeCAM's real half (Tseng et al. 2021), mean relu(D(x) - a_fake)^2: real logits are pulled
  no further above the running mean of the fake ones than the hinge needs."""
  return jnp.mean(jnp.square(jax.nn.relu(logits_real.astype(jnp.float32) - anchor_fake)))


def lecam_fake(logits_fake: jax.Array, anchor_real: jax.Array) -> jax.Array:
  """LeCAM's fake half, mean relu(a_real - D(x_hat))^2."""
  return jnp.mean(jnp.square(jax.nn.relu(anchor_real - logits_fake.astype(jnp.float32))))


def updated_anchors(anchors: jax.Array, logits_real: jax.Array, logits_fake: jax.Array,
                    decay: float) -> jax.Array:
  """LeCAM's EMA anchors (mean real logit, mean fake logit) after this step's logits."""
  means = jnp.stack([jnp.mean(logits_real), jnp.mean(logits_fake)]).astype(jnp.float32)
  return jax.lax.stop_gradient(decay * anchors + (1.0 - decay) * means)


def adaptive_weight(nll_grad: jax.Array, gan_grad: jax.Array, disc_weight: float) -> jax.Array:
  """lambda = |grad nll| / (|grad g| + 1e-4), clipped to [0, 1e4], times disc_weight; no gradient."""
  nll_norm = jnp.linalg.norm(nll_grad.astype(jnp.float32).ravel())
  gan_norm = jnp.linalg.norm(gan_grad.astype(jnp.float32).ravel())
  weight = jnp.clip(nll_norm / (gan_norm + 1e-4), 0.0, 1e4)
  return jax.lax.stop_gradient(weight * disc_weight)


def gated_factor(step: jax.Array, start: int, factor: float = 1.0) -> jax.Array:
  """`factor` from `start` on, 0 before: taming's adopt_weight, traced (no recompiles)."""
  return jnp.where(step >= start, jnp.float32(factor), jnp.float32(0.0))


ENTROPY_SCHEDULES = ("constant", "linear", "cosine")


def entropy_weight_schedule(loss_config) -> Callable[[jax.Array], jax.Array]:
  """Weight of the quantizer's entropy penalty at each step (an optax schedule).

  Linear warm-up from 0 over `entropy_warmup_steps`, then `entropy_schedule`: 'constant'
  keeps `entropy_weight`; 'linear' / 'cosine' decay it to 0 over `entropy_decay_steps`
  (the penalty spreads codes early, then lets reconstruction take over).
  """
  weight = float(loss_config.entropy_weight)
  warmup, decay = int(loss_config.entropy_warmup_steps), int(loss_config.entropy_decay_steps)
  kind = loss_config.entropy_schedule
  if kind == "constant":
    after = optax.constant_schedule(weight)
  elif kind == "linear":
    after = optax.linear_schedule(weight, 0.0, max(decay, 1))
  elif kind == "cosine":
    after = optax.cosine_decay_schedule(weight, max(decay, 1))
  else:
    raise ValueError(f"config.loss.entropy_schedule={kind!r}; use one of {ENTROPY_SCHEDULES}.")
  schedule = after
  if warmup > 0:
    schedule = optax.join_schedules([optax.linear_schedule(0.0, weight, warmup), after], [warmup])
  # Clipped at 0: a linear decay's float rounding may end a hair below it.
  return lambda step: jnp.maximum(jnp.asarray(schedule(step), jnp.float32), 0.0)
