"""One process's view of each data source: its share of the records, read by index.

Every source is indexable: the pipeline asks for train record i (a path, encoded bytes or a
photo index) of this process's share and turns it into an image only then, so the per-epoch
order is a permutation of indices (`preprocess.stream_index`) and a resume reads nothing before
its position. Every source has the same interface:
  num_train, num_eval, num_eval_global   record counts (train: per epoch in this process)
  train_record(index)                    this process's train record `index` (graph op)
  decode(record)                         (uint8 (h, w, 3) image, label); raises if undecodable
  eval_records(), eval_example(record)   eval records in a fixed order, and their final crops
  describe_train(position), describe_eval(index)   a record's name, for skip warnings
  conditions(record)                     the record's stored conditions (`Conditions`)
  derives_conditions                     True: label maps, sketches and captions are derived
                                         from the pixels (`vqgan_jax.data.derived`), not read
"""
from __future__ import annotations

import dataclasses
import functools

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vqgan_jax.data import condition_files, embedded
from vqgan_jax.data import folder, preprocess, tfds_data


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything that shapes the examples, with automatic values already resolved."""
  seed: int
  process_index: int
  process_count: int
  crop_hw: tuple[int, int]
  resize_size: int
  scale_jitter: float
  random_flip: bool
  # Condition features the job needs besides the image ('segmentation', 'edges', 'sketch',
  # 'caption'; see `input_pipeline.condition_features`), and their settings.
  features: tuple[str, ...] = ()
  num_segmentation_classes: int = 0
  caption_length: int = 0

  def train_index(self, position: int, num_records: int) -> int:
    """The record index at a train stream position (eager; for messages)."""
    return int(preprocess.stream_index(position, num_records, self.seed, self.process_index))


@dataclasses.dataclass
class Conditions:
  """A record's stored conditions: pixel-aligned uint8 maps (at the image's size before any
  resize), a caption (scalar tf.string) and a `condition_files` problem code."""
  maps: dict[str, tf.Tensor] = dataclasses.field(default_factory=dict)
  caption: tf.Tensor | None = None
  problem: tf.Tensor | int = 0


def stored_conditions(encoded: dict[str, tf.Tensor], caption, image) -> Conditions:
  """Conditions of encoded maps (`segmentation`: a label PNG, `sketch`: an image), each checked
  against the image's size, and a caption."""
  result = Conditions(caption=caption)
  problems = [tf.constant(condition_files.OK)]
  if "segmentation" in encoded:
    ids, problem = tf.numpy_function(condition_files.decode_label_map, [encoded["segmentation"]],
                                     (tf.uint8, tf.int64), stateful=False)
    result.maps["segmentation"] = tf.ensure_shape(ids, (None, None, 1))
    problems.append(tf.cast(problem, tf.int32))
  if "sketch" in encoded:
    result.maps["sketch"] = preprocess.decode_rgb(encoded["sketch"])
  for name, x in list(result.maps.items()):
    same = tf.reduce_all(tf.shape(x)[:2] == tf.shape(image)[:2])
    problems.append(tf.where(same, condition_files.OK, condition_files.WRONG_SIZE))
    # A wrong-size map is still resized to the image (shapes must agree); the host raises.
    result.maps[name] = tf.cond(same, lambda x=x: x, lambda x=x, name=name: preprocess.resize_uint8(
        x, tf.shape(image)[:2], labels=name == "segmentation"))
  result.problem = tf.reduce_max(tf.stack(problems))
  return result


class _FileEval:
  """Eval crops of decoded files: resize the shorter side, then center crop."""
  settings: Settings
  derives_conditions = False

  def conditions(self, record, image) -> Conditions:
    del record, image
    return Conditions()

  def eval_example(self, record):
    """(image, label, Conditions) of an eval record, maps cropped with the image."""
    image, label = self.decode(record)
    conditions = self.conditions(record, image)
    image, conditions.maps = preprocess.eval_crop(
        image, shorter_side=self.settings.resize_size, crop_hw=self.settings.crop_hw,
        aligned=conditions.maps)
    return image, label, conditions


