"""Prior training: a transformer learns p(codes | condition) of a frozen tokenizer.

    python -m vqgan_jax.main --config=configs/tiny_prior.py --workdir=workdirs/tiny_prior

Same data pipeline, mesh, checkpoints, logging, guards and preemption handling as the tokenizer
(`vqgan_jax.runtime.training_loop`). Images are tokenized inside the jitted step by the frozen tokenizer
(its params are a replicated argument, never in the optimizer or the checkpoint), so the prior
trains on any image source without a separate tokenization pass; or, with
`config.data.source='codes'`, on codes stored once by `--mode=tokenize` (`vqgan_jax.prior.tokenize`),
which skips the tokenizer's forward pass in every step.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vqgan_jax.data import input_pipeline
from vqgan_jax.prior.config import validate_prior_config
from vqgan_jax.prior.frozen_tokenizers import Tokenizers, load_tokenizers
from vqgan_jax.prior import conditions, tokenize
from vqgan_jax.prior.model import build_model, token_grid
from vqgan_jax.runtime import checkpoints, host_data, images as image_utils, nonfinite
from vqgan_jax.runtime import optimizers, sharding, training_loop


@flax.struct.dataclass
class PriorState:
  """Everything a resumed prior run needs, as one pytree."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  nonfinite_streak: jax.Array
  skipped_steps: jax.Array


def build_optimizer(config: ml_collections.ConfigDict):
  """(AdamW with weight decay on matrices only, its learning-rate schedule)."""
  opt = config.optimizer
  schedule = optimizers.learning_rate_schedule(opt.learning_rate, opt, config.num_train_steps)
  return optimizers.adam(schedule, opt, decay_mask=optimizers.matrices_only), schedule


def init_state(rng: jax.Array, *, config, model, tx, tokens_shape, cond_example) -> PriorState:
  init_rng, state_rng = jax.random.split(rng)
  params = model.init({"params": init_rng}, jnp.zeros(tokens_shape, jnp.int32),
                      cond_example)["params"]
  return PriorState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=state_rng, nonfinite_streak=jnp.zeros((), jnp.int32),
                    skipped_steps=jnp.zeros((), jnp.int32))


def token_loss(model, params, tokens, cond, *, train: bool, rng=None, targets=None):
  """Per-token cross-entropy (nats) and correctness of predicting `targets` (default: the
  input tokens themselves) from `tokens`; both (B, seq_len) float32."""
  targets = tokens if targets is None else targets
  logits = model.apply({"params": params}, tokens, cond, train=train,
                       rngs={"dropout": rng} if train else {})
  nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return nll, correct


def batch_codes(tokenizers: Tokenizers, tok_params, batch: dict[str, jax.Array]) -> jax.Array:
  """(B, h*w) int32 targets: the batch's stored `codes`, else the codes of its images."""
  if "codes" in batch:
    return batch["codes"].astype(jnp.int32)
  return tokenizers.codes(tok_params, batch["image"].astype(jnp.float32))


