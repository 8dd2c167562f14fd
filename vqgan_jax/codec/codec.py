"""Images to compressed files and back with a tokenizer and (optionally) its prior.

    codec = Codec.from_workdir("workdirs/tiny_prior")   # or a tokenizer workdir alone
    coded = codec.encode([uint8_image, ...])            # one Coded each: .data is the file
    images = codec.decode([c.data for c in coded])

An image is padded (edge pixels repeated) to a multiple of the tokenizer's downsampling factor
and to at least the prior's training size, encoded to codes, and the codes range-coded under the
prior's probabilities (`prior_probabilities`), or, without a prior, under a uniform (log2 K bits
per code) or adaptive model. Decoding range-decodes the codes, checks them against the codes
checksum the encoder stored, decodes them to pixels and crops the padding off. Images of the
same padded size are coded together in batches of `rows_per_device` rows on every device of
`mesh` (default: this process's devices).

Where a file decodes: the codes are exact wherever the prior's counts are the encoder's. They are
on the platform and JAX/XLA build that wrote the file, whatever the device count or batch
(tested: 1 and 8 CPU devices, batches of 1 to 5 images). Another backend may round the prior's
float32 logits differently; if a count differs the decoded codes fail the checksum and decoding
raises instead of returning a wrong image.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from vqgan_jax.codec import bitstream, entropy_coding
from vqgan_jax.codec.prior_probabilities import PriorProbabilities
from vqgan_jax.data import input_pipeline
from vqgan_jax.models.autoencoder import downsampling_factor
from vqgan_jax.models.transformer import Transformer
from vqgan_jax.runtime import checkpoints, images as image_utils, sharding
from vqgan_jax.tokenizer.load import restore_tokenizer

DEFAULT_ROWS_PER_DEVICE = 8


def params_id(params) -> bytes:
  """The first 8 bytes of the SHA-256 of a parameter tree (paths, dtypes, shapes, values)."""
  digest = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
    array = np.ascontiguousarray(jax.device_get(leaf))
    digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|".encode())
    digest.update(array.tobytes())
  return digest.digest()[:8]


def local_mesh() -> Mesh:
  """A data-axis mesh over this process's devices (a codec is a single-host tool)."""
  return Mesh(np.asarray(jax.local_devices()), (sharding.DATA_AXIS,))


@dataclasses.dataclass
class Coded:
  """What encoding one image produced: the file, its codes and their ideal size in bits under
  the counts the coder used (the file's payload is that plus the coder's last words)."""
  data: bytes
  codes: np.ndarray
  ideal_bits: float


