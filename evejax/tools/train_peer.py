"""`bench_train --compare tunix` and `--ceiling`: the GRPO step against its peer and its bound.

The peer is google-tunix's GRPO actor step: `tunix.rl.algo_core.grpo_loss_fn`
through its RL trainer's compiled train step (`tunix.rl.trainer.Trainer`, set
up as `GRPOLearner` sets it up), with its reference pass
(`common.compute_per_token_logps`) when there is a KL term. tunix is
installed in the benchmark's environment only (`pip install google-tunix`),
never an evejax dependency.

Both get bit-identical random weights of a Qwen2-shaped text model (the
sampler benchmark's shape flags), the same rollout batch (`--prompts` prompts
of `--prompt_len` tokens, `--group` completions of up to `--completion_len`
tokens each, built by `rollouts.train_batch` as the recipes build it; tunix
gets the same tokens as its left-aligned prompt and right-padded completion),
the same old log-probs (one on-policy scoring pass) and advantages, PPO clip
0.2, dual clip 3, token-mean, KL low_var_kl, and the same optax AdamW
(`evejax.rl.optim.make_optimizer`). The loss and gradient norm of two steps
are printed first, then alternating timed rounds (a step ends when its loss
is on the host), the ratio of median step times and the median of the rounds' ratios.

--ceiling times the step's matmuls alone: every text weight's forward and
backward matmuls (x W, dy W^T, x^T dy) at the step's rows, chained through a
hidden state, the lm head over the completion window only; no attention,
norms or softmax. No step with XLA's matmul kernels on these weights beats it.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from evejax.models import vlm
from evejax.processing import batching
from evejax.rl import learner as learner_lib
from evejax.rl import optim
from evejax.rl import rollouts
from evejax.tools import bench_sampler

PAD = 0


def bench_model(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int,
                vocab: int):
  """The sampler benchmark's Qwen2-shaped text model (41M at its defaults), fp32."""
  return bench_sampler.bench_config(argparse.Namespace(
      hidden=hidden, intermediate=intermediate, layers=layers, heads=heads,
      kv_heads=kv_heads, vocab=vocab, base_preset="tiny", dtype="float32"))


