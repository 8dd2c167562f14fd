"""Pure, jittable codebook functions shared by the quantizers.

Every function sees whole (global) arrays: under `jax.jit` with sharded inputs, XLA inserts the
cross-device reductions, so counts, EMA statistics, restarts and k-means are identical on every
device and host and do not depend on how the batch is split. The one exception is `search`'s
chunked loop, which runs per device on its own rows (results identical either way).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh, Mesh, PartitionSpec as P

HIGHEST = jax.lax.Precision.HIGHEST
# The mesh axis the batch is split over (`vqgan_jax.runtime.sharding.DATA_AXIS`; a test keeps
# them equal, the models know nothing of the runtime).
DATA_AXIS = "data"


def squared_distances(vectors: jax.Array, codebook: jax.Array) -> jax.Array:
  """|v|^2 + |e|^2 - 2 v.e for (n, d) vectors against (K, d) codes: (n, K) float32."""
  return (jnp.sum(vectors**2, axis=-1, keepdims=True) + jnp.sum(codebook**2, axis=-1)
          - 2.0 * jnp.matmul(vectors, codebook.T, precision=HIGHEST))


def _entropy_sums(logits: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Sum over rows of each row's softmax entropy, and the sum of the rows' softmax."""
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  probs = jnp.exp(log_probs) * mask[:, None]
  return -jnp.sum(probs * log_probs), jnp.sum(probs, axis=0)


