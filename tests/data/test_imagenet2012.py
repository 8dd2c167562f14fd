"""The real TFDS `imagenet2012` builder, prepared from a manual-download folder in the ILSVRC2012
layout (tests/imagenet_layout.py) as `--config.data.tfds_manual_dir` prepares it, read by the
pipeline of `configs/imagenet.py`: labels, host shards, exact resume, per-epoch order."""
import numpy as np
import pytest

from tests import imagenet_layout
from tests.helpers import load_config
from vqgan_jax.data import input_pipeline, pipeline, sources, tfds_data

BATCH = 6


@pytest.fixture(scope="module")
def config(imagenet_manual_dir, tmp_path_factory):
  config = load_config("imagenet", "shrink")
  config.data.tfds_manual_dir = str(imagenet_manual_dir)
  config.data.tfds_data_dir = str(tmp_path_factory.mktemp("tfds_imagenet"))
  builder = tfds_data.prepared_builder(config.data)  # TFDS's own preparation.
  assert builder.is_prepared()
  return config


def _train(config, n, process_index=0, process_count=1, start=0):
  iterator = input_pipeline.create_train_iterator(
      config, local_batch_size=BATCH, process_index=process_index,
      process_count=process_count, start_position=start)
  return [next(iterator) for _ in range(n)]


def test_prepared_splits_and_labels(config):
  builder = tfds_data.find_builder(config.data)
  assert builder.info.file_format.value == tfds_data.FILE_FORMAT
  splits = builder.info.splits
  assert splits["train"].num_examples == len(imagenet_layout.CLASSES) * (
      imagenet_layout.TRAIN_PER_CLASS)
  assert splits["validation"].num_examples == imagenet_layout.NUM_VAL
  assert input_pipeline.num_classes(config) == 1000
  assert input_pipeline.num_eval_examples(config) == imagenet_layout.NUM_VAL
  labels = np.concatenate([b["label"] for b in _train(config, 7)])  # 42 >= one epoch of 40.
  assert set(labels) == set(range(len(imagenet_layout.CLASSES)))  # labels.txt's first four.
  evals = list(input_pipeline.create_eval_iterator(config, local_batch_size=5, process_index=0,
                                                   process_count=1))
  images = np.concatenate([b["image"][b["mask"] > 0] for b in evals])
  assert images.shape == (imagenet_layout.NUM_VAL, 16, 16, 3)


def test_resume_equals_uninterrupted_and_hosts_split_the_data(config):
  full = _train(config, 10)  # 60 records: the resume lands in the second epoch.
  resumed = _train(config, 4, start=int(full[5]["_position"]))
  for a, b in zip(full[6:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  settings = [input_pipeline._settings(config, i, 2) for i in range(2)]  # pylint: disable=protected-access
  shards = [sources.make_source(config.data, s) for s in settings]
  assert [s.num_train for s in shards] == [20, 20]
  names = [{shard._train[i]["file_name"] for i in range(20)} for shard in shards]  # pylint: disable=protected-access
  assert names[0].isdisjoint(names[1]) and len(names[0] | names[1]) == 40


def test_resume_reads_only_what_it_returns(config):
  settings = input_pipeline._settings(config, 0, 1)  # pylint: disable=protected-access
  source = sources.make_source(config.data, settings)
  start = 40 * 10**9 + 17  # A billion epochs in.
  batch = next(pipeline.train_dataset(source, settings, local_batch_size=BATCH,
                                      start_position=start).as_numpy_iterator())
  assert list(batch["_positions"]) == list(range(start, start + BATCH))
  assert BATCH <= source.reads < 1000, source.reads
