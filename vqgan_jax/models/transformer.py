"""GPT prior over tokenizer codes (minGPT, as in taming's `Net2NetTransformer`) with a KV cache.

Sequence layout. The network reads `prefix + image tokens`, where the prefix is one learned start
token (unconditional), one class embedding (class-conditional; label `num_classes` is the null
label for classifier-free guidance) or `cond_len` embedded conditioning tokens (image-conditional,
taming's cond stage). Let P be the prefix length: input position P-1+t predicts image token t, so
`__call__` feeds `prefix + tokens[:, :-1]` and the learned position table has
`max_len = P + seq_len - 1` rows, exactly the positions a length-seq_len sequence uses.

Windowed attention (`attention_window` W > 0): input position i attends to positions j with
i - W < j <= i (itself and the W-1 before it), prefix included: tokens more than W positions
after the prefix reach it only through the layers below. It is computed in blocks of W queries
that see their own block and the previous one, so cost and memory grow as N*W; no N x N array is
built. W >= N is full causal attention.

Decoding. `prefill` runs a chunk from position 0 and returns a `KVCache`; `decode_step` appends one
image token. The cache has `cache_len` slots: W slots (a rolling buffer, position p in slot p % W)
for windowed models, `max_len` otherwise. Positions come from the learned table, so no sequence may
pass `max_len` inputs: `__call__` and `prefill` raise, and `decode_step` past the table returns NaN
logits (it cannot raise inside jit). Larger images use `sampling.sample_grid`'s sliding window.

Numerics: parameters float32; embeddings, residual stream, LayerNorm statistics and the attention
softmax float32; matmuls and the KV cache in `dtype`; logits returned float32.
`mingpt_numerics=True` is minGPT exactly (LayerNorm eps 1e-5 with two-pass variance, erf GELU,
head without bias), so taming's GPT weights load by renaming and transposing (taming embeds class
labels, cond tokens and its start token in `tok_emb`: copy those rows into `class_emb`,
`cond_emb`, `start_token`; keep the first max_len rows of `pos_emb`). `False` uses LayerNorm eps
1e-6, tanh-approximate GELU (cheaper on TPU) and a head bias (learns the code marginal directly).
Weights and embeddings start at N(0, 0.02) as in minGPT (positions too, which minGPT zeroes).
"""
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

_init = nn.initializers.normal(0.02)  # minGPT's init for Linear and Embedding weights.
_NEG = float(jnp.finfo(jnp.float32).min)


@struct.dataclass
class KVCache:
  """Keys and values of every layer for the committed input positions.

  Attributes:
    k, v: (num_layers, B, cache_len, num_heads, head_dim) in the compute dtype.
    positions: (cache_len,) int32 input position held by each slot, -1 for an empty slot.
    length: () int32 number of committed input positions (the next position to write).
  """
  k: jax.Array
  v: jax.Array
  positions: jax.Array
  length: jax.Array


def banded_causal_mask(n: int, window: int = 0) -> jax.Array:
  """(n, n) bool: query i sees key j iff j <= i and (window == 0 or i - j < window)."""
  i, j = jnp.arange(n)[:, None], jnp.arange(n)[None, :]
  mask = j <= i
  return mask & (i - j < window) if window > 0 else mask


def masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                     dropout: Callable[[jax.Array], jax.Array] = lambda p: p) -> jax.Array:
  """Softmax attention, (B, N, H, D) layout, with a mask broadcastable to (B, H, Nq, Nk)."""
  scale = q.shape[-1]**-0.5
  scores = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32) * scale
  probs = dropout(jax.nn.softmax(jnp.where(mask, scores, _NEG), axis=-1))
  return jnp.einsum('bhqk,bkhd->bqhd', probs.astype(v.dtype), v)


