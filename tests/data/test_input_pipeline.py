"""Tests for vqgan_jax/data/input_pipeline.py: sources, determinism, exact resume, sharding, skipping."""
import io
import logging
import os

import ml_collections
import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from vqgan_jax.data import embedded, input_pipeline
from vqgan_jax.data import folder

BATCH = 4
# Distinct flat colours: after resizing and cropping, an example's mean colour names its file.
PALETTE = np.array([(20 + 21 * i, 230 - 19 * i, (40 + 97 * i) % 256) for i in range(12)])


def _config(**data) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(dict(seed=0, data=input_pipeline.default_data_config()))
  config.data.update({"image_size": 16, **data})
  return config


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _train(config, n, batch=BATCH, process_index=0, process_count=1, start=0):
  iterator = input_pipeline.create_train_iterator(
      config, local_batch_size=batch, process_index=process_index,
      process_count=process_count, start_position=start)
  return _take(iterator, n)


def _eval(config, batch=BATCH, process_index=0, process_count=1):
  return list(input_pipeline.create_eval_iterator(
      config, local_batch_size=batch, process_index=process_index, process_count=process_count))


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def _colour_ids(images: np.ndarray) -> list[int]:
  """Index in PALETTE of each flat-coloured image (asserting it is one of them)."""
  means = (images.reshape(len(images), -1, 3).mean(1) + 1) * 127.5
  distance = np.abs(means[:, None] - PALETTE[None]).sum(-1)
  assert distance.min(1).max() < 4, distance.min(1)
  return list(distance.argmin(1))


# Embedded photos.

