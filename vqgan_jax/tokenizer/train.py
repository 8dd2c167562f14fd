"""VQGAN tokenizer training: one jitted, donated step updating generator and discriminator.

One generator forward pass per step. Its vjp is pulled back once, with the combined cotangent
  d(nll)/d(x_hat) + disc_factor * lambda * d(g)/d(x_hat)  on the reconstruction and
  codebook_weight on the quantizer loss,
where lambda (taming's adaptive weight) needs |grad_W nll| and |grad_W g| at the decoder's last
conv kernel W: both come from one `jax.vjp` of that conv (applied to its sown input) with two
cotangents, so no second forward or backward of the generator is ever run. The discriminator
sees the reconstruction once; its vjp gives both the generator's GAN gradient (w.r.t. the image)
and the discriminator's fake-half gradient (w.r.t. its parameters).

The tokenizer encodes `modality.model_input(batch)`: the image, an edge map or a drawing (the
VQGAN above), or a one-hot label map (taming's VQSegmentationModel: BCE on K logits plus the
quantizer loss, with disc_factor 0 so the discriminator and the adaptive weight never run).
"""
from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vqgan_jax.data import input_pipeline
from vqgan_jax.models.autoencoder import VQModel
from vqgan_jax.models.discriminator import NLayerDiscriminator
from vqgan_jax.models.lpips import LPIPS, load_lpips_params
from vqgan_jax.models.quantizer import STATE as CODEBOOK_STATE
from vqgan_jax.models.quantizer import apply_codebook_overrides
from vqgan_jax.runtime import checkpoints, host_data, images as image_utils, nonfinite
from vqgan_jax.runtime import memory_plan, optimizers, sharding, trainer_config, training_loop
from vqgan_jax.tokenizer import finetune, losses
from vqgan_jax.tokenizer.config import validate_tokenizer_config
from vqgan_jax.tokenizer.modality import gather_pictures, model_input

