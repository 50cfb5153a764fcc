"""The gated delta rule in pure JAX: chunked (scoring, training, prefill) and
one token at a time (decode), and the causal depthwise conv in front of it.

Per value head, with a state S of dk x dv (S_0 = 0 or a cached state), for
each token t (q_t, k_t L2-normalised, q_t scaled by dk^-1/2, beta_t in (0, 1),
g_t <= 0 the log-decay):
    S'  = exp(g_t) S_{t-1}
    S_t = S' + k_t (beta_t (v_t - S'^T k_t))^T
    o_t = S_t^T q_t                 (read after the write: t sees itself)

The chunked form (chunks of C tokens, a `lax.scan` over chunks carrying S)
computes the same outputs and final state with matmuls. Within a chunk, with
G_i the cumulative log-decay up to token i and D_ij = exp(G_i - G_j) for
j <= i (0 above the diagonal):
    L = I + strict_lower(diag(beta) K K^T * D)     (unit lower triangular)
    U = L^-1 diag(beta) V,  P = L^-1 diag(beta e^G) K
    V' = U - P S,  O = (Q e^G) S + ((Q K^T) * D) V'
    S <- e^{G_last} S + (K e^{G_last - G})^T V'
Everything that does not depend on S (D, L^-1 by `unit_lower_inverse`,
Q K^T) is computed for all chunks at once before the scan; the scan does
four small matmuls per chunk. Lengths are zero-padded to whole chunks: a padded
token has k = v = 0 and g = 0, so it changes neither outputs nor state.
All of it runs in fp32 at full matmul precision (TPUs would otherwise run
fp32 dots in bf16 passes); `chunk_size` 64 as transformers' reference uses.
Measured on CPU against the one-token form: outputs and final state agree
to ~1e-6 (tests/qwen3_5_delta_rule_test.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


def _dot(spec: str, *operands) -> jax.Array:
  return jnp.einsum(spec, *operands, precision=_HIGHEST,
                    preferred_element_type=jnp.float32)


def l2_normalize(x: jax.Array) -> jax.Array:
  """x / sqrt(sum(x^2) + 1e-6) over the last axis, fp32 (FLA's l2norm)."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-6)


def prepare(q, k, v, beta, g, value_heads_per_key_head: int):
  """fp32 kernel inputs [B, T, Hv, ...]: q, k normalised and repeated so that
  value head j reads key head j // r (r consecutive value heads share one)."""
  r = value_heads_per_key_head
  q = jnp.repeat(l2_normalize(q), r, axis=2)
  k = jnp.repeat(l2_normalize(k), r, axis=2)
  q = q * (q.shape[-1] ** -0.5)
  return (q, k, v.astype(jnp.float32), beta.astype(jnp.float32),
          g.astype(jnp.float32))


@jax.custom_vjp
def unit_lower_inverse(a: jax.Array) -> jax.Array:
  """(I + a)^-1 for strictly lower triangular a [..., C, C], C a power of 2.

  Built up from the diagonal by the 2x2 block rule
  [[X, 0], [Y, Z]]^-1 = [[X^-1, 0], [-Z^-1 Y X^-1, Z^-1]]: the inverse is
  kept as its diagonal blocks ([..., C/s, s, s]), and each of log2(C) levels
  pairs neighbours into blocks of 2s with two batched matmuls. Exact
  (forward substitution, regrouped), unlike a Neumann series, and made of
  matmuls, reshapes and concatenations only: XLA:CPU's triangular solve
  deadlocked in multi-device programs (the 8-device mesh test), and matmuls
  suit TPUs. The gradient is the inverse's own (custom VJP):
  d a = -(X^T g X^T) below the diagonal, so the backward pass stores X only.
  """
  c = a.shape[-1]
  if c & (c - 1):
    raise ValueError(f"unit_lower_inverse: size {c} is not a power of 2.")
  lead = a.shape[:-2]
  inv = jnp.ones(lead + (c, 1, 1), a.dtype)       # blocks of size 1: 1
  s = 1
  while s < c:
    n = c // (2 * s)
    # The diagonal blocks of size 2s of a, [..., n, 2s, 2s]; their lower
    # left quarter couples the two blocks being joined.
    tiles = a.reshape(lead + (n, 2 * s, n, 2 * s))
    diag = jnp.einsum("...piqj,pq->...pij", tiles, jnp.eye(n, dtype=a.dtype),
                      precision=_HIGHEST)
    lower = diag[..., s:, :s]
    pairs = inv.reshape(lead + (n, 2, s, s))
    first, second = pairs[..., 0, :, :], pairs[..., 1, :, :]
    joined = -_dot("...ij,...jk,...kl->...il", second, lower, first)
    top = jnp.concatenate([first, jnp.zeros_like(first)], axis=-1)
    bottom = jnp.concatenate([joined, second], axis=-1)
    inv = jnp.concatenate([top, bottom], axis=-2)  # [..., n, 2s, 2s]
    s *= 2
  return inv.reshape(a.shape)


def _inverse_forward(a):
  x = unit_lower_inverse(a)
  return x, x


def _inverse_backward(x, g):
  strict = jnp.tril(jnp.ones(x.shape[-2:], bool), -1)
  xt = jnp.swapaxes(x, -1, -2)
  return (jnp.where(strict, -_dot("...ij,...jk,...kl->...il", xt, g, xt), 0.0),)


unit_lower_inverse.defvjp(_inverse_forward, _inverse_backward)


def chunked(q, k, v, beta, g, state=None, chunk_size: int = 64):
  """The gated delta rule over T tokens in chunks.

  Args:
    q, k: fp32 [B, T, H, dk] (normalised, q scaled; see `prepare`).
    v: fp32 [B, T, H, dv].
    beta, g: fp32 [B, T, H].
    state: fp32 [B, H, dk, dv] at the start, or None (zeros).
    chunk_size: tokens per chunk.

  Returns:
    (outputs fp32 [B, T, H, dv], final state fp32 [B, H, dk, dv]).
  """
  b, t, h, dk = k.shape
  dv = v.shape[-1]
  c = chunk_size
  pad = -t % c
  n = (t + pad) // c
  if state is None:
    state = jnp.zeros((b, h, dk, dv), jnp.float32)

  def chunks(x):  # [B, T, H, ...] -> [B, H, N, C, ...], zero-padded
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    x = jnp.moveaxis(x, 2, 1)
    return x.reshape(b, h, n, c, *x.shape[3:])

  q, k, v, beta, g = map(chunks, (q, k, v, beta, g))
  cum = jnp.cumsum(g, axis=-1)                               # [B, H, N, C]
  lower = jnp.tril(jnp.ones((c, c), bool))
  # exp only where j <= i: above the diagonal the difference is positive and
  # could overflow.
  decay = jnp.exp(jnp.where(lower, cum[..., :, None] - cum[..., None, :],
                            -jnp.inf))                       # [B, H, N, C, C]
  k_beta = k * beta[..., None]
  strict = jnp.tril(jnp.ones((c, c), bool), -1)
  inverse = unit_lower_inverse(jnp.where(
      strict, _dot("bhnid,bhnjd->bhnij", k_beta, k) * decay, 0.0))
  u = _dot("bhnij,bhnjd->bhnid", inverse, v * beta[..., None])   # [.., C, dv]
  p = _dot("bhnij,bhnjd->bhnid", inverse,
           k_beta * jnp.exp(cum)[..., None])                     # [.., C, dk]
  scores = _dot("bhnid,bhnjd->bhnij", q, k) * decay
  q_decayed = q * jnp.exp(cum)[..., None]
  k_decayed = k * jnp.exp(cum[..., -1:] - cum)[..., None]
  chunk_decay = jnp.exp(cum[..., -1])                        # [B, H, N]

  def step(s, xs):
    u_n, p_n, scores_n, q_n, k_n, decay_n = xs
    new_v = u_n - _dot("bhcd,bhde->bhce", p_n, s)
    out = _dot("bhcd,bhde->bhce", q_n, s) + _dot("bhij,bhje->bhie",
                                                  scores_n, new_v)
    s = s * decay_n[..., None, None] + _dot("bhcd,bhce->bhde", k_n, new_v)
    return s, out

  by_chunk = lambda x: jnp.moveaxis(x, 2, 0)
  state, out = jax.lax.scan(step, state.astype(jnp.float32), tuple(map(
      by_chunk, (u, p, scores, q_decayed, k_decayed, chunk_decay))))
  out = jnp.moveaxis(out, 0, 2).reshape(b, h, n * c, dv)[:, :, :t]
  return jnp.moveaxis(out, 1, 2), state


def step(q, k, v, beta, g, state):
  """One token of the gated delta rule (decode).

  q, k [B, H, dk], v [B, H, dv], beta, g [B, H] (fp32, as `prepare` makes
  them, without the T axis); state fp32 [B, H, dk, dv]. Returns (output fp32
  [B, H, dv], the new state).
  """
  state = state * jnp.exp(g)[..., None, None]
  predicted = _dot("bhkv,bhk->bhv", state, k)
  delta = (v - predicted) * beta[..., None]
  state = state + k[..., :, None] * delta[..., None, :]
  return _dot("bhkv,bhk->bhv", state, q), state


def recurrent(q, k, v, beta, g, state=None):
  """`step` over every token (a `lax.scan`): the reference the chunked form
  is tested against, and the semantics of decode. Same arguments and
  results as `chunked`."""
  b, _, h, dk = k.shape
  if state is None:
    state = jnp.zeros((b, h, dk, v.shape[-1]), jnp.float32)
  time_major = lambda x: jnp.moveaxis(x, 1, 0)

  def one(s, xs):
    out, s = step(*xs, s)
    return s, out

  state, out = jax.lax.scan(one, state, tuple(map(time_major,
                                                  (q, k, v, beta, g))))
  return jnp.moveaxis(out, 0, 1), state


def causal_conv(x, weight, window):
  """Causal depthwise conv over time, then SiLU.

  Args:
    x: [B, T, ...channels] this call's inputs (padding rows already zero).
    weight: [K, ...channels]; tap K-1 multiplies the current token (torch's
      cross-correlation, `conv1d.weight[c, 0, i]` -> weight[i, c]).
    window: [B, K-1, ...channels], the inputs before x (zeros at a sequence
      start; a cache's window when continuing).

  Returns:
    (silu(conv) in x's dtype [B, T, ...], the new window: the last K-1
    inputs of window + x).
  """
  taps = weight.shape[0]
  t = x.shape[1]
  full = jnp.concatenate([window.astype(x.dtype), x], axis=1)
  w = weight.astype(jnp.float32)
  y = sum(full[:, i:i + t].astype(jnp.float32) * w[i] for i in range(taps))
  return jax.nn.silu(y.astype(x.dtype)), full[:, t:]
