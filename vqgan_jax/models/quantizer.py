"""Vector quantizer (VQ-VAE bottleneck) matching taming-transformers' `VectorQuantizer`, with the
options that keep a codebook in use (ViT-VQGAN, LlamaGen, VQ-VAE-2, UViM).

Codes are chosen by nearest Euclidean distance, computed as |z|^2 + |e|^2 - 2 z.e in float32
with HIGHEST matmul precision, so indices agree with taming's even when the network around it
runs in bfloat16. Gradients reach the encoder through the straight-through estimator.

Codebook maintenance (EMA updates, initialisation from data, dead-code restarts) runs inside the
training step when the 'codebook_state' collection is mutable: the quantizer writes the codebook
it wants in `codebook_state/quantizer/next_codebook` (rows flagged in `override`), and the
trainer copies those rows into the parameters after the optimizer update
(`apply_codebook_overrides`). Parameters stay the single source of truth for inference, so
evaluation, the prior and converted checkpoints only ever need `{'params': ...}`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from vqgan_jax.models import codebook_ops

STATE = 'codebook_state'
CODEBOOK_INITS = ('uniform', 'random_outputs', 'kmeans++')
# k-means runs on the (replicated) buffer: its Lloyd steps hold at most 4096 x K distances.
KMEANS_CHUNK_SIZE = 4096


@struct.dataclass
class QuantizerOutput:
  """What one quantizer call produces; losses and statistics are float32 scalars.

  Attributes:
    quantized: straight-through code vectors, z + sg(e_k - z), float32, shape of the input.
    indices: int32 code indices, the input shape without its last axis.
    loss: codebook_loss + commitment_loss.
    codebook_loss: the weighted term that moves the codebook, |e_k - sg(z)|^2 (0 with EMA).
    commitment_loss: the weighted term that moves the encoder, |sg(e_k) - z|^2.
    perplexity: exp(entropy) of the batch's code histogram (1 = one code, K = uniform).
    usage: fraction of the K codes used at least once in the batch.
    entropy_loss: sample_entropy - codebook_entropy (unweighted; the trainer applies the
      schedule); 0 unless the quantizer's entropy_temperature > 0.
    sample_entropy: mean entropy of each token's soft assignment (low = confident).
    codebook_entropy: entropy of the batch's mean soft assignment (high = codes spread).
    window_usage: fraction of codes chosen within the last `usage_window_steps` training
      steps, over every device and host (training only; else the batch usage).
    dead_codes: number of codes not chosen within that window (training only).
    restarts: codes re-seeded at this step (training only).
  """
  quantized: jax.Array
  indices: jax.Array
  loss: jax.Array
  codebook_loss: jax.Array
  commitment_loss: jax.Array
  perplexity: jax.Array
  usage: jax.Array
  entropy_loss: jax.Array
  sample_entropy: jax.Array
  codebook_entropy: jax.Array
  window_usage: jax.Array
  dead_codes: jax.Array
  restarts: jax.Array


def make_output(*, quantized, indices, codebook_size, commitment_loss, codebook_loss=0.0,
                entropy=None, usage_tracker=None) -> QuantizerOutput:
  """Fills the batch statistics common to every quantizer."""
  counts = codebook_ops.code_counts(indices, codebook_size)
  usage = jnp.mean(counts > 0).astype(jnp.float32)
  sample_entropy, codebook_entropy = entropy if entropy is not None else (0.0, 0.0)
  window_usage, dead, restarts = usage, jnp.sum(counts == 0), 0
  if usage_tracker is not None:
    window_usage, dead, restarts = usage_tracker
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  return QuantizerOutput(
      quantized=quantized, indices=indices,
      loss=f32(codebook_loss) + f32(commitment_loss),
      codebook_loss=f32(codebook_loss), commitment_loss=f32(commitment_loss),
      perplexity=codebook_ops.perplexity(counts), usage=usage,
      entropy_loss=f32(sample_entropy) - f32(codebook_entropy),
      sample_entropy=f32(sample_entropy), codebook_entropy=f32(codebook_entropy),
      window_usage=f32(window_usage), dead_codes=f32(dead), restarts=f32(restarts))


class UsageWindow:
  """Per-code 'last chosen at step' counters in the 'codebook_state' collection.

  Declared from a quantizer's `setup` when the collection exists (init, or training with it
  mutable); `update` returns (window usage, dead-code count) after this step's counts.
  """

  def __init__(self, module: nn.Module, codebook_size: int, window_steps: int):
    self.window_steps = window_steps
    self.step = module.variable(STATE, 'step', lambda: jnp.zeros((), jnp.int32))
    self.last_used = module.variable(STATE, 'last_used',
                                     lambda: jnp.full((codebook_size,), -1, jnp.int32))

  def update(self, counts: jax.Array) -> tuple[jax.Array, jax.Array]:
    step = self.step.value
    self.last_used.value = jnp.where(counts > 0, step, self.last_used.value)
    self.step.value = step + 1
    in_window = (self.last_used.value >= 0) & (self.last_used.value > step - self.window_steps)
    return jnp.mean(in_window).astype(jnp.float32), jnp.sum(~in_window)


def state_is_tracked(module: nn.Module) -> bool:
  return module.is_initializing() or module.is_mutable_collection(STATE)


def updates_state(module: nn.Module, train: bool) -> bool:
  return train and not module.is_initializing() and module.is_mutable_collection(STATE)


def _taming_codebook_init(key: jax.Array, shape: tuple[int, int], dtype: Any) -> jax.Array:
  """Uniform(-1/K, 1/K), as taming initialises its `nn.Embedding` codebook."""
  bound = 1.0 / shape[0]
  return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)


def _simvq_basis_init(key: jax.Array, shape: tuple[int, int], dtype: Any) -> jax.Array:
  """N(0, 1/d), SimVQ's frozen basis."""
  return jax.random.normal(key, shape, dtype) * shape[1]**-0.5


