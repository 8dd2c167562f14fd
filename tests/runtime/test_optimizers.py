"""Learning-rate schedules from `config.optimizer`."""
import ml_collections
import numpy as np
import optax

from vqgan_jax.runtime.optimizers import learning_rate_schedule


def _opt(**fields):
  return ml_collections.ConfigDict(dict(dict(warmup_steps=0, schedule="constant"), **fields))


def test_cosine_without_warmup_is_optax_warmup_cosine_with_zero_warmup():
  schedule = learning_rate_schedule(1e-3, _opt(schedule="cosine"), 100)
  reference = optax.warmup_cosine_decay_schedule(0.0, 1e-3, 0, 100, end_value=0.0)
  steps = np.arange(0, 101)
  np.testing.assert_allclose([schedule(s) for s in steps], [reference(s) for s in steps],
                             rtol=1e-6, atol=1e-12)
  assert np.isclose(float(schedule(0)), 1e-3) and float(schedule(100)) == 0.0


def test_warmup_then_cosine_and_constant():
  cosine = learning_rate_schedule(1e-3, _opt(schedule="cosine", warmup_steps=10), 100)
  assert float(cosine(0)) == 0.0 and np.isclose(float(cosine(10)), 1e-3)
  assert np.isclose(float(cosine(55)), 0.5e-3) and np.isclose(float(cosine(100)), 0.0)
  constant = learning_rate_schedule(1e-3, _opt(warmup_steps=10), 100)
  assert np.isclose(float(constant(5)), 0.5e-3) and float(constant(1000)) == np.float32(1e-3)