def test_embedded_train_batches():
  batches = _train(_config(), 3)
  train_ids = set(embedded.split_indices("train"))
  for k, batch in enumerate(batches, 1):
    assert set(batch) == {"image", "label", "_position"}
    assert batch["image"].shape == (BATCH, 16, 16, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (BATCH,) and batch["label"].dtype == np.int32
    assert -1.0 <= batch["image"].min() < batch["image"].max() <= 1.0
    assert set(batch["label"]) <= train_ids
    assert batch["_position"] == k * BATCH
  # An epoch is one crop of each train photo, in a shuffled order.
  labels = np.concatenate([b["label"] for b in _train(_config(), 2, batch=len(train_ids))])
  assert sorted(labels[:len(train_ids)]) == sorted(train_ids)
  assert list(labels[:len(train_ids)]) != list(labels[len(train_ids):])


def test_embedded_non_square_crops():
  config = _config()
  with config.ignore_type():
    config.data.image_size = (16, 24)
  assert _train(config, 1)[0]["image"].shape == (BATCH, 16, 24, 3)
  assert _eval(config)[0]["image"].shape == (BATCH, 16, 24, 3)


def test_embedded_eval_holds_out_whole_photos_each_crop_once():
  train_ids, eval_ids = (embedded.split_indices(s) for s in ("train", "eval"))
  assert set(train_ids).isdisjoint(eval_ids) and len(eval_ids) == 2
  assert len(train_ids) + len(eval_ids) == len(embedded.PHOTOS)
  config = _config()
  # chelsea and rocket at shorter sides 64, 80 and 96 (4 * 16 times 1, 1.25, 1.5): grids of
  # 4x6, 5x7 and 6x9 crops of 16x16 each, 2 * (24 + 35 + 54) = 226.
  assert input_pipeline.num_eval_examples(config) == 226
  batches = _eval(config, batch=5)
  assert len(batches) == 46  # 226 images: 45 full batches and 1 real + 4 padding.
  mask = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(mask, [1.0] * 226 + [0.0] * 4)
  images = np.concatenate([b["image"] for b in batches])[:226]
  labels = np.concatenate([b["label"] for b in batches])[:226]
  assert set(labels) == set(eval_ids)
  assert len({image.tobytes() for image in images}) == 226
  _assert_batches_equal(batches, _eval(config, batch=5))
  # Two hosts: the same number of batches each, together every crop once.
  hosts = [_eval(config, batch=5, process_index=i, process_count=2) for i in range(2)]
  assert len(hosts[0]) == len(hosts[1]) == 23  # 113 crops each.
  host_images = np.concatenate([b["image"][b["mask"] > 0] for h in hosts for b in h])
  assert sorted(i.tobytes() for i in host_images) == sorted(i.tobytes() for i in images)


def test_train_stream_is_deterministic_from_the_seed():
  _assert_batches_equal(_train(_config(), 3), _train(_config(), 3))
  other = _config()
  other.seed = 1
  assert not np.array_equal(_train(_config(), 1)[0]["image"], _train(other, 1)[0]["image"])


def test_embedded_resume_matches_uninterrupted_run():
  k = 3  # 12 examples: the resumed stream starts inside the second epoch of 8 photos.
  full = _train(_config(), 2 * k)
  resumed = _train(_config(), k, start=int(full[k - 1]["_position"]))
  _assert_batches_equal(full[k:], resumed)


# Folder of images.

def _save(path, colour, fmt):
  path.parent.mkdir(parents=True, exist_ok=True)
  PIL.Image.fromarray(np.full((20, 28, 3), colour, np.uint8)).save(path, format=fmt)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
  """train/{cat,dog} with 8 good images and 2 corrupt ones; validation with 3 good + 1 corrupt.

  Returns the root and {palette index: label} of the good images.
  """
  root = tmp_path_factory.mktemp("images")
  labels = {}
  for i in range(11):
    split = "train" if i < 8 else "validation"
    label = i % 2
    suffix, fmt = (".png", "PNG") if i % 3 else (".jpg", "JPEG")
    _save(root / split / ("cat", "dog")[label] / f"{i:02d}{suffix}", PALETTE[i], fmt)
    labels[i] = label
  (root / "train" / "cat" / "corrupt.jpg").write_bytes(np.random.default_rng(0).bytes(500))
  good_jpeg = (root / "train" / "dog" / "03.jpg").read_bytes()
  (root / "train" / "dog" / "truncated.jpg").write_bytes(good_jpeg[:len(good_jpeg) // 2])
  (root / "validation" / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
  return root, labels


def _folder_config(root, **data):
  return _config(source="folder", folder=str(root), **data)


def test_folder_skips_and_counts_corrupt_files(image_folder, caplog):
  root, labels = image_folder
  config = _folder_config(root)
  before = input_pipeline.num_skipped_files()
  with caplog.at_level(logging.WARNING):
    first, second = _train(config, 2, batch=8)  # 10 records per epoch, 8 of them decodable.
  ids = _colour_ids(first["image"])
  assert sorted(ids) == list(range(8))  # The first epoch: each good image once.
  assert list(first["label"]) == [labels[i] for i in ids]
  # The two batches hold the 16 good images of two epochs; every other record was skipped.
  skipped = input_pipeline.num_skipped_files() - before
  assert skipped == second["_position"] - 16 and skipped >= 2
  assert "corrupt.jpg" in caplog.text and "truncated.jpg" in caplog.text


def test_folder_eval_masks_nothing_real_and_counts_the_broken_file(image_folder):
  root, labels = image_folder
  config = _folder_config(root)
  assert input_pipeline.num_eval_examples(config) == 4  # Files, the broken one included.
  assert input_pipeline.num_classes(config) == 2
  before = input_pipeline.num_skipped_files()
  batches = _eval(config, batch=3)
  assert len(batches) == 2
  mask = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(mask, [1, 1, 1, 0, 0, 0])
  images = np.concatenate([b["image"] for b in batches])[:3]
  ids = _colour_ids(images)
  assert ids == [8, 10, 9]  # Sorted paths: cat/08, cat/10, dog/09.
  assert list(np.concatenate([b["label"] for b in batches])[:3]) == [labels[i] for i in ids]
  assert input_pipeline.num_skipped_files() - before == 1


def test_folder_resume_with_corrupt_files(image_folder):
  config = _folder_config(image_folder[0])
  k = 3
  full = _train(config, 2 * k, batch=3)
  resumed = _train(config, k, batch=3, start=int(full[k - 1]["_position"]))
  _assert_batches_equal(full[k:], resumed)


def test_folder_hosts_read_disjoint_files_covering_the_data(image_folder):
  config = _folder_config(image_folder[0])
  seen = []
  for index in range(2):
    iterator = input_pipeline.create_train_iterator(
        config, local_batch_size=1, process_index=index, process_count=2)
    ids = []
    while iterator.position < 5:  # Each host holds 5 of the 10 train files.
      ids.extend(_colour_ids(next(iterator)["image"]))
    seen.append(ids)
  assert set(seen[0]).isdisjoint(seen[1])
  assert sorted(seen[0] + seen[1]) == list(range(8))


def test_folder_layouts_and_hold_out(tmp_path):
  for i in range(20):
    _save(tmp_path / "flat" / f"{i:02d}.png", PALETTE[i % 12], "PNG")
    _save(tmp_path / "classes" / ("a", "b")[i % 2] / f"{i:02d}.png", PALETTE[i % 12], "PNG")
  flat = folder.scan(str(tmp_path / "flat"), "train", "validation", 0.1)
  assert len(flat.eval.paths) == 2 and len(flat.train.paths) == 18
  assert set(flat.train.labels + flat.eval.labels) == {0} and flat.class_names == ()
  classes = folder.scan(str(tmp_path / "classes"), "train", "validation", 0.25)
  assert classes.class_names == ("a", "b") and len(classes.eval.paths) == 5
  for split in (classes.train, classes.eval):
    assert all(f"{os.sep}{'ab'[label]}{os.sep}" in path
               for path, label in zip(split.paths, split.labels))
  assert set(classes.train.paths).isdisjoint(classes.eval.paths)


# TFDS.

class VqganJaxTinyImages(tfds.core.GeneratorBasedBuilder):
  """Flat-coloured images: 10 train, 2 test; label = palette index % 2."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(),
        "label": tfds.features.ClassLabel(num_classes=2)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(range(10)),
            "test": self._generate_examples(range(10, 12))}

  def _generate_examples(self, indices):
    for i in indices:
      yield i, {"image": np.full((18, 22, 3), PALETTE[i], np.uint8), "label": i % 2}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  VqganJaxTinyImages(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return data_dir


def _tfds_config(data_dir, **data):
  return _config(source="tfds", tfds_name="vqgan_jax_tiny_images", tfds_data_dir=str(data_dir),
                 eval_split="test", **data)


def test_tfds_by_name(tfds_dir):
  config = _tfds_config(tfds_dir)
  input_pipeline.validate_data_config(config)
  batches = _train(config, 4, batch=5)
  ids = [_colour_ids(b["image"]) for b in batches]
  for batch, batch_ids in zip(batches, ids):
    assert list(batch["label"]) == [i % 2 for i in batch_ids]
  assert sorted(ids[0] + ids[1]) == list(range(10))  # Each epoch: every example once.
  _assert_batches_equal(batches[2:], _train(config, 2, batch=5, start=10))
  # Two hosts read disjoint halves.
  halves = [np.concatenate([_colour_ids(b["image"]) for b in _train(config, 1, batch=5,
                                                                     process_index=i,
                                                                     process_count=2)])
            for i in range(2)]
  assert sorted(np.concatenate(halves)) == list(range(10))
  assert input_pipeline.num_eval_examples(config) == 2
  assert input_pipeline.num_classes(config) == 2
  evals = _eval(config, batch=3)
  assert len(evals) == 1 and list(evals[0]["mask"]) == [1, 1, 0]
  assert _colour_ids(evals[0]["image"][:2]) == [10, 11]


def test_tfds_resume_reads_nothing_it_skips(tfds_dir):
  from vqgan_jax.data import pipeline, sources  # pylint: disable=g-import-not-at-top
  config = _tfds_config(tfds_dir)
  settings = input_pipeline._settings(config, 0, 1)  # pylint: disable=protected-access
  start = 10**12 + 3  # Epoch 10^11: a skip would read 10^12 records first.
  source = sources.make_source(config.data, settings)
  batch = next(pipeline.train_dataset(source, settings, local_batch_size=5,
                                      start_position=start).as_numpy_iterator())
  assert list(batch["_positions"]) == list(range(start, start + 5))
  # Only the batch and what tf.data prefetched behind it were read.
  assert 5 <= source.reads < 1000, source.reads
  # The records are the ones that epoch's permutation names.
  records = [source._train[settings.train_index(p, 10)]["image"]  # pylint: disable=protected-access
             for p in range(start, start + 5)]
  named = np.stack([np.asarray(PIL.Image.open(io.BytesIO(r))) for r in records]) / 127.5 - 1
  assert _colour_ids(batch["image"]) == _colour_ids(named)


def test_tfds_epochs_are_different_permutations(tfds_dir):
  batches = _train(_tfds_config(tfds_dir), 6, batch=5)  # 3 epochs of 10.
  epochs = [np.concatenate([_colour_ids(b["image"]) for b in batches[e:e + 2]])
            for e in range(0, 6, 2)]
  for order in epochs:
    assert sorted(order) == list(range(10))
  assert len({tuple(order) for order in epochs}) == 3


def test_tfds_tfrecord_dataset_says_how_to_convert(tmp_path):
  VqganJaxTinyImages(data_dir=str(tmp_path)).download_and_prepare()  # TFRecord, TFDS's default.
  with pytest.raises(ValueError, match="(?s)cannot be read at a random position.*"
                                       "tfds convert_format --dataset_version_dir="):
    input_pipeline.validate_data_config(_tfds_config(tmp_path))


def test_tfds_missing_dataset_says_what_to_do(tmp_path, tfds_dir):
  del tfds_dir  # The builder class is registered; this data_dir has not prepared it.
  with pytest.raises(ValueError, match="(?s)not prepared.*tfds build.*tfds_manual_dir"):
    input_pipeline.validate_data_config(_tfds_config(tmp_path))
  with pytest.raises(ValueError, match="No TFDS dataset named"):
    input_pipeline.validate_data_config(_config(source="tfds", tfds_name="no_such_dataset_zz"))
  with pytest.raises(ValueError, match="tfds_name"):
    input_pipeline.validate_data_config(_config(source="tfds"))


# Config validation.

@pytest.mark.parametrize("data, message", [
    (dict(source="imagenet"), "use one of"),
    (dict(image_size=0), "must be a positive int"),
    (dict(source="folder"), "needs --config.data.folder"),
    (dict(source="folder", folder="/no/such/folder"), "is not a directory"),
    (dict(source="folder", folder="gs://bucket/images"), "read local disk only"),
])
def test_validate_data_config(data, message):
  with pytest.raises(ValueError, match=message):
    input_pipeline.validate_data_config(_config(**data))


def test_validate_rejects_a_folder_without_images(tmp_path):
  (tmp_path / "notes.txt").write_text("no images here")
  with pytest.raises(ValueError, match="No images"):
    input_pipeline.validate_data_config(_folder_config(tmp_path))


def test_folder_of_only_undecodable_files_is_an_error_not_a_hang(tmp_path):
  for i in range(3):
    (tmp_path / f"broken_{i}.jpg").write_bytes(b"not an image at all")
  config = _folder_config(tmp_path, folder_eval_fraction=0.3)
  with pytest.raises(ValueError, match="can be decoded"):
    input_pipeline.create_train_iterator(config, local_batch_size=2, process_index=0,
                                         process_count=1)
