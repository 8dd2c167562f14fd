"""`configs/imagenet.py`'s code path (bfloat16, the codebook recipe, grids, periodic eval,
checkpoint cadence, resume, --mode=eval), shrunk only in size, on the device counts of a pod
slice: 16 and 32 forced CPU devices in one process, and 4 processes x 4 devices (a v4-32).

The 16-device run reads the config's own data source, TFDS `imagenet2012`, prepared by the
run itself from a manual-download folder in the ILSVRC2012 layout (`--config.data.
tfds_manual_dir`, as the README tells users; tests/imagenet_layout.py); the others read the
embedded photos at the config's crop size. Launches share the test run's compilation cache.
"""
import pytest

from tests.helpers import launch_main
from vqgan_jax.runtime import checkpoints, storage

pytestmark = pytest.mark.multiprocess  # Also the one-process 16 and 32 devices: 900 s timeouts.

CONFIG = "--config=configs/imagenet.py:shrink"
EMBEDDED = ("--config.data.source=embedded", "--config.data.resize_size=0")
WITHOUT_RFID = ("--config.eval_metrics=('reconstruction','codebook')",)


def _scalars(logdir: str, tag: str) -> dict[int, float]:
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  events = event_accumulator.EventAccumulator(logdir, size_guidance={"scalars": 0})
  events.Reload()
  return {e.step: e.value for e in events.Scalars(tag)}


def _train_resume_eval(workdir, *, devices: int, processes: int = 1,
                       data: tuple[str, ...] = EMBEDDED, num_eval: int = 226,
                       extra: tuple[str, ...] = (), resume: bool = True,
                       fast_compile: bool = True) -> None:
  """Trains 2 steps (grid, periodic eval, checkpoint), optionally resumes to 4, then --mode=eval
  over the whole eval split (`num_eval` images)."""
  args = [CONFIG, f"--workdir={workdir}", *data, *extra]
  launch = lambda more: launch_main(args + more, devices=devices, processes=processes,
                                    fast_compile=fast_compile)
  launch(["--config.num_train_steps=2"])
  assert checkpoints.Checkpointer(str(workdir), every_steps=1, keep=3).all_steps() == [2]
  last = 2
  if resume:
    launch(["--config.num_train_steps=4"])
    last = 4
  assert checkpoints.Checkpointer(str(workdir), every_steps=1, keep=3).all_steps() == (
      [2, 4] if resume else [2])
  # The grid (8 images on 16 or 32 devices) and the periodic evaluation ran at each cadence.
  for step in range(2, last + 1, 2):
    assert (workdir / "images" / f"reconstructions_{step:08d}.png").exists()
  psnr = _scalars(str(workdir), "eval/psnr")
  assert sorted(psnr) == list(range(2, last + 1, 2)) and all(v > 0 for v in psnr.values())
  assert set(_scalars(str(workdir), "eval/num_images").values()) == {32.0}

  launch(["--mode=eval", *WITHOUT_RFID])
  metrics = storage.read_json(str(workdir / "eval" / f"metrics_{last}.json"))
  assert metrics["step"] == last and metrics["num_images"] == num_eval
  assert 0 < metrics["codebook_usage"] <= 1 and metrics["psnr"] > 0


def test_16_devices_fsdp_on_imagenet2012(tmp_path, imagenet_manual_dir):
  from tests import imagenet_layout  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path / "tensorflow_datasets"
  # XLA's default optimisation: this run computes rFID, whose Inception passes run 1.6x
  # slower at FAST_COMPILE_XLA_FLAGS' level 0.
  _train_resume_eval(tmp_path / "run", devices=16, fast_compile=False,
                     data=(f"--config.data.tfds_manual_dir={imagenet_manual_dir}",
                           f"--config.data.tfds_data_dir={data_dir}"),
                     num_eval=imagenet_layout.NUM_VAL, extra=("--config.param_sharding=fsdp",))
  assert (data_dir / "imagenet2012").is_dir()  # The first launch prepared it.


# The full recipe, rFID included, runs on 16 devices above; the two below leave rFID's Inception
# out of the periodic eval (its compile dominates them here) and resume is proven multi-process
# by tests/runtime/test_multihost.py.
def test_32_devices(tmp_path):
  _train_resume_eval(tmp_path / "run", devices=32, extra=WITHOUT_RFID, resume=False)


def test_4_processes_of_4_devices(tmp_path):
  _train_resume_eval(tmp_path / "run", devices=4, processes=4, extra=WITHOUT_RFID, resume=False)
