"""Attention implementations chosen by config: XLA, cuDNN flash (GPU), Pallas splash (TPU).

`ModelConfig.attention` names one of:
  xla     `layers.attention`: dense masked fp32 scores, long queries in
          rematerialised blocks of `layers.QUERY_BLOCK`. Every platform.
  cudnn   `jax.nn.dot_product_attention(implementation="cudnn")`, cuDNN's
          flash attention (NVIDIA GPUs): no score matrix in memory.
  splash  Pallas splash attention (`jax.experimental.pallas.ops.tpu`), TPU's
          flash kernel; off TPU it runs in Pallas interpret mode (tests, CPU
          memory plans: correct, slow).
  auto    splash on TPU, cudnn on GPU, xla elsewhere.
The name is resolved once per platform (`resolve`) and logged; a request a
platform cannot serve (cudnn off GPU) resolves to xla with the reason logged.

Who sees whom reaches attention in one of two forms, built by the callers:
  a dense bool mask [B, T, S]   the XLA implementation, exactly as before, and
                                decode steps (which read the KV cache);
  `Segments`                    per-query and per-key segment ids plus a
                                causal flag: a query sees a key iff their ids
                                are equal and not negative (and, if causal,
                                the key is not after it). The kernels take
                                this; no O(T^2) mask is built for them.
  text      one segment (id 0) for the real tokens, -1 for padding, causal;
  vision    one segment per image (full-attention blocks) or per window of an
            image (Qwen2.5-VL's window blocks), -1 for padding rows, not
            causal: images never attend to each other.
`attend` takes either form. A Segments under `xla`, or a shape a kernel's rules
exclude, runs `layers.attention` on `Segments.visible()`, the same dense mask
the XLA callers build; the fallback's reason is logged once.

What each kernel is given, and why:
  * Padding queries must see some key (both kernels need a non-empty row), so
    inside a kernel padding ids form a segment of their own (-1 sees -1);
    their outputs are then zeroed, as in `layers.attention`, which also zeroes
    their gradients. Real queries never see padding keys.
  * splash needs lengths in whole 128-key tiles: q/k/v are zero-padded to a
    multiple of 128 (segment -1) and cut back. It takes [H, T, D] per example
    (vmapped over the batch), keys with K <= H heads (GQA: query head h reads
    key head h // (H / K), the grouping of `layers.attention`) and queries
    pre-scaled by head_dim^-0.5. Under a mesh in context (`jax.set_mesh`) it
    runs per shard (`jax.shard_map`: batch over 'data'/'fsdp', heads over
    'tensor', as `evejax.parallel`'s default rules place activations);
    without one, a multi-device jit gives XLA a kernel it cannot partition.
  * cudnn has no segment ids in its public API. Causal text with one run of
    real tokens per row (left- or right-padded, `Segments.single`) becomes
    right-padded by rotating each row so its real tokens start at slot 0
    (rotary is already applied, so positions travel with the vectors), runs
    with per-row lengths (no mask at all), and is rotated back. Several
    segments per row (the vision tower) go in as a boolean mask, which cuDNN
    reads as a [B, 1, T, S] bias (O(T^2) memory, flash compute). Its rules:
    bf16/fp16, head_dim a multiple of 8 and <= 128 (256 on Hopper and later),
    even lengths with a mask.
  * Kernels serve self-attention (T == S: training, scoring, prefill); decode
    steps keep the cache-reading XLA attention, which reads [B, K, S, hd]
    cache views as they are.
"""
from __future__ import annotations

import contextlib
import functools
import math

from absl import logging
import flax.struct
import jax
import jax.numpy as jnp

from evejax.models import layers
from evejax.models.presets import ATTENTION_IMPLEMENTATIONS

# splash tiles: lengths are padded to a multiple of the smallest; the largest
# that divides the padded length is used (fewer grid steps per head).
_SPLASH_TILE = 128
_SPLASH_BLOCKS = (512, 256, 128)


