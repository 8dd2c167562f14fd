"""taming-transformers reference modules with random weights, for parity tests.

Builds taming's own torch Encoder, Decoder, VectorQuantizer and NLayerDiscriminator (imported
from their submodules: `taming.models` needs pytorch_lightning) with weights drawn far from
their defaults, GroupNorm/BatchNorm affine parameters and BatchNorm running statistics
included, so a wrong transpose, a swapped norm or a misplaced attention block cannot pass.
`write_taming_checkpoint` saves them as a Lightning-style `last.ckpt` plus `model.yaml` with
taming's key names and config format. Callers must `pytest.importorskip("torch")` and
`pytest.importorskip("taming")` first.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import torch
import yaml
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.discriminator.model import NLayerDiscriminator
from taming.modules.vqvae.quantize import VectorQuantizer


def ddconfig(ch: int = 32, ch_mult=(1, 2), num_res_blocks: int = 1, attn_resolutions=(8,),
             resolution: int = 16, z_channels: int = 8, in_channels: int = 3,
             out_ch: int = 3) -> dict[str, Any]:
  """taming's `ddconfig` (the Encoder/Decoder kwargs of a VQGAN model.yaml)."""
  return dict(double_z=False, z_channels=z_channels, resolution=resolution,
              in_channels=in_channels, out_ch=out_ch, ch=ch, ch_mult=list(ch_mult),
              num_res_blocks=num_res_blocks, attn_resolutions=list(attn_resolutions), dropout=0.0)


def randomize_(module: torch.nn.Module, seed: int, std: float = 0.3) -> torch.nn.Module:
  """Redraws every parameter and BatchNorm statistic in place, away from torch's defaults.

  Conv kernels get unit gain (std 1/sqrt(fan_in)) so activations stay O(1) through deep
  stacks; biases and norm shifts N(0, std); norm scales 1 + N(0, std); running variances
  in [0.5, 2].
  """
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if p.ndim == 4:
        p.copy_(noise / np.sqrt(p[0].numel()))
      elif name.endswith('weight') and p.ndim == 1:
        p.copy_(1.0 + std * noise)
      else:
        p.copy_(std * noise)
    for m in module.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.copy_(std * torch.randn(m.running_mean.shape, generator=gen))
        m.running_var.copy_(0.5 + 1.5 * torch.rand(m.running_var.shape, generator=gen))
        m.num_batches_tracked.fill_(7)
  return module


@dataclasses.dataclass
class TamingVQGAN:
  """taming's VQModel pieces (eval mode) and a forward that exposes every stage."""
  encoder: Encoder
  decoder: Decoder
  quant_conv: torch.nn.Conv2d
  quantize: VectorQuantizer
  post_quant_conv: torch.nn.Conv2d
  discriminator: NLayerDiscriminator | None = None

  def state_dict(self) -> dict[str, torch.Tensor]:
    """Keys as in a taming VQModel checkpoint's `state_dict`."""
    parts = dict(encoder=self.encoder, decoder=self.decoder, quant_conv=self.quant_conv,
                 quantize=self.quantize, post_quant_conv=self.post_quant_conv)
    if self.discriminator is not None:
      parts['loss.discriminator'] = self.discriminator
    return {f'{prefix}.{k}': v for prefix, m in parts.items() for k, v in m.state_dict().items()}

  @torch.no_grad()
  def run(self, images_nhwc: np.ndarray) -> dict[str, np.ndarray]:
    """Reference outputs (NHWC numpy): latents after quant_conv, indices, loss, reconstruction."""
    x = torch.from_numpy(np.asarray(images_nhwc, np.float32)).permute(0, 3, 1, 2)
    latents = self.quant_conv(self.encoder(x))
    quantized, loss, (perplexity, _, indices) = self.quantize(latents)
    recon = self.decoder(self.post_quant_conv(quantized))
    b, _, h, w = latents.shape
    nhwc = lambda t: t.permute(0, 2, 3, 1).numpy()
    return dict(latents=nhwc(latents), quantized=nhwc(quantized),
                indices=indices.reshape(b, h, w).numpy(), loss=loss.numpy(),
                perplexity=perplexity.numpy(), reconstruction=nhwc(recon))


