"""Test setup: 8 simulated CPU devices so sharding is exercised on one machine."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # pylint: disable=wrong-import-position

from tests.helpers import load_config  # pylint: disable=wrong-import-position


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(tmp_path_factory):
  """Identical computations compiled by several tests are compiled once."""
  import jax
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
  """(config, workdir) of `configs/tiny.py:test` trained for 2 steps; shared by the eval tests.

  Tests that change the config take `config.copy_and_resolve_references()` first.
  """
  from vqgan_jax.tokenizer import train  # pylint: disable=g-import-not-at-top
  config = load_config("tiny", "test")
  config.num_train_steps = 2
  workdir = tmp_path_factory.mktemp("trained") / "tiny"
  train.train_and_evaluate(config, str(workdir))
  return config, workdir
