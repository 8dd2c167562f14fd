"""Conditions computed from an image inside the data pipeline (TensorFlow ops, eager or graph):
edge maps for every source, and for the embedded photos, which carry no annotations, label maps,
sketches and captions derived from the pixels, so each conditioning trains end to end on them.

  edge_map        Canny without the hysteresis loop: Gaussian blur, Sobel gradients, non-maximum
                  suppression across the gradient direction, a strong threshold plus the weak
                  pixels touching a strong one. uint8 (h, w, 3), white edges on black.
  palette_labels  Each pixel of a blurred image -> its nearest colour of `embedded_palette(K)`
                  (k-means over the train photos' pixels): a K-class "segmentation" by colour.
  pseudo_sketch   Edges of a strongly blurred image, thickened, dark on white: a line drawing.
  embedded_caption  "a bright orange crop of a cat photo": brightness and nearest colour name
                  of the crop's mean colour, and what the photo shows.
"""
from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from vqgan_jax.data import embedded

EDGE_HIGH, EDGE_LOW = 0.10, 0.05  # Thresholds on the Sobel magnitude of [0, 1] gray levels.
SUBJECTS = {"astronaut": "an astronaut", "chelsea": "a cat", "coffee": "a coffee cup",
            "hubble_deep_field": "galaxies", "immunohistochemistry": "stained tissue",
            "motorcycle": "a motorcycle", "retina": "a retina", "rocket": "a rocket",
            "china": "a temple", "flower": "a flower"}
COLOURS = {"black": (0, 0, 0), "white": (255, 255, 255), "gray": (128, 128, 128),
           "red": (200, 30, 30), "orange": (230, 130, 30), "yellow": (230, 220, 50),
           "green": (40, 160, 50), "blue": (40, 70, 200), "purple": (130, 50, 160),
           "brown": (120, 75, 40), "pink": (240, 150, 180)}


def _gray(image: tf.Tensor) -> tf.Tensor:
  """(h, w, 1) float32 luma in [0, 1] of a uint8 RGB image."""
  return tf.image.rgb_to_grayscale(tf.cast(image, tf.float32) / 255.0)


def _blur(x: tf.Tensor, sigma: float) -> tf.Tensor:
  """Separable Gaussian blur of (h, w, c) float32, reflect-padded."""
  radius = max(1, int(round(2 * sigma)))
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma)**2)
  taps = tf.constant(taps / taps.sum(), tf.float32)
  c = x.shape[-1]
  x = tf.pad(x[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], "REFLECT")
  row = tf.tile(tf.reshape(taps, (1, -1, 1, 1)), (1, 1, c, 1))
  col = tf.tile(tf.reshape(taps, (-1, 1, 1, 1)), (1, 1, c, 1))
  x = tf.nn.depthwise_conv2d(x, row, (1, 1, 1, 1), "VALID")
  return tf.nn.depthwise_conv2d(x, col, (1, 1, 1, 1), "VALID")[0]


def _shift(x: tf.Tensor, dy: int, dx: int) -> tf.Tensor:
  """x[i + dy, j + dx] with edge replication, (h, w)."""
  h, w = tf.shape(x)[0], tf.shape(x)[1]
  padded = tf.pad(x, [[1, 1], [1, 1]], "SYMMETRIC")
  return padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


def _edges(gray: tf.Tensor, sigma: float) -> tf.Tensor:
  """(h, w) bool edges of a (h, w, 1) gray image."""
  sobel = tf.image.sobel_edges(_blur(gray, sigma)[None])[0, :, :, 0]  # (h, w, [dy, dx])
  gy, gx = sobel[..., 0] / 4.0, sobel[..., 1] / 4.0  # Sobel sums 4 differences.
  magnitude = tf.sqrt(gx * gx + gy * gy)
  # Gradient direction quantised to 0, 45, 90, 135 degrees; keep local maxima across it.
  angle = tf.math.floormod(tf.atan2(gy, gx) * (180.0 / np.pi), 180.0)
  sector = tf.cast(tf.math.floormod(tf.round(angle / 45.0), 4.0), tf.int32)
  keep = tf.zeros_like(magnitude, tf.bool)
  for s, (dy, dx) in enumerate(((0, 1), (1, 1), (1, 0), (1, -1))):
    peak = (magnitude >= _shift(magnitude, dy, dx)) & (magnitude >= _shift(magnitude, -dy, -dx))
    keep |= (sector == s) & peak
  thin = tf.where(keep, magnitude, 0.0)
  strong = thin >= EDGE_HIGH
  near_strong = tf.nn.max_pool2d(tf.cast(strong, tf.float32)[None, :, :, None], 3, 1,
                                 "SAME")[0, :, :, 0] > 0
  return strong | ((thin >= EDGE_LOW) & near_strong)


