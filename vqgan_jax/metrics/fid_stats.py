"""Precomputes FID reference statistics (Inception pool3 mean and covariance) of a dataset split.

    python -m vqgan_jax.metrics.fid_stats --config=configs/imagenet.py --out=imagenet_val_stats.npz

The images are the ones evaluation sees: the config's eval pipeline
(`vqgan_jax.data.input_pipeline.create_eval_iterator`: same source, split, resize and center
crop), each image once (the padding of the last batch is masked out), read back to uint8 levels
and fed to `vqgan_jax.metrics.inception_pool3`. Another split goes through the same pipeline with
`--config.data.eval_split=train`. It runs as one process that reads the whole split. Load the
result with `vqgan_jax.metrics.load_stats`.
"""
from __future__ import annotations

import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from vqgan_jax.data import input_pipeline
from vqgan_jax.metrics import fid
from vqgan_jax.runtime.images import to_uint8

FLAGS = flags.FLAGS


def eval_split_stats(config: ml_collections.ConfigDict,
                     batch_size: int = 50) -> fid.FIDStats:
  """Inception statistics of every image of the config's eval split."""
  running = fid.RunningStats()
  batches = input_pipeline.create_eval_iterator(
      config, local_batch_size=batch_size, process_index=0, process_count=1)
  for batch in batches:
    # The whole padded batch goes through (one compiled shape); padding is dropped afterwards.
    features = fid.inception_pool3(to_uint8(batch["image"]), batch_size=batch_size)
    running.update(features[np.asarray(batch["mask"]) > 0])
    logging.log_every_n_seconds(logging.INFO, "%d images", 30, running.count)
  return fid.FIDStats(*running.stats(), running.count)


def _define_flags() -> None:
  """Flags exist only when this runs as a program (vqgan_jax.main defines --config too)."""
  config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).",
                                  lock_config=True)
  flags.DEFINE_string("out", None, "Output .npz (mu, sigma, num_images).")
  flags.DEFINE_integer("batch_size", 50, "Images per Inception batch.")
  flags.mark_flags_as_required(["config", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  stats = eval_split_stats(FLAGS.config, FLAGS.batch_size)
  fid.save_stats(FLAGS.out, stats.mu, stats.sigma, stats.num_images)
  logging.info("Wrote statistics of %d images to %s", stats.num_images, FLAGS.out)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
