"""Tiny class-conditional prior on the tiny tokenizer's codes: minutes on a 2-core CPU.

    python -m vqgan_jax.main --config=configs/tiny.py --workdir=workdirs/tiny   # the tokenizer
    python -m vqgan_jax.main --config=configs/tiny_prior.py --workdir=workdirs/tiny_prior
    python -m vqgan_jax.main --config=configs/tiny_prior.py --workdir=workdirs/tiny_prior \
        --mode=sample --config.sample.top_k=50

The labels of the embedded photos are their photo indices, so each class is "a crop of photo k".
`:test` is the shrunken variant the tests use (with `--config.tokenizer_workdir` set to a test
tokenizer trained by `configs/tiny.py:test`).
"""
from vqgan_jax.prior.config import base_prior_config


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
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of configs/tiny_prior.py; use '' or 'test'.")
  return config
