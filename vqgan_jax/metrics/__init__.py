"""Image metrics as papers report them, on your own arrays (NHWC in [-1, 1] unless noted):

    vqgan_jax.metrics.psnr(x, y), ssim(x, y), lpips(x, y)        # per image
    vqgan_jax.metrics.inception_pool3(images_uint8)                # (N, 2048) FID features
    vqgan_jax.metrics.fid_from_features(a, b), fid_from_stats(mu1, s1, mu2, s2)

`image_quality` holds PSNR/SSIM/LPIPS, `fid` the FID protocol and statistics files, and
`python -m vqgan_jax.metrics.fid_stats` precomputes a split's reference statistics.
"""
from vqgan_jax.metrics.fid import (FIDStats, RunningStats, feature_stats, fid_from_features,
                                   fid_from_stats, inception_pool3, load_stats,
                                   resize_bilinear_tf1, save_stats)
from vqgan_jax.metrics.image_quality import lpips, psnr, ssim

__all__ = ["FIDStats", "RunningStats", "feature_stats", "fid_from_features", "fid_from_stats",
           "inception_pool3", "load_stats", "lpips", "psnr", "resize_bilinear_tf1", "save_stats",
           "ssim"]
