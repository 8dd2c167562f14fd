"""taming-transformers' VQGAN autoencoder (Encoder, Decoder, VQModel) in Flax linen, NHWC.

Layer for layer the same network as taming's `diffusionmodules/model.py` Encoder/Decoder and
`models/vqgan.py` VQModel, so taming checkpoints convert by renaming and transposing weights
(see `vqgan_jax.tokenizer.convert_taming`). The parameter tree mirrors taming's module names:
`encoder/down_{i}/block_{j}`, `encoder/down_{i}/attn_{j}`, `encoder/down_{i}/downsample/conv`,
`encoder/mid/{block_1,attn_1,block_2}`, `decoder/up_{i}/...` (i = taming's level index),
`norm_out`, `conv_out`, ...

Convolutions and norms compute in `dtype` with float32 parameters; GroupNorm statistics, the
attention softmax and the quantizer always run in float32.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vqgan_jax.models import conv_paths
from vqgan_jax.models.group_norm import GroupNorm
from vqgan_jax.models.quantizer import QuantizerOutput, VectorQuantizer
from vqgan_jax.models.scalar_quantizers import (FiniteScalarQuantizer, LookupFreeQuantizer,
                                                NoQuantizer)

GROUPS = 32
QUANTIZERS = ('vq', 'fsq', 'lfq', 'none')

# torch.nn.Conv2d's default kernel init (kaiming_uniform with a=sqrt(5)): U(+-1/sqrt(fan_in)).
_torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def downsampling_factor(ch_mult: Sequence[int]) -> int:
  """Spatial reduction from images to codes: one stride-2 downsample between levels."""
  return 2**(len(ch_mult) - 1)


def count_params(params: Any) -> int:
  """Number of scalars in a parameter pytree (arrays or `jax.eval_shape` structs)."""
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))


def _conv(features: int, kernel: int, dtype: Any, name: str | None = None, *,
          stride: int = 1, padding: Any = None, zero_init: bool = False) -> nn.Conv:
  """A torch-style Conv2d: symmetric padding kernel//2 unless given, float32 params; a zero
  kernel with `zero_init` (a residual branch that starts as nothing)."""
  if padding is None:
    padding = ((kernel // 2, kernel // 2),) * 2
  kernel_init = nn.initializers.zeros if zero_init else _torch_kernel_init
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding,
                 dtype=dtype, param_dtype=jnp.float32, kernel_init=kernel_init, name=name,
                 conv_general_dilated=conv_paths.conv_general_dilated)


def _group_norm(dtype: Any, groups: int, name: str | None = None) -> GroupNorm:
  # Two-pass variance like torch; the fast E[x^2]-E[x]^2 form loses digits on large activations.
  return GroupNorm(num_groups=groups, epsilon=1e-6, dtype=dtype, name=name)


def _output_norm(h: jax.Array, enabled: bool, dtype: Any, groups: int) -> jax.Array:
  """The GroupNorm before an encoder's or decoder's conv_out (taming's), or nothing.

  It is the one norm with no skip path around it: it removes each image's per-group mean and
  scale, so the absolute colour and contrast of the whole image reach conv_out only through
  the ratios between the channels of a group.
  """
  return _group_norm(dtype, groups, 'norm_out')(h) if enabled else h.astype(dtype)


class ResnetBlock(nn.Module):
  """GroupNorm-swish-conv twice with dropout before the second conv; 1x1 shortcut if C changes.
  `zero_init`: conv2's kernel starts at zero, so the block starts as its shortcut."""
  out_channels: int
  dropout: float = 0.0
  dtype: Any = jnp.float32
  norm_groups: int = GROUPS
  zero_init: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    h = nn.swish(_group_norm(self.dtype, self.norm_groups, 'norm1')(x))
    h = _conv(self.out_channels, 3, self.dtype, 'conv1')(h)
    h = nn.swish(_group_norm(self.dtype, self.norm_groups, 'norm2')(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = _conv(self.out_channels, 3, self.dtype, 'conv2', zero_init=self.zero_init)(h)
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, self.dtype, 'nin_shortcut')(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over all positions, residual; 1x1 conv q/k/v/proj_out
  (`zero_init`: proj_out starts at zero, the block at the identity)."""
  dtype: Any = jnp.float32
  norm_groups: int = GROUPS
  zero_init: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, height, width, c = x.shape
    h = _group_norm(self.dtype, self.norm_groups, 'norm')(x)
    q, k, v = (_conv(c, 1, self.dtype, name)(h).reshape(b, height * width, c)
               for name in ('q', 'k', 'v'))
    logits = jnp.einsum('bic,bjc->bij', q, k, preferred_element_type=jnp.float32) * (c**-0.5)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    h = jnp.einsum('bij,bjc->bic', weights, v).reshape(b, height, width, c)
    return x + _conv(c, 1, self.dtype, 'proj_out', zero_init=self.zero_init)(h)


# Rematerialised blocks: activations inside each block are recomputed in the backward pass
# instead of stored (`train` is argument 2 counting self, a Python bool: static).
RematResnetBlock = nn.remat(ResnetBlock, static_argnums=(2,))
RematAttnBlock = nn.remat(AttnBlock)


def _blocks(remat: bool):
  return (RematResnetBlock, RematAttnBlock) if remat else (ResnetBlock, AttnBlock)


class Downsample(nn.Module):
  """3x3 stride-2 conv after zero-padding right and bottom by one (taming's asymmetric pad)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return _conv(x.shape[-1], 3, self.dtype, 'conv', stride=2, padding=((0, 1), (0, 1)))(x)


def _phase_taps(kernel: jax.Array, axis: int) -> list[jax.Array]:
  """Along `axis`, a 3-tap kernel applied to a nearest-x2 upsampled signal reads only two
  input samples: even outputs get (k0, k1 + k2) at offsets (-1, 0), odd ones (k0 + k1, k2)
  at offsets (0, +1)."""
  k0, k1, k2 = (jnp.take(kernel, i, axis=axis) for i in range(3))
  return [jnp.stack([k0, k1 + k2], axis=axis), jnp.stack([k0 + k1, k2], axis=axis)]


def upsample_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """conv3x3(nearest_upsample_x2(x), kernel) with padding 1, computed as four 2x2 convs on `x`
  (one per output phase) whose outputs interleave into the 2H x 2W map.

  The same function up to float rounding, with 4/9 of the multiply-adds and no 4x larger
  upsampled copy: fwd+bwd 14.7 -> 6.0 ms for 8x16x16x64 -> 32x32 and 292 -> 149 ms for
  2x64x64x128 -> 128x128 on 2 CPU cores.
  """
  b, h, w, _ = x.shape
  phases = []
  for row, row_kernel in enumerate(_phase_taps(kernel, 0)):
    for col, phase_kernel in enumerate(_phase_taps(row_kernel, 1)):
      phases.append(conv_paths.conv_general_dilated(
          x, phase_kernel, (1, 1), ((1 - row, row), (1 - col, col)),
          dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
  y = jnp.stack(phases, axis=3).reshape(b, h, w, 2, 2, -1)
  return y.transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, -1)


class _ConvParams(nn.Module):
  """The kernel and bias of a torch-style 3x3 conv (`nn.Conv`'s names, layout and init)."""
  features: int

  @nn.compact
  def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array]:
    kernel = self.param('kernel', _torch_kernel_init, (3, 3, in_features, self.features),
                        jnp.float32)
    return kernel, self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)


class Upsample(nn.Module):
  """Nearest-neighbour x2 then a 3x3 conv (taming's), computed by `upsample_conv3x3`."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel, bias = _ConvParams(x.shape[-1], name='conv')(x.shape[-1])
    x = x.astype(self.dtype)
    return upsample_conv3x3(x, kernel.astype(self.dtype)) + bias.astype(self.dtype)


class Level(nn.Module):
  """One resolution of the encoder or decoder: res blocks, each followed by its attention block
  when this resolution uses attention, then an optional down/upsample."""
  channels: int
  num_blocks: int
  attention: bool
  resample: str | None  # 'downsample', 'upsample' or None.
  dropout: float = 0.0
  dtype: Any = jnp.float32
  remat: bool = False
  norm_groups: int = GROUPS
  zero_init: bool = False

  @nn.compact
  def __call__(self, h: jax.Array, train: bool = False) -> jax.Array:
    resnet, attn = _blocks(self.remat)
    for j in range(self.num_blocks):
      h = resnet(self.channels, self.dropout, self.dtype, self.norm_groups, self.zero_init,
                 name=f'block_{j}')(h, train)
      if self.attention:
        h = attn(self.dtype, self.norm_groups, self.zero_init, name=f'attn_{j}')(h)
    if self.resample == 'downsample':
      h = Downsample(self.dtype, name='downsample')(h)
    elif self.resample == 'upsample':
      h = Upsample(self.dtype, name='upsample')(h)
    return h


class MidBlock(nn.Module):
  """Res block, attention, res block at the lowest resolution."""
  dropout: float = 0.0
  dtype: Any = jnp.float32
  remat: bool = False
  norm_groups: int = GROUPS
  zero_init: bool = False

  @nn.compact
  def __call__(self, h: jax.Array, train: bool = False) -> jax.Array:
    channels = h.shape[-1]
    resnet, attn = _blocks(self.remat)
    g, zero = self.norm_groups, self.zero_init
    h = resnet(channels, self.dropout, self.dtype, g, zero, name='block_1')(h, train)
    h = attn(self.dtype, g, zero, name='attn_1')(h)
    return resnet(channels, self.dropout, self.dtype, g, zero, name='block_2')(h, train)


class Encoder(nn.Module):
  """Images (B, H, W, in) -> latents (B, H/f, W/f, z_channels), f = 2**(len(ch_mult)-1).

  Attention is used at levels whose nominal size (`resolution` halved per level, as in taming)
  is in `attn_resolutions`; the actual input may have any size divisible by f.
  """
  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  attn_resolutions: Sequence[int]
  resolution: int
  z_channels: int
  dropout: float = 0.0
  dtype: Any = jnp.float32
  remat: bool = False
  norm_groups: int = GROUPS
  zero_init_residual: bool = False
  output_norm: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    h = _conv(self.ch, 3, self.dtype, 'conv_in')(x)
    curr_res = self.resolution
    last = len(self.ch_mult) - 1
    for i, mult in enumerate(self.ch_mult):
      h = Level(self.ch * mult, self.num_res_blocks, curr_res in self.attn_resolutions,
                'downsample' if i != last else None, self.dropout, self.dtype, self.remat,
                self.norm_groups, self.zero_init_residual, name=f'down_{i}')(h, train)
      if i != last:
        curr_res //= 2
    h = MidBlock(self.dropout, self.dtype, self.remat, self.norm_groups,
                 self.zero_init_residual, name='mid')(h, train)
    h = nn.swish(_output_norm(h, self.output_norm, self.dtype, self.norm_groups))
    return _conv(self.z_channels, 3, self.dtype, 'conv_out')(h)


class Decoder(nn.Module):
  """Latents (B, h, w, z_channels) -> images (B, h*f, w*f, out_ch), no output activation.

  Sows the activation fed to `conv_out` as `intermediates/conv_out_input`: the trainer pulls
  loss gradients back to `conv_out`'s kernel from it for the adaptive GAN weight.
  """
  ch: int
  out_ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  attn_resolutions: Sequence[int]
  resolution: int
  dropout: float = 0.0
  dtype: Any = jnp.float32
  remat: bool = False
  norm_groups: int = GROUPS
  zero_init_residual: bool = False
  output_norm: bool = True

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
    last = len(self.ch_mult) - 1
    h = _conv(self.ch * self.ch_mult[last], 3, self.dtype, 'conv_in')(z)
    h = MidBlock(self.dropout, self.dtype, self.remat, self.norm_groups,
                 self.zero_init_residual, name='mid')(h, train)
    curr_res = self.resolution // 2**last
    for i in reversed(range(len(self.ch_mult))):
      h = Level(self.ch * self.ch_mult[i], self.num_res_blocks + 1,
                curr_res in self.attn_resolutions, 'upsample' if i != 0 else None,
                self.dropout, self.dtype, self.remat, self.norm_groups,
                self.zero_init_residual, name=f'up_{i}')(h, train)
      if i != 0:
        curr_res *= 2
    h = nn.swish(_output_norm(h, self.output_norm, self.dtype, self.norm_groups))
    self.sow('intermediates', 'conv_out_input', h)
    return _conv(self.out_ch, 3, self.dtype, 'conv_out')(h)


class VQModel(nn.Module):
  """VQGAN generator: Encoder -> 1x1 quant_conv -> VectorQuantizer -> 1x1 post_quant_conv
  -> Decoder. Images are NHWC in [-1, 1]; outputs are float32 whatever `dtype` computes in.

  `resolution` is the training resolution (it decides where attention goes); any input whose
  height and width are divisible by `downsampling_factor(ch_mult)` works.

  `quantizer_type` picks the bottleneck: 'vq' (VectorQuantizer, taming's by default; its
  fields from `beta` to `usage_window_steps` are the codebook options documented there),
  'fsq' (FiniteScalarQuantizer with `fsq_levels`) or 'lfq' (LookupFreeQuantizer, entropy terms
  per `lfq_entropy`: 'factorized' per bit or 'exact' over all codes). Training
  with `train=True` and the 'codebook_state' collection mutable updates usage counters, EMA
  statistics, data initialisation and restarts (see vqgan_jax.models.quantizer).

  `remat=True` rematerialises every res and attention block (`nn.remat`): their activations
  are recomputed in the backward pass, trading ~1/3 more compute for memory at large
  resolutions. Parameters and results are the same either way.

  `zero_init_residual=True` starts the last conv of every res block and the output projection
  of every attention block at zero (as ADM's diffusion U-Net does), so each block starts as its
  shortcut and the network starts shallow. `output_norm=False` drops the GroupNorm before the
  encoder's and decoder's `conv_out` (see `_output_norm`). Both default to taming's
  architecture, which converted checkpoints need.
  """
  ch: int = 128
  out_ch: int = 3
  ch_mult: Sequence[int] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.0
  in_channels: int = 3
  resolution: int = 256
  z_channels: int = 256
  embed_dim: int = 256
  codebook_size: int = 1024
  beta: float = 0.25
  legacy: bool = True
  l2_normalize: bool = False
  lookup_chunk_size: int = 0
  quantizer_type: str = 'vq'
  fsq_levels: Sequence[int] = ()
  codebook_dim: int = 0
  ema_decay: float = 0.0
  ema_epsilon: float = 1e-5
  codebook_init: str = 'uniform'
  kmeans_iterations: int = 5
  restart_unused_steps: int = 0
  buffer_size: int = 0
  entropy_temperature: float = 0.0
  lfq_entropy: str = 'factorized'
  usage_window_steps: int = 100
  simvq: bool = False
  index_backprop: bool = False
  remat: bool = False
  norm_groups: int = GROUPS
  zero_init_residual: bool = False
  output_norm: bool = True
  dtype: Any = jnp.float32

  def setup(self):
    groups = self.norm_groups
    bad = [self.ch * m for m in self.ch_mult if (self.ch * m) % groups]
    if bad:
      raise ValueError(f'VQModel channel counts ch*ch_mult={bad} are not divisible by the '
                       f'{groups} GroupNorm groups; choose ch and ch_mult so every ch*mult is a '
                       f'multiple of {groups}.')
    arch = dict(ch=self.ch, ch_mult=tuple(self.ch_mult), num_res_blocks=self.num_res_blocks,
                attn_resolutions=tuple(self.attn_resolutions), resolution=self.resolution,
                dropout=self.dropout, dtype=self.dtype, remat=self.remat,
                norm_groups=self.norm_groups, zero_init_residual=self.zero_init_residual,
                output_norm=self.output_norm)
    self.encoder = Encoder(z_channels=self.z_channels, **arch)
    self.quant_conv = _conv(self.embed_dim, 1, self.dtype)
    self.quantizer = self._make_quantizer()
    self.post_quant_conv = _conv(self.z_channels, 1, self.dtype)
    self.decoder = Decoder(out_ch=self.out_ch, **arch)

  def _make_quantizer(self) -> nn.Module:
    common = dict(codebook_size=self.codebook_size, embed_dim=self.embed_dim,
                  usage_window_steps=self.usage_window_steps)
    if self.quantizer_type == 'vq':
      return VectorQuantizer(
          beta=self.beta, legacy=self.legacy, l2_normalize=self.l2_normalize,
          lookup_chunk_size=self.lookup_chunk_size, codebook_dim=self.codebook_dim,
          ema_decay=self.ema_decay, ema_epsilon=self.ema_epsilon,
          codebook_init=self.codebook_init, kmeans_iterations=self.kmeans_iterations,
          restart_unused_steps=self.restart_unused_steps, buffer_size=self.buffer_size,
          entropy_temperature=self.entropy_temperature, simvq=self.simvq,
          index_backprop=self.index_backprop, **common)
    if self.quantizer_type == 'fsq':
      return FiniteScalarQuantizer(levels=tuple(self.fsq_levels), **common)
    if self.quantizer_type == 'lfq':
      return LookupFreeQuantizer(beta=self.beta, entropy_temperature=self.entropy_temperature,
                                 lookup_chunk_size=self.lookup_chunk_size,
                                 lfq_entropy=self.lfq_entropy, **common)
    if self.quantizer_type == 'none':
      return NoQuantizer(**common)
    raise ValueError(f"VQModel quantizer_type={self.quantizer_type!r}; use one of {QUANTIZERS}.")

  def __call__(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, QuantizerOutput]:
    """Reconstruction (B, H, W, out_ch) float32 and the quantizer's output."""
    quantized = self.encode(images, train)
    return self.decode(quantized.quantized, train), quantized

  def encode(self, images: jax.Array, train: bool = False) -> QuantizerOutput:
    """Quantizes the images' latents (after quant_conv)."""
    self._check_images(images)
    return self.quantizer(self.quant_conv(self.encoder(images, train)), train)

  def encode_to_indices(self, images: jax.Array) -> jax.Array:
    """int32 code indices (B, H/f, W/f) in raster order."""
    return self.encode(images).indices

  def decode(self, quantized: jax.Array, train: bool = False) -> jax.Array:
    """Images (B, h*f, w*f, out_ch) float32 from quantized latents (B, h, w, embed_dim)."""
    return self.decoder(self.post_quant_conv(quantized), train).astype(jnp.float32)

  def decode_indices(self, indices: jax.Array) -> jax.Array:
    """Images from int code indices (B, h, w)."""
    return self.decode(self.quantizer.lookup(indices))

  def _check_images(self, images: jax.Array) -> None:
    if images.ndim != 4 or images.shape[-1] != self.in_channels:
      raise ValueError(f'VQModel expects NHWC images with {self.in_channels} channels, got '
                       f'shape {images.shape}.')
    factor = downsampling_factor(self.ch_mult)
    height, width = images.shape[1:3]
    if height % factor or width % factor:
      fix = tuple(-(-s // factor) * factor for s in (height, width))
      raise ValueError(f'Image size {height}x{width} is not divisible by the downsampling factor '
                       f'{factor} (2**(len(ch_mult)-1) for ch_mult={tuple(self.ch_mult)}); '
                       f'crop or pad to a multiple of {factor}, e.g. {fix[0]}x{fix[1]}.')
