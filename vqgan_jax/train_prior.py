"""Prior training: a transformer learns p(codes | condition) of a frozen tokenizer.

    python -m vqgan_jax.main --config=configs/tiny_prior.py --workdir=workdirs/tiny_prior

Same data pipeline, mesh, checkpoints, logging, guards and preemption handling as the tokenizer
(`vqgan_jax.training_loop`). Images are tokenized inside the jitted step by the frozen tokenizer
(its params are a replicated argument, never in the optimizer or the checkpoint), so the prior
trains on any image source without a separate tokenization pass.
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

from vqgan_jax import checkpoints, evaluate, input_pipeline, optimizers, sharding
from vqgan_jax import trainer_lib, training_loop
from vqgan_jax.tokenizer import load_tokenizer

CONDITIONINGS = ("none", "class", "image")


@flax.struct.dataclass
class PriorState:
  """Everything a resumed prior run needs, as one pytree."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  nonfinite_streak: jax.Array
  skipped_steps: jax.Array


class Tokenizers:
  """The frozen tokenizer(s): modules here, params (`self.params`) passed to jitted code."""

  def __init__(self, model, params, cond_model=None, cond_params=None, cond_downsample=1):
    self.model, self.cond_model, self.cond_downsample = model, cond_model, cond_downsample
    self.params = {"main": params, "cond": cond_params or {}}

  def codes(self, params, images: jax.Array) -> jax.Array:
    """(B, h*w) int32 raster-order codes of images in [-1, 1]."""
    idx = self.model.apply({"params": params["main"]}, images, method="encode_to_indices")
    return jax.lax.stop_gradient(idx.reshape(idx.shape[0], -1))

  def cond_codes(self, params, images: jax.Array) -> jax.Array:
    """(B, cond_len) codes of the downsampled images (image conditioning)."""
    b, h, w, c = images.shape
    d = self.cond_downsample
    small = jax.image.resize(images, (b, h // d, w // d, c), "linear", antialias=True)
    idx = self.cond_model.apply({"params": params["cond"]}, small, method="encode_to_indices")
    return jax.lax.stop_gradient(idx.reshape(b, -1))

  def decode(self, params, codes: jax.Array) -> jax.Array:
    """Images from (B, h, w) codes."""
    return self.model.apply({"params": params["main"]}, codes, method="decode_indices")


def load_tokenizers(config: ml_collections.ConfigDict) -> Tokenizers:
  if not config.tokenizer_workdir:
    raise ValueError("config.tokenizer_workdir is empty: set it to the workdir of a trained "
                     "(python -m vqgan_jax.main --config=configs/tiny.py) or converted tokenizer.")
  model, variables = load_tokenizer(config.tokenizer_workdir)
  cond_model, cond_params = None, {}
  if config.conditioning == "image":
    if not config.cond_tokenizer_workdir:
      raise ValueError("config.conditioning='image' needs config.cond_tokenizer_workdir (the "
                       "tokenizer of the downsampled conditioning images).")
    cond_model, cond_vars = load_tokenizer(config.cond_tokenizer_workdir)
    cond_params = cond_vars["params"]
  return Tokenizers(model, variables["params"], cond_model, cond_params, config.cond_downsample)


def token_grid(config: ml_collections.ConfigDict, tokenizer_model) -> tuple[int, int]:
  """The (h, w) code grid of one training image."""
  factor = 2 ** (len(tokenizer_model.ch_mult) - 1)
  h, w = input_pipeline.crop_shape(config.data.image_size)
  if h % factor or w % factor:
    raise ValueError(f"config.data.image_size={config.data.image_size} is not divisible by the "
                     f"tokenizer's downsampling factor {factor}; use a multiple of {factor}.")
  return h // factor, w // factor


def cond_length(config: ml_collections.ConfigDict, tokenizers: Tokenizers) -> int:
  if config.conditioning != "image":
    return 0
  h, w = input_pipeline.crop_shape(config.data.image_size)
  d = config.cond_downsample
  factor = 2 ** (len(tokenizers.cond_model.ch_mult) - 1)
  if h % (d * factor) or w % (d * factor):
    raise ValueError(f"config.data.image_size={config.data.image_size} must be divisible by "
                     f"config.cond_downsample * the conditioning tokenizer's factor = {d * factor}.")
  return (h // d // factor) * (w // d // factor)


def build_model(config: ml_collections.ConfigDict, tokenizers: Tokenizers, num_classes: int):
  from vqgan_jax.models.transformer import Transformer  # pylint: disable=g-import-not-at-top
  h, w = token_grid(config, tokenizers.model)
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.dtype]
  return Transformer(
      vocab_size=tokenizers.model.codebook_size, seq_len=h * w,
      num_classes=num_classes if config.conditioning == "class" else 0,
      cond_vocab_size=tokenizers.cond_model.codebook_size if config.conditioning == "image" else 0,
      cond_len=cond_length(config, tokenizers), dtype=dtype, **config.model.to_dict())


def _decay_mask(params: Any) -> Any:
  """Weight decay on weight matrices only (not biases, norms, embeddings or positions)."""
  def decays(path, leaf):
    names = [str(getattr(p, "key", p)).lower() for p in path]
    return leaf.ndim >= 2 and not any("embed" in n or "pos" in n for n in names)
  return jax.tree_util.tree_map_with_path(decays, params)


def build_optimizer(config: ml_collections.ConfigDict):
  opt = config.optimizer
  schedule = optimizers.learning_rate_schedule(opt.learning_rate, opt, config.num_train_steps)
  tx = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay,
                   mask=_decay_mask)
  if opt.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx, schedule


def conditioning_of(config, tokenizers: Tokenizers, tok_params, batch: dict[str, jax.Array]):
  """The model's `cond` argument for a batch (None, labels, or condition codes)."""
  if config.conditioning == "class":
    return batch["label"].astype(jnp.int32)
  if config.conditioning == "image":
    return tokenizers.cond_codes(tok_params, batch["image"].astype(jnp.float32))
  return None


def init_state(rng: jax.Array, *, config, model, tx, tokens_shape, cond_example) -> PriorState:
  init_rng, state_rng = jax.random.split(rng)
  params = model.init({"params": init_rng}, jnp.zeros(tokens_shape, jnp.int32),
                      cond_example)["params"]
  return PriorState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=state_rng, nonfinite_streak=jnp.zeros((), jnp.int32),
                    skipped_steps=jnp.zeros((), jnp.int32))