def blockwise_banded_attention(q: jax.Array, k: jax.Array, v: jax.Array, window: int,
                               dropout: Callable[[jax.Array], jax.Array] = lambda p: p
                              ) -> jax.Array:
  """Banded causal attention in blocks of `window` queries over their block and the previous one.

  Equals `masked_attention` with `banded_causal_mask(n, window)`; the largest score array is
  (B, N/W, H, W, 2W), so cost and memory grow as N*W.
  """
  b, n, h, d = q.shape
  num_blocks = -(-n // window)
  pad = num_blocks * window - n

  def blocks(x):
    return jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(b, num_blocks, window, h, d)

  def with_previous_block(x):
    previous = jnp.pad(x[:, :-1], ((0, 0), (1, 0), (0, 0), (0, 0), (0, 0)))
    return jnp.concatenate([previous, x], axis=2)  # (B, blocks, 2W, H, D)

  qb = blocks(q)
  kb, vb = with_previous_block(blocks(k)), with_previous_block(blocks(v))
  # Query a of block n is position nW+a; key c is position (n-1)W+c, so i - j = W + a - c.
  a, c = jnp.arange(window)[:, None], jnp.arange(2 * window)[None, :]
  band = (c > a) & (c <= a + window)
  first_block = jnp.arange(num_blocks)[:, None, None] == 0
  mask = band & ~(first_block & (c < window))  # Block 0 has no previous block.
  scale = d**-0.5
  scores = jnp.einsum('bnqhd,bnkhd->bnhqk', qb, kb, preferred_element_type=jnp.float32) * scale
  probs = dropout(jax.nn.softmax(jnp.where(mask[None, :, None], scores, _NEG), axis=-1))
  out = jnp.einsum('bnhqk,bnkhd->bnqhd', probs.astype(vb.dtype), vb)
  return out.reshape(b, num_blocks * window, h, d)[:, :n]


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, window: int = 0,
                     dropout: Callable[[jax.Array], jax.Array] = lambda p: p) -> jax.Array:
  """Causal self-attention, banded to `window` (0: full); blockwise when the band is narrower."""
  n = q.shape[1]
  if 0 < window < n:
    return blockwise_banded_attention(q, k, v, window, dropout)
  return masked_attention(q, k, v, banded_causal_mask(n), dropout)


def _layer_norm(mingpt: bool, dtype: Any) -> nn.LayerNorm:
  # minGPT: torch's eps and two-pass variance; statistics are float32 either way.
  return nn.LayerNorm(epsilon=1e-5 if mingpt else 1e-6, use_fast_variance=not mingpt,
                      dtype=dtype, param_dtype=jnp.float32)


def _dense(features: int, dtype: Any, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=_init)


