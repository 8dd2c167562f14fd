"""taming's released ImageNet VQGANs f16 (`vqgan_imagenet_f16_1024` and `..._16384`).

`--config=configs/taming_f16.py:1024` or `:16384` selects the codebook. Architecture of the
releases: ch 128, ch_mult (1,1,2,2,4), 2 res blocks, attention at 16x16, z 256, embed 256
(72,141,699 generator parameters with 1024 codes, 76,073,859 with 16384). Losses as their
model.yaml: 1024 as taming's `imagenet_vqgan.yaml` (3-layer discriminator, weight 0.8); 16384
with a 2-layer discriminator, weight 0.75. taming trained 1024's GAN from step 250001; a
fine-tune starts from the released (converted) generator and discriminator, both trained
with the GAN on, so here the GAN reaches the generator from step 0 (`disc_start=0`): with
250001 it would never act within `num_train_steps=100_000`. Convert a release, then evaluate
or fine-tune it:

    python -m vqgan_jax.tokenizer.convert_taming --ckpt=last.ckpt --yaml=model.yaml --workdir=workdirs/taming_16384
    python -m vqgan_jax.main --config=configs/taming_f16.py:16384 --workdir=workdirs/ft_16384 \
        --config.init_from=workdirs/taming_16384
"""
from vqgan_jax.data import input_pipeline
from vqgan_jax.tokenizer.config import base_config

LOSSES = {
    "1024": dict(disc_layers=3, disc_weight=0.8),
    "16384": dict(disc_layers=2, disc_weight=0.75),
}


def get_config(codebook: str = "16384"):
  if codebook not in LOSSES:
    raise ValueError(f"configs/taming_f16.py:{codebook}: use :1024 or :16384.")
  loss = LOSSES[codebook]
  config = base_config()
  config.dtype = "bfloat16"
  config.batch_size = 256
  config.num_train_steps = 100_000
  config.model.update(dict(codebook_size=int(codebook)))
  config.discriminator.update(dict(num_layers=loss["disc_layers"], ndf=64))
  config.loss.update(dict(disc_start=0, disc_weight=loss["disc_weight"], codebook_weight=1.0))
  config.optimizer.update(dict(learning_rate=4.5e-6 * 256, warmup_steps=1000))
  config.data = input_pipeline.imagenet_data_config(256)
  return config