def rollout(config, prompts: int, group: int, prompt_len: int, completion_len: int,
            seed: int = 0):
  """(prompt ids [R, P], completion ids [R, C] padded with PAD, rewards [R]), group-major."""
  rng = np.random.default_rng(seed)
  low = 8   # ids below 8 are the tiny layout's special tokens
  ids = rng.integers(low, config.text.vocab_size, (prompts, prompt_len)).astype(np.int32)
  rows = prompts * group
  lengths = rng.integers(completion_len * 3 // 4, completion_len + 1, rows)
  completions = np.zeros((rows, completion_len), np.int32)
  for i, n in enumerate(lengths):
    completions[i, :n] = rng.integers(low, config.text.vocab_size, n)
  return np.repeat(ids, group, axis=0), completions, rng.random(rows).astype(np.float32)


def train_config(kl_coef: float, lr: float = 1e-5):
  cfg = learner_lib.default_train_config()
  cfg.update_from_flattened_dict({
      "loss.kl_coef": kl_coef, "loss.kl_estimator": "low_var_kl", "loss.dual_clip": 3.0,
      "loss.agg": "token-mean", "optimizer.lr": lr})
  return cfg


def evejax_batch(learner, prompt_ids, completions, advantages, old_logp=None):
  """The TrainBatch the recipes would build from these rows (`rollouts.train_batch`)."""
  prompts = [batching.Example(tokens=p) for p in prompt_ids]
  comps = [c[c != PAD] for c in completions]
  length = prompt_ids.shape[1] + completions.shape[1]
  return rollouts.train_batch(
      prompts, comps, model_config=learner.model_config, pad_id=PAD,
      length_buckets=(length,), patch_buckets=(0,), row_multiple=learner.row_multiple,
      sampler_logp=old_logp, advantages=advantages)


# ----------------------------------------------------------------------------
# The peer.


def tunix_model(config, params):
  """tunix's Qwen2 with evejax's (scanned) text params copied in."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from tunix.models.qwen2 import model as qwen2  # pylint: disable=g-import-not-at-top

  t = config.text
  model = qwen2.Qwen2(qwen2.ModelConfig(
      num_layers=t.num_layers, vocab_size=t.vocab_size, embed_dim=t.hidden_size,
      hidden_dim=t.intermediate_size, num_heads=t.num_heads, head_dim=t.head_dim,
      num_kv_heads=t.num_kv_heads, rope_theta=int(t.rope_theta), norm_eps=t.rms_norm_eps,
      use_tied_embedding=t.tie_word_embeddings), rngs=nnx.Rngs(0))
  p = jax.device_get(params["text"])
  model.embedder.input_embedding.value = jnp.asarray(p["embed"]["embedding"])
  model.final_norm.w.value = jnp.asarray(p["norm"]["scale"])
  model.lm_head.w.value = jnp.asarray(p["lm_head"]["kernel"])
  for i, layer in enumerate(model.layers):
    w = jax.tree.map(lambda x, i=i: jnp.asarray(x[i]), p["layers"])
    layer.input_layernorm.w.value = w["input_norm"]["scale"]
    layer.post_attention_layernorm.w.value = w["post_attn_norm"]["scale"]
    for name in "qkv":
      getattr(layer.attn, f"{name}_proj").w.value = w[name]["kernel"]
      getattr(layer.attn, f"{name}_bias").value = w[name]["bias"].reshape(-1)
    layer.attn.o_proj.w.value = w["o"]["kernel"]
    for name in ("gate", "up", "down"):
      getattr(layer.mlp, f"{name}_proj").kernel.value = w["mlp"][name]["kernel"]
  return model


class TunixStep:
  """tunix's GRPO actor step (and reference pass) on one model, as GRPOLearner drives it."""

  def __init__(self, config, params, cfg, group: int):
    from flax import nnx  # pylint: disable=g-import-not-at-top
    from tunix.rl import algo_core  # pylint: disable=g-import-not-at-top
    from tunix.rl import common  # pylint: disable=g-import-not-at-top
    from tunix.rl import trainer as rl_trainer  # pylint: disable=g-import-not-at-top
    from tunix.rl.grpo import grpo_learner  # pylint: disable=g-import-not-at-top
    from tunix.sft import peft_trainer  # pylint: disable=g-import-not-at-top

    self._common, self._example = common, grpo_learner.TrainExample
    self.kl = cfg.loss.kl_coef
    algo = grpo_learner.GRPOConfig(
        num_generations=group, beta=self.kl, kl_loss_mode="low_var_kl",
        epsilon=cfg.loss.clip_low, loss_agg_mode="token-mean")
    algo.epsilon_high = cfg.loss.clip_high
    algo.epsilon_c = cfg.loss.dual_clip
    algo.temperature = 1.0
    self.trainer = rl_trainer.Trainer(
        tunix_model(config, params), optim.make_optimizer(cfg),
        peft_trainer.TrainingConfig(eval_every_n_steps=1_000_000),
        custom_checkpoint_metadata_fn=dict)
    self.trainer.with_loss_fn(
        lambda model, train_example, algo_config: algo_core.grpo_loss_fn(
            model, train_example, algo_config=algo_config, pad_id=PAD, eos_id=-1),
        has_aux=True)
    self.trainer.with_gen_model_input_fn(
        lambda x: {"train_example": x, "algo_config": algo})
    self._train_step, _ = self.trainer.jit_train_and_eval_step()
    # The reference: the initial weights, a separate model as tunix keeps it.
    self._ref = nnx.split(tunix_model(config, params))

  def __call__(self, prompt_ids, completions, advantages, old_logp):
    """One step; returns (loss, grad norm) on the host."""
    ref = None
    if self.kl > 0:
      ref = self._common.compute_per_token_logps(
          *self._ref, prompt_tokens=prompt_ids, completion_tokens=completions,
          pad_id=PAD, eos_id=-1, stop_gradient=True)
    mask = (completions != PAD).astype(np.float32)
    example = self._example(
        prompt_ids=prompt_ids, prompt_mask=np.ones_like(prompt_ids), completion_ids=completions,
        completion_mask=mask, advantages=advantages, ref_per_token_logps=ref,
        old_per_token_logps=old_logp)
    loss, _, grad_norm = self._train_step(example)
    return float(loss), float(grad_norm)


# ----------------------------------------------------------------------------
# The ceiling.


def matmul_ceiling(config, params, rows: int, length: int, window: int, repeats: int = 3
                   ) -> float:
  """Seconds of the step's matmuls alone: forward and backward of every text weight."""
  text = params["text"]
  layers = text["layers"]
  n = rows * length
  h0 = jnp.ones((n, config.text.hidden_size), jnp.float32)

  def loss(weights, h):
    layers, head = weights
    for i in range(config.text.num_layers):
      w = jax.tree.map(lambda x, i=i: x[i], layers)
      q, k, v = (jnp.einsum("nd,dhk->nhk", h, w[x]["kernel"]) for x in "qkv")
      h = h + jnp.einsum("nhk,hkd->nd", q, w["o"]["kernel"])
      h = h + 1e-6 * (k.mean() + v.mean())
      mlp = w["mlp"]
      h = h + ((h @ mlp["gate"]["kernel"]) * (h @ mlp["up"]["kernel"])) @ mlp["down"]["kernel"]
    h = h.reshape(rows, length, -1)[:, :window].reshape(rows * window, -1)
    return (h @ head).mean()

  weights = ({k: layers[k] for k in ("q", "k", "v", "o", "mlp")}, text["lm_head"]["kernel"])
  grad = jax.jit(jax.grad(loss))
  jax.block_until_ready(grad(weights, h0))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(grad(weights, h0))
    times.append(time.perf_counter() - start)
  return min(times)


# ----------------------------------------------------------------------------


def step_memory(config, *, prompts: int, group: int, prompt_len: int, completion_len: int,
                overrides: dict) -> None:
  """The compiled step's temporaries (XLA:CPU's buffer assignment), nothing run."""
  params = jax.eval_shape(lambda: vlm.init_params(config, jax.random.PRNGKey(0)))
  cfg = train_config(0.0)
  cfg.update_from_flattened_dict(overrides)
  learner = learner_lib.Learner(config, cfg, params)
  prompt_ids, completions, _ = rollout(config, prompts, group, prompt_len, completion_len)
  batch = evejax_batch(learner, prompt_ids, completions, np.zeros(len(prompt_ids), np.float32))
  window = learner_lib.window_size(batch.loss_mask) if cfg.completion_window else 0
  mem = learner.lower_step("grpo", batch, window=window).compile().memory_analysis()
  print(f"vocab {config.text.vocab_size}, {len(prompt_ids)} rows x "
        f"{prompt_len + completion_len} tokens, {overrides or 'defaults'}: step temporaries "
        f"{mem.temp_size_in_bytes / 2**30:.2f} GiB, arguments "
        f"{mem.argument_size_in_bytes / 2**30:.2f} GiB")


def compare(config, *, prompts: int, group: int, prompt_len: int, completion_len: int,
            kl_coef: float, rounds: int, ceiling: bool, overrides: dict) -> None:
  params = jax.jit(vlm.init_params, static_argnums=0)(config, jax.random.PRNGKey(0))
  n = sum(x.size for x in jax.tree.leaves(params["text"]))
  cfg = train_config(kl_coef)
  cfg.update_from_flattened_dict(overrides)
  learner = learner_lib.Learner(config, cfg, params)
  prompt_ids, completions, rewards = rollout(config, prompts, group, prompt_len,
                                             completion_len)
  fields, _ = learner.batch_fields(rewards, group)
  advantages = fields["advantages"]
  # Old log-probs: the policy's own (one scoring pass), as a sampler returns them.
  batch = evejax_batch(learner, prompt_ids, completions, advantages)
  scored = np.asarray(learner.score(learner.params, batch))
  p = prompt_len - 1
  old = scored[:, p:p + completion_len] * (completions != PAD)
  batch = evejax_batch(learner, prompt_ids, completions, advantages,
                       old_logp=[o[c != PAD] for o, c in zip(old, completions)])
  peer = TunixStep(config, params, cfg, group)
  rows, length = prompt_ids.shape[0], prompt_len + completion_len
  print(f"model: {n / 1e6:.1f}M text params, vocab {config.text.vocab_size}, "
        f"{config.text.num_layers} layers, fp32; {prompts} prompts x {group} = {rows} rows "
        f"of {prompt_len} + up to {completion_len} tokens; kl_coef={kl_coef}; evejax "
        f"{overrides or 'defaults'}; jax {jax.__version__} on "
        f"{jax.devices()[0].device_kind}", flush=True)

  def run_evejax():
    m = learner.step("grpo", batch)
    return m["loss"], m["grad_norm"]

  def run_tunix():
    return peer(prompt_ids, completions, advantages, old)

  for step in range(2):   # the first compiles
    (a_loss, a_norm), (b_loss, b_norm) = run_evejax(), run_tunix()
    print(f"step {step}: loss evejax {a_loss:.7g} tunix {b_loss:.7g} (rel diff "
          f"{abs(a_loss - b_loss) / max(abs(b_loss), 1e-12):.2g}); grad norm evejax "
          f"{a_norm:.7g} tunix {b_norm:.7g}", flush=True)
  times = {"evejax": [], "tunix": []}
  for _ in range(rounds):
    for name, fn in (("evejax", run_evejax), ("tunix", run_tunix)):
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  ej, tx = statistics.median(times["evejax"]), statistics.median(times["tunix"])
  print(f"evejax step: {ej * 1e3:.0f} ms, tunix step: {tx * 1e3:.0f} ms (medians of "
        f"{rounds} alternating rounds: evejax {[round(t * 1e3) for t in times['evejax']]}, "
        f"tunix {[round(t * 1e3) for t in times['tunix']]})")
  # Each round's pair ran back to back, so its ratio is the one a load that
  # changes between rounds (a shared machine) disturbs least.
  paired = statistics.median(t / e for e, t in zip(times["evejax"], times["tunix"]))
  print(f"ratio evejax / tunix: {tx / ej:.2f}x (of medians); {paired:.2f}x (median of "
        f"the rounds' ratios)")
  if ceiling:
    window = learner_lib.window_size(batch.loss_mask) or length
    dots = matmul_ceiling(config, learner.params, rows, length, window)
    print(f"matmuls alone (forward + backward of every text weight, lm head over "
          f"{window} positions): {dots * 1e3:.0f} ms; evejax runs at "
          f"{dots / ej:.0%} of that bound, tunix at {dots / tx:.0%}")
