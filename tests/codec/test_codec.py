"""The codec: exact round trips whatever the devices and batches, file sizes at the prior's
cross-entropy, and a clear error for every way a file can be wrong."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from vqgan_jax.codec import bitstream
from vqgan_jax.codec.codec import Codec
from vqgan_jax.data import embedded


@pytest.fixture(scope="module")
def images():
  """Crops of a real photo: the prior's training size, one padded up, one slid over (16x12
  codes against an 8x8 window), and one smaller than the window."""
  photo = embedded.load_photos()[0]
  return [photo[:16, :16], photo[5:25, 3:21], photo[:32, :24], photo[:10, :12]]


@pytest.fixture(scope="module")
def codec8(trained_prior):
  return Codec.from_workdir(str(trained_prior[1]), rows_per_device=1)


def _one_device():
  return Mesh(np.asarray(jax.devices()[:1]), ("data",))


def test_round_trip_is_exact_across_devices_and_batches(trained_prior, codec8, images):
  assert codec8.mesh.size == 8 and codec8.model_name == "prior"
  coded = codec8.encode(images)
  for image, result, codes in zip(images, coded, codec8.tokenize(images)):
    np.testing.assert_array_equal(result.codes, codes)
  one = Codec.from_workdir(str(trained_prior[1]), rows_per_device=1, mesh=_one_device())
  # One device, one file at a time (the files say 1 row per device, as they were coded).
  for result in coded:
    np.testing.assert_array_equal(one.decode_codes([result.data])[0], result.codes)
  # Eight devices, all files at once, in another order; and the same bytes from one device.
  for result, codes in zip(coded[::-1], codec8.decode_codes([c.data for c in coded[::-1]])):
    np.testing.assert_array_equal(codes, result.codes)
  assert [c.data for c in one.encode(images[::-1])] == [c.data for c in coded[::-1]]
  decoded = one.decode([c.data for c in coded])
  assert [d.shape for d in decoded] == [i.shape for i in images]
  assert all(d.dtype == np.uint8 for d in decoded)
  np.testing.assert_array_equal(decoded[2], codec8.decode([coded[2].data])[0])


def test_file_size_is_the_priors_cross_entropy(trained_prior, codec8, images):
  """The payload is the prior's own cross-entropy (teacher-forced forward pass, float) within
  1% plus the range coder's termination (at most one 32-bit word)."""
  same_size = [images[0]] * 3
  coded = codec8.encode(same_size)
  prior, params = codec8.prior, codec8._prior_params  # pylint: disable=protected-access
  tokens = jnp.asarray(np.stack([c.codes.reshape(-1) for c in coded]))
  null = jnp.full((len(coded),), prior.num_classes, jnp.int32)
  logits = prior.apply({"params": params}, tokens, null if prior.num_classes else None)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1)[..., 0]
  cross_entropy_bits = np.asarray(jnp.sum(nll, axis=1)) / np.log(2.0)
  for result, bits in zip(coded, cross_entropy_bits):
    payload = len(result.data) - bitstream.HEADER_BYTES
    assert result.ideal_bits == pytest.approx(bits, rel=0.005)
    assert bits / 8 * 0.99 <= payload <= bits / 8 * 1.01 + 4


def test_tokenizer_alone_codes_at_log2_k_or_adaptively(random_tokenizer, images):
  for fallback in ("uniform", "adaptive"):
    codec = Codec.from_workdir(random_tokenizer, fallback=fallback, mesh=_one_device())
    coded = codec.encode(images)
    assert [c.shape for c in codec.decode_codes([c.data for c in coded])] == [
        c.codes.shape for c in coded]
    for result, codes in zip(coded, codec.decode_codes([c.data for c in coded])):
      np.testing.assert_array_equal(codes, result.codes)
    if fallback == "uniform":
      for result in coded:
        bits = result.codes.size * np.log2(codec.vocab_size)
        assert result.ideal_bits == pytest.approx(bits)
        assert bits / 8 <= len(result.data) - bitstream.HEADER_BYTES <= bits / 8 + 4


