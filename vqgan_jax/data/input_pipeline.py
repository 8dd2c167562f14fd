"""The one data pipeline of every job: deterministic, exactly resumable, sharded over hosts.

    train = create_train_iterator(config, local_batch_size=8, process_index=0, process_count=1)
    batch = next(train)  # image (8, H, W, 3) float32 in [-1, 1], label (8,) int32, _position

Sources (`config.data.source`):
  'embedded'  Real photos bundled with scikit-image and scikit-learn: no download, works right
              after pip install (see `vqgan_jax.data.embedded`; labels are photo indices). Train:
              random-scale random crops of the train photos; eval: a fixed grid of crops of
              the held-out photos.
  'tfds'      A prepared TFDS dataset in ArrayRecord format (random access; see
              `vqgan_jax.data.tfds_data`); each host reads its `tfds.split_for_jax_process` shard.
  'folder'    Local images: root/<split>/<class>/*, root/<class>/* or root/* (see
              `vqgan_jax.data.folder`); each host takes every process_count-th file.
  'codes'     Codes written once by `--mode=tokenize` (`vqgan_jax.data.codes`): batches of
              `codes` (B, h*w) int32 and `label` instead of images, for the prior.
Train examples: resize the shorter side (bicubic, antialiased), random crop `image_size`,
optional horizontal flip. Eval examples: resize the shorter side, center crop.

Determinism and resume: the train stream of a host is an infinite sequence of source records,
every epoch a fresh permutation of all of them drawn from (config.seed, host, epoch) (not a
shuffle buffer: every source is read by index, TFDS through its ArrayRecord files); crop and
flip randomness comes from stateless ops keyed by (config.seed, host, stream position). A
resume computes the record at its position directly and reads nothing before it. Every batch carries `_position`,
the number of source records consumed after it (undecodable ones included, so without them it
is k * local_batch_size after k batches); `create_train_iterator(..., start_position=p)`
continues bitwise-identically where a run that had reached `p` stopped.

Undecodable files are dropped, never fatal and never silent: `num_skipped_files()` counts them
(per process, train and eval) and the first ones are logged with their path.

Eval: every eval image exactly once in a fixed order; each host yields the same number of
batches, the last ones padded with `mask` 0.0 (1.0 for real images).

`config.seed` seeds the data order and augmentation. `config.data` fields:
  source               'embedded' | 'tfds' | 'folder' | 'codes'.
  image_size           Crop size: an int, or (height, width). A ConfigDict keeps a field's type,
                       so a config that wants a tuple sets it inside `with config.ignore_type():`;
                       then `--config.data.image_size='(H, W)'` works on the command line.
  resize_size          Shorter side before cropping (never below the crop). 0: the crop's larger
                       side for 'tfds'/'folder', 4x it for 'embedded' (a crop is then a patch of
                       a photo, not a shrunken photo).
  scale_jitter         Train only: the shorter side is drawn per example from
                       [resize_size, resize_size * (1 + scale_jitter)]. -1: 0.5 for 'embedded',
                       0 otherwise.
  random_flip          Train only: random horizontal flips.
  train_split          TFDS split, or a folder's train subfolder (e.g. 'train').
  eval_split           TFDS split, or a folder's eval subfolder (e.g. 'validation').
  tfds_name            TFDS dataset, e.g. 'imagenet2012' or 'celeb_a_hq/256'.
  tfds_data_dir        Where TFDS datasets are prepared ('': the TFDS default).
  tfds_manual_dir      Manual downloads (ImageNet's tars); if set and the dataset is not
                       prepared yet, it is prepared on first use.
  folder               'folder' only: the root folder.
  folder_eval_fraction 'folder' without split subfolders: fraction of files held out for eval.
  codes_dir            'codes' only: the dir `--mode=tokenize` wrote (its manifest.json).
  num_segmentation_classes  Class ids of the label maps ('segmentation'; for 'embedded' the
                       number of colour clusters the maps are derived with).
  segmentation_folder, sketch_folder  'folder' only: where the label maps / drawings live,
                       mirroring config.data.folder (see `vqgan_jax.data.condition_files`).
  caption_length       Byte tokens of a caption ('text' conditioning; longer ones are cut).
  tfds_segmentation_key, tfds_caption_key  'tfds' only: the features holding the label map (an
                       image feature of class ids, e.g. oxford_iiit_pet's 'segmentation_mask')
                       and the caption (a text feature; a path like 'captions/text' into nested
                       features, the first of a sequence).

Conditions (`condition_features`): a job whose `config.modality` (tokenizer) or
`config.conditioning` (prior) names 'segmentation', 'edges', 'sketch' or 'text' gets, in every
batch, `segmentation` (B, H, W) int32, `edges` / `sketch` (B, H, W, 3) float32 in [-1, 1] or
`caption` (B, caption_length) int32 (`vqgan_jax.data.text`), cropped and flipped with the
image. 'folder' reads them beside the images, 'tfds' from the dataset's features, 'embedded'
derives them from the pixels
(`vqgan_jax.data.derived`), edges are computed for every source. A map of the wrong size or
with an unknown class id stops the job with an error naming the image.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Iterator

import ml_collections
import numpy as np

from vqgan_jax.data import embedded

# The vqgan_jax.data modules that import TensorFlow are imported by the functions that use them,
# so loading a config stays fast.

SOURCES = ("embedded", "tfds", "folder", "codes")
EMBEDDED_RESIZE_FACTOR = 4
EMBEDDED_SCALE_JITTER = 0.5
_WARN_FIRST, _WARN_EVERY = 10, 1000


def default_data_config() -> ml_collections.ConfigDict:
  """Every `config.data` field with its default (the embedded photos at 256x256)."""
  return ml_collections.ConfigDict(dict(
      source="embedded",
      image_size=256,
      resize_size=0,
      scale_jitter=-1.0,
      random_flip=True,
      train_split="train",
      eval_split="validation",
      tfds_name="",
      tfds_data_dir="",
      tfds_manual_dir="",
      folder="",
      folder_eval_fraction=0.05,
      codes_dir="",
      num_segmentation_classes=0,
      segmentation_folder="",
      sketch_folder="",
      caption_length=64,
      tfds_segmentation_key="segmentation_mask",
      tfds_caption_key="caption",
  ))


def imagenet_data_config(image_size: int = 256) -> ml_collections.ConfigDict:
  """TFDS `imagenet2012` at `image_size` (shorter side resized to it, then cropped), as the
  ImageNet configs use; `--config.data.tfds_manual_dir` points at the downloaded tars."""
  data = default_data_config()
  data.update(dict(source="tfds", tfds_name="imagenet2012", train_split="train",
                   eval_split="validation", image_size=image_size, resize_size=image_size,
                   random_flip=True))
  return data


def crop_shape(image_size) -> tuple[int, int]:
  """`config.data.image_size` as (height, width); ValueError unless positive."""
  shape = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
  if len(shape) != 2 or not all(isinstance(s, int) and s > 0 for s in shape):
    raise ValueError(f"config.data.image_size={image_size!r} must be a positive int or a "
                     "(height, width) pair of positive ints, e.g. --config.data.image_size=256.")
  return shape


CONDITION_FEATURES = {"segmentation": "segmentation", "edges": "edges", "sketch": "sketch",
                      "text": "caption"}


def condition_features(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Batch features beyond `image` and `label` the job needs: from `config.modality` (a
  tokenizer of label maps, edges or drawings) and `config.conditioning` (a prior conditioned
  on them or on captions)."""
  wanted = {config.get("modality", "image"), config.get("conditioning", "none")}
  return tuple(feature for kind, feature in CONDITION_FEATURES.items() if kind in wanted)


