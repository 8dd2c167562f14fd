"""`--mode=tokenize` and the 'codes' source: stored codes are the tokenizer's codes of the same
(augmented) images, a rerun completes an interrupted run with identical files, and the prior
trains from them deterministically with bitwise-exact resume."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import launch_main, load_config
from vqgan_jax.data import code_images, codes as codes_data, embedded, input_pipeline, preprocess
from vqgan_jax.prior import frozen_tokenizers, tokenize, train as prior_train
from vqgan_jax.runtime import checkpoints, storage
from vqgan_jax.tokenizer.load import load_tokenizer

AUGMENTATIONS = ("none", "flip", "crop1")


@pytest.fixture(scope="module")
def tokenizer_workdir(random_tokenizer):
  return random_tokenizer  # conftest's randomly initialised tiny tokenizer (read only).


def _config(tokenizer_workdir, codes_dir):
  config = load_config("tiny_prior", "test")
  config.tokenizer_workdir = tokenizer_workdir
  config.codes_dir = str(codes_dir)
  config.tokenize.augmentations = AUGMENTATIONS
  config.tokenize.shard_size = 3  # 8 train photos: shards of 3, 3 and 2.
  return config


@pytest.fixture(scope="module")
def tokenized(tokenizer_workdir, tmp_path_factory):
  codes_dir = tmp_path_factory.mktemp("codes")
  config = _config(tokenizer_workdir, codes_dir)
  manifest = tokenize.tokenize_dataset(config, "unused")
  return config, codes_dir, manifest


def _shards(codes_dir):
  return {name: storage.load_npz(str(codes_dir / name)) for split in ("train", "eval")
          for name in sorted(f"{split}/{f}" for f in os.listdir(codes_dir / split))}


def test_codes_are_the_tokenizers_codes_of_each_augmentation(tokenized):
  config, codes_dir, manifest = tokenized
  assert manifest["train"]["num_examples"] == 8 and len(manifest["train"]["shards"]) == 3
  assert manifest["grid"] == [8, 8] and manifest["augmentations"] == list(AUGMENTATIONS)
  assert manifest["eval"]["num_examples"] == input_pipeline.num_eval_examples(
      config.copy_and_resolve_references()) > 0
  train = codes_data.load_examples(str(codes_dir), manifest, "train", 0, 1)
  assert train["codes"].dtype == np.int16 and train["codes"].shape == (8, 3, 64)
  np.testing.assert_array_equal(train["id"], embedded.split_indices("train"))
  np.testing.assert_array_equal(train["label"], train["id"])

  source, settings = input_pipeline.train_source(config, 0, 1)  # Photos as training reads them.
  photos = [source.decode(source.train_record(i))[0] for i in range(source.num_train)]
  centre = np.stack([preprocess.center_crop(preprocess.resize_to_cover(
      photo, settings.resize_size, settings.crop_hw), settings.crop_hw).numpy()
                     for photo in photos])
  images = preprocess.to_model_range(np.concatenate([centre, centre[:, :, ::-1]])).numpy()
  model, variables = load_tokenizer(config.tokenizer_workdir)
  expected = np.asarray(model.apply(variables, images, method="encode_to_indices")).reshape(
      2, 8, 64)
  np.testing.assert_array_equal(train["codes"][:, 0], expected[0])
  np.testing.assert_array_equal(train["codes"][:, 1], expected[1])
  assert (train["codes"][:, 2] != train["codes"][:, 0]).any()  # A random crop is another image.


def test_rerun_completes_an_interrupted_run_with_identical_files(tokenized, tmp_path):
  config, codes_dir, manifest = tokenized
  before = _shards(codes_dir)
  partial = tmp_path / "codes"
  for name in ["spec.json", *before]:  # An interrupted run: no manifest, shard 1 missing.
    if name != "train/codes-p00000-s00001.npz":
      storage.write_bytes(str(partial / name), storage.read_bytes(str(codes_dir / name)))
  kept = (partial / "train" / "codes-p00000-s00000.npz").stat().st_mtime_ns
  config = config.copy_and_resolve_references()
  config.codes_dir = str(partial)
  assert tokenize.tokenize_dataset(config, "unused") == manifest
  assert (partial / "train" / "codes-p00000-s00000.npz").stat().st_mtime_ns == kept  # Skipped.
  after = _shards(partial)
  assert after.keys() == before.keys()
  for name in before:
    jax.tree.map(np.testing.assert_array_equal, after[name], before[name])

  config.tokenize.augmentations = ("none",)
  with pytest.raises(ValueError, match="different tokenization"):
    tokenize.tokenize_dataset(config, "unused")


def _codes_config(tokenized):
  config, codes_dir, _ = tokenized
  config = config.copy_and_resolve_references()
  config.data.source = "codes"
  config.data.codes_dir = str(codes_dir)
  return config


def test_codes_stream_is_deterministic_and_resumes_at_any_position(tokenized):
  config = _codes_config(tokenized)

  def stream(start, n):
    it = input_pipeline.create_train_iterator(config, local_batch_size=3, process_index=0,
                                              process_count=1, start_position=start)
    return [next(it) for _ in range(n)]

  full = stream(0, 6)  # 18 examples: more than two epochs of 8.
  assert full[0]["codes"].shape == (3, 64) and full[0]["codes"].dtype == np.int32
  assert [int(b["_position"]) for b in full] == [3, 6, 9, 12, 15, 18]
  for a, b in zip(full[2:], stream(6, 4)):
    jax.tree.map(np.testing.assert_array_equal, a, b)
  epoch = np.concatenate([b["label"] for b in full])[:8]
  assert sorted(epoch) == sorted(embedded.split_indices("train"))  # Each example once per epoch.


def test_prior_trains_from_codes_and_resumes_bitwise(tokenized, tmp_path):
  config = _codes_config(tokenized)
  config.image_every_steps = -1
  straight = tmp_path / "straight"
  prior_train.train_and_evaluate(config, str(straight))
  resumed = tmp_path / "resumed"
  half = config.copy_and_resolve_references()
  half.num_train_steps = 2
  prior_train.train_and_evaluate(half, str(resumed))
  prior_train.train_and_evaluate(config, str(resumed))
  a, step_a = checkpoints.restore_raw_state(str(straight))
  b, step_b = checkpoints.restore_raw_state(str(resumed))
  assert step_a == step_b == 4
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("change, message", [
    (lambda c: setattr(c.data, "image_size", 32), "holds codes with"),
    (lambda c: setattr(c.data, "codes_dir", "/nonexistent"), "tokenize the dataset first"),
    (lambda c: setattr(c, "conditioning", "image"), "supports config.conditioning"),
])
def test_codes_config_errors_say_what_to_change(tokenized, tmp_path, change, message):
  config = _codes_config(tokenized)
  change(config)
  with pytest.raises(ValueError, match=message):
    prior_train.train_and_evaluate(config, str(tmp_path / "run"))


def test_tokenize_errors_say_what_to_change(tokenized):
  config = tokenized[0].copy_and_resolve_references()
  config.tokenize.augmentations = ("none", "rotate")
  with pytest.raises(ValueError, match="cropK"):
    tokenize.tokenize_dataset(config, "unused")
  with pytest.raises(ValueError, match="reads images"):
    tokenize.tokenize_dataset(_codes_config(tokenized), "unused")
  code_images.validate_augmentations(("crop2", "none"))


@pytest.mark.multiprocess
def test_two_hosts_write_disjoint_shards_covering_every_image(tokenized, tmp_path):
  """2 processes x 4 CPU devices: each host writes its own shards; together they hold every
  train photo once, with the codes one process with 8 devices wrote."""
  config, codes_dir, _ = tokenized
  launch_main(["--config=configs/tiny_prior.py:test", "--mode=tokenize",
               f"--workdir={tmp_path}", f"--config.tokenizer_workdir={config.tokenizer_workdir}",
               "--config.tokenize.shard_size=3"], devices=4, processes=2, timeout=600)
  manifest = codes_data.read_manifest(str(tmp_path / "codes"))
  assert manifest["process_count"] == 2 and manifest["augmentations"] == ["none", "flip"]
  files = sorted(os.listdir(tmp_path / "codes" / "train"))
  assert files == ["codes-p00000-s00000.npz", "codes-p00000-s00001.npz",
                   "codes-p00001-s00000.npz", "codes-p00001-s00001.npz"]
  both = codes_data.load_examples(str(tmp_path / "codes"), manifest, "train", 0, 1)
  assert sorted(both["id"]) == sorted(embedded.split_indices("train"))
  one = codes_data.load_examples(str(codes_dir), codes_data.read_manifest(str(codes_dir)),
                                 "train", 0, 1)
  np.testing.assert_array_equal(both["codes"][np.argsort(both["id"])],
                                one["codes"][np.argsort(one["id"])][:, :2])  # 'none', 'flip'.
  assert manifest["eval"]["num_examples"] == codes_data.read_manifest(
      str(codes_dir))["eval"]["num_examples"]


def test_frozen_tokenizer_computes_in_the_config_dtype(tokenizer_workdir):
  config = load_config("tiny_prior", "test")
  config.tokenizer_workdir = tokenizer_workdir
  config.dtype = "bfloat16"
  tokenizers = frozen_tokenizers.load_tokenizers(config)
  assert tokenizers.model.dtype == jnp.bfloat16 and tokenizers.step == 0
  leaves = jax.tree.leaves(tokenizers.params["main"])
  assert all(leaf.dtype == jnp.float32 for leaf in leaves)  # Weights stay float32.


def _folder_of_photos(root):
  """root/{train,eval}/<class>/*.png: crops of the embedded photos, two classes."""
  photos = embedded.load_photos()
  for split, count in (("train", 3), ("eval", 1)):
    for label in (0, 1):
      for k in range(count):
        crop = photos[label][8 * k:8 * k + 40, 8 * k:8 * k + 48]
        storage.save_png(str(root / split / f"class{label}" / f"{k}.png"), crop)
  return root


@pytest.mark.parametrize("source", ["tfds", "folder"])
def test_tokenize_reads_tfds_and_folder_sources_by_index(tokenizer_workdir, source, tmp_path,
                                                         imagenet_manual_dir):
  """The real imagenet2012 builder (prepared from the ILSVRC2012 layout) and a folder: every
  train record once, in its global order, labels kept, codes of the eval-style crop; the two
  hosts of a 2-process run hold disjoint shares that cover the split."""
  config = _config(tokenizer_workdir, tmp_path / "codes")
  config.tokenize.augmentations = ("none",)
  if source == "tfds":
    config.data.update(source="tfds", tfds_name="imagenet2012", train_split="train",
                       eval_split="validation", tfds_manual_dir=str(imagenet_manual_dir),
                       tfds_data_dir=str(tmp_path / "tfds"))
  else:
    config.data.update(source="folder", folder=str(_folder_of_photos(tmp_path / "photos")),
                       train_split="train", eval_split="eval")
  manifest = tokenize.tokenize_dataset(config, "unused")
  total = manifest["train"]["num_examples"]
  assert total == (40 if source == "tfds" else 6)
  train = codes_data.load_examples(str(tmp_path / "codes"), manifest, "train", 0, 1)
  np.testing.assert_array_equal(train["id"], np.arange(total))
  source_0, settings = input_pipeline.train_source(config, 0, 1)
  decoded = [source_0.decode(source_0.train_record(i)) for i in range(total)]
  np.testing.assert_array_equal(train["label"], [int(label) for _, label in decoded])
  crops = np.stack([preprocess.center_crop(preprocess.resize_to_cover(
      image, settings.resize_size, settings.crop_hw), settings.crop_hw).numpy()
                    for image, _ in decoded])
  model, variables = load_tokenizer(config.tokenizer_workdir)
  expected = model.apply(variables, preprocess.to_model_range(crops).numpy(),
                         method="encode_to_indices")
  np.testing.assert_array_equal(train["codes"][:, 0], np.asarray(expected).reshape(total, -1))
  hosts = [code_images._records(config, p, 2)[2] for p in range(2)]  # pylint: disable=protected-access
  assert set(hosts[0]).isdisjoint(hosts[1])
  assert sorted(np.concatenate(hosts)) == list(range(total))
