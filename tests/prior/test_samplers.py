"""Samplers: KV cache vs recomputation, filters, guidance, sliding-window grids, completion."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.models.test_transformer import random_params
from vqgan_jax.prior import samplers
from vqgan_jax.models.transformer import Transformer

B, VOCAB, H, W = 2, 16, 4, 4
TINY = dict(vocab_size=VOCAB, seq_len=H * W, num_layers=1, num_heads=2, embed_dim=16)
LABELS = np.array([1, 3], np.int32)  # 3 is the null label of a 3-class model.


@functools.lru_cache(maxsize=None)
def _prior(**overrides):
  model = Transformer(**TINY, **overrides)
  cond = None
  if model.num_classes:
    cond = jnp.asarray(LABELS)
  elif model.cond_len:
    cond = jnp.zeros((B, model.cond_len), jnp.int32)
  return model, random_params(model, jnp.zeros((B, H * W), jnp.int32), cond, seed=1)


@functools.partial(jax.jit, static_argnums=0)
def _logits(model, params, tokens, cond):
  return model.apply({'params': params}, tokens, cond)


@pytest.mark.parametrize('overrides', [{}, {'num_classes': 3}], ids=['unconditional', 'class'])
def test_greedy_with_kv_cache_equals_naive_recomputation(overrides):
  model, params = _prior(**overrides)
  cond = LABELS if model.num_classes else None
  run = functools.partial(samplers.sample, model, params, jax.random.key(0), batch_size=B,
                          cond=cond, temperature=0.0)
  cached, naive = run(use_cache=True), run(use_cache=False)
  assert cached.shape == (B, H * W) and cached.dtype == jnp.int32
  np.testing.assert_array_equal(cached, naive)
  # Greedy means: every token is the argmax of the model given the tokens before it.
  np.testing.assert_array_equal(cached, np.argmax(_logits(model, params, cached, cond), -1))


def test_windowed_rolling_cache_sampler_equals_naive_recomputation():
  model, params = _prior(attention_window=5)
  assert model.cache_len == 5
  # Seeded with both filters: every draw sees the same filtered logits in both paths.
  run = functools.partial(samplers.sample, model, params, jax.random.key(3), batch_size=B,
                          temperature=1.0, top_k=8, top_p=0.9)
  np.testing.assert_array_equal(run(use_cache=True), run(use_cache=False))


def test_top_k_keeps_exactly_the_k_largest():
  logits = jnp.array([[1.0, 5.0, 3.0, 4.0, 2.0], [9.0, -1.0, 0.0, 8.0, 7.0]])
  out = np.asarray(samplers.filter_logits(logits, top_k=2))
  np.testing.assert_array_equal(np.isfinite(out), [[0, 1, 0, 1, 0], [1, 0, 0, 1, 0]])
  np.testing.assert_array_equal(out[np.isfinite(out)], [5.0, 4.0, 9.0, 8.0])
  np.testing.assert_array_equal(samplers.filter_logits(logits), logits)
  assert np.isneginf(out).sum() == 6


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
  probs = np.array([[0.1, 0.5, 0.15, 0.25]], np.float32)
  logits = jnp.log(probs)
  kept = lambda **kw: np.isfinite(samplers.filter_logits(logits, **kw))[0].tolist()
  assert kept(top_p=0.4) == [False, True, False, False]  # 0.5 >= 0.4 already.
  assert kept(top_p=0.6) == [False, True, False, True]  # 0.5 + 0.25 >= 0.6.
  assert kept(top_p=0.8) == [False, True, True, True]  # 0.9 >= 0.8.
  assert kept(top_p=0.95) == [True, True, True, True]
  assert kept(top_p=1e-6) == [False, True, False, False]  # Never empty.
  assert kept(top_k=3, top_p=0.6) == [False, True, False, True]
  kept_values = samplers.filter_logits(logits, top_p=0.6)[0]
  np.testing.assert_array_equal(kept_values[jnp.array([1, 3])], logits[0, jnp.array([1, 3])])


def test_guidance_scale_limits_are_exact():
  rng = np.random.default_rng(0)
  cond, uncond = rng.normal(size=(2, 3, VOCAB)).astype(np.float32) * 5
  np.testing.assert_array_equal(samplers.guide_logits(cond, uncond, 0.0), uncond)
  np.testing.assert_array_equal(samplers.guide_logits(cond, uncond, 1.0), cond)
  np.testing.assert_allclose(samplers.guide_logits(cond, uncond, 3.0),
                             uncond + 3.0 * (cond - uncond), rtol=1e-5, atol=1e-5)


def test_guidance_scale_zero_samples_the_null_label():
  model, params = _prior(num_classes=3)
  run = functools.partial(samplers.sample, model, params, jax.random.key(0), batch_size=B,
                          temperature=0.0)
  null = np.full(B, 3, np.int32)
  np.testing.assert_array_equal(run(cond=LABELS, guidance_scale=0.0), run(cond=null))


@pytest.mark.parametrize('knobs', [dict(temperature=0.0), dict(temperature=1.0, top_k=8)],
                         ids=['greedy', 'seeded'])
def test_sample_grid_on_the_training_grid_equals_sample(knobs):
  model, params = _prior()
  rng = jax.random.key(7)
  grid = samplers.sample_grid(model, params, rng, grid_shape=(H, W), train_grid=(H, W),
                              batch_size=B, **knobs)
  assert grid.shape == (B, H, W) and grid.dtype == jnp.int32
  np.testing.assert_array_equal(grid.reshape(B, H * W),
                                samplers.sample(model, params, rng, batch_size=B, **knobs))


def _sliding_window_reference(model, params, grid_shape, cond, known_tokens, known_mask):
  """taming's sliding-window sampler, greedy: re-runs the whole window for every token."""
  (grid_h, grid_w), (h, w) = grid_shape, (H, W)
  grid = np.where(known_mask, known_tokens, 0)
  for i in range(grid_h):
    for j in range(grid_w):
      top, left = min(max(i - h // 2, 0), grid_h - h), min(max(j - w // 2, 0), grid_w - w)
      patch = grid[:, top:top + h, left:left + w].reshape(-1, h * w)
      window_cond = cond
      if cond is not None and cond.ndim == 3:
        window_cond = cond[:, top:top + h, left:left + w].reshape(-1, h * w)
      logits = _logits(model, params, jnp.asarray(patch), window_cond)
      best = np.argmax(logits[:, (i - top) * w + (j - left)], axis=-1)
      grid[:, i, j] = np.where(known_mask[:, i, j], grid[:, i, j], best)
  return grid


@pytest.mark.parametrize('overrides', [{}, {'cond_vocab_size': 5, 'cond_len': H * W}],
                         ids=['unconditional', 'conditioning-grid'])
def test_sample_grid_larger_than_training_grid_equals_sliding_window_reference(overrides):
  model, params = _prior(**overrides)
  grid_shape = (6, 7)
  rng = np.random.default_rng(0)
  known_tokens = rng.integers(0, VOCAB, (B, *grid_shape)).astype(np.int32)
  known_mask = rng.random((B, *grid_shape)) < 0.2
  cond = rng.integers(0, 5, (B, *grid_shape)).astype(np.int32) if model.cond_len else None
  run = functools.partial(samplers.sample_grid, model, params, jax.random.key(0),
                          grid_shape=grid_shape, train_grid=(H, W), cond=cond,
                          known_tokens=known_tokens, known_mask=known_mask, temperature=0.0)
  grid = run()
  assert grid.shape == (B, *grid_shape) and grid.dtype == jnp.int32
  assert grid.min() >= 0 and grid.max() < VOCAB
  np.testing.assert_array_equal(grid, run())
  np.testing.assert_array_equal(np.asarray(grid)[known_mask], known_tokens[known_mask])
  np.testing.assert_array_equal(
      grid, _sliding_window_reference(model, params, grid_shape, cond, known_tokens, known_mask))


def test_complete_keeps_unmasked_tokens_and_resamples_greedily_in_context():
  model, params = _prior()
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, VOCAB, (B, H * W)).astype(np.int32)
  mask = np.zeros((B, H * W), bool)
  mask[0, [5, 6, 11]] = True
  mask[1, 9:] = True
  run = functools.partial(samplers.complete, model, params, jax.random.key(0), temperature=0.0)
  out = np.asarray(run(tokens, mask))
  np.testing.assert_array_equal(out[~mask], tokens[~mask])
  np.testing.assert_array_equal(out[mask], np.argmax(_logits(model, params, out, None), -1)[mask])
  np.testing.assert_array_equal(run(tokens, np.zeros_like(mask)), tokens)


def test_complete_with_everything_masked_equals_sample():
  model, params = _prior()
  rng = jax.random.key(7)
  knobs = dict(temperature=1.0, top_k=8)
  garbage = np.full((B, H * W), -5, np.int32)  # Masked entries are never read.
  np.testing.assert_array_equal(
      samplers.complete(model, params, rng, garbage, np.ones((B, H * W), bool), **knobs),
      samplers.sample(model, params, rng, batch_size=B, **knobs))


def test_user_errors_are_reported_before_compiling():
  model, params = _prior()
  class_model, class_params = _prior(num_classes=3)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match='guidance'):
    samplers.sample(model, params, key, batch_size=B, guidance_scale=2.0)
  with pytest.raises(ValueError, match=r'cond of shape \(2,\)'):
    samplers.sample(class_model, class_params, key, batch_size=B)
  with pytest.raises(ValueError, match=r'\[0, 4\)'):
    samplers.sample(class_model, class_params, key, batch_size=B, cond=np.array([0, 4]))
  with pytest.raises(ValueError, match='num_tokens'):
    samplers.sample(model, params, key, batch_size=B, num_tokens=H * W + 1)
  with pytest.raises(ValueError, match='train_grid'):
    samplers.sample_grid(model, params, key, grid_shape=(8, 8), train_grid=(4, 3), batch_size=B)
  with pytest.raises(ValueError, match='top_p'):
    samplers.sample(model, params, key, batch_size=B, top_p=0.0)