def _search_rows(vectors: jax.Array, codebook: jax.Array, chunk_size: int, temperature: float):
  """Indices, summed row entropies and summed soft assignments (zeros without a temperature)
  of all `vectors`, `chunk_size` rows at a time when 0 < chunk_size < rows."""
  n = vectors.shape[0]

  def block(rows, mask):
    distances = squared_distances(rows, codebook)
    indices = jnp.argmin(distances, axis=-1).astype(jnp.int32)
    if temperature <= 0:
      return indices, jnp.float32(0), jnp.zeros((codebook.shape[0],), jnp.float32)
    return (indices, *_entropy_sums(-distances / temperature, mask))

  if not 0 < chunk_size < n:
    return block(vectors, jnp.ones((n,), jnp.float32))
  chunks = -(-n // chunk_size)
  pad = chunks * chunk_size - n
  rows = jnp.pad(vectors, ((0, pad), (0, 0))).reshape(chunks, chunk_size, -1)
  mask = (jnp.arange(chunks * chunk_size) < n).astype(jnp.float32).reshape(chunks, chunk_size)
  indices, entropy_sum, prob_sum = jax.lax.map(lambda a: block(*a), (rows, mask))
  return indices.reshape(-1)[:n], entropy_sum.sum(), prob_sum.sum(0)


def row_shards(mesh: Mesh | AbstractMesh | None, rows: int, axis_name: str = DATA_AXIS) -> int:
  """Devices that can each search their own rows: the size of `axis_name` in `mesh` (None: the
  mesh in context, `jax.set_mesh`) if it splits `rows` evenly and is not already manual, else 1."""
  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh.abstract_mesh
  if mesh.empty or axis_name not in mesh.axis_names or axis_name in mesh.manual_axes:
    return 1
  size = mesh.shape[axis_name]
  return size if size > 1 and rows % size == 0 else 1


def _sharded_search_rows(vectors, codebook, chunk_size, temperature, mesh, axis_name):
  """`_search_rows` on each device's own rows against the replicated codebook (shard_map over
  `axis_name`), so no device gathers the batch; the entropy sums are psum-reduced."""
  want_entropy = temperature > 0

  def local(rows, codebook):
    indices, entropy_sum, prob_sum = _search_rows(rows, codebook, chunk_size, temperature)
    if not want_entropy:
      return indices
    return indices, jax.lax.psum(entropy_sum, axis_name), jax.lax.psum(prob_sum, axis_name)

  out_specs = (P(axis_name), P(), P()) if want_entropy else P(axis_name)
  out = jax.shard_map(local, mesh=mesh, in_specs=(P(axis_name), P()),
                      out_specs=out_specs)(vectors, codebook)
  return out if want_entropy else (out, None, None)


def search(vectors: jax.Array, codebook: jax.Array, *, chunk_size: int = 0,
           entropy_temperature: float = 0.0, mesh: Mesh | AbstractMesh | None = None,
           axis_name: str = DATA_AXIS):
  """Nearest code of each row (first index on ties, like torch's argmin), in float32.

  `chunk_size=C > 0` holds only a (C, K) distance block at a time (`lax.map` over chunks), so
  memory stays bounded for large codebooks. On a mesh (`mesh`, or the one in context set with
  `jax.set_mesh`) whose `axis_name` splits the rows evenly, each device maps over the chunks of
  its own rows (`shard_map`): a chunked map over globally sharded rows would otherwise gather
  the whole batch onto every device and repeat all of its chunks there. Otherwise, and with
  C = 0, the search sees the whole array. With `entropy_temperature=t > 0` it also returns
  the soft-assignment entropies softmax(-distance / t) that the entropy penalty needs, reduced
  chunk by chunk: (mean per-row entropy, entropy of the mean assignment). Otherwise None.
  """
  n = vectors.shape[0]
  shards = row_shards(mesh, n, axis_name) if 0 < chunk_size < n else 1
  if shards > 1:
    indices, entropy_sum, prob_sum = _sharded_search_rows(
        vectors, codebook, chunk_size, entropy_temperature, mesh, axis_name)
  else:
    indices, entropy_sum, prob_sum = _search_rows(vectors, codebook, chunk_size,
                                                  entropy_temperature)
  if entropy_temperature <= 0:
    return indices, None
  return indices, _entropies(entropy_sum, prob_sum, n)


def _entropies(entropy_sum: jax.Array, prob_sum: jax.Array, n: int):
  mean_probs = prob_sum / n
  # -p log p with log clamped: `entr`'s gradient is infinite where a code's probability has
  # underflowed to 0 (sharp temperatures, far codes), which would turn the step into NaNs.
  codebook_entropy = -jnp.sum(mean_probs * jnp.log(jnp.maximum(mean_probs, 1e-30)))
  return entropy_sum / n, codebook_entropy


def entropy_terms(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mean per-row entropy, entropy of the mean assignment) of softmax(logits) over (n, K)
  rows: the entropy penalty's terms for a quantizer that has its logits at hand."""
  n = logits.shape[0]
  entropy_sum, prob_sum = _entropy_sums(logits, jnp.ones((n,), jnp.float32))
  return _entropies(entropy_sum, prob_sum, n)


def code_counts(indices: jax.Array, codebook_size: int) -> jax.Array:
  """How many times each code was chosen: (K,) int32."""
  return jnp.bincount(indices.reshape(-1), length=codebook_size).astype(jnp.int32)


def perplexity(counts: jax.Array) -> jax.Array:
  """exp(entropy) of a code histogram: 1 = one code, K = uniform."""
  probs = counts / jnp.maximum(jnp.sum(counts), 1)
  return jnp.exp(jnp.sum(jax.scipy.special.entr(probs))).astype(jnp.float32)


def advance_unused_steps(unused_steps: jax.Array, counts: jax.Array) -> jax.Array:
  """Steps since each code was last chosen, after one more step with these counts."""
  return jnp.where(counts > 0, 0, unused_steps + 1).astype(jnp.int32)


def ema_update(cluster_size: jax.Array, embed_sum: jax.Array, vectors: jax.Array,
               indices: jax.Array, *, decay: float, epsilon: float):
  """One step of VQ-VAE's EMA dictionary learning (van den Oord et al. 2017, appendix A.1).

  N_k <- decay N_k + (1 - decay) n_k,  m_k <- decay m_k + (1 - decay) sum_{i: k_i = k} z_i,
  e_k = m_k / N~_k with Laplace-smoothed counts N~_k = (N_k + eps) / (N + K eps) * N.
  Returns (cluster_size, embed_sum, codebook).
  """
  k = cluster_size.shape[0]
  counts = jnp.bincount(indices, length=k).astype(jnp.float32)
  sums = jax.ops.segment_sum(vectors, indices, num_segments=k)
  cluster_size = decay * cluster_size + (1.0 - decay) * counts
  embed_sum = decay * embed_sum + (1.0 - decay) * sums
  total = jnp.sum(cluster_size)
  smoothed = (cluster_size + epsilon) / (total + k * epsilon) * total
  return cluster_size, embed_sum, embed_sum / smoothed[:, None]


def push_recent(buffer: jax.Array, count: jax.Array, vectors: jax.Array, key: jax.Array):
  """Keeps the most recent encoder outputs in a fixed-size buffer (oldest rows drop out).

  When a step brings more rows than the buffer holds, a random subset of them fills it.
  Returns (buffer, number of valid rows).
  """
  size, n = buffer.shape[0], vectors.shape[0]
  if n >= size:
    new = vectors[jax.random.permutation(key, n)[:size]]
  else:
    new = jnp.concatenate([buffer[n:], vectors], axis=0)
  return new, jnp.minimum(count + n, size).astype(jnp.int32)


def reseed(codebook: jax.Array, dead: jax.Array, pool: jax.Array, key: jax.Array) -> jax.Array:
  """Replaces exactly the rows where `dead` is True with distinct random rows of `pool`.

  Rows are drawn without replacement while the pool lasts (more dead codes than pool rows
  wrap around). Every other row is returned unchanged.
  """
  order = jax.random.permutation(key, pool.shape[0])
  rank = jnp.cumsum(dead.astype(jnp.int32)) - 1
  replacement = pool[order[jnp.maximum(rank, 0) % pool.shape[0]]]
  return jnp.where(dead[:, None], replacement, codebook)


def kmeans_plus_plus(points: jax.Array, k: int, key: jax.Array, *, lloyd_iterations: int = 0,
                     chunk_size: int = 0) -> jax.Array:
  """k centres from `points` (n, d) by k-means++ seeding, then optional Lloyd iterations.

  Seeding picks each next centre with probability proportional to its squared distance to
  the nearest centre so far (Arthur & Vassilvitskii 2007); a `lax.fori_loop`, O(n k d).
  """
  n = points.shape[0]
  first_key, loop_key = jax.random.split(key)
  first = points[jax.random.randint(first_key, (), 0, n)]
  centres = jnp.zeros((k, points.shape[1]), points.dtype).at[0].set(first)
  nearest = jnp.sum((points - first)**2, axis=-1)

  def add_centre(i, carry):
    centres, nearest = carry
    total = jnp.sum(nearest)
    # Fewer distinct points than centres: fall back to uniform picks.
    logits = jnp.where(total > 0, jnp.log(nearest), 0.0)
    pick = points[jax.random.categorical(jax.random.fold_in(loop_key, i), logits)]
    return centres.at[i].set(pick), jnp.minimum(nearest, jnp.sum((points - pick)**2, axis=-1))

  centres, _ = jax.lax.fori_loop(1, k, add_centre, (centres, nearest))

  def lloyd(_, centres):
    assignment, _ = search(points, centres, chunk_size=chunk_size)
    counts = jnp.bincount(assignment, length=k).astype(points.dtype)
    sums = jax.ops.segment_sum(points, assignment, num_segments=k)
    return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centres)

  return jax.lax.fori_loop(0, lloyd_iterations, lloyd, centres)