class Codec:
  """A tokenizer (+ prior) as an image codec; see the module docstring."""

  def __init__(self, tokenizer_model, tokenizer_params, prior: Transformer | None = None,
               prior_params=None, train_grid: tuple[int, int] | None = None, *,
               mesh: Mesh | None = None, rows_per_device: int = DEFAULT_ROWS_PER_DEVICE,
               precision: int = entropy_coding.DEFAULT_PRECISION, fallback: str = "uniform"):
    if tokenizer_model.quantizer_type == "none":
      raise ValueError("This tokenizer was trained with quantizer_type='none' (continuous "
                       "latents): it has no codes to compress. Use a quantized tokenizer.")
    if not 1 <= rows_per_device < 2**16 or not 1 <= precision <= 24:
      raise ValueError(f"rows_per_device={rows_per_device} must be in [1, 65535] and "
                       f"precision={precision} in [1, 24].")
    if fallback not in ("uniform", "adaptive"):
      raise ValueError(f"fallback={fallback!r}; use 'uniform' or 'adaptive'.")
    self.mesh = mesh or local_mesh()
    self.tokenizer, self.factor = tokenizer_model, downsampling_factor(tokenizer_model.ch_mult)
    self.vocab_size = tokenizer_model.codebook_size
    replicated = sharding.replicated(self.mesh)
    self.tokenizer_params = jax.device_put(tokenizer_params, replicated)
    self.tokenizer_id = params_id(tokenizer_params)
    self.rows_per_device, self.precision, self.fallback = rows_per_device, precision, fallback
    self.prior, self.train_grid = None, (1, 1)
    self.prior_id = bitstream.NO_PRIOR
    if prior is not None:
      if prior.vocab_size != self.vocab_size:
        raise ValueError(f"The prior models {prior.vocab_size} codes, the tokenizer has "
                         f"{self.vocab_size}: they are not a pair.")
      self.train_grid = tuple(train_grid)
      self.prior_id = params_id(prior_params)
      self.prior, self._prior_params = prior, jax.device_put(prior_params, replicated)
    self._priors: dict[int, PriorProbabilities] = {}
    rows = P(sharding.DATA_AXIS)
    on_rows = lambda fn: jax.jit(jax.shard_map(fn, mesh=self.mesh, in_specs=(P(), rows),
                                               out_specs=rows, check_vma=False))
    self._encode = on_rows(lambda p, x: tokenizer_model.apply(
        {"params": p}, x, method="encode_to_indices"))
    self._decode = on_rows(lambda p, codes: image_utils.to_uint8_on_device(
        tokenizer_model.apply({"params": p}, codes, method="decode_indices")))

  @classmethod
  def from_workdir(cls, workdir: str, step: int | None = None, **kwargs) -> "Codec":
    """The codec of a prior workdir (its tokenizer and prior) or of a tokenizer workdir alone."""
    saved = checkpoints.read_config(workdir)
    if saved.get("stage") != "prior":
      model, variables, _ = restore_tokenizer(workdir, step)
      return cls(model, variables["params"], **kwargs)
    if saved.get("conditioning", "none") not in ("none", "class"):
      raise ValueError(f"{workdir} is a prior conditioned on {saved['conditioning']!r}: a file "
                       "would need the condition too. Compress with an unconditional or "
                       "class-conditional prior, or with the tokenizer workdir alone.")
    tokenizer_model, variables, _ = restore_tokenizer(saved["tokenizer_workdir"])
    raw, _ = checkpoints.restore_raw_state(workdir, step, fields=("params",))
    params = raw["params"]
    factor = downsampling_factor(tokenizer_model.ch_mult)
    h, w = input_pipeline.crop_shape(saved["data"]["image_size"])
    train_grid = (h // factor, w // factor)
    num_classes = 0
    if saved.get("conditioning") == "class":
      num_classes = int(params["class_emb"]["embedding"].shape[0]) - 1
    model_kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in saved["model"].items()}
    prior = Transformer(vocab_size=tokenizer_model.codebook_size,
                        seq_len=train_grid[0] * train_grid[1], num_classes=num_classes,
                        dtype=jnp.float32, **model_kwargs)
    return cls(tokenizer_model, variables["params"], prior, params, train_grid, **kwargs)

  @property
  def model_name(self) -> str:
    return "prior" if self.prior is not None else self.fallback

  def padded_shape(self, height: int, width: int) -> tuple[int, int]:
    """The size an image is coded at: a multiple of the factor, at least the prior's window."""
    f = self.factor
    return (max(-(-height // f), self.train_grid[0]) * f,
            max(-(-width // f), self.train_grid[1]) * f)

  def _prior_probabilities(self, rows_per_device: int) -> PriorProbabilities:
    """The prior's counts computed `rows_per_device` rows per device (a file's numerics)."""
    if rows_per_device not in self._priors:
      self._priors[rows_per_device] = PriorProbabilities(
          self.prior, self._prior_params, self.train_grid, self.mesh,
          rows_per_device=rows_per_device, precision=self.precision)
    return self._priors[rows_per_device]

  def _batches(self, items: Sequence, key, rows_per_device: int | None = None
               ) -> list[list[int]]:
    """Indices of `items` grouped by `key(item)`, in batches of at most one call's rows."""
    groups: dict = {}
    for i, item in enumerate(items):
      groups.setdefault(key(item), []).append(i)
    rows = (rows_per_device or self.rows_per_device) * self.mesh.size
    return [indices[s:s + rows] for indices in groups.values()
            for s in range(0, len(indices), rows)]

  def _pad_rows(self, array: np.ndarray) -> np.ndarray:
    """Rows repeated up to a multiple of the device count (tokenizer calls)."""
    rows = -(-len(array) // self.mesh.size) * self.mesh.size
    return np.concatenate([array, np.repeat(array[-1:], rows - len(array), 0)]) if (
        len(array) < rows) else array

  def tokenize(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The (h, w) code grid of each uint8 (H, W, 3) image, as `encode` codes it."""
    out: list = [None] * len(images)
    for batch in self._batches(images, lambda im: self.padded_shape(*im.shape[:2])):
      hp, wp = self.padded_shape(*images[batch[0]].shape[:2])
      padded = np.stack([np.pad(images[i], ((0, hp - images[i].shape[0]),
                                            (0, wp - images[i].shape[1]), (0, 0)), mode="edge")
                         for i in batch])
      pixels = self._pad_rows(padded.astype(np.float32) / 127.5 - 1.0)
      codes = np.asarray(self._encode(self.tokenizer_params,
                                      sharding.shard_host_batch(pixels, self.mesh)))
      for row, i in enumerate(batch):
        out[i] = codes[row].astype(np.int32)
    return out

  def encode(self, images: Sequence[np.ndarray]) -> list[Coded]:
    """Compresses uint8 (H, W, 3) images; one `Coded` (file bytes, codes, ideal bits) each."""
    for i, image in enumerate(images):
      if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"Image {i} must be uint8 (H, W, 3), got {image.dtype} {image.shape}.")
      if max(image.shape[:2]) >= 2**16 * self.factor:
        raise ValueError(f"Image {i} of {image.shape[:2]} pixels is too large for the format.")
    codes = self.tokenize(images)
    out: list = [None] * len(images)
    for batch in self._batches(codes, lambda c: c.shape):
      grid = codes[batch[0]].shape
      flat = np.stack([codes[i].reshape(-1) for i in batch])
      encoders = [entropy_coding.Encoder() for _ in batch]
      bits = np.zeros(len(batch))

      def push(g, rows, counts_of_row):
        for row in rows:
          if row < len(batch):  # Padding rows place code 0.
            counts = counts_of_row(row)
            encoders[row].push(int(flat[row, g]), counts)
            bits[row] += entropy_coding.code_bits(counts, flat[row, g])
        return np.asarray([flat[row, g] if row < len(batch) else 0 for row in rows], np.int32)

      self._run(grid, len(batch), push, lambda row, g: int(flat[row, g]), self.rows_per_device)
      for row, i in enumerate(batch):
        header = bitstream.Header(
            model=self.model_name, precision=self.precision, height=images[i].shape[0],
            width=images[i].shape[1], grid=grid, rows=self.rows_per_device,
            tokenizer_id=self.tokenizer_id, prior_id=self.prior_id,
            codes_crc=bitstream.codes_checksum(codes[i]))
        out[i] = Coded(bitstream.write(header, encoders[row].finish()), codes[i], bits[row])
    return out

  def _run(self, grid, num_rows, place, update, rows_per_device):
    """Token by token over `grid` for `num_rows` rows: `place(g, rows, counts_of_row)` returns
    token g of those rows (a range; rows from `num_rows` on are padding); counts come from the
    prior (`rows_per_device` rows per device, each device's rows in its own call), or from
    each row's host model."""
    if self.prior is not None:
      self._prior_probabilities(rows_per_device).run(
          grid, lambda g, first, counts: place(g, range(first, first + len(counts)),
                                               lambda row: counts[row - first]))
      return
    models = [entropy_coding.host_model(self.fallback, self.vocab_size) for _ in range(num_rows)]
    for g in range(grid[0] * grid[1]):
      place(g, range(num_rows), lambda row: models[row].counts())
      for row in range(num_rows):
        models[row].update(update(row, g))

  def _check(self, header: bitstream.Header, name: str) -> None:
    if header.tokenizer_id != self.tokenizer_id:
      raise bitstream.CodecFileError(
          f"{name} was encoded with tokenizer {header.tokenizer_id.hex()}; this workdir's "
          f"tokenizer is {self.tokenizer_id.hex()}: decode it with the workdir that encoded it.")
    if header.model != self.model_name:
      raise bitstream.CodecFileError(
          f"{name} was coded with the {header.model!r} model; this codec uses "
          f"{self.model_name!r}: decode it with the workdir (and --fallback) that encoded it.")
    if header.model == "prior" and header.prior_id != self.prior_id:
      raise bitstream.CodecFileError(
          f"{name} was encoded with prior {header.prior_id.hex()}; this workdir's prior is "
          f"{self.prior_id.hex()}: decode it with the workdir that encoded it.")
    if header.model == "prior" and header.precision != self.precision:
      raise bitstream.CodecFileError(
          f"{name} was coded with probability precision {header.precision}; this codec uses "
          f"{self.precision}.")
    if header.model == "prior" and header.rows < 1:
      raise bitstream.CodecFileError(f"{name}'s header records {header.rows} rows per device.")
    if self.padded_shape(header.height, header.width) != tuple(
        s * self.factor for s in header.grid):
      raise bitstream.CodecFileError(f"{name}'s header is inconsistent: a {header.height}x"
                                     f"{header.width} image cannot have a {header.grid} grid.")

  def decode_codes(self, files: Sequence[bytes], names: Sequence[str] | None = None
                   ) -> list[np.ndarray]:
    """The code grids of compressed files (checked against the encoder's checksum)."""
    names = list(names) if names is not None else [f"file {i}" for i in range(len(files))]
    parsed = [bitstream.read(data, name) for data, name in zip(files, names)]
    for (header, _), name in zip(parsed, names):
      self._check(header, name)
    out: list = [None] * len(files)
    batches = []  # Files coded with the same rows per device and grid, in batches of that.
    for rows_per_device in sorted({header.rows for header, _ in parsed}):
      same = [i for i, (header, _) in enumerate(parsed) if header.rows == rows_per_device]
      batches += [[same[j] for j in batch] for batch in self._batches(
          [parsed[i] for i in same], lambda hp: hp[0].grid, rows_per_device)]
    for batch in batches:
      grid, rows_per_device = parsed[batch[0]][0].grid, parsed[batch[0]][0].rows
      decoders = []
      for i in batch:
        try:
          decoders.append(entropy_coding.Decoder(parsed[i][1]))
        except ValueError as e:
          raise bitstream.CodecFileError(f"{names[i]}: {e}") from e
      placed = np.zeros((len(batch), grid[0] * grid[1]), np.int32)

      def pop(g, rows, counts_of_row):
        for row in rows:
          if row < len(batch):  # Padding rows place code 0.
            placed[row, g] = decoders[row].pop(counts_of_row(row))
        return np.asarray([placed[row, g] if row < len(batch) else 0 for row in rows], np.int32)

      self._run(grid, len(batch), pop, lambda row, g: int(placed[row, g]), rows_per_device)
      for row, i in enumerate(batch):
        codes = placed[row].reshape(grid)
        if bitstream.codes_checksum(codes) != parsed[i][0].codes_crc:
          raise bitstream.CodecFileError(
              f"{names[i]}: the decoded codes do not match the encoder's checksum: this "
              "decoder's probabilities differ from the encoder's (another platform or JAX/XLA "
              "build rounds the prior differently); decode it where it was encoded.")
        out[i] = codes
    return out

  def decode(self, files: Sequence[bytes], names: Sequence[str] | None = None
             ) -> list[np.ndarray]:
    """uint8 (H, W, 3) images of compressed files, cropped to their original size."""
    codes = self.decode_codes(files, names)
    sizes = [bitstream.read(data)[0] for data in files]
    out: list = [None] * len(files)
    for batch in self._batches(codes, lambda c: c.shape):
      pixels = np.asarray(self._decode(self.tokenizer_params, sharding.shard_host_batch(
          self._pad_rows(np.stack([codes[i] for i in batch])), self.mesh)))
      for row, i in enumerate(batch):
        out[i] = pixels[row, :sizes[i].height, :sizes[i].width]
    return out
