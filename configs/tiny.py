"""Tiny VQGAN on the embedded photos: a 2-core CPU trains it in about 8 minutes.

    python -m vqgan_jax.main --config=configs/tiny.py --workdir=workdirs/tiny

`--config=configs/tiny.py:test` is the shrunken variant the tests use (16x16, seconds a step).

32x32 random crops of the photos bundled with scikit-image and scikit-learn, a small f4 model
(8x8 codes), LPIPS and the PatchGAN discriminator on. The discriminator learns from step 0 and
reaches the generator after a warm-up, so the GAN term is trained before it is applied.

What makes a CPU-second teach (`NETWORK`, `OPTIMIZER`; README "The tiny recipe" has the runs):
- every res/attention block starts as its shortcut (`zero_init_residual`, ADM's init): the net
  starts shallow and deepens as it learns, where taming's init starts every block at full size;
- no GroupNorm before the encoder's and decoder's conv_out (`output_norm=False`): that norm has no
  skip path around it and removes each image's mean and contrast per group, which the decoder
  must then re-derive; with 32 groups of 32 channels it is an instance norm;
- Adam (0.9, 0.99) with a cosine decay and no warm-up (MaskGIT's tokenizer betas) instead of
  taming's (0.5, 0.9) constant rate: a b1 of 0.5 averages gradients over ~2 steps, so each batch
  of 8 crops throws the weights around.
Together, on the same 300 L1-only continuous steps: 19.1 dB eval PSNR with taming's network and
the new optimizer, 25.5 dB with both.

Codebook: 1024 codes (taming's quantizer uses 5.6% of them on the eval split at this scale,
`:taming`). The default (`RECOMMENDED`, README "Codebooks that do not collapse"): 32-d latents
projected to l2-normalised **4-d** codes, k-means++ initialisation, restarts of codes unused for
50 steps, and a small constant entropy penalty (0.03, temperature 0.05). Why, from single runs
of 1200 steps on the eval split (PSNR / LPIPS / usage):
- without any entropy term the encoder concentrates on a few codes whatever K is: 24.7 dB / 0.424
  / 50% with 1024 codes (perplexity 140), 24.3 / 0.433 / 70% with 256 (perplexity 53); an EMA
  codebook does not change that (24.3 dB, 58%);
- the entropy penalty spreads the codes but costs PSNR while it is on: constant 0.01 / 0.03 /
  0.05 gave 23.9 / 23.0 / 22.5 dB at 86% / 91% / 96% usage; the previous default (0.1 decayed to
  0 by step 900) 22.2 dB / 0.427 / 98% (two-seed mean 21.8 dB);
- 4-d instead of 8-d codes at 0.03: 98.5% usage with 22.7 dB, LPIPS 0.401, SSIM 0.730: lower-
  dimensional codes cover their sphere evenly, the trend ViT-VQGAN and LlamaGen report at
  ImageNet scale (usage rises as the code dimension falls to 8). A constant weight also has no
  schedule to retune when the run length changes.
The README has the two-seed numbers of this default. `--config=configs/tiny.py:NAME` trains any
row of the README table.

Condition tokenizers for the tiny priors (`configs/tiny_prior.py:KIND`), 600 steps each, GAN off:
`:edges` (edge maps of the crops, `vqgan_jax.data.derived.edge_map`), `:sketch` (their
pseudo-drawings) and `:low_res` (the 16x16 copies: 4x4 codes). The label-map
tokenizer is `configs/tiny_segmentation.py`.
"""
from vqgan_jax.tokenizer.config import base_config

# The codebook options compared in the README (same network, 1024 codes, same steps);
# `--config=configs/tiny.py:NAME` trains one of them.
TAMING = dict(l2_normalize=False, codebook_dim=0, ema_decay=0.0, codebook_init="uniform",
              restart_unused_steps=0, entropy_temperature=0.0)
COSINE_LOWDIM = dict(TAMING, l2_normalize=True, codebook_dim=8)
QUANTIZERS = {
    "taming": TAMING,
    "cosine_lowdim": COSINE_LOWDIM,
    "ema": dict(TAMING, ema_decay=0.99),
    "cosine_lowdim_restart": dict(COSINE_LOWDIM, codebook_init="kmeans++",
                                  restart_unused_steps=50),
    "cosine_lowdim_restart_entropy": dict(COSINE_LOWDIM, codebook_init="kmeans++",
                                          restart_unused_steps=50, entropy_temperature=0.05),
    "cosine_lowdim_restart_entropy_decay": dict(COSINE_LOWDIM, codebook_init="kmeans++",
                                                restart_unused_steps=50,
                                                entropy_temperature=0.05),
    "cosine_lowdim_restart_entropy_low": dict(COSINE_LOWDIM, codebook_init="kmeans++",
                                              restart_unused_steps=50, entropy_temperature=0.05),
    # The default: the same with 4-d codes (see the module docstring).
    "cosine4_restart_entropy_low": dict(COSINE_LOWDIM, codebook_dim=4, codebook_init="kmeans++",
                                        restart_unused_steps=50, entropy_temperature=0.05),
    "fsq": dict(TAMING, quantizer_type="fsq", fsq_levels=(4, 4, 4, 4, 4)),
    # 'exact': the all-codes entropy the README's lfq row was measured with.
    "lfq": dict(TAMING, quantizer_type="lfq", entropy_temperature=0.01, lfq_entropy="exact"),
    # SimVQ: frozen random basis times a learned linear map; IBQ: index backpropagation.
    "simvq": dict(TAMING, simvq=True),
    "ibq": dict(TAMING, index_backprop=True),
    # The same network without a quantizer: the ceiling of every row (continuous latents).
    "none": dict(TAMING, quantizer_type="none"),
}
ENTROPY = {"cosine_lowdim_restart_entropy": dict(entropy_weight=0.1),
           "cosine_lowdim_restart_entropy_decay": dict(
               entropy_weight=0.1, entropy_schedule="linear", entropy_decay_steps=900),
           "cosine_lowdim_restart_entropy_low": dict(entropy_weight=0.03),
           "cosine4_restart_entropy_low": dict(entropy_weight=0.03),
           "lfq": dict(entropy_weight=0.1)}