class FolderSource(_FileEval):
  """Every `process_count`-th file of each split; an exact per-epoch permutation of them."""

  def __init__(self, dataset: folder.FolderDataset, settings: Settings,
               data: ml_collections.ConfigDict | None = None):
    self.settings = settings
    shard = slice(settings.process_index, None, settings.process_count)
    self._train_paths = dataset.train.paths[shard]
    self._eval_paths = dataset.eval.paths[shard]
    self._train = self._records(self._train_paths, dataset.train.labels[shard], data)
    self._eval = self._records(self._eval_paths, dataset.eval.labels[shard], data)
    self.num_train = len(self._train_paths)
    self.num_eval = len(self._eval_paths)
    self.num_eval_global = len(dataset.eval.paths)

  def _records(self, paths, labels, data) -> dict[str, tf.Tensor]:
    """Per-record tensors: path, label and the stored conditions' paths or captions (each
    checked to exist now, so a missing one fails before training, naming the file)."""
    records = {"path": tf.constant(paths, tf.string), "label": tf.constant(labels, tf.int32)}
    for kind, setting in (("segmentation", "segmentation_folder"), ("sketch", "sketch_folder")):
      if kind in self.settings.features:
        records[kind] = tf.constant(condition_files.find_maps(
            paths, data.folder, data[setting], kind, setting), tf.string)
    if "caption" in self.settings.features:
      records["caption"] = tf.constant(condition_files.read_captions(paths), tf.string)
    return records

  def train_record(self, index) -> dict[str, tf.Tensor]:
    return {name: tf.gather(values, index) for name, values in self._train.items()}

  def decode(self, record):
    return preprocess.decode_rgb(tf.io.read_file(record["path"])), record["label"]

  def conditions(self, record, image) -> Conditions:
    """The record's label map / sketch (checked against the image's size) and caption."""
    encoded = {name: tf.io.read_file(record[name]) for name in ("segmentation", "sketch")
               if name in record}
    return stored_conditions(encoded, record.get("caption"), image)

  def eval_records(self) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(self._eval)

  def describe_train(self, position: int) -> str:
    return self._train_paths[self.settings.train_index(position, self.num_train)]

  def check_decodable(self, max_attempts: int = 256) -> None:
    """Raises unless one of this host's first `max_attempts` train files decodes: a folder of
    only undecodable files would otherwise make the train stream skip forever."""
    for path in self._train_paths[:max_attempts]:
      try:
        preprocess.decode_rgb(tf.io.read_file(path))
        return
      except (tf.errors.OpError, ValueError):
        continue
    tried = min(max_attempts, len(self._train_paths))
    raise ValueError(
        f"None of the first {tried} training files of process {self.settings.process_index} "
        f"can be decoded as an image (e.g. {self._train_paths[0]}); check "
        "config.data.folder (JPEG, PNG, GIF or BMP files are read).")

  def describe_eval(self, index: int) -> str:
    return self._eval_paths[index]


class TfdsSource(_FileEval):
  """This process's `tfds.split_for_jax_process` shard, read at random positions through TFDS's
  ArrayRecord data source (`builder.as_data_source`); images stay encoded until `decode`.

  `reads` counts the records this process has read (train and eval), so tests can check that
  a resume reads nothing it skips.
  """

  def __init__(self, builder, data: ml_collections.ConfigDict, settings: Settings):
    self.settings = settings
    self._name = data.tfds_name
    self._has_label = tfds_data.LABEL_KEY in builder.info.features
    self._keys = tfds_data.condition_keys(builder, data, settings.features)
    self._train_split, self._eval_split = (
        tfds.split_for_jax_process(split, process_index=settings.process_index,
                                   process_count=settings.process_count)
        for split in (data.train_split, data.eval_split))
    self._train = tfds_data.random_access(builder, self._train_split, self._keys)
    self._eval = tfds_data.random_access(builder, self._eval_split, self._keys)
    self.num_train = len(self._train)
    self.num_eval = len(self._eval)
    self.num_eval_global = builder.info.splits[data.eval_split].num_examples
    self.reads = 0

  def _read(self, records, index) -> dict[str, tf.Tensor]:
    names = sorted(self._keys)  # Stored conditions: encoded masks, caption strings.

    def read(i):
      self.reads += 1
      example = records[int(i)]
      label = example[tfds_data.LABEL_KEY] if self._has_label else 0
      extra = [np.bytes_(tfds_data.feature_value(example, self._keys[n])) for n in names]
      return (np.bytes_(example[tfds_data.IMAGE_KEY]), np.int32(label), *extra)

    values = tf.numpy_function(read, [index], (tf.string, tf.int32) + (tf.string,) * len(names),
                               stateful=False)
    record = {"image": tf.ensure_shape(values[0], []), "label": tf.ensure_shape(values[1], [])}
    record.update({n: tf.ensure_shape(v, []) for n, v in zip(names, values[2:])})
    return record

  def conditions(self, record, image) -> Conditions:
    encoded = {n: record[n] for n in ("segmentation", "sketch") if n in record}
    return stored_conditions(encoded, record.get("caption"), image)

  def train_record(self, index) -> dict[str, tf.Tensor]:
    return self._read(self._train, index)

  def decode(self, record):
    return preprocess.decode_rgb(record["image"]), record["label"]

  def eval_records(self) -> tf.data.Dataset:
    return tf.data.Dataset.range(self.num_eval).map(
        lambda i: self._read(self._eval, i), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True)

  def describe_train(self, position: int) -> str:
    index = self.settings.train_index(position, self.num_train)
    return f"{self._name} {self._train_split}, record {index} (train stream position {position})"

  def describe_eval(self, index: int) -> str:
    return f"{self._name} {self._eval_split}, example {index}"


