"""taming's f16-16384 VQGAN recipe on ImageNet at 256x256, for a TPU pod slice.

    python -m vqgan_jax.main --config=configs/imagenet.py --workdir=gs://BUCKET/vqgan_f16_16384

Model: ch 128, ch_mult (1,1,2,2,4), 2 res blocks, attention at 16x16, 16384 codes
(76.1M parameters with the discriminator). Loss as taming: L1 + LPIPS, codebook weight 1, hinge
GAN with adaptive weight times 0.8, discriminator from step 250001.

Codebook (not taming's, which uses about a quarter of its 16384 codes): the recommended option
of the README's comparison, the same as configs/tiny.py: taming's 256-d embedding projected to
l2-normalised 8-d codes for the lookup (ViT-VQGAN's factorised codes; LlamaGen reports 97% of
16384 such codes in use on ImageNet), initialised by k-means++ on the first 65,536 encoder
outputs (one step's tokens at batch 256), and codes unused for 200 steps (about 800 expected
uses each at uniform usage) re-seeded from recent encoder outputs. `--config.model.update` the
`TAMING` fields of configs/tiny.py for taming's exact recipe (e.g. to fine-tune a release).

Batch and learning rate: taming scales its base rate 4.5e-6 by the total batch
(lr = 4.5e-6 * batch); its released model used batch 12 per GPU. Here the global batch is 256
(e.g. a v4-64 or v5e-64 slice: 4 or 8 images per chip) so lr = 4.5e-6 * 256 = 1.15e-3, with a
short warmup because Adam(0.5, 0.9) at that rate is aggressive at step 0. For another batch,
set --config.batch_size and --config.optimizer.learning_rate=4.5e-6*BATCH.

Data: TFDS `imagenet2012`, prepared from the manual download (set
--config.data.tfds_manual_dir to the folder holding ILSVRC2012_img_{train,val}.tar).
"""
from vqgan_jax import input_pipeline
from vqgan_jax.config_defaults import base_config


def get_config():
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
                           usage_window_steps=200))
  config.discriminator.update(dict(num_layers=2, ndf=64))
  config.loss.update(dict(disc_start=250_001, disc_weight=0.8, codebook_weight=1.0))
  config.optimizer.update(dict(learning_rate=4.5e-6 * 256, warmup_steps=5000))

  config.data = input_pipeline.imagenet_data_config(256)
  return config
