"""Vector quantizer (VQ-VAE bottleneck) matching taming-transformers' `VectorQuantizer`.

Codes are chosen by nearest Euclidean distance, computed as |z|^2 + |e|^2 - 2 z.e in float32
with HIGHEST matmul precision, so indices agree with taming's even when the network around it
runs in bfloat16. Gradients reach the encoder through the straight-through estimator.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class QuantizerOutput:
  """What one quantizer call produces; losses and statistics are float32 scalars.

  Attributes:
    quantized: straight-through code vectors, z + sg(e_k - z), float32, shape of the input.
    indices: int32 code indices, the input shape without its last axis.
    loss: codebook_loss + commitment_loss.
    codebook_loss: the weighted term that moves the codebook, |e_k - sg(z)|^2.
    commitment_loss: the weighted term that moves the encoder, |sg(e_k) - z|^2.
    perplexity: exp(entropy) of the batch's code histogram (1 = one code, K = uniform).
    usage: fraction of the K codes used at least once in the batch.
  """
  quantized: jax.Array
  indices: jax.Array
  loss: jax.Array
  codebook_loss: jax.Array
  commitment_loss: jax.Array
  perplexity: jax.Array
  usage: jax.Array


def _taming_codebook_init(key: jax.Array, shape: tuple[int, int], dtype: Any) -> jax.Array:
  """Uniform(-1/K, 1/K), as taming initialises its `nn.Embedding` codebook."""
  bound = 1.0 / shape[0]
  return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)


class VectorQuantizer(nn.Module):
  """Nearest-neighbour quantizer over the last axis of `z` (NHWC latents or any (..., D)).

  `legacy=True` is taming's weighting (commitment weight 1, codebook weight beta), which the
  released taming checkpoints were trained with; `legacy=False` is the VQ-VAE paper's
  (codebook weight 1, commitment weight beta).

  `l2_normalize=True` (not in taming; ViT-VQGAN, LlamaGen) unit-normalises latents and codes
  before the lookup, so the nearest code is the one of highest cosine similarity and the
  decoder sees unit vectors; with low-dimensional codes this keeps most of the codebook in use
  where the Euclidean lookup collapses to a few codes.

  `lookup_chunk_size=C > 0` searches the nearest code C tokens at a time (`lax.map`), so the
  distance matrix held at once is C x K instead of N x K (N tokens in the batch): memory stays
  bounded for large codebooks. Indices are identical either way.
  """
  codebook_size: int
  embed_dim: int
  beta: float = 0.25
  legacy: bool = True
  l2_normalize: bool = False
  lookup_chunk_size: int = 0

  def setup(self):
    self.embedding = self.param('embedding', _taming_codebook_init,
                                (self.codebook_size, self.embed_dim), jnp.float32)

  def __call__(self, z: jax.Array) -> QuantizerOutput:
    if z.shape[-1] != self.embed_dim:
      raise ValueError(f'VectorQuantizer expects inputs with last axis {self.embed_dim}, '
                       f'got shape {z.shape}.')
    z = self._maybe_normalize(z.astype(jnp.float32))
    codebook = self._maybe_normalize(self.embedding)
    flat = z.reshape(-1, self.embed_dim)
    code_norms = jnp.sum(codebook**2, axis=1)

    def nearest(vectors):
      distances = (jnp.sum(vectors**2, axis=-1, keepdims=True) + code_norms - 2.0 * jnp.matmul(
          vectors, codebook.T, precision=jax.lax.Precision.HIGHEST))
      return jnp.argmin(distances, axis=-1).astype(jnp.int32)

    if 0 < self.lookup_chunk_size < flat.shape[0]:
      indices = jax.lax.map(nearest, flat, batch_size=self.lookup_chunk_size)
    else:
      indices = nearest(flat)
    codes = self.lookup(indices).reshape(z.shape)

    sg = jax.lax.stop_gradient
    encoder_term = jnp.mean((sg(codes) - z)**2)
    codebook_term = jnp.mean((codes - sg(z))**2)
    if self.legacy:
      commitment_loss, codebook_loss = encoder_term, self.beta * codebook_term
    else:
      commitment_loss, codebook_loss = self.beta * encoder_term, codebook_term

    counts = jnp.bincount(indices, length=self.codebook_size)
    probs = counts / indices.shape[0]
    perplexity = jnp.exp(jnp.sum(jax.scipy.special.entr(probs)))
    return QuantizerOutput(
        quantized=z + sg(codes - z),
        indices=indices.reshape(z.shape[:-1]),
        loss=codebook_loss + commitment_loss,
        codebook_loss=codebook_loss,
        commitment_loss=commitment_loss,
        perplexity=perplexity,
        usage=jnp.mean(counts > 0),
    )

  def lookup(self, indices: jax.Array) -> jax.Array:
    """Code vectors for integer `indices` of any shape: (..., embed_dim) float32."""
    return self._maybe_normalize(jnp.take(self.embedding, indices, axis=0))

  def _maybe_normalize(self, x: jax.Array) -> jax.Array:
    if not self.l2_normalize:
      return x
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x**2, axis=-1, keepdims=True), 1e-12))