def build_discriminator(num_layers: int = 2, ndf: int = 16, in_channels: int = 3,
                        seed: int = 0) -> NLayerDiscriminator:
  """taming's PatchGAN with random weights and non-trivial BatchNorm running statistics."""
  disc = NLayerDiscriminator(input_nc=in_channels, ndf=ndf, n_layers=num_layers)
  return randomize_(disc, seed).eval()


def build_vqgan(dd: dict[str, Any], n_embed: int, embed_dim: int, seed: int = 0,
                disc_num_layers: int | None = None, disc_ndf: int = 16) -> TamingVQGAN:
  """taming's VQModel modules with random weights; the codebook is spread like the latents.

  Codes are drawn around latents of random images so that many codes win the argmin (a
  codebook far from the latents would map everything to one code and test little).
  """
  torch.manual_seed(seed)
  model = TamingVQGAN(
      encoder=Encoder(**dd), decoder=Decoder(**dd),
      quant_conv=torch.nn.Conv2d(dd['z_channels'], embed_dim, 1),
      quantize=VectorQuantizer(n_embed, embed_dim, beta=0.25),
      post_quant_conv=torch.nn.Conv2d(embed_dim, dd['z_channels'], 1))
  for i, m in enumerate((model.encoder, model.decoder, model.quant_conv, model.post_quant_conv)):
    randomize_(m.eval(), seed * 10 + i)
  gen = torch.Generator().manual_seed(seed * 10 + 9)
  with torch.no_grad():
    probe = torch.randn(4, dd['in_channels'], dd['resolution'], dd['resolution'], generator=gen)
    latents = model.quant_conv(model.encoder(probe)).permute(0, 2, 3, 1).reshape(-1, embed_dim)
    picks = latents[torch.randint(len(latents), (n_embed,), generator=gen)]
    noise = torch.randn(picks.shape, generator=gen) * latents.std()
    model.quantize.embedding.weight.copy_(picks + noise)
  if disc_num_layers is not None:
    model.discriminator = build_discriminator(disc_num_layers, disc_ndf, dd['out_ch'], seed)
  return model


def write_taming_checkpoint(directory: str, model: TamingVQGAN, dd: dict[str, Any],
                            n_embed: int, embed_dim: int) -> tuple[str, str]:
  """Writes `last.ckpt` ({'state_dict': ...} with taming's keys, plus LPIPS entries the
  converter must ignore) and `model.yaml`; returns their paths."""
  state = model.state_dict()
  state['loss.perceptual_loss.lin0.model.1.weight'] = torch.ones(1, 64, 1, 1)
  state['loss.perceptual_loss.scaling_layer.shift'] = torch.zeros(1, 3, 1, 1)
  loss_params = dict(disc_conditional=False, disc_in_channels=dd['out_ch'], disc_start=250001,
                     disc_weight=0.8, codebook_weight=1.0)
  if model.discriminator is not None:
    n_layers = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.discriminator.modules())
    loss_params.update(disc_num_layers=n_layers,
                       disc_ndf=model.discriminator.main[0].out_channels)
  config = {'model': {
      'base_learning_rate': 4.5e-6, 'target': 'taming.models.vqgan.VQModel',
      'params': {'embed_dim': embed_dim, 'n_embed': n_embed, 'ddconfig': dd, 'lossconfig': {
          'target': 'taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator',
          'params': loss_params}}}}
  os.makedirs(directory, exist_ok=True)
  ckpt_path = os.path.join(directory, 'last.ckpt')
  yaml_path = os.path.join(directory, 'model.yaml')
  torch.save({'state_dict': state, 'global_step': 0, 'epoch': 0}, ckpt_path)
  with open(yaml_path, 'w') as f:
    yaml.safe_dump(config, f)
  return ckpt_path, yaml_path
