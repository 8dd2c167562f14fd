"""The tokenizer and its prior as an image codec.

    python -m vqgan_jax.compress encode --workdir=workdirs/tiny_prior IMAGE... --out=DIR
    python -m vqgan_jax.compress decode --workdir=workdirs/tiny_prior FILE... --out=DIR
    python -m vqgan_jax.compress benchmark --workdir=workdirs/tiny_prior --out=rd.json

`encode` writes DIR/<name>.vqgj per image (PNG, JPEG, anything Pillow reads; any size: padded to
the tokenizer's factor and cropped back), `decode` writes DIR/<name>.png. `--workdir` is a prior
workdir (codes coded under the prior's probabilities: the file is the prior's cross-entropy plus
the coder's last word and the 56-byte header) or a tokenizer workdir alone (`--fallback`:
uniform, log2 K bits per code, or adaptive). The file format and where files decode:
`vqgan_jax.codec.bitstream`, `vqgan_jax.codec.codec`.

`benchmark` codes the workdir's eval split (or `--image_size` crops of it) with this codec and
with JPEG, WebP and AVIF over their quality settings, and writes per codec and setting bits per
pixel, PSNR, SSIM, LPIPS and FID (at least `--fid_min_images` images) to --out, the speed of
this codec (compress/decompress images and megapixels per second, compilation excluded) and a
rate–distortion plot next to it (rd.png).
"""
from __future__ import annotations

import io
import json
import logging
import os

import numpy as np
from absl import app, flags
from PIL import Image, UnidentifiedImageError

from vqgan_jax.runtime import storage

FLAGS = flags.FLAGS
COMMANDS = ("encode", "decode", "benchmark")
SUFFIX = ".vqgj"


def _define_flags() -> None:
  """The flags, defined only when run as a program (main.py shares some names)."""
  flags.DEFINE_string("workdir", None, "A prior workdir, or a tokenizer workdir alone.")
  flags.DEFINE_string("out", None, "encode/decode: the output folder; benchmark: the JSON file.")
  flags.DEFINE_integer("step", None, "The prior's (or tokenizer's) checkpoint step (default: latest).")
  flags.DEFINE_integer("rows_per_device", 8, "encode: images coded together on each device (the "
                       "prior's batch shape, recorded in the file; decoding uses the file's).")
  flags.DEFINE_enum("fallback", "uniform", ("uniform", "adaptive"),
                    "The code model of a tokenizer workdir without a prior.")
  flags.DEFINE_integer("image_size", None, "benchmark: center crops of this size instead of the "
                       "training size (the prior slides over larger grids).")
  flags.DEFINE_integer("num_images", -1, "benchmark: the first N eval images (-1: all).")
  flags.DEFINE_integer("fid_min_images", 1000, "benchmark: FID only with at least this many images.")
  flags.DEFINE_list("qualities", ["5", "10", "20", "30", "50", "70", "90"],
                    "benchmark: quality settings of JPEG, WebP and AVIF.")
  flags.mark_flags_as_required(["workdir", "out"])


def read_image(path: str):
  """uint8 (H, W, 3) of an image file; a clear error for anything Pillow cannot read."""
  try:
    with Image.open(io.BytesIO(storage.read_bytes(path))) as image:
      return np.asarray(image.convert("RGB"))
  except (UnidentifiedImageError, OSError) as e:
    raise ValueError(f"{path} is not an image Pillow can read ({e}).") from e


def _output_path(out_dir: str, path: str, suffix: str) -> str:
  return storage.join(out_dir, os.path.splitext(os.path.basename(path))[0] + suffix)


def _codec(fallback: str | None = None):
  from vqgan_jax.codec.codec import Codec  # pylint: disable=g-import-not-at-top
  return Codec.from_workdir(FLAGS.workdir, FLAGS.step, rows_per_device=FLAGS.rows_per_device,
                            fallback=fallback or FLAGS.fallback)


def encode_files(paths: list[str]) -> list[str]:
  outputs = [_output_path(FLAGS.out, p, SUFFIX) for p in paths]
  if len(set(outputs)) < len(outputs):
    raise ValueError("Two inputs share a file name; encode them into different --out folders.")
  codec = _codec()
  coded = codec.encode([read_image(p) for p in paths])
  for path, out, result in zip(paths, outputs, coded):
    storage.write_bytes(out, result.data)
    logging.info("%s -> %s: %d bytes (ideal %.1f)", path, out, len(result.data),
                 result.ideal_bits / 8)
  return outputs


def decode_files(paths: list[str]) -> list[str]:
  codec = _codec()
  files = [storage.read_bytes(p) for p in paths]
  outputs = []
  for path, image in zip(paths, codec.decode(files, paths)):
    outputs.append(_output_path(FLAGS.out, path, ".png"))
    storage.save_png(outputs[-1], image)
  return outputs


def benchmark() -> dict:
  from vqgan_jax.codec import rate_distortion  # pylint: disable=g-import-not-at-top
  return rate_distortion.benchmark(
      _codec(), FLAGS.workdir, FLAGS.out, image_size=FLAGS.image_size,
      num_images=FLAGS.num_images, qualities=[int(q) for q in FLAGS.qualities],
      fid_min_images=FLAGS.fid_min_images)


def main(argv):
  if len(argv) < 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"Usage: python -m vqgan_jax.compress {{{'|'.join(COMMANDS)}}} "
                         "--workdir=W [FILES...] --out=OUT")
  command, paths = argv[1], argv[2:]
  if command == "benchmark":
    if paths:
      raise app.UsageError(f"benchmark takes no files, got {paths}.")
    print(json.dumps(benchmark(), indent=2))
    return
  if not paths:
    raise app.UsageError(f"{command} needs at least one input file.")
  written = encode_files(paths) if command == "encode" else decode_files(paths)
  print("\n".join(written))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