def prior_step(state: PriorState, batch: dict[str, jax.Array], tok_params: Any, *,
               config, tokenizers: Tokenizers, model, tx, lr_schedule, num_classes: int):
  """One step: tokenize with the frozen tokenizer (unless the batch has stored `codes`), corrupt
  (pkeep), cross-entropy, AdamW."""
  rng = jax.random.fold_in(state.rng, state.step)
  corrupt_rng, drop_rng, label_rng, dropout_rng = jax.random.split(rng, 4)
  targets = batch_codes(tokenizers, tok_params, batch)
  inputs = targets
  if config.pkeep < 1.0:
    keep = jax.random.bernoulli(corrupt_rng, config.pkeep, targets.shape)
    random_codes = jax.random.randint(drop_rng, targets.shape, 0, model.vocab_size)
    inputs = jnp.where(keep, targets, random_codes)
  cond = tokenizers.conditioning(config, tok_params, batch)
  if conditions.dropout_rate(config) > 0:  # The null label, empty caption or null-code map.
    cond = conditions.drop_conditions(cond, model.null_condition(cond),
                                      conditions.dropout_rate(config), label_rng)

  def loss_fn(params):
    nll, correct = token_loss(model, params, inputs, cond, train=True, rng=dropout_rng,
                              targets=targets)
    return jnp.mean(nll), jnp.mean(correct)

  (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.tree.norm(grads).astype(jnp.float32)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  new_state = nonfinite.guarded_update(state, finite, params=params, opt_state=opt_state)
  return new_state, {
      "loss": loss,
      "bits_per_token": loss / math.log(2.0),
      "accuracy": accuracy,
      "grad_norm": grad_norm,
      "learning_rate": lr_schedule(state.step),
      "nonfinite_streak": new_state.nonfinite_streak,
      "skipped_steps": new_state.skipped_steps,
  }


def eval_sums(params, tok_params, batch, *, config, tokenizers: Tokenizers, model):
  """Masked sums of the eval cross-entropy (no corruption, no label dropout)."""
  targets = batch_codes(tokenizers, tok_params, batch)
  cond = tokenizers.conditioning(config, tok_params, batch)
  nll, correct = token_loss(model, params, targets, cond, train=False)
  mask = batch["mask"].astype(jnp.float32)[:, None]
  sums = {"nll": jnp.sum(nll * mask), "correct": jnp.sum(correct * mask),
          "tokens": jnp.sum(mask * jnp.ones_like(nll))}
  if model.has_null_condition:  # Without the condition (the codec codes with the null label).
    null = model.null_condition(cond)
    sums["nll_null"] = jnp.sum(token_loss(model, params, targets, null, train=False)[0] * mask)
  return sums


def eval_metrics(total: dict[str, Any], grid: tuple[int, int], image_size) -> dict[str, float]:
  """The eval scalars from `eval_sums` summed over the split: cross-entropy per token and as a
  codec's rate, bits per pixel of the image (`codec_bits_per_pixel`: with the null label for a
  class-conditional prior, as `vqgan_jax.compress` codes; the file adds its header and the
  range coder's last word)."""
  nll = float(total["nll"] / total["tokens"])
  tokens_per_pixel = grid[0] * grid[1] / math.prod(input_pipeline.crop_shape(image_size))
  codec_nll = float(total.get("nll_null", total["nll"]) / total["tokens"])
  null = {"eval/bits_per_token_null_condition": codec_nll / math.log(2.0)} if (
      "nll_null" in total) else {}
  return {"eval/loss": nll, "eval/bits_per_token": nll / math.log(2.0), **null,
          "eval/bits_per_pixel": nll / math.log(2.0) * tokens_per_pixel,
          "eval/codec_bits_per_pixel": codec_nll / math.log(2.0) * tokens_per_pixel,
          "eval/accuracy": float(total["correct"] / total["tokens"])}


class PriorSampler:
  """Draws samples (tokens -> images) for the training grid; see `vqgan_jax.prior.sample`."""

  def __init__(self, config, model, tokenizers: Tokenizers, num_classes: int, grid: tuple[int, int]):
    from vqgan_jax.prior import samplers  # pylint: disable=g-import-not-at-top
    self._n = config.num_image_samples
    self._grid = grid
    self._tokenizers = tokenizers
    self._cond = None
    if config.conditioning == "class":
      self._cond = jnp.arange(self._n, dtype=jnp.int32) % max(num_classes, 1)
    self._sample = functools.partial(samplers.sample, model, batch_size=self._n,
                                     temperature=config.sample.temperature,
                                     top_k=config.sample.top_k, top_p=config.sample.top_p)
    self._decode = jax.jit(tokenizers.decode)
    self._examples = None
    if conditions.is_tokenized(config) or config.conditioning == "text":
      # The conditions of the first eval examples (their low-res copy, label map, edges,
      # drawing or caption) condition the samples.
      examples = input_pipeline.first_eval_examples(config, self._n)
      self._examples = {k: jnp.asarray(v) for k, v in examples.items()}
      self._n = len(examples["image"])
      self._sample = functools.partial(self._sample, batch_size=self._n)
      self._conditioning = jax.jit(functools.partial(tokenizers.conditioning, config))

  def grid(self, params, tok_params, rng) -> np.ndarray:
    cond = self._cond
    if self._examples is not None:
      cond = self._conditioning(tok_params, self._examples)
    tokens = self._sample(params, rng, cond=cond)
    images = self._decode(tok_params, tokens.reshape(-1, *self._grid))
    return image_utils.image_grid([image_utils.to_uint8(np.asarray(jax.device_get(images)))])


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> PriorState:
  """Trains the prior (resuming from WORKDIR) and returns the final state."""
  mesh = sharding.create_mesh()
  validate_prior_config(config, mesh)
  replicated = sharding.replicated(mesh)
  tokenizers = load_tokenizers(config, replicated)
  grid = token_grid(config, tokenizers.model)
  if config.data.source == "codes":
    tokenize.check_codes_manifest(config, tokenizers, grid)
  num_classes = input_pipeline.num_classes(config) if config.conditioning == "class" else 0
  model = build_model(config, tokenizers, num_classes)
  checkpoints.write_config(workdir, config.to_dict())
  tx, lr_schedule = build_optimizer(config)

  cond_example = None
  if config.conditioning == "class":
    cond_example = jnp.zeros((1,), jnp.int32)
  elif model.cond_len > 0:
    cond_example = jnp.zeros((1, model.cond_len), jnp.int32)
  init = functools.partial(init_state, config=config, model=model, tx=tx,
                           tokens_shape=(1, grid[0] * grid[1]), cond_example=cond_example)
  checkpointer, state, state_shardings, position = training_loop.create_or_restore(
      init, config, workdir, mesh)

  tok_params = tokenizers.params
  jitted_step = training_loop.jit_step(
      functools.partial(prior_step, config=config, tokenizers=tokenizers, model=model, tx=tx,
                        lr_schedule=lr_schedule, num_classes=num_classes), state_shardings, mesh)

  sums_fn = jax.jit(functools.partial(eval_sums, config=config, tokenizers=tokenizers,
                                      model=model),
                    out_shardings=replicated)

  def eval_fn(state):
    total = None
    for batch in host_data.eval_batches(config, config.num_eval_images):
      sums = sums_fn(state.params, tok_params, sharding.global_batch(batch, mesh))
      total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    return eval_metrics(jax.device_get(total), grid, config.data.image_size)

  sampler = PriorSampler(config, model, tokenizers, num_classes, grid)
  sample_rng = jax.random.PRNGKey(config.seed + 1)

  return training_loop.run(
      config, workdir, mesh=mesh, state=state,
      step_fn=lambda state, batch: jitted_step(state, batch, tok_params),
      train_iter=host_data.train_iterator(config, position),
      checkpointer=checkpointer,
      images_fn=lambda state, step: {"samples": sampler.grid(
          state.params, tok_params, jax.random.fold_in(sample_rng, step))},
      eval_fn=eval_fn)