def _resealed(data: bytes, offset: int, value: int) -> bytes:
  """data with header byte `offset` set to `value` and the header checksum recomputed."""
  import zlib  # pylint: disable=g-import-not-at-top
  header = bytearray(data[:bitstream.HEADER_BYTES - 4])
  header[offset] = value
  return bytes(header) + zlib.crc32(bytes(header)).to_bytes(4, "little") + data[
      bitstream.HEADER_BYTES:]


def test_every_bad_file_fails_with_its_cause(trained_prior, random_tokenizer, codec8, images):
  data = codec8.encode(images[:1])[0].data
  cases = {
      "not a vqgan_jax compressed image": b"\x89PNG\r\n\x1a\n" + data[8:],
      "newer than this vqgan_jax reads": data[:4] + bytes([bitstream.FORMAT_VERSION + 1]) + data[5:],
      "truncated: 20 bytes": data[:20],
      "truncated: the header announces": data[:-3],
      "bytes after its payload": data + b"\0",
      "header is corrupted": data[:10] + bytes([data[10] ^ 1]) + data[11:],
      "payload is corrupted": data[:-1] + bytes([data[-1] ^ 0x10]),
      "cannot have a": _resealed(data, 8, 200),  # height 16 -> 200 with the same grid.
  }
  for cause, bad in cases.items():
    with pytest.raises(bitstream.CodecFileError, match=cause):
      codec8.decode([bad], ["bad.vqgj"])
  tokenizer_only = Codec.from_workdir(random_tokenizer)
  with pytest.raises(bitstream.CodecFileError, match="'prior' model"):
    tokenizer_only.decode([data])
  other_prior = Codec(codec8.tokenizer, codec8.tokenizer_params, codec8.prior, jax.tree.map(
      lambda p: p * 1.01, codec8._prior_params), codec8.train_grid, rows_per_device=1)  # pylint: disable=protected-access
  with pytest.raises(bitstream.CodecFileError, match="encoded with prior"):
    other_prior.decode([data])
  other_tokenizer = Codec(codec8.tokenizer, jax.tree.map(lambda p: p + 1e-3,
                                                         codec8.tokenizer_params))
  with pytest.raises(bitstream.CodecFileError, match="encoded with tokenizer"):
    other_tokenizer.decode([data])
  # A decoder whose probabilities differ (here: another prior claiming the same identity, as
  # another platform's rounding would) fails the codes checksum instead of returning an image.
  other_prior.prior_id = codec8.prior_id
  with pytest.raises(bitstream.CodecFileError, match="do not match the encoder's checksum"):
    other_prior.decode([data])


def test_prior_eval_reports_the_codecs_rate(trained_prior, codec8, images):
  """eval/codec_bits_per_pixel of the prior's eval is the codec's ideal rate on the same images."""
  from vqgan_jax.prior import train as prior_train  # pylint: disable=g-import-not-at-top
  from vqgan_jax.prior.frozen_tokenizers import load_tokenizers  # pylint: disable=g-import-not-at-top
  from vqgan_jax.prior.model import build_model, token_grid  # pylint: disable=g-import-not-at-top
  config, workdir = trained_prior
  tokenizers = load_tokenizers(config)
  grid = token_grid(config, tokenizers.model)
  model = build_model(config, tokenizers, codec8.prior.num_classes)
  batch = np.stack([images[0], images[0][::-1], images[0][:, ::-1]])
  sums = prior_train.eval_sums(
      jax.device_get(codec8._prior_params), tokenizers.params,  # pylint: disable=protected-access
      {"image": jnp.asarray(batch, jnp.float32) / 127.5 - 1.0,
       "label": jnp.zeros(3, jnp.int32), "mask": jnp.ones(3)},
      config=config, tokenizers=tokenizers, model=model)
  metrics = prior_train.eval_metrics(jax.device_get(sums), grid, config.data.image_size)
  coded = codec8.encode(list(batch))
  rate = sum(c.ideal_bits for c in coded) / (3 * 16 * 16)
  assert metrics["eval/codec_bits_per_pixel"] == pytest.approx(rate, rel=0.005)
  assert metrics["eval/bits_per_pixel"] == pytest.approx(
      metrics["eval/bits_per_token"] * 64 / 256)
  del workdir
