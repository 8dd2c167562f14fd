"""Transformer prior: conditioning modes, causality, blockwise windowed attention, KV cache,
minGPT numerics (parity with taming's GPT) and bfloat16 compute."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqgan_jax.models import transformer
from vqgan_jax.models.transformer import Transformer

VOCAB, SEQ = 13, 12
TINY = dict(vocab_size=VOCAB, seq_len=SEQ, num_layers=1, num_heads=2, embed_dim=16)
MODES = {
    'unconditional': {},
    'class': dict(num_classes=4),
    'tokens': dict(cond_vocab_size=7, cond_len=5),
}


def _cond(model, batch, rng):
  if model.num_classes:
    return jnp.asarray(rng.integers(0, model.num_classes + 1, batch), jnp.int32)
  if model.cond_len:
    return jnp.asarray(rng.integers(0, model.cond_vocab_size, (batch, model.cond_len)), jnp.int32)
  return None


# Jitted once per model: eager op-by-op execution compiles every op and is slower here.
@functools.partial(jax.jit, static_argnames=('model', 'method', 'train'))
def _apply(model, params, *args, method=None, train=False, rngs=None):
  if method is not None:
    return model.apply({'params': params}, *args, method=method)
  return model.apply({'params': params}, *args, train=train, rngs=rngs)


def random_params(model, tokens, cond, seed=0):
  """Parameters of `model` drawn far from their init (N(0, 0.3); norm scales 1 + N(0, 0.3)).

  Drawn with numpy from `init`'s shapes: compiling JAX's RNG costs seconds per model here.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0), tokens, cond)['params']
  draw = lambda path, s: ((path[-1].key == 'scale') + 0.3 * rng.normal(size=s.shape)).astype(
      np.float32)
  return jax.tree.map(jnp.asarray, jax.tree_util.tree_map_with_path(draw, shapes))


def _setup(batch=2, seed=0, **overrides):
  model = Transformer(**{**TINY, **overrides})
  rng = np.random.default_rng(seed)
  tokens = jnp.asarray(rng.integers(0, VOCAB, (batch, SEQ)), jnp.int32)
  cond = _cond(model, batch, rng)
  return model, random_params(model, tokens, cond, seed), tokens, cond


@pytest.mark.parametrize('mode', MODES)
def test_shapes_dtypes_and_prefix_parameters(mode):
  model, params, tokens, cond = _setup(**MODES[mode])
  logits = _apply(model, params, tokens, cond)
  assert logits.shape == (2, SEQ, VOCAB) and logits.dtype == jnp.float32
  if mode == 'unconditional':  # Shorter sequences are prefixes of longer ones.
    short = _apply(model, params, tokens[:, :5], cond)
    assert short.shape == (2, 5, VOCAB)
    np.testing.assert_allclose(short, logits[:, :5], rtol=1e-5, atol=1e-6)
  prefix = {'unconditional': 1, 'class': 1, 'tokens': 5}[mode]
  assert model.prefix_len == prefix and params['pos_emb'].shape == (prefix + SEQ - 1, 16)
  if mode == 'unconditional':
    assert params['start_token'].shape == (16,)
  elif mode == 'class':
    assert params['class_emb']['embedding'].shape == (5, 16)  # 4 classes + the null label.
  else:
    assert params['cond_emb']['embedding'].shape == (7, 16)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize('mode,window', [('unconditional', 0), ('class', 0), ('tokens', 0),
                                         ('tokens', 3)])
def test_changing_token_t_changes_no_logit_at_or_before_t(mode, window):
  model, params, tokens, cond = _setup(attention_window=window, **MODES[mode])
  apply = lambda tokens: _apply(model, params, tokens, cond)
  base = apply(tokens)
  for t in (0, 4, SEQ - 1):
    changed = apply(tokens.at[:, t].set((tokens[:, t] + 1) % VOCAB))
    np.testing.assert_array_equal(changed[:, :t + 1], base[:, :t + 1])
    if t < SEQ - 1:
      assert np.abs(changed[:, t + 1] - base[:, t + 1]).max() > 1e-4


def test_conditioning_reaches_every_position():
  for mode in ('class', 'tokens'):
    model, params, tokens, cond = _setup(**MODES[mode])
    other = (cond + 1) % (model.num_classes + 1 if model.num_classes else model.cond_vocab_size)
    delta = np.abs(_apply(model, params, tokens, cond) -
                   _apply(model, params, tokens, other))
    assert delta.max(axis=(0, 2)).min() > 1e-5, mode