def _row_keys(indices):
  return jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(5), jnp.asarray(indices))


def test_per_row_keys_make_each_row_independent_of_its_batch():
  model, params = _prior(num_classes=3)
  labels = np.array([0, 1, 2, 0, 1], np.int32)
  knobs = dict(temperature=1.0, top_k=8, top_p=0.9, guidance_scale=1.5)
  five = samplers.sample(model, params, _row_keys(range(5)), batch_size=5, cond=labels, **knobs)
  rows = [3, 1]
  two = samplers.sample(model, params, _row_keys(rows), batch_size=2, cond=labels[rows], **knobs)
  np.testing.assert_array_equal(np.asarray(five)[rows], two)
  assert len({tuple(r) for r in np.asarray(five).tolist()}) > 1  # Rows do differ.
  # Raw PRNGKey data works the same; the grid and completion samplers agree with `sample`.
  raw = jax.random.key_data(_row_keys(rows))
  np.testing.assert_array_equal(
      samplers.sample(model, params, raw, batch_size=2, cond=labels[rows], **knobs), two)
  grid = samplers.sample_grid(model, params, _row_keys(rows), grid_shape=(H, W),
                              train_grid=(H, W), cond=labels[rows], **knobs)
  np.testing.assert_array_equal(grid.reshape(2, H * W), two)
  masked = samplers.complete(model, params, _row_keys(rows), np.zeros((2, H * W), np.int32),
                             np.ones((2, H * W), bool), cond=labels[rows], **knobs)
  np.testing.assert_array_equal(masked, two)
  with pytest.raises(ValueError, match='one key per row'):
    samplers.sample(model, params, _row_keys(range(3)), batch_size=2, cond=labels[:2], **knobs)
