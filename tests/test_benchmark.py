"""The benchmark runs on the tiny configs and reports every field (no timing assertions)."""
import json
import subprocess
import sys

import pytest

from tests.helpers import REPO

KEYS = ("train_step_seconds", "train_images_per_second", "train_step_flops",
        "achieved_flops_per_second", "peak_matmul_flops_per_second", "fraction_of_peak",
        "encode_images_per_second", "decode_images_per_second", "vq_lookup",
        "sampling_tokens_per_second_kv", "sampling_tokens_per_second_naive", "device",
        "batch_size", "image_size", "model", "train_step_temp_bytes", "train_step_flops_executed",
        "input_images_per_second_per_core", "train_images_per_second_per_device",
        "prior_step_seconds_from_images", "prior_step_seconds_from_codes",
        "compress_images_per_second", "decompress_images_per_second",
        "compress_megapixels_per_second", "decompress_megapixels_per_second")
MODEL_KEYS = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels", "embed_dim",
              "codebook_size", "disc_layers")


def test_benchmark_writes_every_field(tmp_path):
  out = tmp_path / "bench.json"
  subprocess.run(
      [sys.executable, "-m", "vqgan_jax.benchmark", "--config=configs/tiny.py:test",
       "--prior_config=configs/tiny_prior.py:test", f"--out={out}", "--warmup=1", "--runs=2",
       "--vq_sizes=64,256", "--vq_tokens=512", "--vq_chunk=128", "--matmul_size=256",
       "--input_images=8"],
      cwd=REPO, check=True, timeout=600, capture_output=True)
  results = json.loads(out.read_text())
  # conftest's 8 CPU devices: the step ran sharded and timed more than one call.
  assert results["device"].startswith("8 x"), results["device"]
  for key in KEYS:
    assert key in results, key
  assert set(MODEL_KEYS) <= set(results["model"])
  assert [(r["codebook_size"], r["lookup_chunk_size"]) for r in results["vq_lookup"]] == [
      (64, 0), (256, 0), (64, 128), (256, 128)]
  for key in KEYS:
    if key not in ("vq_lookup", "device", "model", "image_size"):
      assert isinstance(results[key], (int, float)), key  # Measured values, never asserted on.
  assert results["train_step_flops"] > 1e6  # XLA's FLOP count of the step, not a timing.
  # LPIPS's im2col matmuls on its 1x1 and 2x2 maps also multiply the padding; the count doesn't.
  assert results["train_step_flops"] < results["train_step_flops_executed"]


def test_scaling_table_times_taming_beside_each_size(tmp_path):
  pytest.importorskip("torch")
  pytest.importorskip("taming")
  out = tmp_path / "scaling.json"
  subprocess.run(
      [sys.executable, "-m", "vqgan_jax.benchmark", "--config=configs/imagenet.py:shrink",
       "--config.dtype=float32", "--scaling_sizes=16,32", "--scaling_batch=8", "--taming",
       f"--out={out}", "--warmup=0", "--runs=1", "--matmul_size=256"],
      cwd=REPO, check=True, timeout=600, capture_output=True)
  results = json.loads(out.read_text())
  rows = results["scaling"]
  assert [(r["image_size"], r["batch_size"]) for r in rows] == [(16, 8), (32, 8)]
  for r in rows:
    for key in ("train_step_seconds", "train_step_flops", "fraction_of_peak",
                "train_step_temp_bytes", "taming_step_seconds", "step_time_vs_taming"):
      assert isinstance(r[key], (int, float)), key  # Measured, never asserted on.
  # XLA's count of the same architecture: 4x the pixels is about 4x the FLOPs (a count, not a
  # timing), and more scratch memory.
  assert 3.0 < rows[1]["train_step_flops"] / rows[0]["train_step_flops"] < 5.0
  assert rows[1]["train_step_temp_bytes"] > rows[0]["train_step_temp_bytes"]


def test_profile_attributes_the_step_to_its_parts(tmp_path):
  out = tmp_path / "profile.json"
  subprocess.run(
      [sys.executable, "-m", "vqgan_jax.benchmark", "--config=configs/tiny.py:test",
       "--profile=1", f"--out={out}"],
      cwd=REPO, check=True, timeout=600, capture_output=True)
  rows = json.loads(out.read_text())["profile"]["16"]
  parts = {r["part"] for r in rows if "instruction" not in r}
  # The GAN is on: every model part of the step shows up under its own name.
  assert {"encoder", "decoder", "lpips", "discriminator"} <= parts, parts
  assert abs(sum(r["share"] for r in rows if "instruction" not in r) - 1.0) < 1e-6
