"""Rate–distortion of the learned codec against JPEG, WebP and AVIF on one set of images.

Every codec writes real files (Pillow's encoders, each swept over its quality setting; the
learned codec's bytes as `vqgan_jax.compress` writes them, header included), decodes them and
scores the decoded images against the originals: bits per pixel of the whole file, PSNR, SSIM,
LPIPS (`vqgan_jax.metrics.image_quality`, on uint8 levels), and FID when there are at least
`fid_min_images` images (fewer make FID a measure of the sample size).
"""
from __future__ import annotations

import io
import logging
import os
import time
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from vqgan_jax.codec import bitstream
from vqgan_jax.codec.codec import Codec
from vqgan_jax.codec.eval_images import eval_images
from vqgan_jax.metrics import image_quality
from vqgan_jax.runtime import storage

QUALITIES = (5, 10, 20, 30, 50, 70, 90)
PILLOW_CODECS = {
    "jpeg": dict(format="JPEG", optimize=True),
    "webp": dict(format="WEBP", method=6),
    "avif": dict(format="AVIF", speed=4),
}


def pillow_round_trip(image: np.ndarray, codec: str, quality: int) -> tuple[int, np.ndarray]:
  """(file bytes, decoded uint8 image) of one image through a Pillow codec."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, quality=quality, **PILLOW_CODECS[codec])
  size = buffer.tell()
  buffer.seek(0)
  return size, np.asarray(Image.open(buffer).convert("RGB"))


def _to_unit(images: np.ndarray) -> np.ndarray:
  return np.asarray(images, np.float32) / 127.5 - 1.0


def distortion(originals: np.ndarray, decoded: np.ndarray, batch_size: int = 64) -> dict:
  """Mean PSNR, SSIM and LPIPS of decoded uint8 images against the originals."""
  sums = {"psnr": 0.0, "ssim": 0.0, "lpips": 0.0}
  for start in range(0, len(originals), batch_size):
    x, y = _to_unit(originals[start:start + batch_size]), _to_unit(decoded[start:start + batch_size])
    sums["psnr"] += float(np.sum(np.minimum(np.asarray(image_quality.psnr(x, y)), 100.0)))
    sums["ssim"] += float(np.sum(np.asarray(image_quality.ssim(x, y))))
    sums["lpips"] += float(np.sum(np.asarray(image_quality.lpips(x, y))))
  return {k: v / len(originals) for k, v in sums.items()}


def fid_or_none(originals: np.ndarray, decoded: np.ndarray, min_images: int) -> float | None:
  if len(originals) < min_images:
    return None
  from vqgan_jax.metrics import fid  # pylint: disable=g-import-not-at-top
  return fid.fid_from_features(fid.inception_pool3(originals), fid.inception_pool3(decoded))


def point(name: str, setting, originals: np.ndarray, decoded: np.ndarray, total_bytes: int,
          fid_min_images: int, **extra) -> dict:
  pixels = originals.shape[0] * originals.shape[1] * originals.shape[2]
  return {"codec": name, "setting": setting, "bpp": 8.0 * total_bytes / pixels,
          "bytes_per_image": total_bytes / len(originals),
          **distortion(originals, decoded),
          "fid": fid_or_none(originals, decoded, fid_min_images), **extra}


def pillow_points(originals: np.ndarray, codecs: Sequence[str] = tuple(PILLOW_CODECS),
                  qualities: Sequence[int] = QUALITIES, fid_min_images: int = 1000) -> list[dict]:
  points = []
  for codec in codecs:
    for quality in qualities:
      sizes, decoded = zip(*(pillow_round_trip(image, codec, quality) for image in originals))
      points.append(point(codec, quality, originals, np.stack(decoded), sum(sizes),
                          fid_min_images))
  return points


def timed(fn: Callable, *args):
  start = time.perf_counter()
  result = fn(*args)
  return result, time.perf_counter() - start


def plot(points: list[dict], path: str, title: str) -> None:
  """bpp vs LPIPS and bpp vs PSNR, one curve per codec, as a PNG at `path`."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axes = plt.subplots(1, 2, figsize=(10, 4))
  for codec in dict.fromkeys(p["codec"] for p in points):
    rows = sorted((p for p in points if p["codec"] == codec), key=lambda p: p["bpp"])
    style = "o" if len(rows) == 1 else "o-"
    for axis, metric in zip(axes, ("lpips", "psnr")):
      axis.plot([p["bpp"] for p in rows], [p[metric] for p in rows], style, label=codec)
  for axis, metric in zip(axes, ("LPIPS (lower is better)", "PSNR dB (higher is better)")):
    axis.set_xlabel("bits per pixel (whole file)")
    axis.set_ylabel(metric)
    axis.set_xscale("log")
    axis.grid(True, which="both", alpha=0.3)
  axes[0].legend()
  figure.suptitle(title)
  figure.tight_layout()
  storage.save_figure(path, figure)
  plt.close(figure)


def benchmark(codec: Codec, workdir: str, out: str, *, image_size: int | None = None,
              num_images: int = -1, qualities: Sequence[int] = QUALITIES,
              fid_min_images: int = 1000) -> dict:
  """Codes WORKDIR's eval images with `codec` and the Pillow codecs; writes `out` (JSON) and
  the plot beside it (.png); returns what the JSON holds."""
  originals = eval_images(workdir, image_size, num_images)
  n, h, w = originals.shape[:3]
  codec.encode(originals[:1])  # Compiles: the timings below are coding alone.
  coded, encode_seconds = timed(codec.encode, list(originals))
  files = [c.data for c in coded]
  codec.decode(files[:1])
  decoded, decode_seconds = timed(codec.decode, files)
  if any(not np.array_equal(a, c.codes) for a, c in zip(codec.decode_codes(files), coded)):
    raise AssertionError("A decoded code grid differs from the encoded one.")
  ideal_bytes = sum(c.ideal_bits for c in coded) / 8
  decoded = np.stack(decoded)
  points = [point(f"vqgan_jax ({codec.model_name})", codec.model_name, originals, decoded,
                  sum(len(f) for f in files), fid_min_images,
                  payload_bpp=8 * (sum(len(f) for f in files) - n * bitstream.HEADER_BYTES) / (
                      n * h * w),
                  ideal_bpp=8 * ideal_bytes / (n * h * w),
                  tokens_per_image=int(coded[0].codes.size))]
  if codec.model_name == "prior":  # The same codes at log2(K) bits: what the prior saves.
    uniform = Codec(codec.tokenizer, codec.tokenizer_params, mesh=codec.mesh)
    plain = sum(len(c.data) for c in uniform.encode(list(originals)))
    points.append(point("vqgan_jax (uniform)", "uniform", originals, decoded, plain,
                        fid_min_images, payload_bpp=8 * (plain - n * bitstream.HEADER_BYTES) / (
                            n * h * w)))
  points += pillow_points(originals, qualities=qualities, fid_min_images=fid_min_images)
  megapixels = n * h * w / 1e6
  result = {
      "workdir": workdir, "num_images": int(n), "image_size": [int(h), int(w)],
      "header_bytes": bitstream.HEADER_BYTES,
      "compress_images_per_second": n / encode_seconds,
      "decompress_images_per_second": n / decode_seconds,
      "compress_megapixels_per_second": megapixels / encode_seconds,
      "decompress_megapixels_per_second": megapixels / decode_seconds,
      "points": points,
  }
  storage.write_json(out, result, indent=2)
  plot_path = os.path.splitext(out)[0] + ".png"
  plot(points, plot_path, f"{n} eval images of {h}x{w} px")
  logging.info("Wrote %s and %s", out, plot_path)
  return result
