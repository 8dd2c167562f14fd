"""Speed of the tokenizer and the prior against the machine's own matmul peak.

    python -m vqgan_jax.benchmark --config=configs/tiny.py [--prior_config=configs/tiny_prior.py] \
        [--out=bench.json]

Every time is the median of `--runs` timed calls after `--warmup` untimed ones (compilation
excluded), on all devices (the global batch sharded over them exactly as in training). Prints a
table and writes JSON with: train_step_seconds, train_images_per_second, train_step_flops (XLA's
cost analysis of the compiled step, summed over devices, with LPIPS's small maps counted as the
convs they are: its im2col matmuls also multiply the zero padding, which the timed step does and
train_step_flops_executed counts), achieved_flops_per_second,
peak_matmul_flops_per_second (the fastest of `--runs` large matmuls on every device at once in
the same run: float32 on CPU, bfloat16 on GPU/TPU), fraction_of_peak, train_step_temp_bytes
(XLA's scratch memory of the step: what `--config.model.remat=True` lowers),
encode/decode_images_per_second, input_images_per_second_per_core (the train pipeline's JPEG
decode + random resize/crop/flip on one CPU thread, over ImageNet-sized JPEGs made from the
embedded photos) next to train_images_per_second_per_device (what the step consumes), vq_lookup
(seconds and XLA's peak bytes per codebook size at a fixed token count, in the lookup dimension),
sampling_tokens_per_second_kv / _naive, prior_step_seconds_from_images / _from_codes (the prior's
train step at the prior config's batch and image size when the frozen tokenizer encodes images
inside it, and when the batch holds codes stored by `--mode=tokenize`),
compress/decompress_images_per_second and _megapixels_per_second (`vqgan_jax.compress` on one
call's rows of crops at the tokenizer's image size, random weights), device, batch_size,
image_size, model.
"""
from __future__ import annotations

import functools
import json
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from vqgan_jax.models.autoencoder import downsampling_factor
from vqgan_jax.models.conv_paths import plain_convs
from vqgan_jax.models.lpips import load_lpips_params
from vqgan_jax.models.quantizer import VectorQuantizer
from vqgan_jax.runtime import op_profile, sharding, storage
from vqgan_jax.tokenizer import train

FLAGS = flags.FLAGS


