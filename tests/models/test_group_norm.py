"""GroupNorm: the same function and gradients as flax's two-pass GroupNorm and torch's."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from vqgan_jax.models.group_norm import GroupNorm


def _inputs(shape, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(2.0, 3.0, shape).astype(np.float32)
  params = {"scale": rng.uniform(0.5, 1.5, shape[-1]).astype(np.float32),
            "bias": rng.normal(0, 1, shape[-1]).astype(np.float32)}
  return jnp.asarray(x), jax.tree.map(jnp.asarray, params)


@pytest.mark.parametrize("shape", [(2, 8, 8, 32), (2, 8, 6, 64), (1, 4, 4, 128)])
def test_matches_flax_two_pass_group_norm_and_gradients(shape):
  x, params = _inputs(shape)
  ours = lambda p, x: GroupNorm().apply({"params": p}, x)
  flax_gn = lambda p, x: nn.GroupNorm(num_groups=32, epsilon=1e-6, use_fast_variance=False).apply(
      {"params": p}, x)
  np.testing.assert_allclose(ours(params, x), flax_gn(params, x), rtol=1e-5, atol=1e-5)
  cotangent = jnp.asarray(np.random.default_rng(1).normal(size=shape).astype(np.float32))
  expected = jax.vjp(flax_gn, params, x)[1](cotangent)
  got = jax.vjp(ours, params, x)[1](cotangent)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))))


def test_matches_torch_group_norm():
  x, params = _inputs((2, 8, 8, 64), seed=2)
  reference = torch.nn.GroupNorm(32, 64, eps=1e-6)
  with torch.no_grad():
    reference.weight.copy_(torch.tensor(np.asarray(params["scale"])))
    reference.bias.copy_(torch.tensor(np.asarray(params["bias"])))
    expected = reference(torch.tensor(np.asarray(x).transpose(0, 3, 1, 2))).numpy()
  got = GroupNorm().apply({"params": params}, x)
  np.testing.assert_allclose(got, expected.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


def test_parameters_and_dtype():
  x, _ = _inputs((1, 4, 4, 64))
  variables = GroupNorm(dtype=jnp.bfloat16).init(jax.random.PRNGKey(0), x)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), variables["params"]) == {
      "scale": ((64,), jnp.float32), "bias": ((64,), jnp.float32)}
  assert GroupNorm(dtype=jnp.bfloat16).apply(variables, x).dtype == jnp.bfloat16


def test_channels_not_divisible_by_groups_is_an_error():
  with pytest.raises(ValueError, match="divisible by 32 groups"):
    GroupNorm().init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 48)))
