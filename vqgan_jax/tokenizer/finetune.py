"""Fine-tuning (`config.init_from`): a fresh state that starts from another workdir's weights.

What is loaded: the generator (`params`), the discriminator and its BatchNorm statistics when the
source has them, and the codebook's own state (`codebook_state`: EMA sums and counts, the
data-init flag, usage counters). Each is restored straight into this run's shardings, after
checking it matches this config's architecture. When the source has no codebook state of the
same layout (a converted taming model, or other codebook options), it is rebuilt to agree with
the loaded codebook: EMA sums = code x count, data initialisation marked done (the codebook is
already trained, so k-means++ must not re-seed it), the buffer refilling from empty. The
optimizer states start fresh, and the generator EMA starts as a copy (never an alias) of the
loaded weights.
"""
from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp

from vqgan_jax.runtime import checkpoints

LOADED_FIELDS = ("params", "disc_params", "disc_batch_stats", "codebook_state")


def _layout(tree: Any) -> tuple[Any, list[tuple[tuple[int, ...], Any]]]:
  leaves, structure = jax.tree.flatten(tree)
  return structure, [(tuple(x.shape), jnp.dtype(x.dtype)) for x in leaves]


def _same_layout(saved: Any, target: Any) -> bool:
  (s_struct, s_leaves), (t_struct, t_leaves) = _layout(saved), _layout(target)
  return s_struct == t_struct and [s for s, _ in s_leaves] == [s for s, _ in t_leaves]


def codebook_state_for_trained_codebook(codebook_state: Any, params: Any) -> Any:
  """The quantizer's state made consistent with the (already trained) codebook in `params`."""
  quantizer = dict((codebook_state or {}).get("quantizer", {}))
  if not quantizer:
    return codebook_state
  embedding = params["quantizer"]["embedding"]
  if "initialized" in quantizer:
    quantizer["initialized"] = jnp.ones_like(quantizer["initialized"])
  if "embed_sum" in quantizer:
    quantizer["embed_sum"] = embedding * quantizer["cluster_size"][:, None]
  if "next_codebook" in quantizer:
    quantizer["next_codebook"] = embedding
  return {**codebook_state, "quantizer": quantizer}


def restore_init_from(state: Any, init_from: str, abstract_state: Any) -> Any:
  """`state` (fresh, sharded) with the weights of the workdir `init_from` (see module doc)."""
  saved, step = checkpoints.state_metadata(init_from)
  if "params" not in saved:
    raise ValueError(f"--config.init_from={init_from} (step {step}) has no generator weights "
                     "('params'); point it at a tokenizer workdir (trained, or converted with "
                     "`python -m vqgan_jax.tokenizer.convert_taming`).")
  target, rebuilt = {}, []
  for field in LOADED_FIELDS:
    abstract = getattr(abstract_state, field)
    if not jax.tree.leaves(abstract):
      continue
    if field in saved and _same_layout(saved[field], abstract):
      target[field] = abstract
    elif field == "codebook_state":
      rebuilt.append(field)  # Different or no codebook options in the source: rebuilt below.
    elif field in saved or field == "params":
      raise ValueError(
          f"--config.init_from={init_from} (step {step}): its {field!r} does not match this "
          "config's architecture (config.model / config.discriminator). Use the same model "
          "fields as that workdir's config.json.")
  restored, _ = checkpoints.restore_into(init_from, target, step)
  replacements = dict(restored)
  shardings = jax.tree.map(lambda a: a.sharding, abstract_state)
  if rebuilt:
    replacements["codebook_state"] = jax.jit(
        codebook_state_for_trained_codebook, out_shardings=shardings.codebook_state)(
            state.codebook_state, replacements["params"])
  if jax.tree.leaves(state.ema_params):
    # A copy: the step donates the state, and two fields sharing buffers cannot both be donated.
    replacements["ema_params"] = jax.jit(
        lambda p: jax.tree.map(jnp.copy, p), out_shardings=shardings.ema_params)(
            replacements["params"])
  logging.info("Initialised %s from %s (step %d)%s.", sorted(replacements), init_from, step,
               f"; rebuilt {rebuilt} from its codebook" if rebuilt else "")
  return state.replace(**replacements)