@pytest.mark.parametrize('n,window', [(12, 3), (13, 4), (7, 1), (9, 5), (6, 6), (5, 8)])
def test_blockwise_attention_equals_explicit_banded_mask(n, window):
  q, k, v = np.random.default_rng(n * 10 + window).normal(size=(3, 2, n, 3, 4)).astype(np.float32)
  blockwise = jax.jit(transformer.causal_attention, static_argnums=3)(q, k, v, window)
  i, j = np.indices((n, n))
  mask = (j <= i) & (i - j < window)
  np.testing.assert_array_equal(transformer.banded_causal_mask(n, window), mask)
  scores = np.einsum('bqhd,bkhd->bhqk', q, k) / 2.0 + np.where(mask, 0.0, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  explicit = np.einsum('bhqk,bkhd->bqhd', probs / probs.sum(-1, keepdims=True), v)
  np.testing.assert_allclose(blockwise, explicit, rtol=1e-5, atol=1e-6)


def test_windowed_model_equals_model_with_explicit_banded_mask(monkeypatch):
  window = 3
  model, params, tokens, cond = _setup(attention_window=window, **MODES['tokens'])
  windowed = _apply(model, params, tokens, cond)
  full = _apply(Transformer(**TINY, **MODES['tokens']), params, tokens, cond)

  def explicit(q, k, v, window, dropout):
    return transformer.masked_attention(q, k, v,
                                        transformer.banded_causal_mask(q.shape[1], window),
                                        dropout)

  monkeypatch.setattr(transformer, 'causal_attention', explicit)
  # A fresh trace (not _apply's cache) so the patched function is used.
  reference = jax.jit(lambda p: model.apply({'params': p}, tokens, cond))(params)
  np.testing.assert_allclose(windowed, reference, rtol=1e-5, atol=1e-6)
  assert np.abs(windowed - full).max() > 1e-3  # The window really cuts context.


def _avals(jaxpr):
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      yield var.aval
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (list, tuple)) else [param]):
        inner = getattr(sub, 'jaxpr', sub)
        if isinstance(inner, jax.extend.core.Jaxpr):
          yield from _avals(inner)


def test_windowed_attention_never_builds_an_n_by_n_array():
  n = 96
  model = Transformer(vocab_size=VOCAB, seq_len=n, num_layers=1, num_heads=2, embed_dim=8,
                      attention_window=8)
  tokens = jnp.zeros((1, n), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.key(0), tokens)['params']

  def big_axes(apply_model):
    jaxpr = jax.make_jaxpr(lambda p: apply_model.apply({'params': p}, tokens))(params).jaxpr
    return max(sum(d >= n - 1 for d in getattr(aval, 'shape', ())) for aval in _avals(jaxpr))

  assert big_axes(model) == 1
  assert big_axes(model.clone(attention_window=0)) == 2  # Full attention: (B, H, N, N) scores.


@pytest.mark.parametrize('mode,window', [('tokens', 0), ('unconditional', 4), ('tokens', 3)])
def test_cached_decoding_equals_full_forward(mode, window):
  # Two layers: each layer's keys and values must land in its own slice of the cache.
  model, params, tokens, cond = _setup(attention_window=window, num_layers=2, **MODES[mode])
  full = _apply(model, params, tokens, cond)
  prefill = lambda tokens, n: _apply(model, params, tokens, cond, n, method='prefill')
  step = lambda token, cache: _apply(model, params, token, cache, method='decode_step')
  logits, cache = prefill(tokens[:, :SEQ - 1], 0)
  assert cache.k.shape == (2, 2, window or model.max_len, 2, 8)
  decoded = [logits]
  for t in range(SEQ - 1):
    logits, cache = step(tokens[:, t], cache)
    decoded.append(logits)
  np.testing.assert_allclose(jnp.stack(decoded, axis=1), full, rtol=1e-5, atol=1e-5)
  assert int(cache.length) == model.max_len
  # A cache filled to token k by one prefill continues like the step-by-step one.
  logits, cache = prefill(tokens[:, :SEQ - 1], 5)
  np.testing.assert_allclose(logits, full[:, 5], rtol=1e-5, atol=1e-5)
  logits, _ = step(tokens[:, 5], cache)
  np.testing.assert_allclose(logits, full[:, 6], rtol=1e-5, atol=1e-5)


def test_position_table_limits_are_enforced():
  model, params, tokens, _ = _setup()
  with pytest.raises(ValueError, match='seq_len'):
    _apply(model, params, jnp.zeros((2, SEQ + 1), jnp.int32))
  logits, cache = _apply(model, params, tokens[:, :SEQ - 1], method='prefill')
  assert np.isfinite(logits).all() and int(cache.length) == model.max_len
  past, _ = _apply(model, params, tokens[:, 0], cache, method='decode_step')
  assert np.isnan(past).all()


def test_config_and_cond_errors_are_clear():
  tokens = jnp.zeros((2, SEQ), jnp.int32)
  with pytest.raises(ValueError, match='not both'):
    Transformer(**TINY, num_classes=3, cond_vocab_size=4, cond_len=2).init(
        jax.random.key(0), tokens, jnp.zeros(2, jnp.int32))
  with pytest.raises(ValueError, match=r'cond of shape \(2,\)'):
    Transformer(**TINY, num_classes=3).init(jax.random.key(0), tokens)
  with pytest.raises(ValueError, match='cond=None'):
    Transformer(**TINY).init(jax.random.key(0), tokens, jnp.zeros(2, jnp.int32))


