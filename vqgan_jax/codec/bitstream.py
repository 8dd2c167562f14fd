"""The compressed-image file: a small versioned header, then the entropy-coded codes.

Layout, little-endian (format version 1, 56 bytes of header):

    magic        4s   b"VQGJ"
    version      u8   FORMAT_VERSION
    model        u8   how the codes were coded: 0 prior, 1 uniform (log2 K bits), 2 adaptive
    precision    u8   bits of the probability quantisation (the coder sees integer counts)
    reserved     u8   0
    height       u32  the image as given (decoding crops back to it)
    width        u32
    grid_h       u16  the code grid that was coded (the padded image / the tokenizer's factor)
    grid_w       u16
    rows         u16  rows per device of the prior's batch (its numerics depend on the shape)
    reserved     u16  0
    tokenizer_id 8s   first bytes of the SHA-256 of the tokenizer's parameters
    prior_id     8s   the same of the prior's (zeros without one)
    codes_crc    u32  CRC-32 of the codes (int32, raster order): checked after decoding
    payload_len  u32
    payload_crc  u32  CRC-32 of the payload
    header_crc   u32  CRC-32 of every header byte before it

The payload is the range coder's 32-bit words. Every way a file can be wrong is told apart by
`read` (not a file of ours, a future version, a corrupted header, truncation, trailing data, a
corrupted payload) or, after decoding, by the codes checksum (a model or platform whose
probabilities differ from the encoder's); each raises `CodecFileError` naming the cause.
"""
from __future__ import annotations

import dataclasses
import struct
import zlib

MAGIC = b"VQGJ"
FORMAT_VERSION = 1
MODELS = ("prior", "uniform", "adaptive")
_FIELDS = struct.Struct("<4sBBBBIIHHHH8s8sIII")
_HEADER_CRC = struct.Struct("<I")
HEADER_BYTES = _FIELDS.size + _HEADER_CRC.size
NO_PRIOR = bytes(8)


class CodecFileError(ValueError):
  """A compressed file that cannot be decoded as it is; the message says why."""


@dataclasses.dataclass(frozen=True)
class Header:
  model: str
  precision: int
  height: int
  width: int
  grid: tuple[int, int]
  rows: int
  tokenizer_id: bytes
  prior_id: bytes
  codes_crc: int


def codes_checksum(codes) -> int:
  """CRC-32 of codes as little-endian int32 in raster order."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  return zlib.crc32(np.ascontiguousarray(codes, dtype="<i4").tobytes())


def write(header: Header, payload: bytes) -> bytes:
  """The file's bytes."""
  if header.model not in MODELS:
    raise ValueError(f"model {header.model!r} is not one of {MODELS}.")
  fields = _FIELDS.pack(MAGIC, FORMAT_VERSION, MODELS.index(header.model), header.precision, 0,
                        header.height, header.width, header.grid[0], header.grid[1], header.rows,
                        0, header.tokenizer_id, header.prior_id, header.codes_crc, len(payload),
                        zlib.crc32(payload))
  return fields + _HEADER_CRC.pack(zlib.crc32(fields)) + payload


def read(data: bytes, name: str = "the file") -> tuple[Header, bytes]:
  """(header, payload) of a file's bytes, or `CodecFileError` with the cause."""
  if len(data) < 5 or data[:4] != MAGIC:
    if MAGIC.startswith(data[:4]) and len(data) < HEADER_BYTES:
      raise CodecFileError(f"{name} is truncated: {len(data)} bytes, shorter than the "
                           f"{HEADER_BYTES}-byte header.")
    raise CodecFileError(f"{name} is not a vqgan_jax compressed image (it does not start with "
                         f"{MAGIC!r}).")
  if data[4] > FORMAT_VERSION:
    raise CodecFileError(f"{name} has format version {data[4]}, newer than this vqgan_jax reads "
                         f"(up to {FORMAT_VERSION}): decode it with the version that wrote it or "
                         "a newer one.")
  if data[4] < 1:
    raise CodecFileError(f"{name} has an invalid format version {data[4]}.")
  if len(data) < HEADER_BYTES:
    raise CodecFileError(f"{name} is truncated: {len(data)} bytes, shorter than the "
                         f"{HEADER_BYTES}-byte header.")
  fields = data[:_FIELDS.size]
  (stored_crc,) = _HEADER_CRC.unpack(data[_FIELDS.size:HEADER_BYTES])
  if zlib.crc32(fields) != stored_crc:
    raise CodecFileError(f"{name}'s header is corrupted (its checksum does not match).")
  (_, _, model, precision, _, height, width, grid_h, grid_w, rows, _, tokenizer_id, prior_id,
   codes_crc, payload_len, payload_crc) = _FIELDS.unpack(fields)
  payload = data[HEADER_BYTES:]
  if len(payload) < payload_len:
    raise CodecFileError(f"{name} is truncated: the header announces {payload_len} payload "
                         f"bytes, the file holds {len(payload)}.")
  if len(payload) > payload_len:
    raise CodecFileError(f"{name} has {len(payload) - payload_len} bytes after its payload "
                         "(two files concatenated, or a corrupted length).")
  if zlib.crc32(payload) != payload_crc:
    raise CodecFileError(f"{name}'s payload is corrupted (its checksum does not match).")
  if model >= len(MODELS):
    raise CodecFileError(f"{name} names an unknown probability model {model}.")
  header = Header(model=MODELS[model], precision=precision, height=height, width=width,
                  grid=(grid_h, grid_w), rows=rows, tokenizer_id=tokenizer_id,
                  prior_id=prior_id, codes_crc=codes_crc)
  return header, payload
