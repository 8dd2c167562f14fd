"""Every shipped config loads, is consistent, and locks against misspelt keys."""
import pytest

from tests.helpers import load_config
from vqgan_jax.data import input_pipeline
from vqgan_jax.tokenizer import config as tokenizer_config

TINY_QUANTIZERS = ("taming", "cosine_lowdim", "ema", "cosine_lowdim_restart",
                   "cosine_lowdim_restart_entropy", "cosine_lowdim_restart_entropy_decay",
                   "cosine_lowdim_restart_entropy_low", "fsq", "lfq")
TOKENIZER_CONFIGS = [("tiny", ""), ("tiny", "test"), ("imagenet", ""), ("imagenet", "shrink"),
                     ("taming_f16", "1024"),
                     ("taming_f16", "16384"), ("tiny_segmentation", ""),
                     ("tiny_segmentation", "test")] + [("tiny", q) for q in TINY_QUANTIZERS] + [
                         ("tiny", c) for c in ("edges", "sketch", "low_res")]
PRIOR_CONFIGS = [("tiny_prior", ""), ("tiny_prior", "test"), ("imagenet_prior", "")] + [
    ("tiny_prior", c) for c in ("none", "low_res", "segmentation", "edges", "sketch", "text")]


@pytest.mark.parametrize("name, variant", TOKENIZER_CONFIGS)
def test_tokenizer_configs_are_consistent(name, variant):
  config = load_config(name, variant)
  assert config.get("stage", "tokenizer") == "tokenizer"
  tokenizer_config.validate_modality_config(config)
  tokenizer_config.validate_model_config(config.model, config.data.image_size)
  tokenizer_config.validate_eval_config(config)
  tokenizer_config.validate_quantizer_config(config.model, config.loss)
  assert config.batch_size % 8 == 0 or config.batch_size in (1, 2, 4)


@pytest.mark.parametrize("name, variant", PRIOR_CONFIGS)
def test_prior_configs_are_consistent(name, variant):
  config = load_config(name, variant)
  assert config.stage == "prior" and config.tokenizer_workdir
  assert config.model.embed_dim % config.model.num_heads == 0
  input_pipeline.crop_shape(config.data.image_size)


@pytest.mark.parametrize("name, variant", [("imagenet", ""), ("imagenet_prior", ""),
                                           ("taming_f16", "16384")])
def test_imagenet_configs_read_imagenet2012_at_256(name, variant):
  data = load_config(name, variant).data
  assert (data.source, data.tfds_name, data.image_size, data.eval_split) == (
      "tfds", "imagenet2012", 256, "validation")


def test_imagenet_shrink_changes_only_sizes_and_cadences():
  full, shrunk = load_config("imagenet").to_dict(), load_config("imagenet", "shrink").to_dict()
  sizes = {"num_train_steps", "batch_size", "log_every_steps", "checkpoint_every_steps",
           "eval_every_steps", "num_eval_images", "image_every_steps"}
  for key in full:
    if key not in sizes | {"model", "discriminator", "loss", "optimizer", "data"}:
      assert shrunk[key] == full[key], key
  same = {"model": ("quantizer_type", "l2_normalize", "codebook_init", "ema_decay"),
          "loss": ("reconstruction", "gan_loss", "entropy_weight", "entropy_schedule"),
          "data": ("source", "tfds_name", "random_flip")}
  for group, keys in same.items():
    assert {k: shrunk[group][k] for k in keys} == {k: full[group][k] for k in keys}
  assert shrunk["dtype"] == "bfloat16"


def test_taming_fine_tune_recipes_reach_the_gan():
  for codebook in ("1024", "16384"):
    config = load_config("taming_f16", codebook)
    assert config.loss.disc_start < config.num_train_steps


def test_unknown_variant_is_an_error():
  with pytest.raises(ValueError, match="variant"):
    load_config("tiny", "huge")


def test_tiny_variants_differ_only_in_the_quantizer():
  base = load_config("tiny").to_dict()
  for variant in TINY_QUANTIZERS:
    config = load_config("tiny", variant).to_dict()
    for group in config:
      if group not in ("model", "loss"):
        assert config[group] == base[group], (variant, group)
    arch = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels", "embed_dim",
            "codebook_size")
    assert {k: config["model"][k] for k in arch} == {k: base["model"][k] for k in arch}


def test_taming_release_configs_keep_tamings_quantizer():
  for codebook in ("1024", "16384"):
    model = load_config("taming_f16", codebook).model
    assert (model.quantizer_type, model.l2_normalize, model.codebook_dim, model.ema_decay,
            model.codebook_init, model.restart_unused_steps) == ("vq", False, 0, 0.0, "uniform", 0)


def test_tiny_default_is_the_recommended_variant():
  module_config = load_config("tiny")
  import importlib.util  # pylint: disable=g-import-not-at-top
  from tests.helpers import REPO  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("tiny_config", REPO / "configs" / "tiny.py")
  tiny = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tiny)
  assert module_config.to_dict() == load_config("tiny", tiny.RECOMMENDED).to_dict()
  assert module_config.model.codebook_size == 1024


@pytest.mark.parametrize("kind", ["low_res", "segmentation", "edges", "sketch"])
def test_tiny_condition_priors_name_a_matching_condition_tokenizer(kind):
  from vqgan_jax.prior import conditions  # pylint: disable=g-import-not-at-top
  prior = load_config("tiny_prior", kind)
  assert prior.cond_tokenizer_workdir == f"workdirs/tiny_{kind}"
  tokenizer = (load_config("tiny_segmentation") if kind == "segmentation" else
               load_config("tiny", kind))
  assert tokenizer.modality == conditions.COND_MODALITY[kind]
  size = prior.data.image_size // (prior.cond_downsample if kind == "low_res" else 1)
  assert tokenizer.data.image_size == size
  if kind == "segmentation":
    assert (tokenizer.data.num_segmentation_classes ==
            prior.data.num_segmentation_classes == tokenizer.model.in_channels)