def _define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Tokenizer config (configs/*.py).",
                                  lock_config=True)
  config_flags.DEFINE_config_file("prior_config", None, "Optional prior config: adds sampling "
                                  "tokens/s (random weights; speed does not depend on them).",
                                  lock_config=True)
  flags.DEFINE_string("out", None, "Write the results as JSON here.")
  flags.DEFINE_integer("warmup", 2, "Untimed calls before timing.")
  flags.DEFINE_integer("runs", 10, "Timed calls; the median is reported (the best, for "
                       "the peak matmul).")
  flags.DEFINE_list("vq_sizes", ["1024", "4096", "16384", "65536"], "Codebook sizes to time.")
  flags.DEFINE_integer("vq_tokens", 16384, "Tokens per quantizer lookup.")
  flags.DEFINE_integer("vq_chunk", 2048, "Also time the chunked lookup with this many tokens per "
                       "chunk (0: only the unchunked one).")
  flags.DEFINE_bool("input_only", False, "Only time the input pipeline (sizing a host's "
                    "input workers needs no accelerator).")
  flags.DEFINE_integer("input_images", 512, "Images decoded and augmented to time the input "
                       "pipeline (after as many untimed).")
  flags.DEFINE_integer("matmul_size", 4096, "N of the N x N x N peak-measuring matmul.")
  flags.DEFINE_list("scaling_sizes", [], "Only the scaling table: the config's train step (GAN "
                    "on) at each of these square image sizes, e.g. 32,64,128,256.")
  flags.DEFINE_integer("scaling_batch", 2, "Global batch of the scaling table's steps.")
  flags.DEFINE_bool("taming", False, "Scaling table: also time taming-transformers' own step "
                    "(torch) at each size in the same process (needs torch and taming).")
  flags.DEFINE_integer("profile", 0, "Only the op profile: CPU time of the config's train step "
                       "(GAN on) by part, pass and op kind over this many profiled steps, at "
                       "the config's size or each --scaling_sizes (runtime/op_profile.py).")
  flags.mark_flags_as_required(["config"])


def time_calls(fn: Callable[[], Any], warmup: int, runs: int) -> list[float]:
  """Seconds of each of `runs` calls of `fn()` (blocked until ready) after `warmup` calls."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(max(1, runs)):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def time_call(fn: Callable[[], Any], warmup: int, runs: int) -> float:
  """Median seconds of `fn()` over `runs` calls after `warmup` calls."""
  return statistics.median(time_calls(fn, warmup, runs))


def _flops(compiled) -> float:
  """FLOPs of one call of a compiled SPMD program on ONE device (XLA's cost analysis)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", float("nan")))


def peak_matmul(n: int, warmup: int, runs: int, mesh=None) -> float:
  """The machine's dense matmul limit in FLOP/s: every device of `mesh` multiplies its own
  n x n pair at once (float32 on CPU, bfloat16 on GPU/TPU); the fastest of `runs` calls.

  Forced CPU devices share the host's cores, so on a CPU this is the host's peak however many
  devices it is split into; on accelerators it is the sum over the chips.
  """
  mesh = mesh or sharding.create_mesh()
  devices = mesh.devices.size
  dtype = jnp.float32 if jax.devices()[0].platform == "cpu" else jnp.bfloat16
  stacked = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names))
  a = jax.device_put(jnp.ones((devices, n, n), dtype), stacked)
  b = jax.device_put(jnp.ones((devices, n, n), dtype), stacked)
  matmul = jax.jit(jnp.matmul, out_shardings=stacked).lower(a, b).compile()
  return 2.0 * n ** 3 * devices / min(time_calls(lambda: matmul(a, b), warmup, runs))


def with_gan_on(config):
  """`config` with the discriminator and the GAN loss on from step 0: the step taming computes
  at every step (before its disc_start it multiplies the GAN terms by 0)."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.loss.disc_start = 0
    config.loss.disc_train_start = -1
  return config


def at_image_size(config, size: int, batch_size: int):
  """`config` at square `size` (attention placed as taming would at that size) and batch."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.data.image_size = size
    config.model.resolution = size
    config.batch_size = batch_size
  return config


def _train_step_setup(config):
  """(compiled step, state, batch, LPIPS params, model, schedule pieces) as training builds
  them: the state created sharded, the batch split over all devices."""
  mesh = sharding.create_mesh()
  sharding.check_batch_divisible(config.batch_size, mesh)
  model, disc = train.build_models(config)
  tx, disc_tx, schedule = train.build_optimizers(config)
  init = functools.partial(train.init_state, config=config, model=model, disc=disc, tx=tx,
                           disc_tx=disc_tx)
  shardings = sharding.tree_shardings(mesh, jax.eval_shape(init, jax.random.PRNGKey(0)),
                                      config.param_sharding)
  state = jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(0))
  h, w = train.image_shape(config)
  images = np.random.default_rng(0).uniform(-1, 1, (config.batch_size, h, w, 3)).astype(np.float32)
  batch = sharding.global_batch({"image": images}, mesh)
  lpips_params = jax.device_put(load_lpips_params(), sharding.replicated(mesh))
  step = functools.partial(train.jit_train_step, config, model, disc, tx, disc_tx, schedule,
                           shardings, mesh)
  with jax.set_mesh(mesh):  # Traced as the training loop traces it.
    compiled = step().lower(state, batch, lpips_params).compile()
  return compiled, state, batch, lpips_params, model, step, mesh


def profile_train_step(config, steps: int) -> list[dict[str, Any]]:
  """The train step's CPU time by part, pass and op kind (`runtime.op_profile`), over `steps`
  profiled calls after one warm-up call."""
  compiled, state, batch, lpips_params, *_ = _train_step_setup(config)
  holder = [compiled(state, batch, lpips_params)[0]]

  def args():  # The state is donated: each call gets the previous call's output.
    return holder[0], batch, lpips_params

  def call(*a):
    holder[0], metrics = compiled(*a)
    return metrics

  return op_profile.profile_step(call, args, steps=steps, hlo_text=compiled.as_text())


def bench_train_step(config, warmup: int, runs: int, codec_rates: bool = True
                     ) -> dict[str, float]:
  compiled, state, batch, lpips_params, model, step, mesh = _train_step_setup(config)
  with jax.set_mesh(mesh):
    with plain_convs():  # A new jit, so it traces again: im2col convs as lax.conv.
      counted = step().lower(state, batch, lpips_params).compile()
  holder = [state]

  def one_step():
    holder[0], metrics = compiled(holder[0], batch, lpips_params)
    return metrics

  seconds = time_call(one_step, warmup, runs)
  flops = _flops(counted) * mesh.devices.size  # The step's FLOPs over all devices.
  memory = compiled.memory_analysis()
  temp_bytes = int(memory.temp_size_in_bytes) if memory is not None else None
  results = {"train_step_seconds": seconds,
             "train_images_per_second": config.batch_size / seconds,
             "train_step_flops": flops,
             "train_step_flops_executed": _flops(compiled) * mesh.devices.size,
             "achieved_flops_per_second": flops / seconds,
             "train_step_temp_bytes": temp_bytes}
  if not codec_rates:
    return results

  params = holder[0].params
  encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode_to_indices"))
  codes = encode(params, batch["image"])
  decode = jax.jit(lambda p, c: model.apply({"params": p}, c, method="decode_indices"))
  encode_s = time_call(lambda: encode(params, batch["image"]), warmup, runs)
  decode_s = time_call(lambda: decode(params, codes), warmup, runs)
  return {**results, "encode_images_per_second": config.batch_size / encode_s,
          "decode_images_per_second": config.batch_size / decode_s}


def bench_scaling(config, sizes: list[int], batch_size: int, warmup: int, runs: int,
                  taming: bool, peak: float) -> list[dict[str, Any]]:
  """The train step with the GAN on at each square size, and taming's step beside it.

  Each size compiles and times this project's step, then (with `taming`) builds taming's
  modules and times its Lightning step on the same architecture and batch, in this process,
  one after the other, so the ratio compares the two on the same machine state.
  """
  rows = []
  for size in sizes:
    sized = with_gan_on(at_image_size(config, size, batch_size))
    row: dict[str, Any] = {"image_size": size, "batch_size": batch_size}
    row.update(bench_train_step(sized, warmup, runs, codec_rates=False))
    row["fraction_of_peak"] = row["achieved_flops_per_second"] / peak
    if taming:
      from vqgan_jax import taming_reference_step  # pylint: disable=import-outside-toplevel
      row.update(taming_reference_step.time_taming_step(sized, (size, size), batch_size,
                                                        warmup, runs))
      row["step_time_vs_taming"] = row["train_step_seconds"] / row["taming_step_seconds"]
      row["taming_fraction_of_peak"] = (row["train_step_flops"] / row["taming_step_seconds"]
                                        / peak)
    logging.info("scaling row: %s", row)
    rows.append(row)
  return rows


def format_scaling(rows: list[dict[str, Any]]) -> str:
  head = (f"{'size':>5} {'batch':>5} {'step s':>9} {'GFLOP':>9} {'of peak':>8} {'img/s':>8} "
          f"{'temp GB':>8} {'taming s':>9} {'ratio':>6}")
  lines = [head]
  for r in rows:
    taming_s = r.get("taming_step_seconds")
    lines.append(
        f"{r['image_size']:>5} {r['batch_size']:>5} {r['train_step_seconds']:>9.3f} "
        f"{r['train_step_flops'] / 1e9:>9.1f} {r['fraction_of_peak']:>8.1%} "
        f"{r['train_images_per_second']:>8.3f} {(r['train_step_temp_bytes'] or 0) / 1e9:>8.2f} "
        + (f"{taming_s:>9.3f} {r['step_time_vs_taming']:>6.2f}" if taming_s else
           f"{'-':>9} {'-':>6}"))
  return "\n".join(lines)


def bench_vq_lookup(embed_dim: int, sizes: list[int], tokens: int, warmup: int,
                    runs: int, chunk: int = 0) -> list[dict[str, float]]:
  """Quantizer forward (distances, argmin, lookup, losses, statistics) as K grows, unchunked
  and (chunk > 0) with `lookup_chunk_size=chunk`."""
  results = []
  z = jax.random.normal(jax.random.PRNGKey(0), (tokens, embed_dim))
  for k, chunk_size in [(k, c) for c in sorted({0, chunk}) for k in sizes]:
    quantizer = VectorQuantizer(k, embed_dim, lookup_chunk_size=chunk_size)
    params = quantizer.init(jax.random.PRNGKey(1), z)
    fn = jax.jit(lambda p, x, q=quantizer: q.apply(p, x).indices)
    compiled = fn.lower(params, z).compile()
    memory = compiled.memory_analysis()
    peak = None
    if memory is not None:
      peak = int(memory.temp_size_in_bytes + memory.argument_size_in_bytes
                 + memory.output_size_in_bytes)
    results.append({"codebook_size": k, "lookup_chunk_size": chunk_size,
                    "seconds": time_call(lambda: compiled(params, z), warmup, runs),
                    "peak_bytes": peak})
  return results


def bench_sampling(prior_config, tokenizer_config, warmup: int, runs: int) -> dict[str, float]:
  """Tokens/s of the prior sampler with and without the KV cache (random weights)."""
  from vqgan_jax.prior import samplers  # pylint: disable=g-import-not-at-top
  from vqgan_jax.models.transformer import Transformer  # pylint: disable=g-import-not-at-top
  h, w = train.image_shape(tokenizer_config)
  factor = downsampling_factor(tokenizer_config.model.ch_mult)
  model = Transformer(vocab_size=tokenizer_config.model.codebook_size,
                      seq_len=(h // factor) * (w // factor), **prior_config.model.to_dict())
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, model.seq_len), jnp.int32))["params"]
  batch = prior_config.sample.batch_size
  out = {}
  for name, use_cache in (("kv", True), ("naive", False)):
    fn = functools.partial(samplers.sample, model, params, jax.random.PRNGKey(1),
                           batch_size=batch, use_cache=use_cache)
    seconds = time_call(fn, min(warmup, 1), max(1, min(runs, 3)))
    out[f"sampling_tokens_per_second_{name}"] = batch * model.seq_len / seconds
  return out


def bench_codec(prior_config, tokenizer_config, warmup: int, runs: int) -> dict[str, float]:
  """Images and megapixels per second of `vqgan_jax.compress` encoding and decoding (random
  weights: the prior's work and the range coder's do not depend on them), one call's rows
  (8 per device) of embedded-photo crops at the tokenizer config's image size."""
  from vqgan_jax.codec.codec import Codec  # pylint: disable=g-import-not-at-top
  from vqgan_jax.data import embedded  # pylint: disable=g-import-not-at-top
  from vqgan_jax.models.autoencoder import VQModel  # pylint: disable=g-import-not-at-top
  from vqgan_jax.models.transformer import Transformer  # pylint: disable=g-import-not-at-top
  h, w = train.image_shape(tokenizer_config)
  factor = downsampling_factor(tokenizer_config.model.ch_mult)
  tokenizer = VQModel(**tokenizer_config.model.to_dict())
  tok_params = jax.jit(tokenizer.init)(jax.random.PRNGKey(0), jnp.zeros((1, h, w, 3)))["params"]
  grid = (h // factor, w // factor)
  prior = Transformer(vocab_size=tokenizer.codebook_size, seq_len=grid[0] * grid[1],
                      **prior_config.model.to_dict())
  prior_params = prior.init(jax.random.PRNGKey(1), jnp.zeros((1, prior.seq_len), jnp.int32))
  codec = Codec(tokenizer, tok_params, prior, prior_params["params"], grid)
  photos = embedded.load_photos()
  crop = lambda photo: np.pad(photo[:h, :w], ((0, max(0, h - photo.shape[0])),
                                              (0, max(0, w - photo.shape[1])), (0, 0)), "edge")
  images = [crop(photos[i % len(photos)]) for i in range(codec.rows_per_device * codec.mesh.size)]
  files = [c.data for c in codec.encode(images)]
  warmup, runs = min(warmup, 1), max(1, min(runs, 3))
  encode = time_call(lambda: codec.encode(images), warmup, runs)
  decode = time_call(lambda: codec.decode(files), warmup, runs)
  megapixels = len(images) * h * w / 1e6
  return {"compress_images_per_second": len(images) / encode,
          "decompress_images_per_second": len(images) / decode,
          "compress_megapixels_per_second": megapixels / encode,
          "decompress_megapixels_per_second": megapixels / decode}


IMAGENET_MEAN_HW = (375, 500)  # About ImageNet's mean image size (height, width).


def bench_input(config, num_images: int) -> float:
  """Train-pipeline images/s on one CPU thread: JPEG decode, random-scale resize, random crop,
  flip and scaling, exactly the ops `vqgan_jax.data.pipeline` runs per example."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from vqgan_jax.data import embedded, input_pipeline, preprocess  # pylint: disable=g-import-not-at-top
  settings = input_pipeline._settings(config, 0, 1)  # pylint: disable=protected-access
  jpegs = [tf.io.encode_jpeg(tf.image.resize(photo, IMAGENET_MEAN_HW, antialias=True)
                             .numpy().round().astype(np.uint8), quality=90)
           for photo in embedded.load_photos()]
  key = preprocess.base_key(config.seed, 0, preprocess.AUGMENT_STREAM)

  def example(position, encoded):
    image = preprocess.random_train_crop(
        preprocess.decode_rgb(encoded), preprocess.fold_in(key, position),
        crop_hw=settings.crop_hw, resize_size=settings.resize_size,
        scale_jitter=settings.scale_jitter, flip=settings.random_flip)
    return preprocess.to_model_range(image)

  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.threading.max_intra_op_parallelism = 1
  dataset = tf.data.Dataset.from_tensor_slices(tf.stack(jpegs)).repeat().enumerate().map(
      example).with_options(options)
  iterator = iter(dataset)
  for _ in range(num_images):  # Untimed: graph building and warm caches.
    next(iterator)
  start = time.perf_counter()
  for _ in range(num_images):
    next(iterator)
  return num_images / (time.perf_counter() - start)
def bench_prior_step(prior_config, tokenizer_config, warmup: int, runs: int) -> dict[str, float]:
  """Seconds of the prior's train step from images (encoded in the step by a frozen tokenizer
  of `tokenizer_config`'s architecture, random weights) and from stored codes, side by side."""
  from vqgan_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from vqgan_jax.models.autoencoder import VQModel  # pylint: disable=g-import-not-at-top
  from vqgan_jax.prior import frozen_tokenizers, model as prior_model  # pylint: disable=g-import-not-at-top
  from vqgan_jax.prior import train as prior_train  # pylint: disable=g-import-not-at-top
  from vqgan_jax.runtime import trainer_config, training_loop  # pylint: disable=g-import-not-at-top
  mesh = sharding.create_mesh()
  sharding.check_batch_divisible(prior_config.batch_size, mesh)
  h, w = input_pipeline.crop_shape(prior_config.data.image_size)
  tok_model = VQModel(**tokenizer_config.model.to_dict(),
                      dtype=trainer_config.compute_dtype(prior_config))
  tok_params = tok_model.init(jax.random.PRNGKey(0), jnp.zeros((1, h, w, 3)))["params"]
  tokenizers = frozen_tokenizers.Tokenizers(tok_model, tok_params)
  tok_params = jax.device_put(tokenizers.params, sharding.replicated(mesh))
  num_classes = 10 if prior_config.conditioning == "class" else 0
  model = prior_model.build_model(prior_config, tokenizers, num_classes)
  grid = prior_model.token_grid(prior_config, tok_model)
  tx, schedule = prior_train.build_optimizer(prior_config)
  init = functools.partial(prior_train.init_state, config=prior_config, model=model, tx=tx,
                           tokens_shape=(1, grid[0] * grid[1]),
                           cond_example=jnp.zeros((1,), jnp.int32) if num_classes else None)
  shardings = sharding.tree_shardings(mesh, jax.eval_shape(init, jax.random.PRNGKey(0)),
                                      prior_config.param_sharding)
  step = training_loop.jit_step(functools.partial(
      prior_train.prior_step, config=prior_config, tokenizers=tokenizers, model=model, tx=tx,
      lr_schedule=schedule, num_classes=num_classes), shardings, mesh)
  rng = np.random.default_rng(0)
  b = prior_config.batch_size
  images = rng.uniform(-1, 1, (b, h, w, 3)).astype(np.float32)
  labels = rng.integers(0, max(num_classes, 1), (b,)).astype(np.int32)
  codes = np.asarray(jax.jit(tokenizers.codes)(tokenizers.params, images))
  out = {}
  for name, batch in (("images", {"image": images, "label": labels}),
                      ("codes", {"codes": codes, "label": labels})):
    batch = sharding.global_batch(batch, mesh)
    holder = [jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(0))]
    with jax.set_mesh(mesh):
      compiled = step.lower(holder[0], batch, tok_params).compile()

    def one_step(compiled=compiled, batch=batch, holder=holder):
      holder[0], metrics = compiled(holder[0], batch, tok_params)
      return metrics

    out[f"prior_step_seconds_from_{name}"] = time_call(one_step, warmup, runs)
  return out


def run_benchmark(config, prior_config=None, *, warmup: int = 2, runs: int = 10,
                  vq_sizes=(1024, 4096, 16384, 65536), vq_tokens: int = 16384,
                  vq_chunk: int = 2048, matmul_size: int = 4096,
                  input_images: int = 512) -> dict[str, Any]:
  results: dict[str, Any] = {
      "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
      "batch_size": config.batch_size,
      "image_size": list(train.image_shape(config)),
      "dtype": config.dtype,
      "model": {"ch": config.model.ch, "ch_mult": list(config.model.ch_mult),
                "num_res_blocks": config.model.num_res_blocks,
                "attn_resolutions": list(config.model.attn_resolutions),
                "z_channels": config.model.z_channels, "embed_dim": config.model.embed_dim,
                "codebook_size": config.model.codebook_size,
                "disc_layers": config.discriminator.num_layers,
                "quantizer_type": config.model.quantizer_type,
                "codebook_dim": config.model.codebook_dim, "remat": config.model.remat},
  }
  results["peak_matmul_flops_per_second"] = peak_matmul(matmul_size, warmup, runs)
  results.update(bench_train_step(config, warmup, runs))
  results["fraction_of_peak"] = (results["achieved_flops_per_second"]
                                 / results["peak_matmul_flops_per_second"])
  results["train_images_per_second_per_device"] = (results["train_images_per_second"]
                                                   / jax.device_count())
  results["input_images_per_second_per_core"] = bench_input(config, input_images)
  lookup_dim = config.model.codebook_dim or config.model.embed_dim
  results["vq_lookup"] = bench_vq_lookup(lookup_dim, list(vq_sizes), vq_tokens, warmup, runs,
                                         vq_chunk)
  results["sampling_tokens_per_second_kv"] = None
  results["sampling_tokens_per_second_naive"] = None
  results["prior_step_seconds_from_images"] = None
  results["prior_step_seconds_from_codes"] = None
  for key in ("compress_images_per_second", "decompress_images_per_second",
              "compress_megapixels_per_second", "decompress_megapixels_per_second"):
    results[key] = None
  if prior_config is not None:
    results.update(bench_sampling(prior_config, config, warmup, runs))
    results.update(bench_prior_step(prior_config, config, warmup, runs))
    results.update(bench_codec(prior_config, config, warmup, runs))
  return results


def format_table(results: dict[str, Any]) -> str:
  rows = [(k, v) for k, v in results.items() if k not in ("vq_lookup", "model")]
  rows.append(("model", json.dumps(results["model"])))
  lines = [f"{k:36s} {v:.4g}" if isinstance(v, float) else f"{k:36s} {v}" for k, v in rows]
  lines.append("vq_lookup (K, tokens per chunk (0: all), seconds, peak bytes):")
  lines += [f"  {r['codebook_size']:>8d} {r['lookup_chunk_size']:>6d} {r['seconds']:.4g} "
            f"{r['peak_bytes']}" for r in results["vq_lookup"]]
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.input_only:
    results = {"image_size": list(train.image_shape(FLAGS.config)),
               "input_images_per_second_per_core": bench_input(FLAGS.config, FLAGS.input_images)}
    print(json.dumps(results))
    if FLAGS.out:
      storage.write_json(FLAGS.out, results, indent=2)
    return
  if FLAGS.profile:
    sizes = [int(size) for size in FLAGS.scaling_sizes] or [None]
    results = {"profile": {}}
    for size in sizes:
      config = with_gan_on(FLAGS.config if size is None else at_image_size(
          FLAGS.config, size, FLAGS.scaling_batch))
      rows = profile_train_step(config, FLAGS.profile)
      key = str(size or train.image_shape(config)[0])
      results["profile"][key] = rows
      print(f"{key} px, batch {config.batch_size}, {config.dtype}: CPU seconds per step "
            f"{sum(r['seconds'] for r in rows if 'instruction' not in r):.3f}")
      print(op_profile.format_profile(rows))
    if FLAGS.out:
      storage.write_json(FLAGS.out, results, indent=2)
    return
  if FLAGS.scaling_sizes:
    peak = peak_matmul(FLAGS.matmul_size, FLAGS.warmup, FLAGS.runs)
    results = {"device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
               "dtype": FLAGS.config.dtype, "peak_matmul_flops_per_second": peak,
               "scaling": bench_scaling(FLAGS.config, [int(s) for s in FLAGS.scaling_sizes],
                                        FLAGS.scaling_batch, FLAGS.warmup, FLAGS.runs,
                                        FLAGS.taming, peak)}
    print(f"peak {peak / 1e9:.1f} GFLOP/s on {results['device']}, {results['dtype']}")
    print(format_scaling(results["scaling"]))
    if FLAGS.out:
      storage.write_json(FLAGS.out, results, indent=2)
    return
  results = run_benchmark(FLAGS.config, FLAGS.prior_config, warmup=FLAGS.warmup, runs=FLAGS.runs,
                          vq_sizes=[int(k) for k in FLAGS.vq_sizes], vq_tokens=FLAGS.vq_tokens,
                          vq_chunk=FLAGS.vq_chunk, matmul_size=FLAGS.matmul_size,
                          input_images=FLAGS.input_images)
  print(format_table(results))
  if FLAGS.out:
    storage.write_json(FLAGS.out, results, indent=2)
    logging.info("Wrote %s", FLAGS.out)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
