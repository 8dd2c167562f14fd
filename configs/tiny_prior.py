"""Tiny class-conditional prior on the tiny tokenizer's codes: minutes on a 2-core CPU.

    python -m vqgan_jax.main --config=configs/tiny.py --workdir=workdirs/tiny   # the tokenizer
    python -m vqgan_jax.main --config=configs/tiny_prior.py --workdir=workdirs/tiny_prior
    python -m vqgan_jax.main --config=configs/tiny_prior.py --workdir=workdirs/tiny_prior \
        --mode=sample --config.sample.top_k=50

The labels of the embedded photos are their photo indices, so each class is "a crop of photo k".
`:test` is the shrunken variant the tests use (with `--config.tokenizer_workdir` set to a test
tokenizer trained by `configs/tiny.py:test`).

`:KIND` trains the same prior under another conditioning (`vqgan_jax.prior.conditions`), each on
the embedded photos with conditions derived from their pixels:
  none          unconditional (the reference for the bits per token of the others);
  low_res       the 16x16 copy of the crop, tokenized by `configs/tiny.py:low_res`
                (workdirs/tiny_low_res): 2x super-resolution;
  segmentation  the crop's 8-colour label map, by `configs/tiny_segmentation.py`
                (workdirs/tiny_segmentation);
  edges         the crop's edge map, by `configs/tiny.py:edges` (workdirs/tiny_edges);
  sketch        the crop's pseudo-drawing, by `configs/tiny.py:sketch` (workdirs/tiny_sketch);
  text          the crop's caption ("a bright orange crop of a cat photo"), 10% dropped.
The maps are dropped for the null code 10% of the time too (`condition_dropout`).
Then sample from your own condition, e.g.
    python -m vqgan_jax.main --config=configs/tiny_prior.py:segmentation \
        --workdir=workdirs/tiny_prior_segmentation --mode=sample --config.sample.condition=map.png
    python -m vqgan_jax.main --config=configs/tiny_prior.py:text --workdir=workdirs/tiny_prior_text \
        --mode=sample --config.sample.prompt="a bright blue crop of a flower photo"
"""
from vqgan_jax.prior.config import base_prior_config

CONDITIONED = ("none", "low_res", "segmentation", "edges", "sketch", "text")
NUM_SEGMENTATION_CLASSES = 8  # As configs/tiny_segmentation.py.


def get_config(variant: str = ""):
  config = base_prior_config()
  config.tokenizer_workdir = "workdirs/tiny"
  config.conditioning = "class"
  config.label_dropout = 0.1
  config.num_train_steps = 1000
  config.batch_size = 32
  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  config.eval_every_steps = 0  # At the end only.
  config.image_every_steps = 500
  config.num_image_samples = 8
  config.model.update(dict(num_layers=4, num_heads=4, embed_dim=128, dropout=0.0))
  config.optimizer.update(dict(learning_rate=1e-3, warmup_steps=100, weight_decay=0.01))
  config.data.source = "embedded"
  config.data.image_size = 32
  config.sample.update(dict(num_samples=16, batch_size=8, top_k=0, top_p=0.95,
                            guidance_scale=1.5))
  if variant == "test":
    config.num_train_steps = 4
    config.batch_size = 8
    config.log_every_steps = 2
    config.checkpoint_every_steps = 2
    config.image_every_steps = 4
    config.eval_every_steps = 0
    config.num_image_samples = 2
    config.model.update(dict(num_layers=1, num_heads=2, embed_dim=32))
    config.optimizer.update(dict(warmup_steps=1))
    config.data.image_size = 16
    config.sample.update(dict(num_samples=3, batch_size=2))
  elif variant in CONDITIONED:
    config.conditioning = variant
    config.cond_downsample = 2  # low_res: 16x16 copies (configs/tiny.py:low_res).
    config.sample.guidance_scale = 1.5 if variant == "text" else 1.0
    if variant not in ("none", "text"):
      config.cond_tokenizer_workdir = f"workdirs/tiny_{variant}"
      config.condition_dropout = 0.1  # The null map: guidance, and bits without the map.
    config.data.num_segmentation_classes = NUM_SEGMENTATION_CLASSES
    config.data.caption_length = 48
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of configs/tiny_prior.py; use '', 'test' or "
                     f"one of {CONDITIONED}.")
  return config
