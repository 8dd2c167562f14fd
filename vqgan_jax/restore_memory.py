"""Peak host memory of a resume and of `load_tokenizer`, against the bytes they restore.

    python -m vqgan_jax.restore_memory --config=configs/imagenet.py --config.dtype=float32 \
        [--workdir=DIR] [--out=memory.json]

Writes a checkpoint of the config's full training state (fresh weights; generator EMA on, so
every field a run can hold is there) into WORKDIR (a temporary folder by default), then measures
in a fresh process each: (1) the trainer's resume (`create_or_restore` of the whole sharded
state), (2) `load_tokenizer` (the generator weights only). Each child reports its resident set
before the restore and its peak from then on (VmHWM, reset first); the extra peak is divided by the bytes of
what was restored. On CPU the restored arrays themselves live in host memory, so 1.0 is the
floor; on an accelerator the arrays go to device memory and the host figure is the staging.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


def _define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Tokenizer config (configs/*.py).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Where the checkpoint is written (default: a temp dir).")
  flags.DEFINE_string("out", None, "Optional JSON output.")
  flags.DEFINE_enum("child", None, ["resume", "load"], "Internal: run one measurement.")
  flags.mark_flags_as_required(["config"])


def _rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> None:
  """Starts the peak (VmHWM) afresh, so what model building or imports reached earlier does not
  count (Linux: writing 5 to clear_refs)."""
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")


def _peak_bytes() -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024
  raise RuntimeError("/proc/self/status has no VmHWM line.")


def _nbytes(tree) -> int:
  return int(sum(np.dtype(x.dtype).itemsize * int(np.prod(x.shape))
                 for x in jax.tree.leaves(tree)))


def _trainer_parts(config):
  from vqgan_jax.tokenizer import train  # pylint: disable=g-import-not-at-top
  model, disc = train.build_models(config)
  tx, disc_tx, _ = train.build_optimizers(config)
  return train, dict(model=model, disc=disc, tx=tx, disc_tx=disc_tx)


def write_checkpoint(config, workdir: str) -> int:
  """Saves a fresh full state as step 1 of WORKDIR; returns its bytes."""
  from vqgan_jax.runtime import checkpoints, sharding  # pylint: disable=g-import-not-at-top
  train, parts = _trainer_parts(config)
  checkpoints.write_config(workdir, config.to_dict())
  _, state, _, _ = train.create_train_state(config, workdir, sharding.create_mesh(), **parts)
  checkpointer = checkpoints.Checkpointer(workdir, every_steps=1, keep=1)
  checkpointer.save(1, state, 0, force=True)
  checkpointer.close()
  return _nbytes(state)


def _measure_once(config, workdir: str, kind: str, mesh, train, parts) -> dict:
  from vqgan_jax.tokenizer.load import load_tokenizer  # pylint: disable=g-import-not-at-top
  _reset_peak()
  before = _rss_bytes()
  if kind == "resume":
    _, restored, _, _ = train.create_train_state(config, workdir, mesh, **parts)
  else:
    _, restored = load_tokenizer(workdir)
  restored = jax.block_until_ready(restored)
  extra = _peak_bytes() - before
  size = _nbytes(restored)
  return {"restored_bytes": size, "rss_before_bytes": before, "extra_peak_bytes": extra,
          "extra_peak_over_restored": extra / size}


def measure(config, workdir: str, kind: str) -> dict:
  """One measurement in this (fresh) process, then the same restore again in it: the first
  includes what a process pays once (Orbax/TensorStore setup, tracing the model), the second
  only what each restore costs."""
  from vqgan_jax.runtime import sharding  # pylint: disable=g-import-not-at-top
  train, parts = _trainer_parts(config)
  mesh = sharding.create_mesh()
  first = _measure_once(config, workdir, kind, mesh, train, parts)
  first["again"] = _measure_once(config, workdir, kind, mesh, train, parts)
  return first


def _child(kind: str, workdir: str) -> dict:
  argv = [a for a in sys.argv[1:] if not a.startswith(("--out", "--workdir", "--child"))]
  run = subprocess.run(
      [sys.executable, "-m", "vqgan_jax.restore_memory", *argv, f"--workdir={workdir}",
       f"--child={kind}"], capture_output=True, text=True, check=False)
  if run.returncode != 0:
    raise RuntimeError(f"The {kind} measurement failed:\n{run.stderr[-3000:]}")
  return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  if config.ema_decay <= 0:
    config.ema_decay = 0.999  # Every field a run can checkpoint.
  if FLAGS.child:
    print(json.dumps(measure(config, FLAGS.workdir, FLAGS.child)))
    return
  with tempfile.TemporaryDirectory() as tmp:
    workdir = FLAGS.workdir or os.path.join(tmp, "run")
    state_bytes = write_checkpoint(config, workdir)
    results = {"state_bytes": state_bytes, "device": f"{jax.device_count()} x "
               f"{jax.devices()[0].device_kind}", "resume": _child("resume", workdir),
               "load_tokenizer": _child("load", workdir)}
  for kind in ("resume", "load_tokenizer"):
    r = results[kind]
    print(f"{kind:15s} restored {r['restored_bytes'] / 2**20:9.1f} MiB, extra peak "
          f"{r['extra_peak_bytes'] / 2**20:9.1f} MiB = {r['extra_peak_over_restored']:.2f}x "
          f"(again in the same process: {r['again']['extra_peak_over_restored']:.2f}x)")
  if FLAGS.out:
    from vqgan_jax.runtime import storage  # pylint: disable=g-import-not-at-top
    storage.write_json(FLAGS.out, results, indent=2)
    logging.info("Wrote %s", FLAGS.out)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
