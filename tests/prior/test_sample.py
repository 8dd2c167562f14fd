"""`--mode=sample` over devices and hosts: sample i is the same image however the run is split
(devices, hosts, batch size), each host writes only its own samples, process 0 the rest."""
import io
import json
import os
import re

import jax
import numpy as np
import pytest
from jax.sharding import AxisType
from PIL import Image

from tests.helpers import launch_main
from vqgan_jax.metrics import fid
from vqgan_jax.prior import sample


def _written(workdir) -> dict[str, bytes]:
  folder = workdir / "samples"
  return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def _one_device_mesh():
  return jax.make_mesh((1,), ("data",), axis_types=(AxisType.Auto,), devices=jax.devices()[:1])


def test_rows_per_step_fill_every_device():
  assert sample.rows_per_step(batch_size=3, num_samples=5, num_devices=8) == 8
  assert sample.rows_per_step(batch_size=20, num_samples=100, num_devices=8) == 24
  assert sample.rows_per_step(batch_size=2, num_samples=5, num_devices=1) == 2
  assert sample.rows_per_step(batch_size=64, num_samples=3, num_devices=1) == 3


def _pixel_features(images, xp=np):
  """2048 'features' per image from its pixels: a stand-in for Inception (whose weights and
  compile cost minutes here; `tests/models/test_inception.py` tests it) that still tells the
  samples apart, so the FID below checks which rows the running statistics got."""
  flat = images.reshape(images.shape[0], -1).astype(xp.float32) / 255.0
  return xp.tile(flat, (1, -(-2048 // flat.shape[1])))[:, :2048]


def test_samples_do_not_depend_on_devices_or_batch_size(trained_prior, tmp_path, monkeypatch):
  monkeypatch.setattr(fid, "pool3_of_uint8",
                      lambda params, images: _pixel_features(images, jax.numpy))
  monkeypatch.setattr(sample, "_inception_params", lambda replicated: jax.device_put(
      np.float32(0), replicated))
  config, workdir = trained_prior
  config = config.copy_and_resolve_references()
  config.sample.num_samples = 5
  config.sample.grid_images = 4
  config.sample.batch_size = 3  # 8 devices: one batch of 8 rows, 3 of them padding.
  config.sample.fid = True
  config.fid_reference_stats = str(tmp_path / "reference.npz")
  reference = np.random.default_rng(0).random((2, 2048)) + 0.5
  fid.save_stats(config.fid_reference_stats, reference[0], np.diag(reference[1]), 10)
  eight = sample.sample_images(config, str(workdir))
  on_eight = _written(workdir)
  assert sorted(on_eight) == ["grid.png"] + [f"sample_{i:05d}.png" for i in range(5)] + [
      "samples.json"]
  assert len({on_eight[f"sample_{i:05d}.png"] for i in range(5)}) == 5  # Samples differ.
  # The FID of the samples as written (padding rows left out), from the same features here.
  features = _pixel_features(np.stack([np.asarray(Image.open(io.BytesIO(
      on_eight[f"sample_{i:05d}.png"]))) for i in range(5)]))
  assert eight["fid"] == pytest.approx(fid.fid_from_stats(
      *fid.feature_stats(features), reference[0], np.diag(reference[1])), rel=1e-6)
  config.sample.fid = False
  config.sample.batch_size = 2  # One device: batches of 2, 2 and 1 (+1 padding row).
  one = sample.sample_images(config, str(workdir), mesh=_one_device_mesh())
  on_one = _written(workdir)
  assert (eight["devices"], one["devices"]) == (8, 1)
  assert {k: v for k, v in on_one.items() if k != "samples.json"} == {
      k: v for k, v in on_eight.items() if k != "samples.json"}
  assert isinstance(one["tokens_per_second"], float) and isinstance(
      eight["tokens_per_second"], float)


def _launch_sample(workdir, tokenizer, *, devices: int, processes: int) -> list[str]:
  return launch_main([
      "--config=configs/tiny_prior.py:test", f"--workdir={workdir}", "--mode=sample",
      f"--config.tokenizer_workdir={tokenizer}", "--config.sample.num_samples=11",
      "--config.sample.batch_size=3", "--config.sample.grid_images=6",
      "--config.sample.completion=2"], devices=devices, processes=processes, timeout=600)


def _wrote(output: str) -> tuple[list[int], bool]:
  """(sample indices, whether it wrote grid.png and samples.json) from a process's log."""
  match = re.search(r"Process \d+ of \d+ wrote \d+ of the 11 samples \(([\d,\-]*|none)\)"
                    r"( and grid.png, samples.json)? to", output)
  assert match, output[-3000:]
  indices = []
  for span in match.group(1).split(","):
    if span != "none":
      first, _, last = span.partition("-")
      indices.extend(range(int(first), int(last or first) + 1))
  return indices, bool(match.group(2))


@pytest.mark.multiprocess
def test_two_hosts_draw_the_samples_of_one_host(trained_prior):
  """2 processes x 4 devices == 1 process x 8 devices: the same PNG bytes, each host writing only
  its own samples, the grid, completion and JSON written once (by process 0)."""
  config, workdir = trained_prior
  outputs = _launch_sample(workdir, config.tokenizer_workdir, devices=8, processes=1)
  assert _wrote(outputs[0]) == (list(range(11)), True)
  one_host = _written(workdir)
  for name in one_host:
    os.remove(workdir / "samples" / name)

  outputs = _launch_sample(workdir, config.tokenizer_workdir, devices=4, processes=2)
  (first, first_writes), (second, second_writes) = map(_wrote, outputs)
  assert first_writes and not second_writes
  assert first and second and sorted(first + second) == list(range(11))  # Each sample once.
  two_hosts = _written(workdir)
  assert sorted(two_hosts) == sorted(one_host) == [
      "completion.png", "grid.png", *[f"sample_{i:05d}.png" for i in range(11)], "samples.json"]
  assert {k: v for k, v in two_hosts.items() if k != "samples.json"} == {
      k: v for k, v in one_host.items() if k != "samples.json"}
  json_one, json_two = (json.loads(d["samples.json"]) for d in (one_host, two_hosts))
  assert (json_one.pop("processes"), json_two.pop("processes")) == (1, 2)
  assert json_one.pop("tokens_per_second") > 0 and json_two.pop("tokens_per_second") > 0
  assert json_one == json_two