class CausalSelfAttention(nn.Module):
  """minGPT's attention: separate query/key/value Linear layers and an output `proj`."""
  embed_dim: int
  num_heads: int
  window: int = 0
  dropout: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    self.query = _dense(self.embed_dim, self.dtype)
    self.key = _dense(self.embed_dim, self.dtype)
    self.value = _dense(self.embed_dim, self.dtype)
    self.proj = _dense(self.embed_dim, self.dtype)
    self.attn_drop = nn.Dropout(self.dropout)

  def _qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    b, n, _ = x.shape
    split = lambda y: y.reshape(b, n, self.num_heads, self.embed_dim // self.num_heads)
    return split(self.query(x)), split(self.key(x)), split(self.value(x))

  def __call__(self, x: jax.Array, train: bool = False):
    """Returns the output and this layer's (keys, values), each (B, N, H, D)."""
    q, k, v = self._qkv(x)
    out = causal_attention(q, k, v, self.window,
                           lambda p: self.attn_drop(p, deterministic=not train))
    return self.proj(out.reshape(x.shape)), (k, v)

  def decode(self, x: jax.Array, cache: KVCache, layer: int, slot: jax.Array):
    """One query at input position `cache.length`, written to `slot` of layer `layer` first.

    `cache.positions` must already hold the new position; returns the output and (k, v) stacks.
    """
    q, k, v = self._qkv(x)
    write = lambda stack, new: jax.lax.dynamic_update_slice(
        stack, new[None].astype(stack.dtype), (layer, 0, slot, 0, 0))
    k_all, v_all = write(cache.k, k), write(cache.v, v)
    visible = cache.positions >= 0
    if self.window > 0:  # Redundant with a W-slot rolling buffer; states the rule.
      visible &= cache.length - cache.positions < self.window
    out = masked_attention(q, k_all[layer], v_all[layer], visible)
    return self.proj(out.reshape(x.shape)), k_all, v_all


class Block(nn.Module):
  """Pre-LN block: x + attn(ln1(x)), then x + mlp(ln2(x)), dropout after each branch."""
  embed_dim: int
  num_heads: int
  mlp_ratio: int = 4
  window: int = 0
  dropout: float = 0.0
  mingpt_numerics: bool = False
  dtype: Any = jnp.float32

  def setup(self):
    self.ln1 = _layer_norm(self.mingpt_numerics, self.dtype)
    self.attn = CausalSelfAttention(self.embed_dim, self.num_heads, self.window, self.dropout,
                                    self.dtype)
    self.ln2 = _layer_norm(self.mingpt_numerics, self.dtype)
    self.mlp_fc = _dense(self.mlp_ratio * self.embed_dim, self.dtype)
    self.mlp_proj = _dense(self.embed_dim, self.dtype)
    self.resid_drop = nn.Dropout(self.dropout)

  def _mlp(self, x: jax.Array, train: bool) -> jax.Array:
    h = nn.gelu(self.mlp_fc(x), approximate=not self.mingpt_numerics)
    return self.resid_drop(self.mlp_proj(h), deterministic=not train)

  def __call__(self, x: jax.Array, train: bool = False):
    a, kv = self.attn(self.ln1(x), train)
    x = x + self.resid_drop(a, deterministic=not train)
    return x + self._mlp(self.ln2(x), train), kv

  def decode(self, x: jax.Array, cache: KVCache, layer: int, slot: jax.Array):
    a, k_all, v_all = self.attn.decode(self.ln1(x), cache, layer, slot)
    x = x + a
    return x + self._mlp(self.ln2(x), False), k_all, v_all


class Transformer(nn.Module):
  """Decoder-only GPT over code indices; see the module docstring for layout and decoding.

  Conditioning: `num_classes` > 0 (class labels, plus the null label `num_classes`),
  `cond_vocab_size`/`cond_len` > 0 (conditioning tokens; `cond_null_token` >= 0 names the token
  whose all-`cond_len` row is the null condition, e.g. the empty caption), or neither.
  """
  vocab_size: int
  seq_len: int
  num_classes: int = 0
  cond_vocab_size: int = 0
  cond_len: int = 0
  cond_null_token: int = -1
  num_layers: int = 2
  num_heads: int = 4
  embed_dim: int = 128
  mlp_ratio: int = 4
  dropout: float = 0.0
  attention_window: int = 0
  mingpt_numerics: bool = False
  dtype: Any = jnp.float32

  @property
  def has_null_condition(self) -> bool:
    """Whether classifier-free guidance has a null condition (labels or a null token)."""
    return self.num_classes > 0 or self.cond_null_token >= 0

  def null_condition(self, cond: jax.Array) -> jax.Array:
    """The null condition shaped like `cond` (the null label or all-null tokens)."""
    null = self.num_classes if self.num_classes > 0 else self.cond_null_token
    return jnp.full_like(cond, null)

  @property
  def prefix_len(self) -> int:
    """Inputs before the first image token: cond_len, else 1 (start token or class)."""
    return self.cond_len if self.cond_len > 0 else 1

  @property
  def max_len(self) -> int:
    """Rows of the position table: the inputs of one full sequence, prefix + seq_len - 1."""
    return self.prefix_len + self.seq_len - 1

  @property
  def cache_len(self) -> int:
    """KV cache slots: the window for windowed models (rolling buffer), else max_len."""
    return self.attention_window if 0 < self.attention_window < self.max_len else self.max_len

  def setup(self):
    self._check_config()
    embed = lambda rows: nn.Embed(rows, self.embed_dim, dtype=jnp.float32,
                                  param_dtype=jnp.float32, embedding_init=_init)
    self.tok_emb = embed(self.vocab_size)
    if self.num_classes > 0:
      self.class_emb = embed(self.num_classes + 1)
    elif self.cond_len > 0:
      self.cond_emb = embed(self.cond_vocab_size)
    else:
      self.start_token = self.param('start_token', _init, (self.embed_dim,), jnp.float32)
    self.pos_emb = self.param('pos_emb', _init, (self.max_len, self.embed_dim), jnp.float32)
    self.drop = nn.Dropout(self.dropout)
    self.blocks = [
        Block(self.embed_dim, self.num_heads, self.mlp_ratio, self.attention_window, self.dropout,
              self.mingpt_numerics, self.dtype) for _ in range(self.num_layers)
    ]
    self.ln_f = _layer_norm(self.mingpt_numerics, self.dtype)
    self.head = _dense(self.vocab_size, self.dtype, use_bias=not self.mingpt_numerics)

  def __call__(self, tokens: jax.Array, cond: jax.Array | None = None,
               train: bool = False) -> jax.Array:
    """Logits (B, L, vocab_size) float32; logits[:, t] predicts tokens[:, t] from tokens[:, :t]."""
    if tokens.ndim != 2 or not 1 <= tokens.shape[1] <= self.seq_len:
      raise ValueError(f'Transformer expects tokens of shape (B, L) with 1 <= L <= seq_len='
                       f'{self.seq_len}, got {tokens.shape}.')
    x = self._embed(tokens[:, :-1], cond, train)
    for block in self.blocks:
      x, _ = block(x, train)
    return self._logits(x[:, self.prefix_len - 1:])

  def prefill(self, tokens: jax.Array, cond: jax.Array | None = None,
              num_tokens: jax.Array | int | None = None) -> tuple[jax.Array, KVCache]:
    """Runs prefix + tokens (B, C) from position 0 and caches prefix + tokens[:, :num_tokens].

    `num_tokens` may be traced (default C); later tokens only pad the static shape. Returns the
    float32 logits (B, vocab_size) of image token `num_tokens` and a fresh `KVCache`.
    """
    if tokens.ndim != 2 or tokens.shape[1] > self.seq_len - 1:
      raise ValueError(f'prefill expects tokens of shape (B, C) with C <= seq_len - 1 = '
                       f'{self.seq_len - 1}, got {tokens.shape}.')
    num_inputs = self.prefix_len + (tokens.shape[1] if num_tokens is None else num_tokens)
    x = self._embed(tokens, cond, train=False)
    keys, values = [], []
    for block in self.blocks:
      x, (k, v) = block(x)
      keys.append(k)
      values.append(v)
    last = jax.lax.dynamic_index_in_dim(x, num_inputs - 1, axis=1, keepdims=False)
    cache = _commit(jnp.stack(keys), jnp.stack(values), num_inputs, self.cache_len)
    return self._logits(last), cache

  def decode_step(self, token: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Feeds image token (B,) at input position `cache.length`; returns next-token logits (B, V).

    Past the position table (max_len inputs) the logits are NaN.
    """
    position = cache.length
    slot = position % self.cache_len
    pos_emb = jnp.take(self.pos_emb, position, axis=0, mode='fill', fill_value=jnp.nan)
    x = (self.tok_emb(token) + pos_emb)[:, None]
    positions = jax.lax.dynamic_update_slice(cache.positions, position[None], (slot,))
    cache = cache.replace(positions=positions)
    for layer, block in enumerate(self.blocks):
      x, k_all, v_all = block.decode(x, cache, layer, slot)
      cache = cache.replace(k=k_all, v=v_all)
    return self._logits(x[:, 0]), cache.replace(length=position + 1)

  def _check_config(self):
    problems = []
    if self.num_classes < 0 or self.cond_len < 0 or self.cond_vocab_size < 0:
      problems.append('num_classes, cond_len and cond_vocab_size must be >= 0')
    if self.num_classes > 0 and self.cond_len > 0:
      problems.append('choose class conditioning (num_classes) or token conditioning '
                      '(cond_len), not both')
    if (self.cond_len > 0) != (self.cond_vocab_size > 0):
      problems.append('cond_len and cond_vocab_size must both be > 0 for token conditioning')
    if self.cond_null_token >= max(self.cond_vocab_size, 1) or (
        self.cond_null_token >= 0 and self.cond_len == 0):
      problems.append('cond_null_token must be a token id of the conditioning vocabulary')
    if self.embed_dim % self.num_heads:
      problems.append(f'embed_dim {self.embed_dim} is not divisible by num_heads '
                      f'{self.num_heads}')
    if self.attention_window < 0 or self.seq_len < 1 or self.vocab_size < 1:
      problems.append('attention_window must be >= 0, seq_len and vocab_size >= 1')
    if problems:
      raise ValueError('Invalid Transformer config: ' + '; '.join(problems) + '.')

  def _prefix(self, cond: jax.Array | None, batch_size: int) -> jax.Array:
    """(B, prefix_len, D) prefix embeddings."""
    if self.num_classes > 0:
      if cond is None or cond.shape != (batch_size,):
        raise ValueError(f'A class-conditional Transformer expects cond of shape ({batch_size},) '
                         f'(labels, {self.num_classes} = null), got '
                         f'{None if cond is None else cond.shape}.')
      return self.class_emb(cond)[:, None]
    if self.cond_len > 0:
      if cond is None or cond.shape != (batch_size, self.cond_len):
        raise ValueError(f'A token-conditional Transformer expects cond of shape ({batch_size}, '
                         f'{self.cond_len}), got {None if cond is None else cond.shape}.')
      return self.cond_emb(cond)
    if cond is not None:
      raise ValueError('An unconditional Transformer takes cond=None.')
    return jnp.broadcast_to(self.start_token, (batch_size, 1, self.embed_dim))

  def _embed(self, tokens: jax.Array, cond: jax.Array | None, train: bool) -> jax.Array:
    x = jnp.concatenate([self._prefix(cond, tokens.shape[0]), self.tok_emb(tokens)], axis=1)
    x = x + self.pos_emb[:x.shape[1]]
    return self.drop(x, deterministic=not train)

  def _logits(self, x: jax.Array) -> jax.Array:
    return self.head(self.ln_f(x)).astype(jnp.float32)


def _commit(keys: jax.Array, values: jax.Array, num_inputs: jax.Array | int,
            cache_len: int) -> KVCache:
  """A cache holding inputs [0, num_inputs) of (layers, B, N, H, D) keys/values.

  Slot s holds the latest committed position p with p % cache_len == s (a rolling buffer when
  cache_len < N); slots no such position reaches are empty.
  """
  last = num_inputs - 1
  slots = jnp.arange(cache_len)
  positions = last - jnp.mod(last - slots, cache_len)
  filled = positions >= 0
  source = jnp.clip(positions, 0, keys.shape[2] - 1)
  take = lambda x: jnp.where(filled[:, None, None], jnp.take(x, source, axis=2), 0).astype(x.dtype)
  return KVCache(k=take(keys), v=take(values), positions=jnp.where(filled, positions, -1),
                 length=jnp.asarray(num_inputs, jnp.int32))