@flax.struct.dataclass
class Segments:
  """Who sees whom, as segment ids (module docstring)."""
  q: jax.Array   # int32 [B, T]; each query's segment, negative = padding
  kv: jax.Array  # int32 [B, S]; each key's segment, negative = padding
  # Keys after a query (by index) are hidden from it.
  causal: bool = flax.struct.field(pytree_node=False, default=False)
  # Every row has at most one segment (id 0) and its tokens are contiguous:
  # text left- or right-padded, not packed. cuDNN then needs no mask.
  single: bool = flax.struct.field(pytree_node=False, default=False)
  # A resolved implementation (`resolve`): "xla", "cudnn" or "splash".
  implementation: str = flax.struct.field(pytree_node=False, default="xla")

  def visible(self) -> jax.Array:
    """bool [B, T, S]: the dense mask of `layers.attention`."""
    q, kv = self.q[:, :, None], self.kv[:, None, :]
    seen = (q == kv) & (q >= 0) & (kv >= 0)
    if self.causal:
      t, s = self.q.shape[1], self.kv.shape[1]
      seen &= jnp.tril(jnp.ones((t, s), bool))[None]
    return seen


def causal_text(mask: jax.Array, implementation: str) -> jax.Array | Segments:
  """Causal self-attention over real tokens, for a resolved implementation.

  `mask`: int [B, T], 1 real token, 0 padding; a row's real tokens are
  contiguous (left or right padding). xla gets the dense [B, T, T] mask
  (query i sees real key j <= i); the kernels get `Segments`.
  """
  if implementation == "xla":
    t = mask.shape[1]
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    return causal[None] & (mask != 0)[:, None, :]
  ids = jnp.where(mask != 0, 0, -1).astype(jnp.int32)
  return Segments(ids, ids, causal=True, single=True,
                  implementation=implementation)


def within_segments(ids: jax.Array, implementation: str
                    ) -> jax.Array | Segments:
  """Bidirectional attention within equal ids [B, P] (negative = padding).

  xla gets the dense [B, P, P] mask; the kernels get `Segments`.
  """
  if implementation == "xla":
    valid = ids >= 0
    return ((ids[:, :, None] == ids[:, None, :])
            & valid[:, :, None] & valid[:, None, :])
  ids = jnp.where(ids >= 0, ids, -1).astype(jnp.int32)
  return Segments(ids, ids, implementation=implementation)


# The platform programs are being compiled for, when it is not the backend's:
# set by `compiling_for` (ahead-of-time compiles for compile-only TPU or GPU
# devices from a CPU host, `evejax.tools.aot_compile`).
_TARGET_PLATFORM: list[str] = []


@contextlib.contextmanager
def compiling_for(platform: str):
  """Resolves attention, and builds kernels, for `platform` ("tpu", "gpu", "cpu")
  while tracing in this context, whatever backend the host runs.

  For ahead-of-time compiles on compile-only devices: with `JAX_PLATFORMS=cpu`
  the default backend is the CPU, yet `auto` must pick splash (not xla) and
  splash must be the Mosaic kernel (not Pallas interpret mode) for a TPU target.
  """
  _TARGET_PLATFORM.append(platform)
  try:
    yield
  finally:
    _TARGET_PLATFORM.pop()


def _platform() -> str:
  return _TARGET_PLATFORM[-1] if _TARGET_PLATFORM else jax.default_backend()


def resolve(name: str) -> str:
  """The implementation `name` (a config value) runs as on this platform."""
  return _resolve(name, _platform())


@functools.cache
def _resolve(name: str, platform: str) -> str:
  if name not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(
        f"model attention {name!r} is not one of "
        f"{', '.join(ATTENTION_IMPLEMENTATIONS)}; set config.model.attention "
        "(ModelConfig.attention).")
  if name == "auto":
    chosen = {"tpu": "splash", "gpu": "cudnn"}.get(platform, "xla")
    logging.info("attention: auto on %s -> %s", platform, chosen)
    return chosen
  if name == "cudnn" and platform != "gpu":
    logging.warning("attention: cudnn needs an NVIDIA GPU (platform %s); "
                    "using xla", platform)
    return "xla"
  if name == "splash" and platform != "tpu":
    logging.warning("attention: splash on %s runs in Pallas interpret mode "
                    "(correct, slow: for tests and memory plans)", platform)
  logging.info("attention: %s on %s", name, platform)
  return name


@functools.cache
def _log_once(message: str) -> None:
  logging.warning("%s", message)


