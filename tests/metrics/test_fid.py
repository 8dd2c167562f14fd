"""FID statistics and the reference-statistics command against direct numpy/scipy computations."""
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
import skimage.data
import skimage.io

from tests.helpers import REPO, free_port
from vqgan_jax import metrics


def _gaussian_features(seed: int, n: int = 400, dim: int = 24, shift: float = 0.0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
  return rng.normal(size=(n, dim)) @ mixing + shift


def test_fid_of_a_set_with_itself_is_zero():
  features = _gaussian_features(0)
  assert abs(metrics.fid_from_features(features, features)) < 1e-8


def test_fid_matches_the_formula():
  a, b = _gaussian_features(1), _gaussian_features(2, shift=0.5)
  mu_a, mu_b = a.mean(0), b.mean(0)
  s_a, s_b = np.cov(a.T), np.cov(b.T)
  # tr((S_a S_b)^1/2) = tr((S_a^1/2 S_b S_a^1/2)^1/2), of a symmetric PSD matrix: sum sqrt(eigs).
  root_a = scipy.linalg.sqrtm(s_a).real
  trace_sqrt = np.sum(np.sqrt(np.linalg.eigvalsh(root_a @ s_b @ root_a)))
  want = np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2 * trace_sqrt
  assert metrics.fid_from_features(a, b) == pytest.approx(want, rel=1e-9)
  assert metrics.fid_from_stats(mu_a, s_a, mu_b, s_b) == pytest.approx(want, rel=1e-9)


def test_fid_rejects_mismatched_statistics():
  with pytest.raises(ValueError, match="Mismatched"):
    metrics.fid_from_stats(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_running_stats_equal_feature_stats():
  features = _gaussian_features(4, shift=3.0)
  running = metrics.RunningStats(dim=features.shape[1])
  for batch in np.array_split(features, 7):
    running.update(batch)
  mu, sigma = running.stats()
  want_mu, want_sigma = metrics.feature_stats(features)
  assert running.count == len(features)
  np.testing.assert_allclose(mu, want_mu, rtol=1e-12)
  np.testing.assert_allclose(sigma, want_sigma, atol=1e-11)


# Each process: its share of the features, in batches, summed over both processes.
_HOST_SCRIPT = """
import sys
import jax
import numpy as np
from vqgan_jax import metrics
port, index, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(f"127.0.0.1:{port}", 2, index)
features = np.load(out.rsplit("/", 1)[0] + "/features.npy")
running = metrics.RunningStats(dim=features.shape[1])
for batch in np.array_split(features[:13] if index == 0 else features[13:], 3):
  running.update(batch)
summed = running.summed_over_hosts()
np.savez(out, count=summed.count, mu=summed.stats()[0], sigma=summed.stats()[1])
jax.distributed.shutdown()
"""


def test_running_stats_summed_over_hosts_equal_stats_of_all_features(tmp_path):
  """Two processes (gloo on 127.0.0.1) each accumulate part of the features; after the sum
  both hold the statistics of all of them, bit for bit the same on both."""
  features = _gaussian_features(5, n=40, shift=2.0)
  np.save(tmp_path / "features.npy", features)
  port = free_port()
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  procs = [subprocess.Popen([sys.executable, "-c", _HOST_SCRIPT, str(port), str(i),
                             str(tmp_path / f"host{i}.npz")], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  for p in procs:
    output = p.communicate(timeout=120)[0]
    assert p.returncode == 0, output[-3000:]
  hosts = [np.load(tmp_path / f"host{i}.npz") for i in range(2)]
  want_mu, want_sigma = metrics.feature_stats(features)
  for host in hosts:
    assert int(host["count"]) == 40
    np.testing.assert_allclose(host["mu"], want_mu, rtol=1e-12)
    np.testing.assert_allclose(host["sigma"], want_sigma, atol=1e-11)
  for key in ("mu", "sigma"):
    np.testing.assert_array_equal(hosts[0][key], hosts[1][key])


def test_stats_round_trip(tmp_path):
  mu, sigma = metrics.feature_stats(_gaussian_features(3))
  metrics.save_stats(tmp_path / "stats.npz", mu, sigma, num_images=400)
  loaded = metrics.load_stats(tmp_path / "stats.npz")
  np.testing.assert_array_equal(loaded.mu, mu)
  np.testing.assert_array_equal(loaded.sigma, sigma)
  assert loaded.num_images == 400 and loaded.sigma.dtype == np.float64
  np.savez(tmp_path / "ttur.npz", mu=mu, sigma=sigma)  # published stats carry no image count
  assert metrics.load_stats(tmp_path / "ttur.npz").num_images is None


def test_fid_stats_cli_on_a_folder(tmp_path, monkeypatch):
  photos = (skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee())
  crops = np.stack([p[:32, 100:132] for p in photos])
  root = tmp_path / "images"
  for split, images in (("train", crops[:1]), ("validation", crops)):
    (root / split / "a").mkdir(parents=True)
    for i, image in enumerate(images):
      skimage.io.imsave(root / split / "a" / f"{i}.png", image, check_contrast=False)
  monkeypatch.setenv("VQGAN_JAX_CACHE", str(tmp_path / "cache"))
  out = tmp_path / "stats.npz"
  # 3 images in batches of 2: the padded slot of the last batch must not count.
  run = subprocess.run([sys.executable, "-m", "vqgan_jax.metrics.fid_stats", "--config=configs/tiny.py",
                        "--config.data.source=folder", f"--config.data.folder={root}",
                        f"--out={out}", "--batch_size=2"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  stats = metrics.load_stats(out)
  mu, sigma = metrics.feature_stats(metrics.inception_pool3(crops, batch_size=2))
  assert stats.num_images == 3
  np.testing.assert_allclose(stats.mu, mu, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats.sigma, sigma, rtol=1e-4, atol=1e-6)