def validate_data_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError saying what to change when the data config cannot work."""
  data = config.data
  features = condition_features(config)
  if "segmentation" in features and data.num_segmentation_classes < 2:
    raise ValueError(f"config.data.num_segmentation_classes={data.num_segmentation_classes}: "
                     "segmentation needs the number of class ids (>= 2) of the label maps.")
  if "segmentation" in features and data.num_segmentation_classes > 256:
    raise ValueError("config.data.num_segmentation_classes must be <= 256 (8-bit label PNGs).")
  if "caption" in features and data.caption_length < 1:
    raise ValueError(f"config.data.caption_length={data.caption_length} must be >= 1.")
  if "sketch" in features and data.source == "tfds":
    raise ValueError("config.data.source='tfds' does not read drawings; use "
                     "config.data.source='folder' with config.data.sketch_folder.")
  if features and data.source == "codes":
    raise ValueError(f"config.data.source='codes' holds no {features} conditions; train from "
                     "the image source.")
  if data.source not in SOURCES:
    raise ValueError(f"config.data.source={data.source!r}; use one of {SOURCES}.")
  crop_shape(data.image_size)
  if data.resize_size < 0:
    raise ValueError(f"config.data.resize_size={data.resize_size} must be >= 0 (0: automatic).")
  if data.scale_jitter < 0 and data.scale_jitter != -1:
    raise ValueError(f"config.data.scale_jitter={data.scale_jitter} must be >= 0 "
                     "(or -1: automatic).")
  if data.source == "codes":
    from vqgan_jax.data import codes  # pylint: disable=g-import-not-at-top
    codes.read_manifest(data.codes_dir)
  elif data.source == "folder":
    if not 0 < data.folder_eval_fraction < 1:
      raise ValueError(f"config.data.folder_eval_fraction={data.folder_eval_fraction} must be "
                       "in (0, 1).")
    from vqgan_jax.data import folder  # pylint: disable=g-import-not-at-top
    folder.scan(data.folder, data.train_split, data.eval_split, data.folder_eval_fraction)
  elif data.source == "tfds":
    from vqgan_jax.data import tfds_data  # pylint: disable=g-import-not-at-top
    tfds_data.find_builder(data)


class _SkipLog:
  """Undecodable records dropped by this process's pipelines; warns for the first ones."""

  def __init__(self):
    self.count = 0

  def record(self, ids: np.ndarray, describe: Callable[[int], str]) -> None:
    for record_id in ids:
      self.count += 1
      if self.count <= _WARN_FIRST or self.count % _WARN_EVERY == 0:
        logging.warning("Skipped undecodable image (%d so far; the first %d and every %dth are "
                        "logged): %s", self.count, _WARN_FIRST, _WARN_EVERY,
                        describe(int(record_id)))