@functools.lru_cache(maxsize=8)
def _resized_photos(indices: tuple[int, ...], shorter_side: float,
                    crop_hw: tuple[int, int]) -> tuple[np.ndarray, ...]:
  photos = embedded.load_photos()
  return tuple(preprocess.resize_to_cover(photos[i], shorter_side, crop_hw).numpy()
               for i in indices)


def _grid_crops(photo: np.ndarray, crop_hw: tuple[int, int]) -> list[np.ndarray]:
  """Non-overlapping crops on a grid centred in the photo, in raster order."""
  (height, width), (rows, cols) = crop_hw, np.array(photo.shape[:2]) // crop_hw
  top, left = (photo.shape[0] - rows * height) // 2, (photo.shape[1] - cols * width) // 2
  return [photo[top + r * height:top + (r + 1) * height, left + c * width:left + (c + 1) * width]
          for r in range(rows) for c in range(cols)]


EMBEDDED_EVAL_SCALES = (1.0, 1.25, 1.5)


class EmbeddedSource:
  """The bundled photos (see `vqgan_jax.data.embedded`).

  Train: every process uses every train photo (there are too few to shard) in its own
  per-epoch order; records are photo indices, and each example is a fresh random crop.
  Eval: grids of crops of the held-out photos at the ends and middle of the training scale
  range (`EMBEDDED_EVAL_SCALES` times the shorter side), every `process_count`-th crop per
  process. Three scales give 226 crops at 32x32 (14,464 tokens at f4): enough for codebook
  usage of a 1024-code codebook to be measurable (48 crops = 3,072 tokens could show at most
  95% of 1024 codes even if all were equally likely).
  """

  def __init__(self, settings: Settings):
    self.settings = settings
    crop_hw = settings.crop_hw
    self._train_ids = embedded.split_indices("train")
    # Stored once at the largest train scale; each example then only shrinks a small photo.
    largest = settings.resize_size * (1.0 + settings.scale_jitter)
    train = _resized_photos(self._train_ids, largest, crop_hw)
    shapes = np.array([p.shape[:2] for p in train])
    stacked = np.zeros((len(train), *shapes.max(0), 3), np.uint8)
    for slot, photo in zip(stacked, train):
      slot[:photo.shape[0], :photo.shape[1]] = photo
    self._photos = tf.constant(stacked)
    self._shapes = tf.constant(shapes, tf.int32)
    self._labels = tf.constant(self._train_ids, tf.int32)
    self.num_train = len(self._train_ids)

    eval_ids = embedded.split_indices("eval")
    crops, labels = [], []
    for scale in EMBEDDED_EVAL_SCALES:
      resized = _resized_photos(eval_ids, settings.resize_size * scale, crop_hw)
      for label, photo in zip(eval_ids, resized):
        grid = _grid_crops(photo, crop_hw)
        crops.extend(grid)
        labels.extend([label] * len(grid))
    shard = slice(settings.process_index, None, settings.process_count)
    self._eval_crops = np.array(crops[shard], np.uint8).reshape(-1, *crop_hw, 3)
    self._eval_labels = np.array(labels[shard], np.int32)
    self.num_eval = len(self._eval_labels)
    self.num_eval_global = len(labels)

  derives_conditions = True

  def conditions(self, record, image) -> Conditions:
    del record, image
    return Conditions()

  def train_record(self, index) -> tf.Tensor:
    return index

  def decode(self, record):
    index = tf.cast(record, tf.int32)
    height, width = tf.unstack(self._shapes[index])
    return self._photos[index, :height, :width], self._labels[index]

  def eval_records(self) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((self._eval_crops, self._eval_labels))

  def eval_example(self, record):
    image, label = record
    return image, label, Conditions()

  def describe_train(self, position: int) -> str:
    return f"embedded train stream position {position}"

  def describe_eval(self, index: int) -> str:
    return f"embedded eval crop {index}"


def make_source(data: ml_collections.ConfigDict, settings: Settings):
  """The source named by `data.source` (already validated)."""
  if data.source == "embedded":
    return EmbeddedSource(settings)
  if data.source == "folder":
    return FolderSource(folder.scan(data.folder, data.train_split, data.eval_split,
                                    data.folder_eval_fraction), settings, data)
  return TfdsSource(tfds_data.prepared_builder(data, settings.process_count), data, settings)