def attend(q: jax.Array, k: jax.Array, v: jax.Array,
           mask: jax.Array | Segments) -> jax.Array:
  """Attention of q [B, T, H, D] over k/v [B, S, K, D] (H a multiple of K).

  `mask` is a dense bool [B, T, S] (the XLA implementation) or `Segments`
  (its implementation picks the kernel). Returns [B, T, H, D] in q's dtype;
  queries that see no key (padding) give zeros.
  """
  if not isinstance(mask, Segments):
    return layers.attention(q, k, v, mask)
  kernel = {"cudnn": (_cudnn_unsupported, _cudnn),
            "splash": (_splash_unsupported, _splash)}.get(mask.implementation)
  if kernel is not None:
    unsupported, run = kernel
    reason = unsupported(q, k, v, mask)
    if reason is None:
      return run(q, k, v, mask)
    _log_once(f"attention: {mask.implementation} falls back to xla for q "
              f"{q.shape} {q.dtype}, k {k.shape}: {reason}")
  return layers.attention(q, k, v, mask.visible())


def _self_attention_reason(q, k) -> str | None:
  if q.shape[1] != k.shape[1]:
    return (f"queries ({q.shape[1]}) and keys ({k.shape[1]}) differ in "
            "length; the kernels serve self-attention")
  return None


def _valid_rows(out: jax.Array, segments: Segments) -> jax.Array:
  return jnp.where((segments.q >= 0)[:, :, None, None], out, 0)


# --- cuDNN (GPU) -------------------------------------------------------------


def _cudnn_head_dim_limit() -> int:
  """256 on Hopper (compute capability 9.0) and later, else 128."""
  try:
    capability = float(jax.devices()[0].compute_capability)
  except (AttributeError, TypeError, ValueError):
    return 128
  return 256 if capability >= 9.0 else 128


def _cudnn_unsupported(q, k, v, segments: Segments) -> str | None:
  """Why cuDNN's flash attention cannot take these operands, or None."""
  reason = _self_attention_reason(q, k)
  if reason:
    return reason
  dtypes = {jnp.dtype(x.dtype) for x in (q, k, v)}
  if len(dtypes) != 1 or dtypes.pop() not in (jnp.dtype(jnp.bfloat16),
                                               jnp.dtype(jnp.float16)):
    return (f"dtypes {q.dtype}/{k.dtype}/{v.dtype}: cuDNN needs bf16 or fp16 "
            "(set model.dtype)")
  d, limit = q.shape[-1], _cudnn_head_dim_limit()
  if d % 8 or d > limit:
    return f"head_dim {d}: cuDNN needs a multiple of 8, at most {limit}"
  uses_mask = not (segments.causal and segments.single)
  if uses_mask and q.shape[1] % 2:
    return f"odd length {q.shape[1]} with a mask"
  return None


def _dot_product_attention(*args, **kwargs):
  # One seam: tests run this with implementation="xla" on CPU.
  return jax.nn.dot_product_attention(*args, **kwargs)


def _cudnn(q, k, v, segments: Segments) -> jax.Array:
  run = functools.partial(_dot_product_attention, implementation="cudnn")
  if segments.causal and segments.single:
    out = _rotated_to_right_padding(run, q, k, v, segments.q >= 0)
  else:
    mask = (segments.q[:, :, None] == segments.kv[:, None, :])[:, None]
    out = run(q, k, v, mask=mask, is_causal=segments.causal)
  return _valid_rows(out, segments).astype(q.dtype)


def _rotated_to_right_padding(run, q, k, v, real):
  """Causal attention over each row's one run of real tokens, via lengths.

  Row b is rotated left by its first real index, so its n_b real tokens sit
  at [0, n_b) in order, attends with query and key lengths n_b (cuDNN's
  padding-causal mode), and is rotated back. All-padding rows get length 1
  (a finite softmax; their outputs are zeroed).
  """
  t = q.shape[1]
  first = jnp.argmax(real, axis=1).astype(jnp.int32)
  lengths = jnp.maximum(jnp.sum(real, axis=1, dtype=jnp.int32), 1)
  slots = jnp.arange(t, dtype=jnp.int32)[None]
  forward = (slots + first[:, None]) % t
  back = (slots - first[:, None]) % t
  take = lambda x, idx: jnp.take_along_axis(x, idx[:, :, None, None], axis=1)
  out = run(take(q, forward), take(k, forward), take(v, forward),
            is_causal=True, query_seq_lengths=lengths,
            key_value_seq_lengths=lengths)
  return take(out, back)


