"""taming-transformers' own training step, in PyTorch, at a tokenizer config's architecture.

For the benchmark's side-by-side timing (`python -m vqgan_jax.benchmark --scaling_sizes=...
--taming`). Needs torch and taming-transformers (`pip install torch==2.13.0` and
`pip install --no-deps taming-transformers==0.0.1`); nothing else in the package imports it.

What one step is, as taming's `VQModel.training_step` runs under PyTorch Lightning with its two
optimizers (Lightning calls the step once per optimizer and, with several optimizers, turns off
`requires_grad` for every parameter the current optimizer does not own):
- optimizer 0: the VQGAN's forward, L1 + LPIPS, the discriminator on the reconstruction, the
  adaptive weight (two `autograd.grad` calls on the decoder's last conv), backward through
  decoder, quantizer and encoder, Adam;
- optimizer 1: the VQGAN's forward again (no graph: its parameters are off), the discriminator
  on real and reconstructed images, hinge loss, backward through the discriminator, Adam.
taming computes all of it from step 0 (before `disc_start` the GAN terms are multiplied by 0), so
the comparable step of this project is the one with the GAN on.

taming's LPIPS class loads torchvision's pretrained VGG16 (a download); this builds the same
network (VGG16's 13 convs to relu5_3, the 5 linear 1x1 heads, unit-normalised features) from
torch layers with random weights: the same work, and the time does not depend on the weights.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.discriminator.model import NLayerDiscriminator
from taming.modules.vqvae.quantize import VectorQuantizer
from torch import nn

_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_SLICE_ENDS = (4, 9, 16, 23, 30)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in features.


class VggLpips(nn.Module):
  """taming's `LPIPS` (eval mode), its VGG16 built here instead of read from torchvision."""

  def __init__(self):
    super().__init__()
    layers, channels = [], 3
    for v in _VGG16:
      if v == "M":
        layers.append(nn.MaxPool2d(2, 2))
      else:
        layers += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU(inplace=True)]
        channels = v
    self.features = nn.Sequential(*layers)
    self.lins = nn.ModuleList(
        nn.Sequential(nn.Dropout(), nn.Conv2d(c, 1, 1, bias=False))
        for c in (64, 128, 256, 512, 512))
    self.register_buffer("shift", torch.tensor([-.030, -.088, -.188])[None, :, None, None])
    self.register_buffer("scale", torch.tensor([.458, .448, .450])[None, :, None, None])
    for p in self.parameters():
      p.requires_grad = False

  def _taps(self, x):
    taps, start = [], 0
    for end in _SLICE_ENDS:
      x = self.features[start:end](x)
      taps.append(x)
      start = end
    return taps

  def forward(self, a, b):
    fa = self._taps((a - self.shift) / self.scale)
    fb = self._taps((b - self.shift) / self.scale)
    total = 0.0
    for lin, x, y in zip(self.lins, fa, fb):
      x = x / (torch.sqrt(torch.sum(x ** 2, dim=1, keepdim=True)) + 1e-10)
      y = y / (torch.sqrt(torch.sum(y ** 2, dim=1, keepdim=True)) + 1e-10)
      total = total + lin((x - y) ** 2).mean([2, 3], keepdim=True)
    return total


def _ddconfig(config, size: tuple[int, int]) -> dict[str, Any]:
  m = config.model
  if size[0] != size[1]:
    raise ValueError(f"taming's reference step is square; got image size {size}.")
  return dict(double_z=False, z_channels=m.z_channels, resolution=m.resolution,
              in_channels=m.in_channels, out_ch=m.out_ch, ch=m.ch, ch_mult=list(m.ch_mult),
              num_res_blocks=m.num_res_blocks, attn_resolutions=list(m.attn_resolutions),
              dropout=0.0)


class TamingStep:
  """taming's VQModel + VQLPIPSWithDiscriminator pieces and one Lightning training step."""

  def __init__(self, config, size: tuple[int, int], batch_size: int, seed: int = 0):
    torch.manual_seed(seed)
    dd = _ddconfig(config, size)
    m, d, lc = config.model, config.discriminator, config.loss
    self.encoder, self.decoder = Encoder(**dd), Decoder(**dd)
    self.quant_conv = nn.Conv2d(m.z_channels, m.embed_dim, 1)
    self.quantize = VectorQuantizer(m.codebook_size, m.embed_dim, beta=0.25)
    self.post_quant_conv = nn.Conv2d(m.embed_dim, m.z_channels, 1)
    self.vqgan = nn.ModuleList([self.encoder, self.decoder, self.quant_conv, self.quantize,
                                self.post_quant_conv]).train()
    self.disc = NLayerDiscriminator(input_nc=m.out_ch, n_layers=d.num_layers, ndf=d.ndf).train()
    self.lpips = VggLpips().eval()
    self.perceptual_weight = lc.perceptual_weight
    self.disc_weight = lc.disc_weight
    lr = 4.5e-6 * batch_size  # taming's base_learning_rate x batch size.
    self.opt_ae = torch.optim.Adam(self.vqgan.parameters(), lr=lr, betas=(0.5, 0.9))
    self.opt_disc = torch.optim.Adam(self.disc.parameters(), lr=lr, betas=(0.5, 0.9))
    rng = np.random.default_rng(seed)
    self.images = torch.from_numpy(
        rng.uniform(-1, 1, (batch_size, m.in_channels, *size)).astype(np.float32))

  def _forward(self, x):
    quant, qloss, _ = self.quantize(self.quant_conv(self.encoder(x)))
    return self.decoder(self.post_quant_conv(quant)), qloss

  @staticmethod
  def _toggle(on: nn.Module, off: nn.Module):
    for p in off.parameters():
      p.requires_grad = False
    for p in on.parameters():
      p.requires_grad = True

  def step(self):
    x = self.images
    # Optimizer 0: the generator.
    self._toggle(self.vqgan, self.disc)
    xrec, qloss = self._forward(x)
    rec = torch.abs(x - xrec) + self.perceptual_weight * self.lpips(x, xrec)
    nll = rec.mean()
    g_loss = -self.disc(xrec).mean()
    last = self.decoder.conv_out.weight
    nll_grad = torch.autograd.grad(nll, last, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
    d_weight = torch.clamp(torch.norm(nll_grad) / (torch.norm(g_grad) + 1e-4), 0.0, 1e4).detach()
    loss = nll + d_weight * self.disc_weight * g_loss + qloss.mean()
    self.opt_ae.zero_grad()
    loss.backward()
    self.opt_ae.step()
    # Optimizer 1: the discriminator (Lightning runs the training step, forward included, again).
    self._toggle(self.disc, self.vqgan)
    xrec, _ = self._forward(x)
    logits_real, logits_fake = self.disc(x.detach()), self.disc(xrec.detach())
    d_loss = 0.5 * (torch.relu(1.0 - logits_real).mean() + torch.relu(1.0 + logits_fake).mean())
    self.opt_disc.zero_grad()
    d_loss.backward()
    self.opt_disc.step()
    return float(loss.detach()), float(d_loss.detach())


def time_taming_step(config, size: tuple[int, int], batch_size: int, warmup: int,
                     runs: int) -> dict[str, float]:
  """Median seconds of taming's step (after `warmup` untimed steps) and torch's thread count."""
  step = TamingStep(config, size, batch_size)
  for _ in range(warmup):
    step.step()
  times = []
  for _ in range(max(1, runs)):
    start = time.perf_counter()
    step.step()
    times.append(time.perf_counter() - start)
  return {"taming_step_seconds": float(np.median(times)),
          "taming_torch_threads": torch.get_num_threads()}