def edge_map(image: tf.Tensor, sigma: float = 1.0) -> tf.Tensor:
  """uint8 (h, w, 3) edge map of a uint8 RGB image: 255 on edges, 0 elsewhere."""
  edges = tf.cast(_edges(_gray(image), sigma), tf.uint8) * 255
  return tf.tile(edges[:, :, None], (1, 1, 3))


def pseudo_sketch(image: tf.Tensor) -> tf.Tensor:
  """uint8 (h, w, 3): dark, 2-pixel lines of the coarse edges on white (a synthetic drawing)."""
  lines = tf.cast(_edges(_gray(image), sigma=2.0), tf.float32)[None, :, :, None]
  thick = tf.nn.max_pool2d(lines, 2, 1, "SAME")[0, :, :, 0]
  drawing = tf.cast(255 - 225 * thick, tf.uint8)
  return tf.tile(drawing[:, :, None], (1, 1, 3))


@functools.lru_cache(maxsize=4)
def embedded_palette(num_classes: int, seed: int = 0) -> np.ndarray:
  """(K, 3) float32 colours: k-means (k-means++ seeding, 20 Lloyd steps, fixed seed) over a
  fixed subsample of the embedded train photos' pixels. Deterministic; computed once."""
  rng = np.random.default_rng(seed)
  photos = embedded.load_photos()
  pixels = np.concatenate([photos[i].reshape(-1, 3)[rng.choice(photos[i].shape[0] *
                                                               photos[i].shape[1], 4000)]
                           for i in embedded.split_indices("train")]).astype(np.float64)
  centres = [pixels[rng.integers(len(pixels))]]
  for _ in range(num_classes - 1):
    distance = np.min(((pixels[:, None] - np.array(centres)[None])**2).sum(-1), axis=1)
    centres.append(pixels[rng.choice(len(pixels), p=distance / distance.sum())])
  centres = np.array(centres)
  for _ in range(20):
    assign = np.argmin(((pixels[:, None] - centres[None])**2).sum(-1), axis=1)
    centres = np.array([pixels[assign == k].mean(0) if (assign == k).any() else centres[k]
                        for k in range(num_classes)])
  return centres[np.argsort(centres.sum(1))].astype(np.float32)  # Dark to light.


def palette_labels(image: tf.Tensor, palette: np.ndarray) -> tf.Tensor:
  """uint8 (h, w) index of the nearest palette colour of each pixel (after a small blur)."""
  smooth = _blur(tf.cast(image, tf.float32), sigma=1.0)
  distance = tf.reduce_sum((smooth[:, :, None] - tf.constant(palette)[None, None])**2, -1)
  return tf.cast(tf.argmin(distance, axis=-1), tf.uint8)


def embedded_caption(image: tf.Tensor, label: tf.Tensor) -> tf.Tensor:
  """A scalar tf.string describing a crop of embedded photo `label`."""
  mean = tf.reduce_mean(tf.cast(tf.reshape(image, (-1, 3)), tf.float32), axis=0)
  names = tf.constant(list(COLOURS))
  colour = names[tf.argmin(tf.reduce_sum(
      (tf.constant(list(COLOURS.values()), tf.float32) - mean)**2, axis=-1))]
  luma = tf.reduce_sum(mean * tf.constant([0.299, 0.587, 0.114]))
  brightness = tf.where(luma > 170, "bright", tf.where(luma < 70, "dark", "plain"))
  subject = tf.constant([SUBJECTS[name] for name in embedded.PHOTOS])[label]
  return tf.strings.join(["a ", brightness, " ", colour, " crop of ", subject, " photo"])