# What lowers the step's memory besides the batch, dtype and sharding (`python -m
# vqgan_jax.plan` measures each option).
REMAT_ADVICE = "--config.model.remat=True (recompute the res/attention blocks' activations)"


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs, as one pytree (checkpointed as is)."""
  step: jax.Array
  params: Any
  opt_state: Any
  disc_params: Any
  disc_batch_stats: Any
  disc_opt_state: Any
  ema_params: Any
  codebook_state: Any
  gan_anchors: jax.Array  # LeCAM's EMA of the mean (real, fake) discriminator logits.
  rng: jax.Array
  nonfinite_streak: jax.Array
  skipped_steps: jax.Array


def build_models(config: ml_collections.ConfigDict) -> tuple[VQModel, NLayerDiscriminator]:
  dtype = trainer_config.compute_dtype(config)
  model = VQModel(**config.model.to_dict(), dtype=dtype)
  disc = NLayerDiscriminator(ndf=config.discriminator.ndf,
                             num_layers=config.discriminator.num_layers, dtype=dtype)
  return model, disc


def build_optimizers(config: ml_collections.ConfigDict):
  """(generator tx, discriminator tx, generator lr schedule)."""
  opt = config.optimizer
  g_schedule = optimizers.learning_rate_schedule(opt.learning_rate, opt, config.num_train_steps)
  d_lr = opt.learning_rate if opt.disc_learning_rate < 0 else opt.disc_learning_rate
  d_schedule = optimizers.learning_rate_schedule(d_lr, opt, config.num_train_steps)
  decay_mask = None
  if config.model.simvq and opt.weight_decay > 0:
    decay_mask = _all_but_frozen_basis  # SimVQ's basis is frozen: no decay either.
  return (optimizers.adam(g_schedule, opt, decay_mask=decay_mask),
          optimizers.adam(d_schedule, opt), g_schedule)


def _all_but_frozen_basis(params: Any) -> Any:
  """Weight-decay mask: every parameter except SimVQ's frozen codebook basis."""
  def decays(path, leaf):
    del leaf
    return tuple(str(getattr(p, "key", p)) for p in path) != ("quantizer", "embedding")
  return jax.tree_util.tree_map_with_path(decays, params)


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(height, width) of the training crops."""
  return input_pipeline.crop_shape(config.data.image_size)


def init_state(rng: jax.Array, *, config, model, disc, tx, disc_tx) -> TrainState:
  g_rng, d_rng, state_rng = jax.random.split(rng, 3)
  shape = image_shape(config)
  variables = model.init({"params": g_rng},
                         jnp.zeros((1, *shape, config.model.in_channels), jnp.float32))
  params = variables["params"]
  # The discriminator judges inputs and reconstructions (out_ch channels: 3, or K for label
  # maps, whose tokenizer has no GAN and keeps it only for the state's shape).
  disc_vars = disc.init({"params": d_rng}, jnp.zeros((1, *shape, config.model.out_ch),
                                                     jnp.float32), train=False)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      disc_params=disc_vars["params"],
      disc_batch_stats=disc_vars["batch_stats"],
      disc_opt_state=disc_tx.init(disc_vars["params"]),
      # A copy: params and ema_params are both donated to the step, so they must not alias.
      ema_params=jax.tree.map(jnp.copy, params) if config.ema_decay > 0 else {},
      codebook_state=variables.get(CODEBOOK_STATE, {}),
      gan_anchors=jnp.zeros((2,), jnp.float32),
      rng=state_rng,
      nonfinite_streak=jnp.zeros((), jnp.int32),
      skipped_steps=jnp.zeros((), jnp.int32),
  )


def conv_out_kernel_grads(h: jax.Array, kernel: jax.Array, cotangents: list[jax.Array]) -> list[jax.Array]:
  """Gradients w.r.t. the decoder's conv_out kernel for several output cotangents: one vjp.

  conv_out is a 3x3 stride-1 conv with padding 1; its kernel gradient depends only on its
  input `h` (sown by the decoder) and the cotangent on its output.
  """
  def conv(k):
    return jax.lax.conv_general_dilated(
        h.astype(jnp.float32), k.astype(jnp.float32), (1, 1), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
  _, pullback = jax.vjp(conv, kernel)
  return [pullback(ct.astype(jnp.float32))[0] for ct in cotangents]


def _select(pred: jax.Array, new: Any, old: Any) -> Any:
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def _global_norm(tree: Any) -> jax.Array:
  return optax.tree.norm(tree).astype(jnp.float32)


def train_step(state: TrainState, batch: dict[str, jax.Array], lpips_params: Any, *, config,
               model: VQModel, disc: NLayerDiscriminator, tx, disc_tx, lr_schedule):
  """One VQGAN step on a global batch. Returns the new state and scalar metrics."""
  lc = config.loss
  images = model_input(batch, config.modality, config.model.in_channels)
  step = state.step
  rng = jax.random.fold_in(state.rng, step)

  # Generator: one forward, kept as a vjp. The quantizer updates its own statistics (usage
  # window, EMA, data init, restarts) in the mutable codebook_state collection.
  def generator(params):
    (recon, qout), updated = model.apply(
        {"params": params, CODEBOOK_STATE: state.codebook_state}, images, train=True,
        rngs={"dropout": rng, "codebook": jax.random.fold_in(rng, 1)},
        mutable=["intermediates", CODEBOOK_STATE])
    h = updated["intermediates"]["decoder"]["conv_out_input"][0]
    aux = (qout, h, updated.get(CODEBOOK_STATE, {}))
    return (recon.astype(jnp.float32), qout.loss, qout.entropy_loss), aux

  (recon, q_loss, entropy_loss), gen_pullback, (qout, conv_in, codebook_state) = jax.vjp(
      generator, state.params, has_aux=True)
  uses_gan = lc.disc_factor != 0  # Static: 0 turns the GAN off for the whole run.

  # Reconstruction + perceptual loss and its gradient w.r.t. the reconstruction.
  def nll_fn(x_hat):
    rec = losses.reconstruction_loss(images, x_hat, lc.reconstruction)
    if lc.perceptual_weight == 0:  # Static: no VGG pass for a term that is not trained.
      return rec, (rec, jnp.float32(0.0))
    perceptual = jnp.mean(LPIPS().apply({"params": lpips_params}, images, x_hat))
    return rec + lc.perceptual_weight * perceptual, (rec, perceptual)

  (nll, (rec_loss, p_loss)), nll_grad_x = jax.value_and_grad(nll_fn, has_aux=True)(recon)

  # Discriminator: real batch, then the reconstruction once for both players.
  def disc_apply(d_params, batch_stats, x):
    logits, updates = disc.apply({"params": d_params, "batch_stats": batch_stats}, x,
                                 train=True, mutable=["batch_stats"])
    return logits.astype(jnp.float32), updates["batch_stats"]

  # LeCAM pulls each side's logits towards the other's running mean (the previous step's
  # anchors: constants here, so the two halves stay separate gradients).
  anchor_real, anchor_fake = state.gan_anchors[0], state.gan_anchors[1]

  def d_real_loss(d_params):
    logits, stats = disc_apply(d_params, state.disc_batch_stats, images)
    loss = losses.discriminator_loss_real(logits, lc.gan_loss)
    if lc.lecam_weight > 0:
      loss = loss + lc.lecam_weight * losses.lecam_real(logits, anchor_fake)
    return loss, (logits, stats)

  def d_fake_loss(logits):
    loss = losses.discriminator_loss_fake(logits, lc.gan_loss)
    if lc.lecam_weight > 0:
      loss = loss + lc.lecam_weight * losses.lecam_fake(logits, anchor_real)
    return loss

  def gan(recon):
    (d_loss_real, (logits_real, stats_real)), d_grad_real = jax.value_and_grad(
        d_real_loss, has_aux=True)(state.disc_params)
    logits_fake, disc_pullback, stats_fake = jax.vjp(
        lambda d, x: disc_apply(d, stats_real, x), state.disc_params, recon, has_aux=True)
    g_loss, g_grad_logits = jax.value_and_grad(losses.generator_loss)(logits_fake, lc.gan_loss)
    _, g_grad_x = disc_pullback(g_grad_logits)
    d_loss_fake, d_grad_logits = jax.value_and_grad(d_fake_loss)(logits_fake)
    d_grad_fake, _ = disc_pullback(d_grad_logits)
    return (d_loss_real, logits_real, d_grad_real, logits_fake, stats_fake, g_loss, g_grad_x,
            d_loss_fake, d_grad_fake)

  # Before the GAN reaches either player (taming's disc_start: 250k ImageNet steps), every
  # discriminator output is multiplied by 0: `lax.cond` skips its passes at run time, with
  # zeros of the same shapes (its BatchNorm running statistics, used only in eval mode, stay).
  # With disc_factor 0 (a segmentation tokenizer) it never runs at all.
  d_start = lc.disc_start if lc.disc_train_start < 0 else lc.disc_train_start
  gan_start = min(lc.disc_start, d_start)

  def no_gan(recon):
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(gan, recon))
    return zeros[:4] + (state.disc_batch_stats,) + zeros[5:]

  if not uses_gan:
    gan_out = no_gan(recon)
  elif gan_start <= 0:
    gan_out = gan(recon)
  else:
    gan_out = jax.lax.cond(step >= gan_start, gan, no_gan, recon)
  (d_loss_real, logits_real, d_grad_real, logits_fake, stats_fake, g_loss, g_grad_x,
   d_loss_fake, d_grad_fake) = gan_out

  # Adaptive weight from the decoder's last layer, then the single generator backward pass.
  # Without a GAN, lambda weighs zeros: it is 0, and no kernel gradient is computed.
  if not uses_gan:
    lam = jnp.float32(0.0)
  elif lc.adaptive_weight:
    kernel = state.params["decoder"]["conv_out"]["kernel"]
    nll_grad_w, g_grad_w = conv_out_kernel_grads(conv_in, kernel, [nll_grad_x, g_grad_x])
    lam = losses.adaptive_weight(nll_grad_w, g_grad_w, lc.disc_weight)
  else:
    lam = jnp.float32(lc.disc_weight)
  g_factor = losses.gated_factor(step, lc.disc_start, lc.disc_factor)
  d_factor = losses.gated_factor(step, d_start, lc.disc_factor)

  entropy_weight = losses.entropy_weight_schedule(lc)(step)
  recon_cotangent = nll_grad_x + g_factor * lam * g_grad_x
  (g_grads,) = gen_pullback((recon_cotangent, jnp.float32(lc.codebook_weight), entropy_weight))
  g_total = (nll + g_factor * lam * g_loss + lc.codebook_weight * q_loss
             + entropy_weight * entropy_loss)
  d_loss = d_factor * (d_loss_real + d_loss_fake)
  d_grads = jax.tree.map(lambda a, b: d_factor * (a + b), d_grad_real, d_grad_fake)

  # Updates, then the non-finite guard: a bad step leaves every parameter as it was. (The
  # named scopes label these ops in profiles: `vqgan_jax.runtime.op_profile`.)
  with jax.named_scope("optimizer"):
    g_updates, opt_state = tx.update(g_grads, state.opt_state, state.params)
    params = apply_codebook_overrides(optax.apply_updates(state.params, g_updates),
                                      codebook_state)
    d_updates, disc_opt_state = disc_tx.update(d_grads, state.disc_opt_state, state.disc_params)
    disc_params = optax.apply_updates(state.disc_params, d_updates)
    train_disc = d_factor > 0  # Before its start the discriminator (and its Adam) stays put.
    disc_params = _select(train_disc, disc_params, state.disc_params)
    disc_opt_state = _select(train_disc, disc_opt_state, state.disc_opt_state)
  gan_anchors = state.gan_anchors
  if lc.lecam_weight > 0:
    gan_anchors = jnp.where(train_disc, losses.updated_anchors(
        gan_anchors, logits_real, logits_fake, lc.lecam_decay), gan_anchors)

  with jax.named_scope("nonfinite_guard"):
    g_grad_norm, d_grad_norm = _global_norm(g_grads), _global_norm(d_grads)
    finite = jnp.isfinite(g_total) & jnp.isfinite(d_loss) & jnp.isfinite(g_grad_norm) & (
        jnp.isfinite(d_grad_norm))
  ema_params = state.ema_params
  if config.ema_decay > 0:
    with jax.named_scope("optimizer"):
      ema_params = optax.incremental_update(params, state.ema_params, 1.0 - config.ema_decay)
  with jax.named_scope("nonfinite_guard"):
    new_state = nonfinite.guarded_update(
        state, finite, params=params, opt_state=opt_state, disc_params=disc_params,
        disc_opt_state=disc_opt_state, disc_batch_stats=stats_fake,
        codebook_state=codebook_state, ema_params=ema_params, gan_anchors=gan_anchors)

  metrics = {
      "loss/total": g_total,
      "loss/nll": nll,
      "loss/reconstruction": rec_loss,
      "loss/perceptual": p_loss,
      "loss/quantizer": q_loss,
      "loss/codebook": qout.codebook_loss,
      "loss/commitment": qout.commitment_loss,
      "loss/generator_gan": g_loss,
      "loss/discriminator": d_loss,
      "loss/discriminator_real": d_loss_real,
      "loss/discriminator_fake": d_loss_fake,
      "gan/adaptive_weight": lam,
      "gan/generator_factor": g_factor,
      "gan/discriminator_factor": d_factor,
      "gan/logits_real": jnp.mean(logits_real),
      "gan/logits_fake": jnp.mean(logits_fake),
      "gan/lecam_anchor_real": gan_anchors[0],
      "gan/lecam_anchor_fake": gan_anchors[1],
      "loss/entropy": entropy_loss,
      "loss/entropy_weight": entropy_weight,
      "codebook/usage": qout.usage,
      "codebook/perplexity": qout.perplexity,
      "codebook/window_usage": qout.window_usage,
      "codebook/dead_codes": qout.dead_codes,
      "codebook/restarts": qout.restarts,
      "codebook/sample_entropy": qout.sample_entropy,
      "codebook/codebook_entropy": qout.codebook_entropy,
      "grad_norm/generator": g_grad_norm,
      "grad_norm/discriminator": d_grad_norm,
      "learning_rate": lr_schedule(step),
      "nonfinite_streak": new_state.nonfinite_streak,
      "skipped_steps": new_state.skipped_steps,
  }
  return new_state, metrics


def jit_train_step(config, model, disc, tx, disc_tx, lr_schedule, state_shardings, mesh):
  """`train_step(state, batch, lpips_params)` jitted for the loop (state donated, shardings
  pinned)."""
  return training_loop.jit_step(
      functools.partial(train_step, config=config, model=model, disc=disc, tx=tx,
                        disc_tx=disc_tx, lr_schedule=lr_schedule), state_shardings, mesh)


class Reconstructor:
  """Reconstructs a fixed set of eval examples for the PNG/TensorBoard grids (jitted once):
  the model's inputs (images, edge maps, drawings, or coloured label maps) above their
  reconstructions.

  `batch` is this host's share; it is padded to a multiple of its devices, so any device
  count works (8 grid images on a 16- or 32-chip slice), and the padding is dropped after.
  """

  def __init__(self, model: VQModel, batch: dict[str, np.ndarray], mesh, *,
               modality: str = "image"):
    self._modality = modality
    global_batch, self._real = sharding.padded_global_batch(batch, mesh)
    self._inputs = jax.jit(lambda b: model_input(b, modality, model.in_channels))(global_batch)
    self._fn = jax.jit(lambda p, x: model.apply({"params": p}, x)[0])

  def grid(self, params) -> np.ndarray:
    recon = gather_pictures(self._fn(params, self._inputs), self._modality)
    originals = gather_pictures(self._inputs, self._modality)
    return image_utils.image_grid([sharding.drop_padding(originals, self._real),
                                   sharding.drop_padding(recon, self._real)])


def create_train_state(config: ml_collections.ConfigDict, workdir: str, mesh, *, model, disc,
                       tx, disc_tx):
  """(checkpointer, state, state shardings, data position): WORKDIR's latest checkpoint, else
  a fresh state fine-tuned from `config.init_from` when set (`vqgan_jax.tokenizer.finetune`)."""
  init = functools.partial(init_state, config=config, model=model, disc=disc, tx=tx,
                           disc_tx=disc_tx)
  init_from = None
  if config.init_from:
    init_from = lambda state, abstract: finetune.restore_init_from(state, config.init_from,
                                                                   abstract)
  return training_loop.create_or_restore(init, config, workdir, mesh, init_from=init_from)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains (resuming from WORKDIR if it has a checkpoint) and returns the final state."""
  mesh = sharding.create_mesh()
  validate_tokenizer_config(config, mesh)
  checkpoints.write_config(workdir, config.to_dict())
  model, disc = build_models(config)
  tx, disc_tx, lr_schedule = build_optimizers(config)
  checkpointer, state, state_shardings, position = create_train_state(
      config, workdir, mesh, model=model, disc=disc, tx=tx, disc_tx=disc_tx)

  # The VGG weights only where the perceptual term is trained (not for label maps).
  lpips_params = {}
  if config.loss.perceptual_weight != 0:
    lpips_params = jax.device_put(load_lpips_params(), sharding.replicated(mesh))
  # Compiled before its first call and checked against the device's memory.
  checked_step = memory_plan.MemoryCheckedStep(
      jit_train_step(config, model, disc, tx, disc_tx, lr_schedule, state_shardings, mesh),
      (lpips_params,), config=config, mesh=mesh, limit=memory_plan.device_memory_limit(config),
      advice=() if config.model.remat else (REMAT_ADVICE,))

  eval_batch = next(iter(host_data.eval_batches(config)))
  grid_rows = max(1, 8 // jax.process_count())
  reconstructor = Reconstructor(
      model, {config.modality: eval_batch[config.modality][:grid_rows]}, mesh,
      modality=config.modality)
  eval_fn = None
  if config.eval_every_steps >= 0:
    from vqgan_jax.tokenizer import evaluate  # pylint: disable=g-import-not-at-top
    evaluator = evaluate.TrainingEvaluator(config, model, mesh)
    eval_fn = lambda state: evaluator.evaluate(state.ema_params or state.params)

  return training_loop.run(
      config, workdir, mesh=mesh, state=state,
      step_fn=checked_step,
      train_iter=host_data.train_iterator(config, position),
      checkpointer=checkpointer,
      images_fn=lambda state, step: {"reconstructions": reconstructor.grid(state.params)},
      eval_fn=eval_fn)