def _index_backprop(flat: jax.Array, codebook: jax.Array, temperature: float):
  """IBQ's assignment of (n, d) vectors: (indices by the largest z.e, entropy terms or None,
  softmax(z.e) (n, K), the soft one-hot the gradient flows through)."""
  logits = jnp.matmul(flat, codebook.T, precision=jax.lax.Precision.HIGHEST)
  indices = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  entropy = None
  if temperature > 0:
    entropy = codebook_ops.entropy_terms(logits / temperature)
  return indices, entropy, jax.nn.softmax(logits, axis=-1)


def l2_normalize(x: jax.Array) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x**2, axis=-1, keepdims=True), 1e-12))


class VectorQuantizer(nn.Module):
  """Nearest-neighbour quantizer over the last axis of `z` (NHWC latents or any (..., D)).

  `legacy=True` is taming's weighting (commitment weight 1, codebook weight beta), which the
  released taming checkpoints were trained with; `legacy=False` is the VQ-VAE paper's
  (codebook weight 1, commitment weight beta).

  Options (all off by default = taming):
    l2_normalize: unit-normalise latents and codes before the lookup (cosine similarity), as
      ViT-VQGAN and LlamaGen; the decoder sees unit vectors.
    codebook_dim: factorised lookup: a Dense projects embed_dim -> codebook_dim for the
      lookup and another projects the code back (ViT-VQGAN); 0 = embed_dim, no projection.
    ema_decay: > 0 learns the codebook by exponential moving averages of the assigned
      encoder outputs (Laplace smoothing `ema_epsilon`) instead of the codebook loss.
    codebook_init: 'uniform' (taming), or from data once `buffer_size` encoder outputs have
      been seen: 'random_outputs' (random rows) or 'kmeans++' (seeding + `kmeans_iterations`
      Lloyd steps).
    restart_unused_steps: > 0 re-seeds codes unchosen for that many steps from recent encoder
      outputs (the buffer), counted in `restarts`.
    entropy_temperature: > 0 computes the entropy penalty terms from softmax(-d / t).
    usage_window_steps: the window of `window_usage` / `dead_codes`.
    simvq: SimVQ (Zhu et al. 2024): the codebook is a frozen random basis (the `embedding`
      parameter, N(0, 1/d), never updated) times a learned linear map (`codebook_transform`,
      Dense d -> d), so every gradient step moves the whole codebook together and no code is
      left behind.
    index_backprop: IBQ (Shi et al. 2024): codes are chosen by the largest dot product z.e and
      the straight-through estimator runs through the one-hot over all K codes,
      onehot = hard + softmax(z.e) - sg(softmax(z.e)): the decoder sees the exact code, and
      every code (and the encoder, through the softmax) gets a gradient every step.
    lookup_chunk_size: C > 0 searches C tokens at a time, so the distance matrix held at once
      is C x K: memory stays bounded for large codebooks. Indices are identical either way.
  """
  codebook_size: int
  embed_dim: int
  beta: float = 0.25
  legacy: bool = True
  l2_normalize: bool = False
  lookup_chunk_size: int = 0
  codebook_dim: int = 0
  ema_decay: float = 0.0
  ema_epsilon: float = 1e-5
  codebook_init: str = 'uniform'
  kmeans_iterations: int = 5
  restart_unused_steps: int = 0
  buffer_size: int = 0
  entropy_temperature: float = 0.0
  usage_window_steps: int = 100
  simvq: bool = False
  index_backprop: bool = False

  @property
  def lookup_dim(self) -> int:
    return self.codebook_dim or self.embed_dim

  @property
  def uses_buffer(self) -> bool:
    return self.codebook_init != 'uniform' or self.restart_unused_steps > 0

  def setup(self):
    if self.codebook_init not in CODEBOOK_INITS:
      raise ValueError(f'codebook_init={self.codebook_init!r}; use one of {CODEBOOK_INITS}.')
    k, d = self.codebook_size, self.lookup_dim
    if self.simvq and (self.ema_decay > 0 or self.uses_buffer):
      raise ValueError('simvq learns its codebook through codebook_transform: ema_decay, '
                       "codebook_init and restart_unused_steps must stay off ('uniform', 0).")
    if self.index_backprop and self.lookup_chunk_size:
      raise ValueError('index_backprop needs the soft assignment over all codes at once; set '
                       'lookup_chunk_size=0.')
    init = _simvq_basis_init if self.simvq else _taming_codebook_init
    self.embedding = self.param('embedding', init, (k, d), jnp.float32)
    if self.simvq:
      self.codebook_transform = nn.Dense(d, name='codebook_transform',
                                         precision=jax.lax.Precision.HIGHEST)
    if self.lookup_dim != self.embed_dim:
      self.project_in = nn.Dense(d, name='project_in')
      self.project_out = nn.Dense(self.embed_dim, name='project_out')
    self.tracked = state_is_tracked(self)
    if not self.tracked:
      return
    self.window = UsageWindow(self, k, self.usage_window_steps)
    var = lambda name, fn: self.variable(STATE, name, fn)
    if self.ema_decay > 0 or self.uses_buffer:
      self.next_codebook = var('next_codebook', lambda: jnp.zeros((k, d), jnp.float32))
      self.override = var('override', lambda: jnp.zeros((k,), bool))
    if self.ema_decay > 0:
      self.cluster_size = var('cluster_size', lambda: jnp.ones((k,), jnp.float32))
      # One pseudo-count per code at its initial value, so untouched codes stay put at first.
      self.embed_sum = var('embed_sum', lambda: self.embedding)
    if self.uses_buffer:
      size = self.buffer_size or 4 * k
      self.buffer = var('buffer', lambda: jnp.zeros((size, d), jnp.float32))
      self.buffer_count = var('buffer_count', lambda: jnp.zeros((), jnp.int32))
      self.initialized = var('initialized',
                             lambda: jnp.asarray(self.codebook_init == 'uniform'))
    if self.restart_unused_steps > 0:
      self.unused_steps = var('unused_steps', lambda: jnp.zeros((k,), jnp.int32))
      self.restarts_total = var('restarts_total', lambda: jnp.zeros((), jnp.int32))

  def __call__(self, z: jax.Array, train: bool = False) -> QuantizerOutput:
    if z.shape[-1] != self.embed_dim:
      raise ValueError(f'VectorQuantizer expects inputs with last axis {self.embed_dim}, '
                       f'got shape {z.shape}.')
    z = z.astype(jnp.float32)
    if self.lookup_dim != self.embed_dim:
      z = self.project_in(z)
    z = self._maybe_normalize(z)
    codebook = self.codebook()
    if self.ema_decay > 0:
      codebook = jax.lax.stop_gradient(codebook)  # Learned by EMA only.
    flat = z.reshape(-1, self.lookup_dim)
    update = updates_state(self, train)
    temperature = self.entropy_temperature if train else 0.0
    sg = jax.lax.stop_gradient
    if self.index_backprop:
      indices, entropy, soft = _index_backprop(flat, codebook, temperature)
      codes = jnp.take(codebook, indices, axis=0).reshape(z.shape)
      # (hard + soft - sg(soft)) @ codebook: the exact codes forward (the soft part is exactly
      # zero), and backward the one-hot's gradient through the softmax over all codes.
      zero = jnp.matmul(soft - sg(soft), codebook, precision=jax.lax.Precision.HIGHEST)
      backprop_codes = codes + zero.reshape(z.shape)
    else:
      indices, entropy = codebook_ops.search(
          flat, codebook, chunk_size=self.lookup_chunk_size, entropy_temperature=temperature)
      codes = jnp.take(codebook, indices, axis=0).reshape(z.shape)
      backprop_codes = codes

    encoder_term = jnp.mean((sg(codes) - z)**2)
    codebook_term = jnp.mean((backprop_codes - sg(z))**2)
    if self.legacy:
      commitment_loss, codebook_loss = encoder_term, self.beta * codebook_term
    else:
      commitment_loss, codebook_loss = self.beta * encoder_term, codebook_term
    if self.ema_decay > 0:
      codebook_loss = 0.0

    quantized = backprop_codes if self.index_backprop else z + sg(codes - z)
    if self.lookup_dim != self.embed_dim:
      quantized = self.project_out(quantized)
    tracker = self._update_state(sg(flat), indices) if update else None
    return make_output(quantized=quantized, indices=indices.reshape(z.shape[:-1]),
                       codebook_size=self.codebook_size, commitment_loss=commitment_loss,
                       codebook_loss=codebook_loss, entropy=entropy, usage_tracker=tracker)

  def _update_state(self, flat: jax.Array, indices: jax.Array):
    """EMA, data initialisation, restarts and usage counters after this step's assignment."""
    counts = codebook_ops.code_counts(indices, self.codebook_size)
    window_usage, dead_codes = self.window.update(counts)
    restarts = jnp.zeros((), jnp.int32)
    if not (self.ema_decay > 0 or self.uses_buffer):
      return window_usage, dead_codes, restarts
    key = self.make_rng('codebook')
    buffer_key, init_key, restart_key = jax.random.split(key, 3)
    codebook = self.embedding
    override = jnp.zeros((self.codebook_size,), bool)
    if self.ema_decay > 0:
      cluster_size, embed_sum, codebook = codebook_ops.ema_update(
          self.cluster_size.value, self.embed_sum.value, flat, indices,
          decay=self.ema_decay, epsilon=self.ema_epsilon)
      override = jnp.ones_like(override)
    if self.uses_buffer:
      buffer, count = codebook_ops.push_recent(self.buffer.value, self.buffer_count.value, flat,
                                               buffer_key)
      self.buffer.value, self.buffer_count.value = buffer, count
      full = count >= buffer.shape[0]
      initialize = full & ~self.initialized.value
      reseeded = jnp.zeros((self.codebook_size,), bool)
      if self.codebook_init != 'uniform':
        # lax.cond: the seeding (k-means++ is a K-step loop) runs once, not every step.
        codebook = jax.lax.cond(initialize, lambda: self._initial_codebook(buffer, init_key),
                                lambda: codebook)
        reseeded = reseeded | initialize
        self.initialized.value = self.initialized.value | initialize
      if self.restart_unused_steps > 0:
        unused = jnp.where(initialize, 0, codebook_ops.advance_unused_steps(
            self.unused_steps.value, counts))
        dead = full & (unused >= self.restart_unused_steps)
        codebook = codebook_ops.reseed(codebook, dead, buffer, restart_key)
        reseeded = reseeded | dead
        self.unused_steps.value = jnp.where(dead, 0, unused)
        restarts = jnp.sum(dead).astype(jnp.int32)
        self.restarts_total.value = self.restarts_total.value + restarts
      override = override | reseeded
      if self.ema_decay > 0:
        # Re-seeded codes restart their averages at one pseudo-count on the new value.
        cluster_size = jnp.where(reseeded, 1.0, cluster_size)
        embed_sum = jnp.where(reseeded[:, None], codebook, embed_sum)
    if self.ema_decay > 0:
      self.cluster_size.value, self.embed_sum.value = cluster_size, embed_sum
    self.next_codebook.value = codebook
    self.override.value = override
    return window_usage, dead_codes, restarts

  def _initial_codebook(self, buffer: jax.Array, key: jax.Array) -> jax.Array:
    if self.codebook_init == 'random_outputs':
      return codebook_ops.reseed(self.embedding, jnp.ones((self.codebook_size,), bool), buffer,
                                 key)
    return codebook_ops.kmeans_plus_plus(buffer, self.codebook_size, key,
                                         lloyd_iterations=self.kmeans_iterations,
                                         chunk_size=KMEANS_CHUNK_SIZE)

  def codebook(self) -> jax.Array:
    """The (K, lookup_dim) code vectors the lookup compares against (normalised with
    l2_normalize; SimVQ: the frozen basis through `codebook_transform`)."""
    codebook = self.embedding
    if self.simvq:
      codebook = self.codebook_transform(jax.lax.stop_gradient(codebook))
    return self._maybe_normalize(codebook)

  def lookup(self, indices: jax.Array) -> jax.Array:
    """Code vectors for integer `indices` of any shape: (..., embed_dim) float32."""
    codes = jnp.take(self.codebook(), indices, axis=0)
    if self.lookup_dim != self.embed_dim:
      codes = self.project_out(codes)
    return codes

  def _maybe_normalize(self, x: jax.Array) -> jax.Array:
    return l2_normalize(x) if self.l2_normalize else x


def apply_codebook_overrides(params: Any, codebook_state: Any) -> Any:
  """Copies the codebook rows a quantizer maintained itself (EMA, data init, restarts) into
  `params`, after the optimizer update. A no-op when no quantizer maintains its codebook."""
  state = (codebook_state or {}).get('quantizer', {})
  if 'next_codebook' not in state:
    return params
  quantizer = dict(params['quantizer'])
  quantizer['embedding'] = jnp.where(state['override'][:, None], state['next_codebook'],
                                     quantizer['embedding'])
  return {**params, 'quantizer': quantizer}
