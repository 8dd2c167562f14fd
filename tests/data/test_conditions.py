"""Condition features of the data pipeline: label maps, drawings and captions read beside a
folder's images and cropped/flipped exactly with them, the embedded ones derived, edges, and
the errors a bad condition file gives."""
import os
import re

import ml_collections
import numpy as np
import PIL.Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from vqgan_jax.data import derived, input_pipeline, text

K = 5
BLOCK = 6  # Label maps are BLOCK x BLOCK blocks of one id; the image's red channel is 40 * id.


def _config(conditioning="none", modality="image", **data) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(dict(seed=0, conditioning=conditioning, modality=modality,
                                          data=input_pipeline.default_data_config()))
  config.data.update({"image_size": 16, "num_segmentation_classes": K, "caption_length": 24,
                      **data})
  return config


def _ids(rng, h, w):
  blocks = rng.integers(0, K, (-(-h // BLOCK), -(-w // BLOCK)))
  return np.kron(blocks, np.ones((BLOCK, BLOCK), np.int64))[:h, :w].astype(np.uint8)


def _write_dataset(root, n=6, size=(24, 30), palette_png=True):
  """Images whose red channel encodes their label map, label PNGs (palette mode: the ids are
  the indices), drawings (the ids again, in the green channel) and captions."""
  rng = np.random.default_rng(0)
  images, maps, sketches = (root / d for d in ("images", "maps", "sketches"))
  for d in (images, maps, sketches):
    d.mkdir()
  for i in range(n):
    ids = _ids(rng, *size)
    pixels = np.stack([40 * ids, np.full(size, 100), np.full(size, 50)], -1).astype(np.uint8)
    PIL.Image.fromarray(pixels).save(images / f"im{i}.png")
    label = PIL.Image.fromarray(ids, "P" if palette_png else "L")
    if palette_png:
      label.putpalette([v for k in range(256) for v in (k, 255 - k, 0)])
    label.save(maps / f"im{i}.png")
    drawing = np.stack([np.zeros(size), 40 * ids, np.zeros(size)], -1).astype(np.uint8)
    PIL.Image.fromarray(drawing).save(sketches / f"im{i}.png")
    (images / f"im{i}.txt").write_text(f"  image   number {i}\n")
  return images, maps, sketches


def _folder_config(tmp_path, conditioning, modality="image", **data):
  images, maps, sketches = _write_dataset(tmp_path)
  return _config(conditioning, modality, source="folder", folder=str(images),
                 segmentation_folder=str(maps), sketch_folder=str(sketches),
                 resize_size=24, scale_jitter=0.0, folder_eval_fraction=0.34, **data)


def _train(config, n=2, batch=4, start=0):
  iterator = input_pipeline.create_train_iterator(config, local_batch_size=batch,
                                                  process_index=0, process_count=1,
                                                  start_position=start)
  return [next(iterator) for _ in range(n)]


def _eval(config, batch=4):
  return list(input_pipeline.create_eval_iterator(config, local_batch_size=batch,
                                                  process_index=0, process_count=1))


def _red_ids(images):
  return np.round((images[..., 0] + 1) * 127.5 / 40).astype(np.int32)


@pytest.mark.parametrize("conditioning", ["segmentation", "sketch"])
def test_folder_maps_are_cropped_and_flipped_with_the_image(tmp_path, conditioning):
  config = _folder_config(tmp_path, conditioning)
  for batch in _train(config, n=3) + _eval(config):
    expected = _red_ids(batch["image"])
    if conditioning == "segmentation":
      assert batch["segmentation"].shape == (4, 16, 16)
      assert batch["segmentation"].dtype == np.int32
      got = batch["segmentation"]
    else:
      assert batch["sketch"].shape == (4, 16, 16, 3)
      got = np.round((batch["sketch"][..., 1] + 1) * 127.5 / 40).astype(np.int32)
    rows = batch.get("mask", np.ones(4)) > 0
    np.testing.assert_array_equal(got[rows], expected[rows])
  flips = [b["image"] for b in _train(config, n=6, batch=1)]
  assert len({float(np.abs(np.diff(f[0, :, :, 0], axis=1)).sum()) for f in flips}) > 1


def test_folder_captions_are_byte_tokens(tmp_path):
  config = _folder_config(tmp_path, "text")
  batch = _train(config, n=1)[0]
  assert batch["caption"].shape == (4, 24) and batch["caption"].dtype == np.int32
  captions = {text.decode(row) for row in batch["caption"]}
  assert all(c.startswith("image number ") for c in captions), captions


def test_features_resume_exactly(tmp_path):
  config = _folder_config(tmp_path, "segmentation", modality="segmentation")
  straight = _train(config, n=3, batch=2)
  resumed = _train(config, n=1, batch=2, start=int(straight[1]["_position"]))
  np.testing.assert_array_equal(resumed[0]["segmentation"], straight[2]["segmentation"])


def test_embedded_conditions_are_derived():
  config = _config("text", modality="segmentation", image_size=32, caption_length=64)
  batch = _train(config, n=1)[0]
  assert batch["segmentation"].max() < K and batch["segmentation"].min() >= 0
  assert len(np.unique(batch["segmentation"])) > 1
  assert all(text.decode(c).startswith("a ") and text.decode(c).endswith(" photo")
             for c in batch["caption"])
  eval_batch = _eval(config, batch=8)[0]
  assert {"segmentation", "caption", "mask"} <= set(eval_batch)
  for name in ("edges", "sketch"):
    b = _train(_config(name, image_size=32), n=1)[0]
    assert b[name].shape == (4, 32, 32, 3) and set(np.unique(b[name])) <= {-1.0, 1.0} | set(
        np.unique(b[name]))
    assert -1.0 <= b[name].min() and b[name].max() <= 1.0


def test_edge_map_finds_a_step_and_nothing_on_flat_images():
  step = np.zeros((20, 20, 3), np.uint8)
  step[:, 10:] = 200
  edges = derived.edge_map(tf.constant(step)).numpy()[..., 0] > 0
  columns = np.flatnonzero(edges.any(axis=0))
  assert set(columns) <= {9, 10} and edges[:, columns].all(axis=0).any()
  assert not derived.edge_map(tf.constant(np.full((20, 20, 3), 90, np.uint8))).numpy().any()


def test_text_tokens_tf_and_numpy_agree():
  for caption in ["", "a cat", "ünïcode cut in the middle " * 3]:
    np.testing.assert_array_equal(text.tf_encode(tf.constant(caption), 20).numpy(),
                                  text.encode(caption, 20))
  assert text.decode(text.encode("a cat", 8)) == "a cat"


def test_missing_map_names_the_image(tmp_path):
  config = _folder_config(tmp_path, "segmentation")
  os.remove(os.path.join(config.data.segmentation_folder, "im3.png"))
  with pytest.raises(ValueError, match=r"No segmentation map for image .*im3\.png"):
    _train(config)


def test_empty_caption_names_the_file(tmp_path):
  config = _folder_config(tmp_path, "text")
  (tmp_path / "images" / "im2.txt").write_text("  \n")
  with pytest.raises(ValueError, match=r"caption file .*im2\.txt is empty"):
    _train(config)


@pytest.mark.parametrize("damage, message", [
    (lambda p: PIL.Image.fromarray(np.zeros((10, 10), np.uint8), "L").save(p),
     "map has a different size"),
    (lambda p: PIL.Image.fromarray(np.full((24, 30), 9, np.uint8), "L").save(p),
     "class id >= config.data.num_segmentation_classes"),
    (lambda p: PIL.Image.fromarray(np.zeros((24, 30, 3), np.uint8)).save(p),
     "not a readable single-channel or palette PNG"),
])
def test_bad_maps_stop_the_job_naming_the_image(tmp_path, damage, message):
  config = _folder_config(tmp_path, "segmentation")
  for i in range(6):
    damage(os.path.join(config.data.segmentation_folder, f"im{i}.png"))
  with pytest.raises(ValueError, match=rf"im\d\.png: .*{re.escape(message)}"):
    _train(config, n=1)
  with pytest.raises(ValueError, match=re.escape(message)):
    _eval(config)


class VqganJaxMaskedImages(tfds.core.GeneratorBasedBuilder):
  """Images whose red channel encodes their mask (as `_write_dataset`), with nested captions."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(),
        "segmentation_mask": tfds.features.Image(shape=(None, None, 1)),
        "captions": tfds.features.Sequence({"text": tfds.features.Text()}),
        "label": tfds.features.ClassLabel(num_classes=2)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(range(6)), "test": self._generate_examples(range(6, 9))}

  def _generate_examples(self, indices):
    rng = np.random.default_rng(0)
    for i in indices:
      ids = _ids(rng, 24, 30)
      pixels = np.stack([40 * ids, np.full(ids.shape, 100), np.full(ids.shape, 50)], -1)
      yield i, {"image": pixels.astype(np.uint8), "segmentation_mask": ids[:, :, None],
                "captions": {"text": [f"masked image {i}", "a second caption"]}, "label": i % 2}


@pytest.fixture(scope="module")
def masked_tfds(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  VqganJaxMaskedImages(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return str(data_dir)


def _tfds_config(data_dir, conditioning, **data):
  return _config(conditioning, source="tfds", tfds_name="vqgan_jax_masked_images",
                 tfds_data_dir=data_dir, eval_split="test", resize_size=24, scale_jitter=0.0,
                 **data)


def test_tfds_masks_and_captions(masked_tfds):
  config = _tfds_config(masked_tfds, "segmentation")
  for batch in _train(config, n=2) + _eval(config):
    rows = batch.get("mask", np.ones(4)) > 0
    np.testing.assert_array_equal(batch["segmentation"][rows], _red_ids(batch["image"])[rows])
  config = _tfds_config(masked_tfds, "text", tfds_caption_key="captions/text")
  captions = {text.decode(c) for c in _train(config, n=1)[0]["caption"]}
  assert all(c.startswith("masked image ") for c in captions), captions
  with pytest.raises(ValueError, match="no feature 'caption' .*tfds_caption_key"):
    _train(_tfds_config(masked_tfds, "text"), n=1)


def test_config_errors():
  with pytest.raises(ValueError, match="num_segmentation_classes"):
    input_pipeline.validate_data_config(_config("segmentation", num_segmentation_classes=0))
  with pytest.raises(ValueError, match="does not read drawings"):
    input_pipeline.validate_data_config(_config("sketch", source="tfds", tfds_name="mnist"))