def token_loss(model, params, tokens, cond, *, train: bool, rng=None):
  """Mean cross-entropy (nats) of the codes, and the per-example sums and accuracy."""
  logits = model.apply({"params": params}, tokens, cond, train=train,
                       rngs={"dropout": rng} if train else {})
  nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), tokens)
  correct = (jnp.argmax(logits, -1) == tokens).astype(jnp.float32)
  return nll, correct


def prior_step(state: PriorState, batch: dict[str, jax.Array], tok_params: Any, *,
               config, tokenizers: Tokenizers, model, tx, lr_schedule, num_classes: int):
  """One step: tokenize with the frozen tokenizer, corrupt (pkeep), cross-entropy, AdamW."""
  rng = jax.random.fold_in(state.rng, state.step)
  corrupt_rng, drop_rng, label_rng, dropout_rng = jax.random.split(rng, 4)
  images = batch["image"].astype(jnp.float32)
  targets = tokenizers.codes(tok_params, images)
  inputs = targets
  if config.pkeep < 1.0:
    keep = jax.random.bernoulli(corrupt_rng, config.pkeep, targets.shape)
    random_codes = jax.random.randint(drop_rng, targets.shape, 0, model.vocab_size)
    inputs = jnp.where(keep, targets, random_codes)
  cond = conditioning_of(config, tokenizers, tok_params, batch)
  if config.conditioning == "class" and config.label_dropout > 0:
    dropped = jax.random.bernoulli(label_rng, config.label_dropout, cond.shape)
    cond = jnp.where(dropped, num_classes, cond)

  def loss_fn(params):
    logits = model.apply({"params": params}, inputs, cond, train=True,
                         rngs={"dropout": dropout_rng})
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    accuracy = jnp.mean((jnp.argmax(logits, -1) == targets).astype(jnp.float32))
    return jnp.mean(nll), accuracy

  (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.tree.norm(grads).astype(jnp.float32)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  params, opt_state = jax.tree.map(lambda a, b: jnp.where(finite, a, b),
                                   (params, opt_state), (state.params, state.opt_state))
  streak = jnp.where(finite, 0, state.nonfinite_streak + 1).astype(jnp.int32)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            nonfinite_streak=streak,
                            skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32))
  return new_state, {
      "loss": loss,
      "bits_per_token": loss / math.log(2.0),
      "accuracy": accuracy,
      "grad_norm": grad_norm,
      "learning_rate": lr_schedule(state.step),
      "nonfinite_streak": streak,
      "skipped_steps": new_state.skipped_steps,
  }


def eval_sums(params, tok_params, batch, *, config, tokenizers: Tokenizers, model):
  """Masked sums of the eval cross-entropy (no corruption, no label dropout)."""
  targets = tokenizers.codes(tok_params, batch["image"].astype(jnp.float32))
  cond = conditioning_of(config, tokenizers, tok_params, batch)
  nll, correct = token_loss(model, params, targets, cond, train=False)
  mask = batch["mask"].astype(jnp.float32)[:, None]
  return {"nll": jnp.sum(nll * mask), "correct": jnp.sum(correct * mask),
          "tokens": jnp.sum(mask * jnp.ones_like(nll))}