_SKIPS = _SkipLog()


def num_skipped_files() -> int:
  """Undecodable images dropped so far by this process (train and eval pipelines)."""
  return _SKIPS.count


def _settings(config: ml_collections.ConfigDict, process_index: int, process_count: int):
  from vqgan_jax.data.sources import Settings  # pylint: disable=g-import-not-at-top
  data = config.data
  crop_hw = crop_shape(data.image_size)
  is_embedded = data.source == "embedded"
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, {process_count}).")
  return Settings(
      seed=config.seed, process_index=process_index, process_count=process_count,
      crop_hw=crop_hw,
      resize_size=data.resize_size or (EMBEDDED_RESIZE_FACTOR if is_embedded else 1) * max(crop_hw),
      scale_jitter=(data.scale_jitter if data.scale_jitter >= 0 else
                    EMBEDDED_SCALE_JITTER if is_embedded else 0.0),
      random_flip=data.random_flip, features=condition_features(config),
      num_segmentation_classes=data.num_segmentation_classes,
      caption_length=data.caption_length)


def example_settings(config: ml_collections.ConfigDict, process_index: int, process_count: int):
  """The resolved `sources.Settings` (crop, resize, jitter, ...) of one process's examples."""
  return _settings(config, process_index, process_count)


def train_source(config: ml_collections.ConfigDict, process_index: int, process_count: int):
  """(one process's `vqgan_jax.data.sources` source, its settings): records read by index."""
  return _source(config, process_index, process_count)


def _source(config: ml_collections.ConfigDict, process_index: int, process_count: int):
  from vqgan_jax.data import sources  # pylint: disable=g-import-not-at-top
  validate_data_config(config)
  settings = _settings(config, process_index, process_count)
  return sources.make_source(config.data, settings), settings


class TrainIterator:
  """Infinite iterator of numpy train batches: `image`, `label` and `_position`.

  `position` (also each batch's `_position`) counts the source records consumed so far.
  """

  def __init__(self, batches: Iterator[dict[str, np.ndarray]], start_position: int,
               describe: Callable[[int], str]):
    self._batches = batches
    self._describe = describe
    self.position = start_position

  def __iter__(self) -> TrainIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._batches)
    positions = batch.pop("_positions")
    raise_condition_problems(batch, positions, self._describe)
    end = int(positions[-1]) + 1
    _SKIPS.record(np.setdiff1d(np.arange(self.position, end), positions), self._describe)
    self.position = end
    batch["_position"] = np.int64(end)
    return batch


def create_train_iterator(config: ml_collections.ConfigDict, *, local_batch_size: int,
                          process_index: int, process_count: int,
                          start_position: int = 0) -> TrainIterator:
  """This host's infinite train stream, starting at source record `start_position`."""
  from vqgan_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  if local_batch_size <= 0 or start_position < 0:
    raise ValueError(f"local_batch_size={local_batch_size} must be positive and "
                     f"start_position={start_position} non-negative.")
  if config.data.source == "codes":
    from vqgan_jax.data import codes  # pylint: disable=g-import-not-at-top
    return codes.create_train_iterator(config, local_batch_size=local_batch_size,
                                       process_index=process_index, process_count=process_count,
                                       start_position=start_position)
  source, settings = _source(config, process_index, process_count)
  if source.num_train == 0:
    raise ValueError(f"Process {process_index} of {process_count} has no training images; "
                     "use a dataset with at least one training image per process.")
  if hasattr(source, "check_decodable"):
    source.check_decodable()
  dataset = pipeline.train_dataset(source, settings, local_batch_size=local_batch_size,
                                   start_position=start_position)
  return TrainIterator(dataset.as_numpy_iterator(), start_position, source.describe_train)


