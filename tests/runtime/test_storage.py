"""The storage layer on local disk and on a real GCS server: whole-file writes, JSON, PNG, npz,
TensorBoard event files, and Orbax checkpoints in the same bucket."""
import numpy as np
import pytest

from vqgan_jax.runtime import metric_writer, storage


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path):
  if request.param == "local":
    return str(tmp_path / "root")
  bucket = request.getfixturevalue("gcs_bucket")
  return storage.join(bucket, f"storage-{tmp_path.name}")


def test_join_keeps_urls():
  assert storage.join("gs://b/run", "eval", "m.json") == "gs://b/run/eval/m.json"
  assert storage.is_remote("gs://b") and not storage.is_remote("/tmp/x")
  assert storage.absolute("gs://b/x") == "gs://b/x"


def test_round_trips(root):
  path = storage.join(root, "a", "b", "value.json")
  assert not storage.exists(path)
  storage.write_json(path, {"x": [1, 2]})
  assert storage.read_json(path) == {"x": [1, 2]}
  storage.write_json(path, {"x": 3})  # Replaced whole.
  assert storage.read_json(path) == {"x": 3}
  image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
  storage.save_png(storage.join(root, "images", "p.png"), image)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  decoded = np.asarray(Image.open(io.BytesIO(storage.read_bytes(storage.join(root, "images",
                                                                             "p.png")))))
  np.testing.assert_array_equal(decoded, image)
  storage.save_npz(storage.join(root, "s.npz"), mu=np.ones(3), n=np.int64(7))
  loaded = storage.load_npz(storage.join(root, "s.npz"))
  np.testing.assert_array_equal(loaded["mu"], np.ones(3))
  assert int(loaded["n"]) == 7
  assert [p.rsplit("/", 1)[-1] for p in storage.glob(root, "*.npz")] == ["s.npz"]


def test_local_writes_leave_no_temporary_files(tmp_path):
  path = str(tmp_path / "x.json")
  storage.write_json(path, 1)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_tensorboard_event_files_read_back(root, tmp_path):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  writer = metric_writer.EventFileWriter(root, segment_bytes=200)  # Rolls to new files.
  writer.write_hparams({"lr": "0.1"})
  for step in range(1, 6):
    writer.write_scalars(step, {"loss": 1.0 / step})
    writer.flush()
  writer.write_images(5, {"grid": np.full((1, 4, 8, 3), 200, np.uint8)})
  writer.close()
  files = storage.glob(root, "events.out.tfevents.*")
  assert len(files) > 1
  local = tmp_path / "copy"
  local.mkdir()
  for path in files:  # TensorBoard's reader needs TF's gfile for URLs: read a local copy.
    (local / path.rsplit("/", 1)[-1]).write_bytes(storage.read_bytes(path))
  events = event_accumulator.EventAccumulator(str(local), size_guidance={"images": 0,
                                                                        "scalars": 0})
  events.Reload()
  assert [(e.step, e.value) for e in events.Scalars("loss")] == [
      (s, pytest.approx(1.0 / s)) for s in range(1, 6)]
  assert events.Images("grid")[0].width == 8