NO_ENTROPY = dict(entropy_weight=0.0, entropy_schedule="constant", entropy_decay_steps=0)
RECOMMENDED = "cosine4_restart_entropy_low"
CONDITION_TOKENIZERS = ("edges", "sketch", "low_res")
CONDITION_QUANTIZER = "cosine_lowdim_restart_entropy_decay"


# The network and optimizer choices explained in the module docstring (taming's are the base
# config's defaults; converted checkpoints keep them).
NETWORK = dict(zero_init_residual=True, output_norm=False)
OPTIMIZER = dict(learning_rate=1e-3, b1=0.9, b2=0.99, warmup_steps=0, schedule="cosine")


def get_config(variant: str = ""):
  """The tiny recipe; `variant="test"` shrinks it further for the test suite."""
  config = base_config()
  config.num_train_steps = 1200
  config.batch_size = 8
  config.log_every_steps = 50
  config.checkpoint_every_steps = 400
  config.eval_every_steps = 0  # At the end only.
  config.num_eval_images = -1
  # rFID on the 226 eval crops is mostly small-sample bias and its Inception pass costs 75 s of
  # the first command's 9 minutes: `--mode=eval --config.eval_metrics="('reconstruction',
  # 'codebook','rfid')"` adds it (the README's tables do).
  config.eval_metrics = ("reconstruction", "codebook")
  config.image_every_steps = 200

  config.model.update(dict(
      ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=32,
      z_channels=32, embed_dim=32, codebook_size=1024, **NETWORK))
  config.model.update(QUANTIZERS[RECOMMENDED])
  config.loss.update(ENTROPY.get(RECOMMENDED, {}))
  config.discriminator.update(dict(num_layers=2, ndf=32))
  # At this scale the GAN term mostly adds colour noise (measured: 1500 steps with weight 0.8
  # from step 750 ended at eval PSNR 17.5 / LPIPS 0.558 vs 18.1 / 0.504 after 600 steps
  # without it), so it comes late and light.
  config.loss.update(dict(disc_start=900, disc_train_start=0, disc_weight=0.1))
  config.optimizer.update(OPTIMIZER)

  config.data.source = "embedded"
  config.data.image_size = 32
  if variant in QUANTIZERS:
    config.model.update(QUANTIZERS[variant])
    config.loss.update(NO_ENTROPY)
    config.loss.update(ENTROPY.get(variant, {}))
  elif variant in CONDITION_TOKENIZERS:
    config.num_train_steps = 600
    config.checkpoint_every_steps = 300
    # The codebook the README's conditioning numbers were measured with: 8-d codes, the
    # entropy penalty decayed by step 450.
    config.model.update(QUANTIZERS[CONDITION_QUANTIZER])
    config.loss.update(ENTROPY[CONDITION_QUANTIZER])
    config.loss.update(dict(entropy_decay_steps=450, disc_factor=0.0))  # No GAN.
    config.model.codebook_size = 512
    if variant == "low_res":  # configs/tiny_prior.py's 32x32 crops shrunk 2 times.
      config.data.image_size = 16  # LPIPS-VGG needs 16x16 at least.
      config.data.resize_size = 64  # The shrunk crop of a 128-pixel photo: a 64-pixel one's.
      config.model.update(dict(attn_resolutions=(4,), resolution=16))  # f4: 4x4 codes.
    else:
      config.modality = variant
  elif variant == "test":
    config.num_train_steps = 4
    config.log_every_steps = 2
    config.checkpoint_every_steps = 2
    config.image_every_steps = 2
    config.eval_every_steps = -1
    config.model.update(dict(ch=32, ch_mult=(1, 2), attn_resolutions=(8,), resolution=16,
                             z_channels=8, embed_dim=8, codebook_size=64))
    config.discriminator.update(dict(num_layers=1, ndf=8))
    config.loss.update(dict(disc_start=2, disc_train_start=0))
    config.data.image_size = 16
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of configs/tiny.py; use '', 'test', one "
                     f"of {CONDITION_TOKENIZERS} or of {sorted(QUANTIZERS)}.")
  return config
