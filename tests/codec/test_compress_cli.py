"""`python -m vqgan_jax.compress`: files in, files out, and the rate–distortion benchmark."""
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from tests.helpers import FAST_COMPILE_XLA_FLAGS, REPO
from vqgan_jax.data import embedded


def _compress(*args, devices: int = 1) -> subprocess.CompletedProcess:
  xla_flags = f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE_XLA_FLAGS}"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags}
  return subprocess.run([sys.executable, "-m", "vqgan_jax.compress", *map(str, args)], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)


def test_encode_then_decode_files(trained_prior, tmp_path):
  photo = embedded.load_photos()[1]
  inputs = []
  for name, crop in (("a.png", photo[:16, :16]), ("b.jpg", photo[8:30, 4:30])):
    inputs.append(tmp_path / name)
    Image.fromarray(crop).save(inputs[-1])
  workdir = trained_prior[1]
  encoded = _compress("encode", f"--workdir={workdir}", *inputs, f"--out={tmp_path / 'z'}",
                      devices=2)
  assert encoded.returncode == 0, encoded.stderr[-3000:]
  files = sorted((tmp_path / "z").iterdir())
  assert [f.name for f in files] == ["a.vqgj", "b.vqgj"]
  decoded = _compress("decode", f"--workdir={workdir}", *files, f"--out={tmp_path / 'png'}")
  assert decoded.returncode == 0, decoded.stderr[-3000:]
  sizes = [Image.open(tmp_path / "png" / n).size for n in ("a.png", "b.png")]
  assert sizes == [(16, 16), (26, 22)]
  (tmp_path / "junk.vqgj").write_bytes(b"not an image file at all" * 4)
  failed = _compress("decode", f"--workdir={workdir}", tmp_path / "junk.vqgj",
                     f"--out={tmp_path / 'png'}")
  assert failed.returncode != 0 and "junk.vqgj is not a vqgan_jax compressed image" in (
      failed.stderr)


def test_benchmark_writes_rate_distortion_points(trained_prior, tmp_path):
  from vqgan_jax.codec import rate_distortion  # pylint: disable=g-import-not-at-top
  from vqgan_jax.codec.codec import Codec  # pylint: disable=g-import-not-at-top
  out = tmp_path / "rd.json"
  workdir = str(trained_prior[1])
  rate_distortion.benchmark(Codec.from_workdir(workdir), workdir, str(out), num_images=4,
                            qualities=(10, 50))
  result = json.loads(out.read_text())
  assert (tmp_path / "rd.png").stat().st_size > 0
  assert result["num_images"] == 4 and result["image_size"] == [16, 16]
  for key in ("compress_images_per_second", "decompress_images_per_second",
              "compress_megapixels_per_second", "decompress_megapixels_per_second"):
    assert result[key] > 0
  by_codec = {}
  for point in result["points"]:
    by_codec.setdefault(point["codec"], []).append(point)
    assert point["bpp"] > 0 and 0 < point["psnr"] <= 100 and -1 <= point["ssim"] <= 1
    assert point["lpips"] >= 0 and point["fid"] is None  # 4 images: no FID.
  assert sorted(by_codec) == ["avif", "jpeg", "vqgan_jax (prior)", "vqgan_jax (uniform)", "webp"]
  assert [p["setting"] for p in by_codec["jpeg"]] == [10, 50]
  ours, plain = by_codec["vqgan_jax (prior)"][0], by_codec["vqgan_jax (uniform)"][0]
  assert ours["psnr"] == plain["psnr"]  # The same codes, coded two ways.
  # Whole files >= payloads >= the codes' ideal size; the uniform payload is log2(K) per code.
  assert ours["bpp"] > ours["payload_bpp"] >= ours["ideal_bpp"] > 0
  assert plain["payload_bpp"] >= 64 * 6 / 256  # 64 codes of log2(64) bits on 16x16 pixels.


def test_unreadable_input_image_names_the_file(tmp_path):
  import pytest  # pylint: disable=g-import-not-at-top
  from vqgan_jax import compress  # pylint: disable=g-import-not-at-top
  broken = tmp_path / "broken.png"
  broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
  with pytest.raises(ValueError, match="broken.png is not an image Pillow can read"):
    compress.read_image(str(broken))
  Image.fromarray(np.zeros((4, 5), np.uint8)).save(tmp_path / "grey.png")
  assert compress.read_image(str(tmp_path / "grey.png")).shape == (4, 5, 3)