# --- splash (TPU) ------------------------------------------------------------


def _splash_unsupported(q, k, v, segments: Segments) -> str | None:
  del v, segments
  return _self_attention_reason(q, k)


@functools.cache
def _splash_mask(heads: int, length: int, causal: bool):
  # The same object every call: splash caches its block tables by mask.
  from jax.experimental.pallas.ops.tpu import splash_attention as sa  # pylint: disable=g-import-not-at-top
  shape = (length, length)
  one = sa.CausalMask(shape) if causal else sa.FullMask(shape)
  return sa.MultiHeadMask([one] * heads)


def _splash_kernel(heads: int, length: int, causal: bool, interpret: bool):
  """A splash kernel for one example's [heads, length, D] (built per trace:
  it holds arrays, which must not outlive the trace that made them)."""
  from jax.experimental.pallas.ops.tpu import splash_attention as sa  # pylint: disable=g-import-not-at-top
  block = next(b for b in _SPLASH_BLOCKS if length % b == 0)
  sizes = sa.BlockSizes(
      block_q=block, block_kv=block, block_kv_compute=block,
      block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
      block_q_dq=block, block_kv_dq=block)
  return sa.make_splash_mha(_splash_mask(heads, length, causal),
                            block_sizes=sizes, head_shards=1, q_seq_shards=1,
                            interpret=interpret)


def _splash(q, k, v, segments: Segments) -> jax.Array:
  from jax.experimental.pallas.ops.tpu import splash_attention as sa  # pylint: disable=g-import-not-at-top
  b, t, h, d = q.shape
  padded = -(-t // _SPLASH_TILE) * _SPLASH_TILE
  pad = padded - t
  scale = d ** -0.5
  heads_first = lambda x: jnp.swapaxes(
      jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))), 1, 2)
  qs = heads_first((q.astype(jnp.float32) * scale).astype(q.dtype))
  ks, vs = heads_first(k), heads_first(v.astype(q.dtype))
  ids = lambda s: jnp.pad(s, ((0, 0), (0, pad)), constant_values=-1)
  sq, skv = ids(segments.q), ids(segments.kv)
  interpret = _platform() != "tpu"

  def per_shard(qs, ks, vs, sq, skv):
    kernel = _splash_kernel(qs.shape[1], padded, segments.causal, interpret)
    one = lambda q1, k1, v1, s1, s2: kernel(q1, k1, v1,
                                            segment_ids=sa.SegmentIds(s1, s2))
    return jax.vmap(one)(qs, ks, vs, sq, skv)

  out = _sharded(per_shard, qs, ks, vs, sq, skv)
  out = jnp.swapaxes(out, 1, 2)[:, :t]
  return _valid_rows(out, segments).astype(q.dtype)


def _sharded(per_shard, qs, ks, vs, sq, skv):
  """per_shard under `jax.shard_map` over the mesh in context, if any."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or math.prod(mesh.shape.values()) == 1:
    if _platform() == "tpu" and jax.device_count() > 1:
      _log_once("attention: splash without a mesh in context (jax.set_mesh) "
                "cannot run per shard; XLA may gather its operands")
    return per_shard(qs, ks, vs, sq, skv)
  b, kv_heads = qs.shape[0], ks.shape[1]
  batch, size = [], 1
  for axis in ("data", "fsdp"):
    n = mesh.shape.get(axis, 1)
    if n > 1 and b % (size * n) == 0:
      batch.append(axis)
      size *= n
  tensor = mesh.shape.get("tensor", 1)
  heads = "tensor" if tensor > 1 and kv_heads % tensor == 0 else None
  batch = tuple(batch) or None
  P = jax.sharding.PartitionSpec  # pylint: disable=invalid-name
  arrays, ids = P(batch, heads, None, None), P(batch, None)
  return jax.shard_map(per_shard, mesh=mesh,
                       in_specs=(arrays, arrays, arrays, ids, ids),
                       out_specs=arrays, check_vma=False)(qs, ks, vs, sq, skv)


__all__ = ["Segments", "attend", "causal_text", "within_segments", "resolve",
           "compiling_for", "ATTENTION_IMPLEMENTATIONS"]
