"""The gated delta rule and the causal conv of Qwen3.5's DeltaNet layers.

The chunked form (scoring, training, prefill) equals the one-token form
(decode) on outputs and final state, over lengths that are and are not
multiples of the chunk, from zero and from a cached state; both equal
transformers' torch reference kernels; the conv equals torch's depthwise
conv1d and continues across calls through its window.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl.testing import absltest  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from evejax.models.qwen3_5 import delta_rule  # noqa: E402

B, HK, R, DK, DV = 2, 2, 3, 16, 24   # 3 value heads per key head, dk != dv
HV = HK * R
_chunked = jax.jit(delta_rule.chunked, static_argnames="chunk_size")
_recurrent = jax.jit(delta_rule.recurrent)


def _inputs(t: int, seed: int = 0, strong_decay: bool = False):
  rng = np.random.default_rng(seed)
  f32 = lambda *s: rng.standard_normal(s).astype(np.float32)
  g = -np.exp(f32(B, t, HV) + (2.0 if strong_decay else 0.0))
  return dict(q=f32(B, t, HK, DK), k=f32(B, t, HK, DK), v=f32(B, t, HV, DV),
              beta=1 / (1 + np.exp(-f32(B, t, HV))), g=g.astype(np.float32))


def _prepared(x):
  return delta_rule.prepare(*(jnp.asarray(x[n]) for n in
                              ("q", "k", "v", "beta", "g")), R)


class DeltaRuleTest(absltest.TestCase):

  def test_chunked_equals_recurrent(self):
    state = jnp.asarray(np.random.default_rng(9).standard_normal(
        (B, HV, DK, DV)), jnp.float32)
    # One token; a whole chunk from zeros; two chunks and a part.
    for t, s0 in ((1, state), (16, None), (37, state)):
      with self.subTest(t=t):
        args = _prepared(_inputs(t, seed=t))
        o_c, s_c = _chunked(*args, s0, chunk_size=16)
        o_r, s_r = _recurrent(*args, s0)
        np.testing.assert_allclose(o_c, o_r, atol=1e-5, rtol=0)
        np.testing.assert_allclose(s_c, s_r, atol=1e-5, rtol=0)
    self.assertGreater(float(jnp.abs(o_r).max()), 0.3)

  def test_strong_decay_stays_finite_and_equal(self):
    # g down to about -50: exp of the masked upper triangle would overflow.
    args = _prepared(_inputs(40, seed=1, strong_decay=True))
    o_c, s_c = _chunked(*args, None, chunk_size=16)
    o_r, s_r = _recurrent(*args, None)
    self.assertTrue(np.isfinite(np.asarray(o_c)).all())
    np.testing.assert_allclose(o_c, o_r, atol=1e-5, rtol=0)
    np.testing.assert_allclose(s_c, s_r, atol=1e-5, rtol=0)

  def test_equals_transformers_kernels(self):
    from transformers.models.qwen3_5 import modeling_qwen3_5 as hf  # pylint: disable=g-import-not-at-top
    x = _inputs(150, seed=2)  # 3 chunks of 64, the last partial
    s0 = np.random.default_rng(3).standard_normal(
        (B, HV, DK, DV)).astype(np.float32)
    t = torch.from_numpy
    ref_o, ref_s = hf.torch_chunk_gated_delta_rule(
        t(x["q"]), t(x["k"]), t(x["v"]), g=t(x["g"]), beta=t(x["beta"]),
        initial_state=t(s0), output_final_state=True,
        use_qk_l2norm_in_kernel=True)
    o, s = _chunked(*_prepared(x), jnp.asarray(s0), chunk_size=64)
    np.testing.assert_allclose(o, ref_o.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(s, ref_s.numpy(), atol=1e-5, rtol=0)

  def test_causal_conv_matches_torch_and_continues(self):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((B, 9, 3, 5)).astype(np.float32)
    w = rng.standard_normal((4, 3, 5)).astype(np.float32)
    # torch: channels-first depthwise conv1d, K-1 zeros on the left.
    xt = torch.from_numpy(x.reshape(B, 9, 15)).transpose(1, 2)
    wt = torch.from_numpy(w.reshape(4, 15).T.copy())[:, None, :]
    ref = torch.nn.functional.silu(torch.nn.functional.conv1d(
        xt, wt, padding=3, groups=15)[:, :, :9]).transpose(1, 2).numpy()
    zeros = jnp.zeros((B, 3, 3, 5))
    y, window = delta_rule.causal_conv(jnp.asarray(x), jnp.asarray(w), zeros)
    np.testing.assert_allclose(np.asarray(y).reshape(B, 9, 15), ref,
                               atol=1e-6, rtol=0)
    np.testing.assert_array_equal(window, x[:, -3:])
    # 6 tokens, then 3 more from the window: the same outputs.
    y1, w1 = delta_rule.causal_conv(jnp.asarray(x[:, :6]), jnp.asarray(w), zeros)
    y2, _ = delta_rule.causal_conv(jnp.asarray(x[:, 6:]), jnp.asarray(w), w1)
    np.testing.assert_allclose(jnp.concatenate([y1, y2], 1), y, atol=1e-6)


if __name__ == "__main__":
  absltest.main()
