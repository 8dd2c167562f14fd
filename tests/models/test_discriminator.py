"""NLayerDiscriminator: parity with taming's PyTorch PatchGAN, BatchNorm statistics, param tree."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqgan_jax.models.discriminator import NLayerDiscriminator

NDF = 8
MODEL = NLayerDiscriminator(ndf=NDF, num_layers=3)


@pytest.fixture(scope="module")
def variables():
  """Freshly initialised variables of MODEL (compiled once: random init compiles slowly on CPU)."""
  init = jax.jit(MODEL.init, static_argnames="train")
  return init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)


def _apply(model, variables, images, train: bool):
  """One compiled apply (eager flax dispatches op by op, which is slow here); train mode also
  returns the updated variables."""
  mutable = ["batch_stats"] if train else False
  return jax.jit(lambda v, x: model.apply(v, x, train=train, mutable=mutable))(variables, images)


def _taming_with_random_state(num_layers: int):
  """taming's discriminator with random weights and non-trivial BatchNorm running statistics."""
  torch = pytest.importorskip("torch")
  pytest.importorskip("taming")
  from taming.modules.discriminator.model import NLayerDiscriminator as TamingDiscriminator
  torch.manual_seed(num_layers)
  net = TamingDiscriminator(input_nc=3, ndf=NDF, n_layers=num_layers)
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.5, 0.5)
        module.running_mean.uniform_(-0.5, 0.5)
        module.running_var.uniform_(0.5, 2.0)
  return net


def _to_flax(net) -> dict:
  """Copies taming's weights into our variables: conv OIHW -> HWIO, BatchNorm by name."""
  convs = [m for m in net.main if m.__class__.__name__ == "Conv2d"]
  norms = [m for m in net.main if m.__class__.__name__ == "BatchNorm2d"]
  to_np = lambda t: t.detach().numpy().copy()
  params, stats = {}, {}
  for i, conv in enumerate(convs):
    name = "conv_out" if i == len(convs) - 1 else f"conv_{i}"
    params[name] = {"kernel": to_np(conv.weight).transpose(2, 3, 1, 0)}
    if conv.bias is not None:
      params[name]["bias"] = to_np(conv.bias)
  for i, norm in enumerate(norms, start=1):
    params[f"norm_{i}"] = {"scale": to_np(norm.weight), "bias": to_np(norm.bias)}
    stats[f"norm_{i}"] = {"mean": to_np(norm.running_mean), "var": to_np(norm.running_var)}
  return {"params": params, "batch_stats": stats}


def _assert_close(ours, theirs, rtol=1e-4):
  """Agreement to rtol of the largest reference magnitude (logits cross zero)."""
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  scale = np.max(np.abs(theirs))
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("num_layers,hw", [(1, (32, 32)), (2, (32, 48)), (3, (32, 32)),
                                           (3, (32, 48))])
def test_matches_taming_in_eval_and_train_mode(num_layers, hw):
  import torch
  net = _taming_with_random_state(num_layers)
  variables = _to_flax(net)
  model = NLayerDiscriminator(ndf=NDF, num_layers=num_layers)
  reference_tree = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                                  jnp.zeros((1, *hw, 3)))
  assert jax.tree.structure(variables) == jax.tree.structure(reference_tree)
  images = np.random.default_rng(num_layers).uniform(-1, 1, (4, *hw, 3)).astype(np.float32)
  torch_images = torch.from_numpy(images.transpose(0, 3, 1, 2))

  net.eval()
  with torch.no_grad():
    expected = net(torch_images).numpy().transpose(0, 2, 3, 1)
  logits = _apply(model, variables, images, False)
  assert logits.dtype == jnp.float32 and logits.shape == expected.shape
  _assert_close(logits, expected)

  net.train()
  with torch.no_grad():
    expected = net(torch_images).numpy().transpose(0, 2, 3, 1)
  logits, updates = _apply(model, variables, images, True)
  _assert_close(logits, expected)
  # torch updated its running stats in that train-mode call: momentum 0.1, unbiased variance.
  for i, norm in enumerate([m for m in net.main if isinstance(m, torch.nn.BatchNorm2d)], 1):
    stats = updates["batch_stats"][f"norm_{i}"]
    np.testing.assert_allclose(stats["mean"], norm.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], norm.running_var.numpy(), rtol=1e-5, atol=1e-6)


