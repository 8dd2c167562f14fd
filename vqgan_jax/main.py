"""Entry point: `python -m vqgan_jax.main --config=configs/tiny.py --workdir=DIR [--mode=train|eval|codebook|sample|tokenize]`.

Parses flags, initialises multi-host JAX when there is more than one process, and dispatches to
the job for `--mode`. Everything else lives in the job modules.
"""
from __future__ import annotations

import logging
import os

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
MODES = ("train", "eval", "codebook", "sample", "tokenize")

config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and images go "
                    "(default: ./workdirs/<config name>).")
flags.DEFINE_enum("mode", "train", MODES, "train: train the config's model, a tokenizer or a prior "
                  "(resuming from --workdir); eval: evaluate a tokenizer checkpoint on the eval "
                  "split; codebook: decode every code and plot its usage on the eval split; "
                  "sample: draw images from a prior; tokenize: encode a prior's dataset once with "
                  "its tokenizer (to WORKDIR/codes or --config.codes_dir) for "
                  "--config.data.source=codes.")
flags.DEFINE_integer("step", None, "--mode=eval/codebook/sample: the checkpoint step (default: the latest).")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0, for multi-host runs outside TPU/SLURM auto-detection.")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
flags.DEFINE_enum("multihost", "auto", ("auto", "on", "off"),
                  "jax.distributed.initialize(): 'auto' on TPU VMs and multi-task SLURM jobs.")
flags.mark_flags_as_required(["config"])


def _auto_multihost() -> bool:
  slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1"))
  on_tpu_vm = os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0")
  return slurm_tasks > 1 or on_tpu_vm


def initialize_distributed() -> None:
  """Multi-host setup; must run before anything touches a JAX device."""
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.coordinator_address:
    if FLAGS.num_processes is None or FLAGS.process_id is None:
      raise app.UsageError("--coordinator_address needs --num_processes and --process_id.")
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif FLAGS.multihost == "on" or (FLAGS.multihost == "auto" and _auto_multihost()):
    jax.distributed.initialize()


def default_workdir(config_path: str) -> str:
  name = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
  return os.path.join("workdirs", name)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  initialize_distributed()
  import jax  # pylint: disable=g-import-not-at-top
  config = FLAGS.config
  workdir = FLAGS.workdir or default_workdir(config_flags.get_config_filename(FLAGS["config"]))
  logging.info("JAX process %d/%d, %d local / %d global devices (%s); workdir %s",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices()[0].platform, workdir)
  stage = config.get("stage", "tokenizer")
  if FLAGS.mode == "train" and stage == "prior":
    from vqgan_jax.prior import train as prior_train  # pylint: disable=g-import-not-at-top
    prior_train.train_and_evaluate(config, workdir)
  elif FLAGS.mode == "train":
    from vqgan_jax.tokenizer import train  # pylint: disable=g-import-not-at-top
    train.train_and_evaluate(config, workdir)
  elif FLAGS.mode == "eval" and stage == "tokenizer":
    from vqgan_jax.tokenizer import evaluate  # pylint: disable=g-import-not-at-top
    evaluate.evaluate_checkpoint(config, workdir, FLAGS.step)
  elif FLAGS.mode == "codebook" and stage == "tokenizer":
    from vqgan_jax.tokenizer import codebook_view  # pylint: disable=g-import-not-at-top
    codebook_view.visualize_codebook(config, workdir, FLAGS.step)
  elif FLAGS.mode == "sample" and stage == "prior":
    from vqgan_jax.prior import sample  # pylint: disable=g-import-not-at-top
    sample.sample_images(config, workdir, FLAGS.step)
  elif FLAGS.mode == "tokenize" and stage == "prior":
    from vqgan_jax.prior import tokenize  # pylint: disable=g-import-not-at-top
    tokenize.tokenize_dataset(config, workdir)
  else:
    raise app.UsageError(
        f"--mode={FLAGS.mode} does not apply to a {stage} config: tokenizers train, eval and "
        "codebook (the eval loss of a prior is logged during training), priors train, sample and "
        "tokenize "
        "(sample FID: --config.sample.fid=True).")
  if jax.process_count() > 1:
    # Hosts leave together: process 0 writes the last files (events, PNGs, JSON) while the
    # others would otherwise reach JAX's shutdown barrier first and time it out (30 s).
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("vqgan_jax.main: done")


if __name__ == "__main__":
  app.run(main)
