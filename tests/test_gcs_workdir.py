"""The pod path's storage, end to end against a real GCS server: with `--workdir=gs://...` the
tokenizer trains, checkpoints, resumes, evaluates and loads, the prior trains on it and samples,
every artifact lands in the bucket and nothing of the run on local disk."""
import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request

import jax.numpy as jnp
import numpy as np

from tests.helpers import REPO, load_config
from vqgan_jax import load_tokenizer
from vqgan_jax.prior import sample, train as prior_train
from vqgan_jax.runtime import checkpoints, storage
from vqgan_jax.tokenizer import evaluate, train


def _objects(root: str) -> set[str]:
  """Every object under `root` as the GCS server lists it (its JSON API, not the code under
  test), relative to `root`, with each checkpoint's Orbax internals folded into `.../`."""
  bucket, _, prefix = root.removeprefix("gs://").partition("/")
  found, page = set(), ""
  while True:
    query = urllib.parse.urlencode({"prefix": f"{prefix}/", "pageToken": page})
    with urllib.request.urlopen(
        f"{os.environ['STORAGE_EMULATOR_HOST']}/storage/v1/b/{bucket}/o?{query}") as response:
      listing = json.load(response)
    for item in listing.get("items", []):
      relative = item["name"][len(prefix) + 1:]
      if relative.startswith("checkpoints/") and relative.count("/") > 1:
        relative = "/".join(relative.split("/")[:2]) + "/..."
      found.add(relative)
    page = listing.get("nextPageToken")
    if not page:
      return found


def _local_files(directory) -> list[str]:
  return sorted(os.path.relpath(os.path.join(d, f), directory)
                for d, _, files in os.walk(directory) for f in files)


def test_tokenizer_and_prior_with_gs_workdirs(gcs_bucket, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # A relative path written by mistake would land here.
  tokenizer_dir = storage.join(gcs_bucket, "e2e", "tokenizer")
  prior_dir = storage.join(gcs_bucket, "e2e", "prior")

  config = load_config("tiny", "test")
  config.eval_metrics = ("reconstruction", "codebook")
  config.num_train_steps = 2
  train.train_and_evaluate(config, tokenizer_dir)
  config.num_train_steps = 4  # Resume from the bucket's step-2 checkpoint.
  state = train.train_and_evaluate(config, tokenizer_dir)
  assert int(state.step) == 4
  assert checkpoints.Checkpointer(tokenizer_dir, every_steps=1, keep=3).all_steps() == [2, 4]

  results = evaluate.evaluate_checkpoint(config, tokenizer_dir)
  assert results["step"] == 4 and results["num_images"] == 226
  assert storage.read_json(storage.join(tokenizer_dir, "eval", "metrics_4.json"))["step"] == 4

  model, variables = load_tokenizer(tokenizer_dir)
  images = jnp.zeros((2, 16, 16, 3))
  codes = model.apply(variables, images, method="encode_to_indices")
  assert codes.shape == (2, 8, 8)

  prior_config = load_config("tiny_prior", "test")
  prior_config.tokenizer_workdir = tokenizer_dir
  prior_train.train_and_evaluate(prior_config, prior_dir)
  drawn = sample.sample_images(prior_config, prior_dir)
  assert drawn["num_samples"] == 3

  tokenizer_objects = _objects(tokenizer_dir)
  assert {"config.json", "checkpoints/2/...", "checkpoints/4/...",
          "images/reconstructions_00000002.png", "images/reconstructions_00000004.png",
          "eval/metrics_4.json", "eval/reconstructions_4.png"} <= tokenizer_objects
  assert any(p.startswith("events.out.tfevents.") for p in tokenizer_objects)
  assert any(p.startswith("eval/events.out.tfevents.") for p in tokenizer_objects)
  prior_objects = _objects(prior_dir)
  assert {"config.json", "checkpoints/4/...", "images/samples_00000004.png", "samples/grid.png",
          "samples/sample_00002.png", "samples/samples.json"} <= prior_objects
  assert any(p.startswith("events.out.tfevents.") for p in prior_objects)
  assert _local_files(tmp_path) == []


def test_eval_command_on_a_gs_workdir(gcs_bucket, tmp_path):
  """`python -m vqgan_jax.main --mode=eval --workdir=gs://...` from another process."""
  workdir = storage.join(gcs_bucket, "cli", "tokenizer")
  config = load_config("tiny", "test")
  config.num_train_steps = 2
  config.eval_every_steps = -1
  train.train_and_evaluate(config, workdir)
  run = subprocess.run(
      [sys.executable, "-m", "vqgan_jax.main", f"--config={REPO}/configs/tiny.py:test",
       f"--workdir={workdir}", "--mode=eval", "--config.eval_metrics=('codebook',)"],
      cwd=tmp_path, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
      timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  metrics = storage.read_json(storage.join(workdir, "eval", "metrics_2.json"))
  assert metrics["num_images"] == 226 and 0 < metrics["codebook_usage"] <= 1
  assert _local_files(tmp_path) == []
  np.testing.assert_equal(sorted(os.listdir(tmp_path)), [])