def test_running_variance_is_unbiased_unlike_flax_batchnorm():
  """Where flax's nn.BatchNorm (biased running variance) and torch differ, we follow torch."""
  import flax.linen as nn
  from vqgan_jax.models.discriminator import TorchBatchNorm
  x = jnp.asarray(np.random.default_rng(0).normal(2.0, 3.0, (2, 2, 1, 5)), jnp.float32)  # n = 4
  ours = TorchBatchNorm()
  v = ours.init(jax.random.key(0), x, train=False)
  _, ours_stats = ours.apply(v, x, train=True, mutable=["batch_stats"])
  flax_bn = nn.BatchNorm(momentum=0.9, epsilon=1e-5, use_running_average=False)
  _, flax_stats = flax_bn.apply(flax_bn.init(jax.random.key(0), x), x, mutable=["batch_stats"])
  biased = jnp.var(x, axis=(0, 1, 2))
  np.testing.assert_allclose(flax_stats["batch_stats"]["var"], 0.9 + 0.1 * biased, rtol=1e-5)
  np.testing.assert_allclose(ours_stats["batch_stats"]["var"], 0.9 + 0.1 * biased * 4 / 3,
                             rtol=1e-5)
  np.testing.assert_allclose(ours_stats["batch_stats"]["mean"], 0.1 * jnp.mean(x, (0, 1, 2)),
                             rtol=1e-5)


def test_param_tree_shapes_and_init(variables):
  shapes = jax.tree.map(lambda a: a.shape, variables)
  assert shapes["params"] == {
      "conv_0": {"kernel": (4, 4, 3, 8), "bias": (8,)},
      "conv_1": {"kernel": (4, 4, 8, 16)},
      "norm_1": {"scale": (16,), "bias": (16,)},
      "conv_2": {"kernel": (4, 4, 16, 32)},
      "norm_2": {"scale": (32,), "bias": (32,)},
      "conv_3": {"kernel": (4, 4, 32, 64)},
      "norm_3": {"scale": (64,), "bias": (64,)},
      "conv_out": {"kernel": (4, 4, 64, 1), "bias": (1,)},
  }
  assert shapes["batch_stats"] == {f"norm_{l}": {"mean": (c,), "var": (c,)}
                                   for l, c in [(1, 16), (2, 32), (3, 64)]}
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(variables))
  params = variables["params"]
  kernel = np.asarray(params["conv_3"]["kernel"])
  assert abs(kernel.std() - 0.02) < 0.001 and abs(kernel.mean()) < 0.001
  scale = np.asarray(params["norm_3"]["scale"])
  assert abs(scale.mean() - 1.0) < 0.01 and 0.01 < scale.std() < 0.03
  np.testing.assert_array_equal(params["norm_3"]["bias"], 0.0)
  bias = np.asarray(params["conv_0"]["bias"])
  assert np.all(np.abs(bias) <= 1 / np.sqrt(4 * 4 * 3)) and np.any(bias != 0)
  np.testing.assert_array_equal(variables["batch_stats"]["norm_1"]["var"], 1.0)
  logits = _apply(MODEL, variables, jnp.zeros((2, 32, 48, 3)), False)
  assert logits.shape == (2, 2, 4, 1)


def test_bfloat16_compute_keeps_float32_params_and_logits(variables):
  images = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
  full = _apply(MODEL, variables, images, False)
  half = _apply(MODEL.clone(dtype=jnp.bfloat16), variables, images, False)
  assert half.dtype == jnp.float32
  np.testing.assert_allclose(half, full, atol=0.05 * float(jnp.max(jnp.abs(full))))


def test_sharded_batch_uses_global_batch_statistics(variables):
  """A batch split over 8 devices gives the same logits and running stats as one device."""
  images = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (8, 32, 32, 3)), jnp.float32)
  mesh = jax.make_mesh((8,), ("data",))
  sharded = jax.device_put(images, jax.NamedSharding(mesh, jax.P("data")))
  logits, stats = _apply(MODEL, variables, sharded, True)
  ref_logits, ref_stats = _apply(MODEL, variables, images, True)
  assert logits.sharding.is_equivalent_to(sharded.sharding, 4)
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), stats,
               ref_stats)
