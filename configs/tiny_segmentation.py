"""Tiny segmentation tokenizer (taming's VQSegmentationModel) on label maps of the embedded photos.

    python -m vqgan_jax.main --config=configs/tiny_segmentation.py --workdir=workdirs/tiny_seg
    python -m vqgan_jax.main --config=configs/tiny_segmentation.py --workdir=workdirs/tiny_seg \
        --mode=eval

`--config=configs/tiny_segmentation.py:test` is the shrunken variant the tests use.

What it encodes: 32x32 crops of 8-class label maps, derived from the photos bundled with
scikit-image and scikit-learn by clustering their colours into 8 classes
(`vqgan_jax.data.derived`). The input is the one-hot map (8 channels of 0/1), the decoder
outputs 8 logits per pixel, and the loss is taming's: binary cross-entropy with logits against
the one-hot input plus the quantizer loss, no LPIPS and no GAN. Eval reports pixel accuracy and
mIoU of the argmax map and the codebook usage; the grids show the coloured label map above the
coloured argmax of its reconstruction. The tokenizer is what a prior conditioned on
segmentation (`config.conditioning='segmentation'`) reads its condition codes with.

Network, optimizer and quantizer: configs/tiny.py's (f4, 8x8 codes; zero-initialised residual
branches, no conv_out GroupNorm, Adam 0.9/0.99 with a cosine decay; l2-normalised 8-d codes with
k-means++ initialisation and restarts) with 256 codes.
"""
from vqgan_jax.tokenizer.config import base_config

NUM_CLASSES = 8


def get_config(variant: str = ""):
  """The tiny segmentation recipe; `variant="test"` shrinks it for the test suite."""
  config = base_config()
  # One-hot label maps in, K logits out (vqgan_jax.tokenizer.modality).
  config.modality = "segmentation"
  config.num_train_steps = 600
  config.batch_size = 8
  config.log_every_steps = 50
  config.checkpoint_every_steps = 300
  config.eval_every_steps = 0  # At the end only.
  config.num_eval_images = -1
  config.image_every_steps = 200
  # Pixel accuracy and mIoU, and code usage (LPIPS, PSNR, SSIM and rFID are for images).
  config.eval_metrics = ("segmentation", "codebook")

  config.model.update(dict(
      ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=32,
      z_channels=32, embed_dim=32, codebook_size=256,
      in_channels=NUM_CLASSES, out_ch=NUM_CLASSES,
      zero_init_residual=True, output_norm=False,
      l2_normalize=True, codebook_dim=8, codebook_init="kmeans++", restart_unused_steps=50))
  # taming's BCELossWithQuant: BCE with logits + codebook_weight * quantizer loss; no LPIPS and
  # no GAN (disc_factor 0: the discriminator never runs; it stays in the state at its
  # smallest).
  config.loss.update(dict(reconstruction="bce", perceptual_weight=0.0, disc_factor=0.0))
  config.discriminator.update(dict(num_layers=1, ndf=8))
  config.optimizer.update(dict(learning_rate=1e-3, b1=0.9, b2=0.99, warmup_steps=0,
                               schedule="cosine"))

  config.data.source = "embedded"
  config.data.image_size = 32
  config.data.num_segmentation_classes = NUM_CLASSES
  if variant == "test":
    config.num_train_steps = 4
    config.log_every_steps = 2
    config.checkpoint_every_steps = 2
    config.image_every_steps = 2
    config.eval_every_steps = -1
    config.model.update(dict(ch_mult=(1, 2), resolution=16, z_channels=8, embed_dim=8,
                             codebook_size=64, codebook_dim=4, buffer_size=256))
    config.data.image_size = 16
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of configs/tiny_segmentation.py; use '' or "
                     "'test'.")
  return config
