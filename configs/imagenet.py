"""taming's f16-16384 VQGAN recipe on ImageNet at 256x256, for a TPU pod slice.

    python -m vqgan_jax.main --config=configs/imagenet.py --workdir=gs://BUCKET/vqgan_f16_16384

`--config=configs/imagenet.py:shrink` is the same code path (bfloat16, the codebook recipe,
grids, periodic eval, checkpoint cadence) at sizes a CPU runs in seconds: the shrink block at the
end changes only sizes and cadences. The tests run it on 16 and 32 forced CPU devices and on 4
processes x 4 devices (a v4-32's shape).

Model: ch 128, ch_mult (1,1,2,2,4), 2 res blocks, attention at 16x16, 16384 codes
(76.1M parameters with the discriminator). Loss as taming: L1 + LPIPS, codebook weight 1, hinge
GAN with adaptive weight times 0.8, discriminator from step 250001.

Codebook (not taming's, which uses about a quarter of its 16384 codes): configs/tiny.py's
`cosine_lowdim_restart_entropy_decay` row: taming's 256-d embedding projected to l2-normalised
8-d codes for the lookup (ViT-VQGAN's factorised codes; LlamaGen reports 97% of 16384 such codes
in use on ImageNet), k-means++ initialisation on the first 65,536 encoder outputs (one step's
tokens at batch 256), codes unused for 200 steps (~800 expected uses at uniform usage)
re-seeded from recent encoder outputs, and the entropy penalty (0.1, temperature 0.05) only
early: it decays linearly to 0 by step 50,000 (on the tiny config the penalty spread the codes
to 99% usage but cost reconstruction while it stayed on). The tiny config now uses 4-d codes and
a constant 0.03 penalty (higher usage and better LPIPS/SSIM than this recipe there, at 1024 codes
and 1200 steps on 8 photos); this config keeps 8-d codes and the decaying penalty, the setting
with published ImageNet evidence (LlamaGen: 97% of 16384 8-d codes in use, the best rFID of the
dimensions it tried), since a 16384-code codebook on a 4-d sphere has not been measured at this
scale. SimVQ (`simvq=True`) is the other candidate: at tiny scale it led on PSNR while using
half its codes. For taming's exact quantizer (e.g. to fine-tune a
converted release) override the fields of `TAMING` in configs/tiny.py.

Memory (`python -m vqgan_jax.plan --config=configs/imagenet.py --devices=16|32`, README
"Memory plan per device"): the state is 0.94 GiB per device, the activations about 2.2 GiB per
image; by XLA:CPU's buffer assignment 16 images per device in bfloat16 need 35.8 GiB (remat of
the res/attention blocks: 34.7 GiB, so remat stays off: it costs a recompute for 3%) and 8 per
device 18.6 GiB. Batch 256 therefore wants 32 chips of 32 GiB (v4-64); on a v4-32 use
`--config.batch_size=128`. The trainer checks the compiled step against the chip's own limit
before its first call and names these options when it does not fit.

Network and optimizer, following the tiny runs where the argument does not depend on scale
(configs/tiny.py says why each helps; README "The tiny recipe" has the numbers):
- `zero_init_residual`: every res/attention block starts as its shortcut, as ADM's ImageNet
  U-Net initialises its blocks;
- Adam (0.9, 0.99) with warm-up then cosine decay, instead of taming's (0.5, 0.9) at a constant
  rate (TiTok's ImageNet VQGAN+ decoder training also uses b1 0.9 with a 5k-step warm-up and
  cosine decay);
- taming's `output_norm` is kept: on the tiny net it is an instance norm (32 groups of 32
  channels) and dropping it helped; here each group has 4 channels, whose ratios carry the
  image's colour, and there is no ImageNet-scale measurement to justify the change.
"""
from vqgan_jax.data import input_pipeline
from vqgan_jax.tokenizer.config import base_config


def get_config(arg: str = ""):
  if arg not in ("", "shrink"):
    raise ValueError(f"configs/imagenet.py:{arg}: use configs/imagenet.py or :shrink.")
  config = base_config()
  config.dtype = "bfloat16"
  config.num_train_steps = 500_000
  config.batch_size = 256
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2000
  config.keep_checkpoints = 3
  config.eval_every_steps = 10_000
  config.num_eval_images = 10_000
  config.image_every_steps = 2000
  config.ema_decay = 0.0

  config.model.update(dict(codebook_size=16384, l2_normalize=True, codebook_dim=8,
                           codebook_init="kmeans++", restart_unused_steps=200,
                           usage_window_steps=200, entropy_temperature=0.05))
  config.discriminator.update(dict(num_layers=2, ndf=64))
  config.loss.update(dict(disc_start=250_001, disc_weight=0.8, codebook_weight=1.0,
                          entropy_weight=0.1, entropy_schedule="linear",
                          entropy_decay_steps=50_000))
  config.model.zero_init_residual = True
  config.optimizer.update(dict(learning_rate=4.5e-6 * 256, warmup_steps=5000, b1=0.9, b2=0.99,
                               schedule="cosine"))

  config.data = input_pipeline.imagenet_data_config(256)

  if arg == "shrink":  # Sizes and cadences only.
    config.num_train_steps = 4
    config.batch_size = 32
    config.log_every_steps = 2
    config.checkpoint_every_steps = 2
    config.eval_every_steps = 2
    config.num_eval_images = 32
    config.image_every_steps = 2
    config.model.update(dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                             resolution=16, z_channels=8, embed_dim=8, codebook_size=64,
                             restart_unused_steps=2, usage_window_steps=2))
    config.discriminator.update(dict(num_layers=1, ndf=8))
    config.loss.update(dict(disc_start=2, entropy_decay_steps=4))
    config.optimizer.update(dict(warmup_steps=1))
    config.data.image_size = config.data.resize_size = 16
  return config
