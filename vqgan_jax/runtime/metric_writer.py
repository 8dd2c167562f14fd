"""Where scalars and images go: the console and TensorBoard event files in the workdir.

The event files are written through `storage`, so a `gs://` workdir gets them in the bucket like
every other artifact (and tests can prove it against a GCS emulator, which TF's own GCS client
cannot reach). The format is TensorBoard's: TFRecord-framed `Event` protos, scalars as
`simple_value`, images as PNG `Summary.Image`, hyperparameters through the hparams plugin.
Object stores cannot append, so a file is rewritten whole when it is persisted (at most every
`persist_seconds`, and on `flush`); past `segment_bytes` the writer starts a new file, which
TensorBoard reads after the previous one.
"""
from __future__ import annotations

import io
import os
import socket
import struct
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from clu import metric_writers
from clu.metric_writers import interface

from vqgan_jax.runtime import storage


def _masked_crc32c(data: bytes) -> int:
  from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c  # pylint: disable=g-import-not-at-top
  return masked_crc32c(data)


def _record(data: bytes) -> bytes:
  """One TFRecord: length, its masked CRC-32C, the data, its masked CRC-32C."""
  header = struct.pack("<Q", len(data))
  return (header + struct.pack("<I", _masked_crc32c(header)) + data
          + struct.pack("<I", _masked_crc32c(data)))


def _png(image: np.ndarray) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  image = np.asarray(image)
  if image.dtype != np.uint8:
    image = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
  return buffer.getvalue()


class EventFileWriter(interface.MetricWriter):
  """TensorBoard event files under `logdir` (local or any URL `storage` reaches)."""

  def __init__(self, logdir: str, *, persist_seconds: float = 30.0,
               segment_bytes: int = 16 << 20):
    from tensorboard.compat.proto import event_pb2, summary_pb2  # pylint: disable=g-import-not-at-top
    self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
    self._logdir = logdir
    self._persist_seconds = persist_seconds
    self._segment_bytes = segment_bytes
    self._segments = 0
    self._start_segment()

  def _start_segment(self) -> None:
    # TensorBoard reads the files of a directory in name order: the zero-padded wall time
    # and segment number keep them in writing order.
    name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
            f"{os.getpid()}.{self._segments:04d}.v2")
    self._segments += 1
    self._path = storage.join(self._logdir, name)
    self._buffer = bytearray()
    self._last_persist = time.monotonic()
    self._append(self._event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
    self._persist()

  def _append(self, event) -> None:
    self._buffer += _record(event.SerializeToString())
    self._dirty = True

  def _write(self, step: int, values: list) -> None:
    summary = self._summary_pb2.Summary(value=values)
    self._append(self._event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))
    if time.monotonic() - self._last_persist >= self._persist_seconds:
      self.flush()

  def _persist(self) -> None:
    storage.write_bytes(self._path, bytes(self._buffer))
    self._dirty = False
    self._last_persist = time.monotonic()

  def write_summaries(self, step: int, values: Mapping[str, Any],
                      metadata: Mapping[str, Any] | None = None):
    del metadata
    self.write_scalars(step, {k: v for k, v in values.items() if np.ndim(v) == 0})

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    self._write(step, [self._summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                       for k, v in scalars.items()])

  def write_images(self, step: int, images: Mapping[str, np.ndarray]):
    values = []
    for tag, batch in images.items():
      batch = np.asarray(batch)
      for i, image in enumerate(batch if batch.ndim == 4 else batch[None]):
        encoded = self._summary_pb2.Summary.Image(
            height=image.shape[0], width=image.shape[1], colorspace=image.shape[2],
            encoded_image_string=_png(image))
        values.append(self._summary_pb2.Summary.Value(
            tag=tag if i == 0 else f"{tag}/{i}", image=encoded))
    self._write(step, values)

  def write_texts(self, step: int, texts: Mapping[str, str]):
    from tensorboard.plugins.text import summary_v2 as text_summary  # pylint: disable=g-import-not-at-top
    values = []
    for tag, text in texts.items():
      values.extend(text_summary.text_pb(tag, text).value)
    self._write(step, values)

  def write_hparams(self, hparams: Mapping[str, Any]):
    from tensorboard.plugins.hparams import summary_v2 as hparams_summary  # pylint: disable=g-import-not-at-top
    summary = hparams_summary.hparams_pb(dict(hparams))
    self._write(0, list(summary.value))

  def write_videos(self, step: int, videos: Mapping[str, np.ndarray]):
    raise NotImplementedError("EventFileWriter does not write videos.")

  def write_audios(self, step: int, audios: Mapping[str, np.ndarray], *, sample_rate: int):
    raise NotImplementedError("EventFileWriter does not write audio.")

  def write_histograms(self, step: int, arrays: Mapping[str, np.ndarray],
                       num_buckets: Mapping[str, int] | None = None):
    raise NotImplementedError("EventFileWriter does not write histograms.")

  def flush(self):
    if self._dirty:
      self._persist()
    if len(self._buffer) >= self._segment_bytes:
      self._start_segment()

  def close(self):
    self.flush()


def create_writer(logdir: str) -> metric_writers.MetricWriter:
  """Console + TensorBoard event files on process 0, console only elsewhere (asynchronous)."""
  writers = [metric_writers.LoggingWriter()]
  if jax.process_index() == 0:
    writers.append(EventFileWriter(logdir))
  return metric_writers.AsyncMultiWriter(writers)


def mean_metrics(buffer: list[dict[str, jax.Array]]) -> dict[str, float]:
  """Averages per-step scalar metrics over the logging interval (one device-to-host copy)."""
  stacked = jax.device_get(jax.tree.map(lambda *xs: jnp.stack(xs), *buffer))
  return {k: float(np.mean(v)) for k, v in stacked.items()}
