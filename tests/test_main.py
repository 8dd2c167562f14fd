"""The command line: locked configs, default workdir."""
import os
import subprocess
import sys

from tests.helpers import REPO
from vqgan_jax import main


def test_unknown_config_key_is_rejected_before_anything_runs(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "vqgan_jax.main", "--config=configs/tiny.py:test",
       f"--workdir={tmp_path / 'run'}", "--config.num_train_stepz=3"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode != 0
  assert "num_train_stepz" in result.stderr
  assert not (tmp_path / "run").exists()


def test_default_workdir_is_named_after_the_config():
  assert main.default_workdir("configs/tiny.py:test") == os.path.join("workdirs", "tiny")