def create_eval_iterator(config: ml_collections.ConfigDict, *, local_batch_size: int,
                         process_index: int, process_count: int
                         ) -> Iterator[dict[str, np.ndarray]]:
  """This host's eval batches (`image`, `label`, `mask`): every image once, fixed order.

  All hosts yield ceil(ceil(num_eval_examples / process_count) / local_batch_size) batches.
  """
  from vqgan_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  if local_batch_size <= 0:
    raise ValueError(f"local_batch_size={local_batch_size} must be positive.")
  if config.data.source == "codes":
    from vqgan_jax.data import codes  # pylint: disable=g-import-not-at-top
    return codes.create_eval_iterator(config, local_batch_size=local_batch_size,
                                      process_index=process_index, process_count=process_count)
  source, settings = _source(config, process_index, process_count)
  num_batches = math.ceil(math.ceil(source.num_eval_global / process_count) / local_batch_size)
  dataset = pipeline.eval_dataset(source, settings, local_batch_size=local_batch_size,
                                  num_batches=num_batches)
  return _eval_batches(dataset.as_numpy_iterator(), source)


def _eval_batches(batches, source) -> Iterator[dict[str, np.ndarray]]:
  """Drops the bookkeeping key, counting the records the dataset dropped."""
  expected = 0
  for batch in batches:
    index = batch.pop("_index")
    raise_condition_problems(batch, index, source.describe_eval)
    real = index[index >= 0]
    # Once padding shows, every record not yet seen was dropped.
    end = source.num_eval if (index < 0).any() else int(real[-1]) + 1
    _SKIPS.record(np.setdiff1d(np.arange(expected, end), real), source.describe_eval)
    expected = end
    yield batch


def raise_condition_problems(batch: dict[str, np.ndarray], ids: np.ndarray,
                             describe: Callable[[int], str]) -> None:
  """Pops `_problem`; raises ValueError naming the first example whose stored condition (a
  label map or drawing) has the wrong size or an unknown class id."""
  from vqgan_jax.data import condition_files  # pylint: disable=g-import-not-at-top
  problems = batch.pop("_problem", None)
  if problems is None or not np.any(problems):
    return
  first = int(np.flatnonzero(problems)[0])
  raise ValueError(f"{describe(int(ids[first]))}: "
                   f"{condition_files.PROBLEMS[int(problems[first])]}; fix or remove it "
                   "(see vqgan_jax.data.condition_files for the layout).")


def first_eval_examples(config: ml_collections.ConfigDict, n: int) -> dict[str, np.ndarray]:
  """The first `n` eval examples (`image`, `label`, and the job's condition features) in eval
  order, read by this process alone (fixed pictures for grids, sampling conditions,
  completions); fewer if the split is smaller."""
  if config.data.source == "codes":
    raise ValueError("config.data.source='codes' holds codes, not images: completions and "
                     "image conditions need the image source (set config.data back to it).")
  batch = next(iter(create_eval_iterator(config, local_batch_size=n, process_index=0,
                                         process_count=1)))
  real = np.asarray(batch.pop("mask")) > 0
  return {name: np.asarray(values)[real] for name, values in batch.items()}


def num_eval_examples(config: ml_collections.ConfigDict) -> int:
  """Eval images over all hosts (for 'folder': files, undecodable ones included)."""
  if config.data.source == "codes":
    from vqgan_jax.data import codes  # pylint: disable=g-import-not-at-top
    return codes.num_eval_examples(config.data)
  return _source(config, 0, 1)[0].num_eval_global


def num_classes(config: ml_collections.ConfigDict) -> int:
  """Label count: photos for 'embedded', class folders or TFDS classes (1 if unlabelled)."""
  data = config.data
  if data.source == "embedded":
    return len(embedded.PHOTOS)
  validate_data_config(config)
  if data.source == "codes":
    from vqgan_jax.data import codes  # pylint: disable=g-import-not-at-top
    return codes.num_classes(data)
  if data.source == "folder":
    from vqgan_jax.data import folder  # pylint: disable=g-import-not-at-top
    scanned = folder.scan(data.folder, data.train_split, data.eval_split,
                          data.folder_eval_fraction)
    return max(1, len(scanned.class_names))
  from vqgan_jax.data import tfds_data  # pylint: disable=g-import-not-at-top
  return tfds_data.num_classes(tfds_data.prepared_builder(data))
