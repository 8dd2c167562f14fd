"""The op profile joins XLA:CPU's trace events to the compiled module's instructions: every
executed instruction is attributed, named scopes become parts, convs are told from the rest."""
import jax
import jax.numpy as jnp
import numpy as np

from vqgan_jax.runtime import op_profile


def _step(x, k):
  with jax.named_scope("encoder_like/encoder/"):
    y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  with jax.named_scope("optimizer"):
    z = jnp.tanh(y) * 2.0 + 1.0
  return jnp.sum(z**2)


def test_profile_attributes_named_parts_and_kinds(tmp_path):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 32, 32, 32)), jnp.float32)
  k = jnp.ones((3, 3, 32, 64), jnp.float32) * 0.01
  fn = jax.jit(jax.grad(_step, argnums=1))
  compiled = fn.lower(x, k).compile()
  compiled(x, k).block_until_ready()
  rows = op_profile.profile_step(compiled, lambda: (x, k), hlo_text=compiled.as_text(),
                                 steps=2, logdir=str(tmp_path))
  groups = [r for r in rows if "instruction" not in r]
  assert groups and abs(sum(r["share"] for r in groups) - 1.0) < 1e-6
  parts = op_profile.by_part(rows)
  assert "encoder" in parts and parts["encoder"] > 0
  kinds = {(r["part"], r["kind"]) for r in groups}
  assert ("encoder", "conv/matmul") in kinds
  assert any(r["pass"] == "backward" for r in groups)  # The conv's kernel gradient.
  assert "ms/step" in op_profile.format_profile(rows)


def test_parse_hlo_reads_names_opcodes_and_sources():
  text = jax.jit(_step).lower(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2))).compile().as_text()
  instructions, computations = op_profile.parse_hlo(text)
  assert any(i.opcode == "convolution" or "fusion" in i.opcode for i in instructions.values())
  assert any("encoder" in i.op_name for i in instructions.values())
  assert computations