def test_dropout_needs_train_and_an_rng():
  model, params, tokens, _ = _setup(dropout=0.5)
  eval_logits = _apply(model, params, tokens)
  # rbg keys: threefry's dropout masks take seconds to compile here.
  train = [_apply(model, params, tokens, train=True,
                  rngs={'dropout': jax.random.key(s, impl='rbg')}) for s in (0, 1)]
  np.testing.assert_array_equal(eval_logits, _apply(model, params, tokens))
  assert np.abs(train[0] - train[1]).max() > 1e-3
  assert np.abs(train[0] - eval_logits).max() > 1e-3


def test_mingpt_numerics_structure():
  model, params, _, _ = _setup(mingpt_numerics=True)
  assert set(params['head']) == {'kernel'}
  bound = model.bind({'params': params})
  assert bound.ln_f.epsilon == 1e-5 and not bound.ln_f.use_fast_variance
  assert bound.blocks[0].ln1.epsilon == 1e-5
  modern_model, modern, _, _ = _setup()
  assert set(modern['head']) == {'kernel', 'bias'}
  assert modern_model.bind({'params': modern}).ln_f.epsilon == 1e-6


def test_mingpt_numerics_equal_taming_gpt():
  torch = pytest.importorskip('torch')
  mingpt = pytest.importorskip('taming.modules.transformer.mingpt')
  model, _, tokens, _ = _setup(mingpt_numerics=True, num_layers=2)
  torch.manual_seed(0)
  gpt = mingpt.GPT(vocab_size=VOCAB + 1, block_size=model.max_len, n_layer=2, n_head=2,
                   n_embd=16).eval()
  with torch.no_grad():
    for name, tensor in gpt.named_parameters():  # Far from the defaults: a swap cannot pass.
      tensor.copy_(torch.randn_like(tensor) * 0.3 + (1.0 if name.endswith('ln1.weight') or
                                                     'ln2.weight' in name or
                                                     'ln_f.weight' in name else 0.0))
  sd = {k: v.numpy() for k, v in gpt.state_dict().items()}
  sos = VOCAB  # taming's start-of-sequence token id, an extra row of tok_emb.
  linear = lambda p: {'kernel': sd[p + '.weight'].T, 'bias': sd[p + '.bias']}
  norm = lambda p: {'scale': sd[p + '.weight'], 'bias': sd[p + '.bias']}
  params = {
      'tok_emb': {'embedding': sd['tok_emb.weight'][:VOCAB]},
      'start_token': sd['tok_emb.weight'][sos],
      'pos_emb': sd['pos_emb'][0],
      'ln_f': norm('ln_f'),
      'head': {'kernel': sd['head.weight'][:VOCAB].T},  # taming's head also scores sos.
  }
  for i in range(2):
    b = f'blocks.{i}'
    params[f'blocks_{i}'] = {
        'ln1': norm(b + '.ln1'), 'ln2': norm(b + '.ln2'),
        'attn': {n: linear(f'{b}.attn.{n}') for n in ('query', 'key', 'value', 'proj')},
        'mlp_fc': linear(b + '.mlp.0'), 'mlp_proj': linear(b + '.mlp.2'),
    }
  ours = _apply(model, params, tokens)
  idx = torch.from_numpy(np.concatenate([np.full((2, 1), sos), np.asarray(tokens)[:, :-1]], 1))
  with torch.no_grad():
    theirs = gpt(idx)[0].numpy()[..., :VOCAB]
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=2e-5)
  # The modern default (tanh GELU, eps 1e-6) is measurably different on the same weights.
  params['head']['bias'] = np.zeros(VOCAB, np.float32)
  modern = _apply(model.clone(mingpt_numerics=False), params, tokens)
  assert np.abs(modern - theirs).max() > 2e-4


def test_bfloat16_compute_returns_float32_logits_close_to_float32():
  model, params, tokens, cond = _setup(attention_window=3, **MODES['tokens'])
  f32 = _apply(model, params, tokens, cond)
  bf16_model = model.clone(dtype=jnp.bfloat16)
  bf16 = _apply(bf16_model, params, tokens, cond)
  assert bf16.dtype == jnp.float32
  scale = np.abs(f32).max()
  assert np.abs(bf16 - f32).max() < 0.03 * scale
  logits, cache = _apply(bf16_model, params, tokens[:, :SEQ - 1], cond, 3,
                                   method='prefill')
  assert cache.k.dtype == jnp.bfloat16 and logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, bf16[:, 3], atol=0.03 * scale)
