"""Finds a TFDS dataset by name and checks, before anything compiles, that it can be read.

Datasets are read at random positions (`builder.as_data_source`), which TFDS supports for the
ArrayRecord file format only: datasets prepared here are written as ArrayRecord, and one
prepared as TFRecord gets an error saying how to convert it in place.
"""
from __future__ import annotations

import os

import ml_collections
import tensorflow_datasets as tfds

IMAGE_KEY, LABEL_KEY = "image", "label"
FILE_FORMAT = "array_record"


def _not_prepared_message(data: ml_collections.ConfigDict, builder) -> str:
  data_dir = data.tfds_data_dir or "~/tensorflow_datasets (the TFDS default)"
  return (
      f"TFDS dataset {data.tfds_name!r} is not prepared in {data_dir} (looked for "
      f"{builder.data_path}). Either prepare it once with\n"
      f"  tfds build {data.tfds_name} --file_format=array_record --data_dir=DATA_DIR "
      "[--manual_dir=MANUAL_DIR]\n"
      "and set --config.data.tfds_data_dir=DATA_DIR, or set "
      "--config.data.tfds_manual_dir=MANUAL_DIR to prepare it on first use (single-process runs "
      "only). Datasets that need a manual download, such as imagenet2012, read it from "
      "MANUAL_DIR (for ImageNet: the folder holding ILSVRC2012_img_train.tar and "
      "ILSVRC2012_img_val.tar).")


def find_builder(data: ml_collections.ConfigDict):
  """The dataset's builder; ValueError saying what to set when it cannot be read or prepared."""
  if not data.tfds_name:
    raise ValueError("config.data.source='tfds' needs --config.data.tfds_name "
                     "(e.g. imagenet2012 or celeb_a_hq/256).")
  try:
    builder = tfds.builder(data.tfds_name, data_dir=data.tfds_data_dir or None)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"No TFDS dataset named {data.tfds_name!r}; set --config.data.tfds_name "
                     "to a name from `tfds.list_builders()`.") from e
  if not builder.is_prepared():
    if not data.tfds_manual_dir:
      raise ValueError(_not_prepared_message(data, builder))
    if not os.path.isdir(data.tfds_manual_dir):
      raise ValueError(f"config.data.tfds_manual_dir={data.tfds_manual_dir!r} is not a "
                       "directory. " + _not_prepared_message(data, builder))
    # Prepared here, it is written in the format it is read in.
    return tfds.builder(data.tfds_name, data_dir=data.tfds_data_dir or None,
                        file_format=FILE_FORMAT)
  check_prepared(data, builder)
  return builder


def check_prepared(data: ml_collections.ConfigDict, builder) -> None:
  splits = sorted(builder.info.splits)
  for field in ("train_split", "eval_split"):
    if data[field] not in builder.info.splits:
      raise ValueError(f"config.data.{field}={data[field]!r} is not a split of "
                       f"{data.tfds_name!r}; it has {splits}.")
  if IMAGE_KEY not in builder.info.features:
    raise ValueError(f"TFDS dataset {data.tfds_name!r} has no {IMAGE_KEY!r} feature.")
  formats = {str(getattr(f, "value", f)) for f in builder.info.available_file_formats()}
  if FILE_FORMAT not in formats:
    raise ValueError(
        f"TFDS dataset {data.tfds_name!r} in {builder.data_dir} is stored as {sorted(formats)}, "
        "which cannot be read at a random position (resume and per-epoch shuffling need it). "
        "Convert it once, next to the existing files, with\n"
        f"  tfds convert_format --dataset_version_dir={builder.data_dir} "
        f"--out_file_format={FILE_FORMAT}\n"
        f"or prepare it again with `tfds build {data.tfds_name} --file_format={FILE_FORMAT}`.")


def condition_keys(builder, data: ml_collections.ConfigDict,
                   features: tuple[str, ...]) -> dict[str, str]:
  """{'segmentation' | 'caption': the dataset's feature path} for the stored conditions the job
  needs (edges are computed); ValueError naming the config field when the dataset lacks one."""
  keys = {}
  for feature, setting in (("segmentation", "tfds_segmentation_key"),
                           ("caption", "tfds_caption_key")):
    if feature not in features:
      continue
    path = data[setting]
    node = builder.info.features
    try:
      for part in path.split("/"):
        node = node[part]
    except (KeyError, TypeError):
      raise ValueError(f"TFDS dataset {data.tfds_name!r} has no feature {path!r} for its "
                       f"{feature} condition; set --config.data.{setting} to one of "
                       f"{sorted(builder.info.features)} (paths into nested features with "
                       "'/').") from None
    keys[feature] = path
  if "sketch" in features:
    raise ValueError("config.data.source='tfds' does not read drawings; use "
                     "config.data.source='folder' with config.data.sketch_folder.")
  return keys


def feature_value(example, path: str):
  """The value at a '/'-separated feature path of a decoded example; the first element of a
  sequence (e.g. the first of several captions)."""
  for part in path.split("/"):
    example = example[part]
  if isinstance(example, (list, tuple)) or (hasattr(example, "ndim") and example.ndim > 0 and
                                             not isinstance(example, (bytes, str))):
    example = example[0]
  return example.encode("utf-8") if isinstance(example, str) else example


def random_access(builder, split, condition_keys: dict[str, str] | None = None):
  """The split (or `split_for_jax_process` shard) as a sequence of examples, images (and label
  maps among the `condition_keys`) encoded."""
  decoders = {IMAGE_KEY: tfds.decode.SkipDecoding()}
  if condition_keys and "segmentation" in condition_keys:
    decoders[condition_keys["segmentation"]] = tfds.decode.SkipDecoding()
  return builder.as_data_source(split=split, decoders=decoders, file_format=FILE_FORMAT)


def prepared_builder(data: ml_collections.ConfigDict, process_count: int = 1):
  """The builder, prepared from `tfds_manual_dir` first if it was not prepared yet.

  Only a single process prepares: several hosts would race on the same data_dir.
  """
  builder = find_builder(data)
  if not builder.is_prepared():
    if process_count > 1:
      raise ValueError("Preparing on first use needs a single-process run. "
                       + _not_prepared_message(data, builder))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=data.tfds_manual_dir))
    check_prepared(data, builder)
  return builder


def num_classes(builder) -> int:
  """Classes of the 'label' feature, or 1 when the dataset has no labels."""
  features = builder.info.features
  return getattr(features[LABEL_KEY], "num_classes", 1) if LABEL_KEY in features else 1