def validate_prior_config(config: ml_collections.ConfigDict, mesh) -> None:
  if config.conditioning not in CONDITIONINGS:
    raise ValueError(f"config.conditioning={config.conditioning!r}; use one of {CONDITIONINGS}.")
  if not 0.0 < config.pkeep <= 1.0:
    raise ValueError(f"config.pkeep={config.pkeep} must be in (0, 1].")
  if not 0.0 <= config.label_dropout < 1.0:
    raise ValueError(f"config.label_dropout={config.label_dropout} must be in [0, 1).")
  if config.model.embed_dim % config.model.num_heads:
    raise ValueError(f"config.model.embed_dim={config.model.embed_dim} is not divisible by "
                     f"config.model.num_heads={config.model.num_heads}.")
  for key in ("num_train_steps", "batch_size", "log_every_steps", "checkpoint_every_steps",
              "keep_checkpoints", "max_nonfinite_steps"):
    if config[key] <= 0:
      raise ValueError(f"config.{key}={config[key]} must be positive.")
  if config.param_sharding not in sharding.PARAM_SHARDING_STRATEGIES:
    raise ValueError(f"config.param_sharding={config.param_sharding!r}; use one of "
                     f"{sharding.PARAM_SHARDING_STRATEGIES}.")
  sharding.check_batch_divisible(config.batch_size, mesh)
  input_pipeline.validate_data_config(config)


class PriorSampler:
  """Draws samples (tokens -> images) for the training grid; see `vqgan_jax.sample`."""

  def __init__(self, config, model, tokenizers: Tokenizers, num_classes: int, grid: tuple[int, int]):
    from vqgan_jax import sampling  # pylint: disable=g-import-not-at-top
    self._n = config.num_image_samples
    self._grid = grid
    self._tokenizers = tokenizers
    self._cond = None
    if config.conditioning == "class":
      self._cond = jnp.arange(self._n, dtype=jnp.int32) % max(num_classes, 1)
    self._sample = functools.partial(sampling.sample, model, batch_size=self._n,
                                     temperature=config.sample.temperature,
                                     top_k=config.sample.top_k, top_p=config.sample.top_p)
    self._decode = jax.jit(tokenizers.decode)
    self._cond_images = None
    if config.conditioning == "image":  # Low-resolution copies of eval images condition samples.
      batch = next(iter(input_pipeline.create_eval_iterator(
          config, local_batch_size=self._n, process_index=0, process_count=1)))
      self._cond_images = jnp.asarray(batch["image"][:self._n])
      self._n = len(self._cond_images)
      self._sample = functools.partial(self._sample, batch_size=self._n)
      self._cond_codes = jax.jit(tokenizers.cond_codes)

  def grid(self, params, tok_params, rng) -> np.ndarray:
    cond = self._cond
    if self._cond_images is not None:
      cond = self._cond_codes(tok_params, self._cond_images)
    tokens = self._sample(params, rng, cond=cond)
    images = self._decode(tok_params, tokens.reshape(-1, *self._grid))
    return trainer_lib.image_grid([trainer_lib.to_uint8(np.asarray(jax.device_get(images)))])


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> PriorState:
  """Trains the prior (resuming from WORKDIR) and returns the final state."""
  mesh = sharding.create_mesh()
  validate_prior_config(config, mesh)
  tokenizers = load_tokenizers(config)
  grid = token_grid(config, tokenizers.model)
  num_classes = input_pipeline.num_classes(config) if config.conditioning == "class" else 0
  model = build_model(config, tokenizers, num_classes)
  checkpoints.write_config(workdir, config.to_dict())
  tx, lr_schedule = build_optimizer(config)

  cond_example = None
  if config.conditioning == "class":
    cond_example = jnp.zeros((1,), jnp.int32)
  elif config.conditioning == "image":
    cond_example = jnp.zeros((1, model.cond_len), jnp.int32)
  init = functools.partial(init_state, config=config, model=model, tx=tx,
                           tokens_shape=(1, grid[0] * grid[1]), cond_example=cond_example)
  checkpointer, state, state_shardings, position = training_loop.create_or_restore(
      init, config, workdir, mesh)

  replicated = sharding.replicated(mesh)
  tok_params = jax.device_put(tokenizers.params, replicated)
  jitted_step = jax.jit(
      functools.partial(prior_step, config=config, tokenizers=tokenizers, model=model, tx=tx,
                        lr_schedule=lr_schedule, num_classes=num_classes),
      in_shardings=(state_shardings, sharding.batch_sharding(mesh), replicated),
      out_shardings=(state_shardings, replicated), donate_argnums=(0,))

  sums_fn = jax.jit(functools.partial(eval_sums, config=config, tokenizers=tokenizers,
                                      model=model),
                    out_shardings=replicated)

  def eval_fn(state):
    total = None
    for batch in evaluate.eval_batches(config, config.num_eval_images):
      sums = sums_fn(state.params, tok_params, sharding.global_batch(batch, mesh))
      total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    total = jax.device_get(total)
    nll = float(total["nll"] / total["tokens"])
    return {"eval/loss": nll, "eval/bits_per_token": nll / math.log(2.0),
            "eval/accuracy": float(total["correct"] / total["tokens"])}

  sampler = PriorSampler(config, model, tokenizers, num_classes, grid)
  sample_rng = jax.random.PRNGKey(config.seed + 1)

  return training_loop.run(
      config, workdir, mesh=mesh, state=state,
      step_fn=lambda state, batch: jitted_step(state, batch, tok_params),
      train_iter=training_loop.train_iterator(config, position),
      checkpointer=checkpointer,
      images_fn=lambda state, step: {"samples": sampler.grid(
          state.params, tok_params, jax.random.fold_in(sample_rng, step))},
      eval_fn=eval_fn)
