"""The learner: one policy's train state and the compiled steps of its algorithms.

    learner = Learner(model_config, config.train, params, mesh=mesh)
    fields, host_metrics = learner.batch_fields(rewards, group)   # e.g. advantages
    metrics = learner.step("grpo", TrainBatch(inputs, targets, loss_mask,
                                              old_logp=..., **fields), temperature=T)
    metrics = learner.step("sft", TrainBatch(inputs, targets, loss_mask))
    sampler.generate(learner.params, ...)

The learner hosts algorithms (`evejax.rl.algorithms`: SFT, GRPO, REINFORCE,
or one named by import path) and owns what they share; `config.train.algorithm`
picks the RL one, whose extra state (if any) lives in the train state.

One step = micro-batches accumulated exactly, one optax update, skipped if the
loss or any gradient is non-finite. Exactness: every loss is a numerator over
the whole batch divided by a denominator that depends only on the masks
(`evejax.rl.losses.aggregate_terms`). The denominators are taken from the full
batch before the micro-batch loop and each micro-batch contributes
numerator / full denominator, so the summed gradients are those of one big
batch, not a mean of means. Micro-batch j takes rows j, j+k, j+2k, ..., which
keeps every micro-batch spread over the same devices as the batch.

Log-probs come from one scoring path (`token_logprobs`) shared by the policy
pass, the old/ref passes and tests: log-softmax in fp32 of logits / T, T the
temperature the role samples at (the sampler's "policy" log-prob convention,
so the importance ratio starts at 1), optionally over sequence chunks so
[batch, length, vocab] logits never exist at once. A step unembeds only each
row's completion window (`completion_window`): the lm head and the
[.., vocab] log-softmax, which are a quarter of a 41M model's step at a 16K
vocabulary, skip the prompt; the log-prob and entropy share one fused
gradient (`losses.token_logp_entropy`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

from absl import logging
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from evejax import distributed
from evejax import parallel
from evejax.models import decoder
from evejax.models import lora as lora_lib
from evejax.models import vlm
from evejax.models.inputs import ModelInputs
from evejax.models.presets import ModelConfig
from evejax.rl import algorithms as algorithms_lib
from evejax.rl import losses
from evejax.rl import optim

PyTree = Any


@flax.struct.dataclass
class TrainBatch:
  """One training batch; every array has a batch axis B (`ModelInputs.batch_axes`).

  Optional fields are None when a step does not use them; the structure is
  part of the compiled step, so keep it fixed within a run. Rows whose
  loss_mask is all zero are padding and count in no denominator.
  """
  inputs: ModelInputs            # right-padded prompt + completion
  targets: jax.Array             # int32 [B, T]; the next token at each position
  loss_mask: jax.Array           # f32 [B, T]; 1 where targets are completion tokens
  old_logp: jax.Array | None = None      # f32 [B, T]; None = on-policy (ratio 1)
  advantages: jax.Array | None = None    # f32 [B] (or [B, T])
  ref_logp: jax.Array | None = None      # f32 [B, T]; filled by the learner if kl_coef > 0
  rewards: jax.Array | None = None       # f32 [B]; REINFORCE

  @property
  def batch_size(self) -> int:
    return self.targets.shape[0]


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs from the learner (a checkpointable pytree)."""
  params: PyTree
  opt_state: PyTree               # over trainable params only
  step: jax.Array                 # int32; train steps taken, skipped ones included
  rng: jax.Array                  # uint32 [2]; advanced every step
  nonfinite_in_a_row: jax.Array   # int32
  nonfinite_total: jax.Array      # int32
  algorithm_state: PyTree = None  # the RL algorithm's extra state (None: it has none)


def default_train_config() -> ml_collections.ConfigDict:
  """The learner's defaults: GRPO with PPO clipping and a small KL term, and its knobs.

  Recipes set their papers' values in their configs (configs/*.py).

  An algorithm that reads its own block (REINFORCE: `reinforce`) adds it with
  its defaults when `algorithm` names it (`merge_config`).
  """
  return ml_collections.ConfigDict(dict(
      algorithm="grpo",           # evejax.rl.algorithms name, or "pkg.module:Class"
      optimizer=dict(
          name="adamw", lr=1e-6, schedule="constant", warmup_steps=0,
          total_steps=0,          # cosine / linear schedules decay over this many steps
          end_lr_factor=0.0,
          b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, grad_clip=1.0,
          mu_dtype=""),           # "" = the params' dtype
      loss=dict(
          policy="ppo_clip", clip_low=0.2, clip_high=0.2,
          dual_clip=3.0,          # 0 = off
          agg="token-mean",
          norm_constant=0.0,      # seq-mean-token-sum-norm divisor; 0 = length T
          kl_coef=1e-3, kl_estimator="low_var_kl", entropy_coef=0.0,
          advantage="grpo",       # group estimator: grpo | dr_grpo (evejax.rl.advantages)
          adv_eps=1e-6),
      # LoRA (evejax.models.lora): rank 0 trains every (unfrozen) weight; > 0
      # trains adapters on the `targets` kernels over a frozen backbone, which
      # is then also the KL reference (the adapters truly off).
      lora=dict(rank=0, alpha=32.0, dropout=0.0, targets=(lora_lib.TEXT_PROJECTIONS,),
                use_rslora=False),
      micro_batches=1,
      grad_accum_dtype="float32",  # gradient sum over micro-batches (> 1 only)
      # Regexes (re.search) on '/'-joined parameter paths, e.g. "^vision/";
      # frozen params get no gradient and no optimizer state.
      freeze=(),
      ref_on_host=False,          # keep reference params in host RAM between uses
      logprob_chunk=0,            # >0: unembed + log-softmax this many positions at a time
      # Steps unembed only each row's window of positions that hold its loss
      # (the batch's longest, rounded up to a 1/16 of the length): no logits
      # for the prompt. Positions outside it score 0.
      completion_window=True,
      # Run the step's decoder layers unrolled, sliced from the stacked params
      # (LoRA steps stay scanned). None: on CPU, where XLA's loop cost a 41M
      # model's GRPO step 20% (zero-filled stacked residuals, weight and
      # gradient copies per layer); scanned on accelerators, where a 28-80
      # layer model then compiles one layer body.
      unroll_layers=None,
      max_nonfinite_in_a_row=5,
  ))


def merge_config(cfg) -> ml_collections.ConfigDict:
  """Defaults overlaid with `cfg`; unknown keys are typos and fail loudly."""
  out = default_train_config()
  name = (cfg or {}).get("algorithm", out.algorithm)
  # An algorithm's own block exists where that algorithm is chosen, or where a
  # config names it to switch between algorithms by another key: its keys are
  # checked against the algorithm's defaults either way.
  for block_name in {algorithms_lib.get(name).config_block} | set((cfg or {}).keys()):
    algorithm = algorithms_lib.by_config_block(block_name)
    if algorithm is not None and algorithm.default_config() is not None and block_name not in out:
      out[block_name] = algorithm.default_config()

  def walk(dst, src, prefix):
    for k, v in src.items():
      if k not in dst:
        raise ValueError(
            f"unknown learner config key {prefix}{k}; valid keys there: "
            f"{sorted(dst.keys())}")
      if isinstance(dst[k], ml_collections.ConfigDict):
        walk(dst[k], v, f"{prefix}{k}.")
      else:
        dst[k] = v

  walk(out, cfg or {}, "config.train.")
  return out


# ----------------------------------------------------------------------------
# Scoring: per-token log-probs through the model, chunked over the sequence.


def chunked_over_length(fn: Callable, chunk: int, *arrays):
  """fn(*chunks) over sequence chunks of [B, T, ...] arrays; [B, c] outputs joined to [B, T].

  Each chunk is rematerialised in the backward pass, so only one chunk's
  [B, chunk, V] logits are alive at a time, forward or backward.
  """
  t = arrays[0].shape[1]
  if not chunk or chunk >= t:
    return fn(*arrays)
  n = -(-t // chunk)
  pad = n * chunk - t

  def to_chunks(x):
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape((x.shape[0], n, chunk) + x.shape[2:]), 1, 0)

  out = jax.lax.map(lambda xs: jax.checkpoint(fn)(*xs), tuple(map(to_chunks, arrays)))
  return jax.tree.map(
      lambda y: jnp.moveaxis(y, 0, 1).reshape(y.shape[1], n * chunk)[:, :t], out)


def window_size(loss_mask: np.ndarray) -> int:
  """Positions a row's window needs (0: all): the longest span of loss positions
  in `loss_mask` [B, T], rounded up to a multiple of max(64, T / 16), so a
  length bucket compiles at most 16 step programs."""
  mask = np.asarray(loss_mask) > 0
  t = mask.shape[1]
  rows = mask.any(axis=1)
  span = 1
  if rows.any():
    first = mask.argmax(axis=1)
    last = t - 1 - mask[:, ::-1].argmax(axis=1)
    span = int((last - first + 1)[rows].max())
  if jax.process_count() > 1:
    span = max(distributed.allgather(span))
  quantum = max(64, t // 16)
  size = -(-span // quantum) * quantum
  return 0 if size >= t else size


def completion_window(loss_mask: jax.Array, size: int) -> jax.Array:
  """int32 [B]: where each row's window of `size` positions starts; it holds
  every loss position of the row if `size` >= its span, and ends by T."""
  first = jnp.argmax(loss_mask > 0, axis=1).astype(jnp.int32)
  return jnp.minimum(first, loss_mask.shape[1] - size)


def _take_window(x: jax.Array, start: jax.Array, size: int) -> jax.Array:
  """[B, T, ...] -> [B, size, ...]: row b's positions start[b] ... start[b] + size - 1."""
  return jax.vmap(lambda r, s: jax.lax.dynamic_slice_in_dim(r, s, size))(x, start)


def _put_window(y: jax.Array, start: jax.Array, length: int) -> jax.Array:
  """Inverse of `_take_window`: [B, size] -> [B, length], zeros outside the window."""
  zeros = jnp.zeros((length,), y.dtype)
  return jax.vmap(lambda r, s: jax.lax.dynamic_update_slice_in_dim(zeros, r, s, 0))(y, start)


def token_logprobs(params: PyTree, config: ModelConfig, inputs: ModelInputs,
                   targets: jax.Array, chunk_size: int = 0, *, temperature: float = 1.0,
                   with_entropy: bool = False, loss_mask: jax.Array | None = None,
                   window: int = 0):
  """log softmax(logits / T)[targets], f32 [B, T] (and the entropy [B, T]).

  Args:
    params: model params.
    config: model shapes.
    inputs: the full sequences (prompt + completion).
    targets: int [B, T], the token each position predicts.
    chunk_size: > 0 unembeds and log-softmaxes that many positions at a time.
    temperature: the sampling temperature the log-probs refer to.
    with_entropy: also return the per-position entropy.
    loss_mask: [B, T], where `window` > 0 scores.
    window: > 0 scores only each row's `window` positions from its first loss
      position (`completion_window`); 0 elsewhere.
  """
  return _Model(config).logprobs(params, inputs, targets, chunk_size, temperature,
                                 with_entropy, loss_mask=loss_mask, window=window)


@dataclasses.dataclass(frozen=True)
class _Model:
  """The model a learner differentiates: full params, or a LoRA adapter over a
  backbone (given per call: an argument of the compiled step, never a constant)."""
  config: ModelConfig
  lora: lora_lib.LoraConfig | None = None
  unroll: bool = False

  def hidden(self, params, inputs, backbone=None, rng=None):
    if self.lora is None:
      return vlm.hidden_states(self._layout(params), self.config, inputs)
    return lora_lib.apply(vlm.hidden_states, backbone, params, self.lora, self.config, inputs,
                          dropout_rng=rng)

  def _layout(self, params):
    """`params` with the stacked layers split into layers_0, ... when unrolling."""
    text = params["text"]
    if not self.unroll or "layers" not in text:
      return params
    n = jax.tree.leaves(text["layers"])[0].shape[0]
    take = lambda stacked, i: jax.tree.map(lambda x: x[i], stacked)
    return {**params, "text": decoder.unstack_layers(text, n, take)}

  def unembed(self, params, h, backbone=None, rng=None):
    if self.lora is None:
      return vlm.unembed(params, self.config, h)
    return lora_lib.apply(vlm.unembed, backbone, params, self.lora, self.config, h,
                          dropout_rng=None if rng is None else jax.random.fold_in(rng, 1))

  def logprobs(self, params, inputs, targets, chunk_size, temperature, with_entropy=False,
               backbone=None, rng=None, loss_mask=None, window=0):
    h = self.hidden(params, inputs, backbone, rng)
    length = targets.shape[1]
    if window:
      start = completion_window(loss_mask, window)
      h, targets = _take_window(h, start, window), _take_window(targets, start, window)
    score = losses.token_logp_entropy if with_entropy else losses.token_logp
    fn = lambda hc, tc: score(self.unembed(params, hc, backbone, rng), tc, temperature)
    out = chunked_over_length(fn, chunk_size, h, targets)
    if window:
      out = jax.tree.map(lambda y: _put_window(y, start, length), out)
    return out


def targets_from_tokens(tokens: np.ndarray, completion_mask: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
  """(targets, loss_mask) from right-padded tokens and a per-token completion mask.

  Position t predicts token t+1, so both shift left by one; the last
  position predicts nothing.
  """
  tokens = np.asarray(tokens)
  targets = np.zeros_like(tokens, dtype=np.int32)
  targets[:, :-1] = tokens[:, 1:]
  loss_mask = np.zeros(tokens.shape, np.float32)
  loss_mask[:, :-1] = np.asarray(completion_mask)[:, 1:]
  return targets, loss_mask


# ----------------------------------------------------------------------------
# Helpers for trees and micro-batches.


def _cast_floats(tree: PyTree, dtype) -> PyTree:
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _global_rows(batch: TrainBatch) -> int:
  """Rows of the global batch: host leaves are one process's block of them."""
  t = batch.targets
  if isinstance(t, jax.Array) and not t.is_fully_addressable:
    return t.shape[0]
  return np.shape(t)[0] * jax.process_count()


def _batch_axes(batch: TrainBatch) -> TrainBatch:
  """Which axis of each leaf is the batch axis."""
  return jax.tree.map(lambda _: 0, batch).replace(inputs=ModelInputs.batch_axes())


def _split_micro(batch: TrainBatch, k: int) -> TrainBatch:
  """[.., B, ..] -> [k, .., B/k, ..]; micro-batch j holds rows j, j+k, j+2k, ..."""
  def split(x, a):
    x = x.reshape(x.shape[:a] + (x.shape[a] // k, k) + x.shape[a + 1:])
    return jnp.moveaxis(x, a + 1, 0)
  return jax.tree.map(split, batch, _batch_axes(batch))


def _unsplit_micro(x: jax.Array) -> jax.Array:
  """Inverse of `_split_micro` for a [k, B/k, ...] result."""
  return jnp.moveaxis(x, 0, 1).reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def _denominator(mask: jax.Array, agg: str, norm_constant) -> jax.Array:
  """The full batch's aggregation denominator (1 if empty, so the loss is 0)."""
  den = losses.aggregate_terms(jnp.zeros_like(mask, jnp.float32), mask, agg,
                               norm_constant)[1]
  return jnp.where(den > 0, den, 1.0)


def _finalize(sums: dict) -> dict:
  """'x_sum' -> token mean 'x'; '_max' kept; everything else is already a batch value."""
  per_token = {k: v for k, v in sums.items() if k.endswith(("_sum", "_max")) or
               k == "token_count"}
  out = {k: v for k, v in sums.items() if k not in per_token}
  out.update(losses.finalize_metrics(per_token))
  return out


class Learner:
  """Owns one policy's train state and its compiled steps.

  Args:
    model_config: the model's shapes.
    cfg: learner config (see `default_train_config`; e.g. `config.train`);
      missing keys take the defaults, unknown keys fail.
    params: initial policy params (cast to `param_dtype`, copied onto the
      mesh; the caller may drop its own copy). With `cfg.lora` they are the
      frozen backbone, placed once and held by reference (learners given the
      same placed params share them), and the learner trains a fresh adapter.
    param_dtype: float32 | bfloat16 (the model config's `param_dtype`).
    mesh: an `evejax.parallel.make_mesh` mesh; None = the default device.
      Params, optimizer state and batches get explicit shardings on it.
    rules: logical-axis rules (None = `evejax.parallel.LOGICAL_RULES`).
    ref_params: frozen reference policy for KL terms; None = a copy of the
      initial `params` when the algorithm needs a reference (with LoRA: the
      backbone itself, the adapters off).
    keep_reference: False keeps no reference at all (e.g. for a warm start's
      SFT learner, whose steps never read one).
    seed: seeds the state's rng.
    compiler_options: XLA options for every program the learner compiles
      (e.g. {"xla_backend_optimization_level": 0} for fast CPU tests).
  """

  def __init__(self, model_config: ModelConfig, cfg, params: PyTree, *,
               param_dtype: str = "float32",
               mesh: jax.sharding.Mesh | None = None, rules=None,
               ref_params: PyTree | None = None, keep_reference: bool = True,
               seed: int = 0, compiler_options: dict[str, Any] | None = None):
    self.model_config = model_config
    # Every program is traced with the mesh in context (splash attention's shard_map).
    self._jit = lambda fn, **kw: parallel.OnMesh(
        jax.jit(fn, compiler_options=compiler_options, **kw), self._mesh)
    self.cfg = c = merge_config(cfg)
    if c.micro_batches < 1:
      raise ValueError(f"config.train.micro_batches={c.micro_batches} must be >= 1.")
    self.algorithm = algorithms_lib.get(c.algorithm)(c)
    self._algorithms = {"sft": algorithms_lib.SFT(c), self.algorithm.name: self.algorithm}
    self._dtype = jnp.dtype(param_dtype)
    self._rules = parallel.make_rules(rules)
    self._mesh = mesh if mesh is not None else parallel.make_mesh(
        {"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    self._replicated = parallel.replicated(self._mesh)
    # Abstract params (ShapeDtypeStructs) give an abstract learner: its steps
    # can be lowered and compiled ahead of time (memory plans) but not run.
    self.abstract = any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params))
    self.lora = lora_lib.from_config(c.lora)
    unroll = _unroll(c.unroll_layers, self._mesh)
    self._model = _Model(model_config, self.lora, unroll)
    self._plain = _Model(model_config, unroll=unroll)   # reference and `score` passes
    axes = vlm.param_axes(model_config)
    self._backbone = self._backbone_shardings = None
    if self.lora is not None:
      if c.freeze:
        raise ValueError(f"config.train.freeze={tuple(c.freeze)} with config.train.lora: the "
                         "backbone is frozen and only adapters train; choose their kernels "
                         "with config.train.lora.targets instead.")
      self._backbone_shardings = parallel.shardings_for(axes, self._mesh, self._rules,
                                                        shapes_tree=params)
      self._backbone = self._place(params, self._backbone_shardings)
      shapes = jax.eval_shape(lambda: lora_lib.init_adapter(
          self.lora, model_config, jax.random.key(0), self._dtype))
      axes = lora_lib.adapter_axes(shapes, axes)
      params = shapes if self.abstract else jax.jit(
          lambda k: lora_lib.init_adapter(self.lora, model_config, k, self._dtype))(
              jax.random.key(seed + 1))
    self._param_shardings = parallel.shardings_for(axes, self._mesh, self._rules,
                                                   shapes_tree=params)
    self._mask = optim.trainable_mask(params, c.freeze)
    self._tx = optim.make_optimizer(c)
    params = self._put_params(params)
    self._state_shardings = self._make_state_shardings(params)
    if self.abstract:
      self._state = parallel.abstract_tree(
          jax.eval_shape(self._init_state, params, jax.random.PRNGKey(seed)),
          self._state_shardings)
    else:
      self._state = self._jit(self._init_state, out_shardings=self._state_shardings)(
          params, jax.random.PRNGKey(seed))
    self._ref = None
    if keep_reference and (ref_params is not None or self.algorithm.reference is not None):
      if self.lora is not None:
        self._ref = self._backbone
      else:
        self.set_ref_params(ref_params if ref_params is not None else params)
    self._steps: dict[Any, Callable] = {}
    self._score_fn = self._jit(self._score, static_argnums=(2, 3))
    self._score_policy_fn = self._jit(self._score_policy, static_argnums=2)

  # -- state -----------------------------------------------------------------

  def _init_state(self, params, rng) -> TrainState:
    trainable, _ = optim.split(params, self._mask)
    return TrainState(
        params=params, opt_state=self._tx.init(trainable),
        step=jnp.zeros((), jnp.int32), rng=rng,
        nonfinite_in_a_row=jnp.zeros((), jnp.int32),
        nonfinite_total=jnp.zeros((), jnp.int32),
        algorithm_state=self.algorithm.init_state())

  def _make_state_shardings(self, params) -> TrainState:
    abstract = jax.eval_shape(self._init_state, params, jax.random.PRNGKey(0))
    trainable_sh, _ = optim.split(self._param_shardings, self._mask)
    # Adam moments mirror the params they belong to; counts are replicated.
    opt_sh = optax.tree_map_params(
        self._tx, lambda _, s: s, abstract.opt_state, trainable_sh,
        transform_non_params=lambda _: self._replicated,
        is_leaf=lambda x: x is None)
    rep = self._replicated
    state_sh = jax.tree.map(lambda _: rep, abstract)
    return state_sh.replace(params=self._param_shardings, opt_state=opt_sh)

  @property
  def state(self) -> TrainState:
    return self._state

  @property
  def params(self) -> PyTree:
    """The params this learner trains, sharded on the mesh (with LoRA: the adapter)."""
    return self._state.params

  @property
  def sampler_weights(self) -> PyTree:
    """What a Sampler samples the current policy with (`sampler_weights_for`)."""
    return self.sampler_weights_for(self._state.params)

  def sampler_weights_for(self, params: PyTree) -> PyTree:
    """`params` (trained ones, e.g. a frozen copy) as a Sampler takes them: with
    LoRA {"backbone", "adapter"} for `lora.AdaptedModel`, else the params."""
    if self.lora is None:
      return params
    return {"backbone": self._backbone, "adapter": params}

  @property
  def backbone(self) -> PyTree | None:
    """The frozen backbone under the adapter (None without LoRA)."""
    return self._backbone

  def set_backbone(self, params: PyTree) -> None:
    """Puts the adapter on other backbone weights (e.g. ones a warm start trained)."""
    if self.lora is None:
      raise ValueError("set_backbone: this learner has no LoRA adapter (config.train.lora).")
    self._backbone = self._place(params, self._backbone_shardings)
    if self._ref is not None:
      self._ref = self._backbone

  @property
  def mesh(self) -> jax.sharding.Mesh:
    return self._mesh

  @property
  def param_shardings(self) -> PyTree:
    return self._param_shardings

  @property
  def step_count(self) -> int:
    """Train steps taken (skipped ones included)."""
    return int(self._state.step)

  @property
  def reference_params(self) -> PyTree | None:
    """The frozen reference policy (None when no algorithm of this learner uses one)."""
    return self._ref

  @property
  def owns_reference(self) -> bool:
    """Whether the reference is this learner's own copy (with LoRA it is the backbone)."""
    return self._ref is not None and self.lora is None

  def abstract_state(self) -> TrainState:
    """ShapeDtypeStructs with shardings: the template a checkpoint restores into."""
    return parallel.abstract_tree(self._state, self._state_shardings)

  def abstract_params(self) -> PyTree:
    return parallel.abstract_tree(self._state.params, self._param_shardings)

  def load_state(self, state: TrainState) -> None:
    """Replaces the whole train state (e.g. one restored from a checkpoint)."""
    if jax.tree.structure(state) != jax.tree.structure(self._state):
      raise ValueError(
          "load_state: the state's tree differs from this learner's (another "
          "model, freeze patterns, optimizer or algorithm?); restore into "
          "learner.abstract_state().")
    self._state = jax.device_put(state, self._state_shardings)

  def step_rng(self, tag: int = 0) -> jax.Array:
    """A key for this step's host-side randomness (e.g. sampling); same after resume."""
    return jax.random.fold_in(jax.random.fold_in(self._state.rng, self.step_count), tag)

  def set_ref_params(self, ref_params: PyTree) -> None:
    """Sets the frozen reference policy (kept in host RAM if cfg.ref_on_host)."""
    if self.lora is not None:
      raise ValueError("with config.train.lora the reference is the backbone; use "
                       "set_backbone().")
    if self.cfg.ref_on_host and jax.process_count() > 1:
      raise ValueError("config.train.ref_on_host keeps the reference in one process's RAM; "
                       "with several processes leave it False (the reference is sharded "
                       "over every process's devices).")
    ref = self._put_params(ref_params)
    self._ref = jax.device_get(ref) if self.cfg.ref_on_host and not self.abstract else ref

  def _ref_on_device(self) -> PyTree:
    if self._ref is None:
      raise ValueError(
          "this step needs reference params (a KL term) but the learner has none; "
          "pass ref_params=... to Learner or call set_ref_params().")
    if self.cfg.ref_on_host and not self.abstract:
      return jax.device_put(self._ref, self._param_shardings)
    return self._ref

  def _put_params(self, params: PyTree) -> PyTree:
    return self._place(params, self._param_shardings)

  def _place(self, params: PyTree, shardings: PyTree) -> PyTree:
    """`params` cast to the param dtype on `shardings` (already placed arrays are kept)."""
    if self.abstract:
      return jax.tree.map(
          lambda x, s: jax.ShapeDtypeStruct(
              x.shape, self._dtype if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype,
              sharding=s), params, shardings)
    return jax.device_put(_cast_floats(params, self._dtype), shardings)

  # -- batches ---------------------------------------------------------------

  def _batch_shardings(self, batch: TrainBatch) -> TrainBatch:
    return jax.tree.map(
        lambda x, a: parallel.batch_sharding(self._mesh, np.ndim(x), a, self._rules),
        batch, _batch_axes(batch))

  @property
  def row_multiple(self) -> int:
    """Batch sizes must be multiples of this: micro-batches x batch shards.

    With several processes, the global batch's (each process gives an equal share).
    """
    return self.cfg.micro_batches * parallel.batch_shards(self._mesh, self._rules)

  def _put_batch(self, batch: TrainBatch) -> TrainBatch:
    """The batch on the mesh; with several processes, from each one's block of rows.

    Host (numpy) leaves hold this process's rows, the same number on every
    process; leaves that are already global arrays (e.g. reference log-probs
    this learner scored) are kept.
    """
    k = self.cfg.micro_batches
    shards = self.row_multiple // k
    rows = _global_rows(batch)
    if rows % (k * shards):
      per = "" if jax.process_count() == 1 else (
          f" ({jax.process_count()} processes x {rows // jax.process_count()} rows each)")
      raise ValueError(
          f"batch size {rows}{per} must be a multiple of micro_batches ({k}) x "
          f"devices the batch is split over ({shards}) = {k * shards}; pad the batch "
          "with rows whose loss_mask is 0, or change config.train.micro_batches.")
    return distributed.put_local(batch, self._batch_shardings(batch), _batch_axes(batch))

  def _constrain(self, batch: TrainBatch) -> TrainBatch:
    return jax.lax.with_sharding_constraint(batch, self._batch_shardings(batch))

  # -- scoring ---------------------------------------------------------------

  def _score_with(self, model: _Model, params, batch: TrainBatch, temperature: float,
                  backbone=None, window: int = 0) -> jax.Array:
    def score(mb):
      mb = self._constrain(mb)
      return model.logprobs(params, mb.inputs, mb.targets, self.cfg.logprob_chunk,
                            temperature, backbone=backbone, loss_mask=mb.loss_mask,
                            window=window)
    return _unsplit_micro(jax.lax.map(score, _split_micro(batch, self.cfg.micro_batches)))

  def _score(self, params, batch: TrainBatch, temperature: float, window: int = 0
             ) -> jax.Array:
    return self._score_with(self._plain, params, batch, temperature,
                            window=window)

  def _score_policy(self, params, batch: TrainBatch, temperature: float, backbone) -> jax.Array:
    return self._score_with(self._model, params, batch, temperature, backbone)

  def score_policy(self, batch: TrainBatch, *, temperature: float = 1.0) -> jax.Array:
    """The current policy's log-probs [B, T] (adapter included, no dropout).

    A global array: with several processes, `distributed.local_rows` of it are
    this process's rows of `batch`.
    """
    return self._score_policy_fn(self._state.params, self._put_batch(_scoring_view(batch)),
                                 _check_temperature(temperature), self._backbone)

  def score(self, params: PyTree, batch: TrainBatch, *, temperature: float = 1.0
            ) -> jax.Array:
    """log softmax(logits / T)[targets] [B, T] f32 under `params`, through the
    training graph, micro-batch by micro-batch; for old and reference log-probs.
    """
    return self._score_fn(params, self._put_batch(_scoring_view(batch)),
                          _check_temperature(temperature))

  def fill_ref_logp(self, batch: TrainBatch, *, temperature: float = 1.0) -> TrainBatch:
    """`batch` with ref_logp from the reference policy (one extra forward pass),
    at the loss positions (0 outside the step's completion window)."""
    ref = self._score_fn(self._ref_on_device(), self._put_batch(_scoring_view(batch)),
                         _check_temperature(temperature), self._window(batch))
    return batch.replace(ref_logp=ref)

  def _window(self, batch: TrainBatch) -> int:
    """The step's completion window for `batch` (0: every position)."""
    mask = batch.loss_mask
    if (not self.cfg.completion_window or self.abstract
        or (isinstance(mask, jax.Array) and not mask.is_fully_addressable)):
      return 0
    return window_size(mask)

  # -- steps -----------------------------------------------------------------

  def batch_fields(self, rewards, group: int) -> tuple[dict, dict]:
    """The RL algorithm's TrainBatch fields for rewards (group-major), and host metrics."""
    return self.algorithm.batch_fields(np.asarray(rewards, np.float32), group)

  def _algorithm(self, name: str) -> algorithms_lib.Algorithm:
    if name not in self._algorithms:
      raise ValueError(
          f"this learner runs {sorted(self._algorithms)} (config.train.algorithm="
          f"{self.cfg.algorithm!r}); it has no {name!r} step.")
    return self._algorithms[name]

  def _step_batch(self, alg, batch: TrainBatch, temperature: float) -> TrainBatch:
    """The fields `alg` reads, and the reference log-probs it needs."""
    if alg.name == "sft":
      return _scoring_view(batch)
    missing = [f for f in alg.row_fields if getattr(batch, f) is None]
    if missing:
      raise ValueError(f"a {alg.name} step needs batch.{', batch.'.join(missing)} (one per "
                       "row); build them with learner.batch_fields(rewards, group).")
    if alg.reference == "logprobs":
      return (batch if batch.ref_logp is not None
              else self.fill_ref_logp(batch, temperature=temperature))
    return batch.replace(ref_logp=None)

  def step(self, name: str, batch: TrainBatch, *, temperature: float = 1.0
           ) -> dict[str, float]:
    """One update of algorithm `name` ("sft" or the RL one); returns host-float metrics.

    `temperature` is the one the rollouts were sampled at: log pi (and the
    reference's) are scored at it, so an on-policy ratio starts at 1; SFT fits
    its data at T=1 whatever it is. old_logp None means fully on-policy. The
    reference pass runs first when the algorithm scores the reference and the
    batch has no ref_logp.
    """
    alg = self._algorithm(name)
    temperature = _check_temperature(temperature)
    if self.abstract:
      raise ValueError("this Learner was built from abstract params (ShapeDtypeStructs): "
                       "it can lower_step() but not run steps; pass real params.")
    window = self._window(batch)
    batch = self._put_batch(self._step_batch(alg, batch, temperature))
    ref = self._ref_on_device() if alg.reference == "params" else None
    program = self._program(alg, batch, ref is not None, temperature, window)
    self._state, metrics = program(self._state, batch, ref, self._backbone)
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    self._check_nonfinite(metrics)
    return metrics

  def _program(self, alg, batch: TrainBatch, with_ref: bool, temperature: float,
               window: int = 0):
    """The jit-compiled step of `alg` for batches shaped like `batch` (cached)."""
    key = (alg.name, jax.tree.structure(batch), with_ref, temperature, window)
    if key not in self._steps:
      ref_sh = self._backbone_shardings if self.lora is not None else self._param_shardings
      self._steps[key] = self._jit(
          functools.partial(self._train_step, alg, temperature, window),
          in_shardings=(self._state_shardings, self._batch_shardings(batch),
                        ref_sh if with_ref else None, self._backbone_shardings),
          out_shardings=(self._state_shardings, self._replicated),
          donate_argnums=(0,))
    return self._steps[key]

  def lower_step(self, name: str, batch: TrainBatch, *, temperature: float = 1.0,
                 window: int = 0) -> jax.stages.Lowered:
    """Lowers one step of algorithm `name` without running it.

    `batch` may hold arrays or ShapeDtypeStructs; with an abstract learner this
    is how a memory plan compiles the real step ahead of time. The fields the
    algorithm reads are added as abstract slots (for GRPO with a KL term,
    ref_logp: the reference pass is a separate program, `lower_score`).
    `window`: the completion window the step scores (`window_size` of a loss
    mask, as `step` takes it); 0 scores every position.
    """
    alg = self._algorithm(name)
    spec = lambda x, dtype: jax.ShapeDtypeStruct(x.shape, dtype)
    if alg.name == "sft":
      batch = _scoring_view(batch)
    else:
      rows = jax.ShapeDtypeStruct(batch.targets.shape[:1], jnp.float32)
      fields = {name: rows for name in alg.row_fields}
      fields["ref_logp"] = (spec(batch.targets, jnp.float32)
                            if alg.reference == "logprobs" else None)
      batch = batch.replace(**fields)
    batch = parallel.abstract_tree(
        jax.tree.map(lambda x: spec(x, x.dtype), batch), self._batch_shardings(batch))
    ref = self._ref_on_device() if alg.reference == "params" else None
    return self._program(alg, batch, ref is not None, _check_temperature(temperature),
                         window).lower(self._state, batch, ref, self._backbone)

  def lower_score(self, batch: TrainBatch) -> jax.stages.Lowered:
    """Lowers the scoring pass (reference / old log-probs) without running it."""
    view = _scoring_view(batch)
    view = parallel.abstract_tree(
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), view),
        self._batch_shardings(view))
    if self._ref is not None:
      return self._score_fn.lower(self._ref_on_device(), view, 1.0)
    return self._score_policy_fn.lower(self._state.params, view, 1.0, self._backbone)

  def _check_nonfinite(self, metrics: dict[str, float]) -> None:
    if not metrics["skipped"]:
      return
    in_a_row = int(metrics["nonfinite_in_a_row"])
    logging.warning(
        "train step %d: non-finite loss or gradients (loss=%s, grad_norm=%s); update "
        "skipped (%d in a row, %d in total)", int(metrics["step"]) - 1, metrics["loss"],
        metrics["grad_norm"], in_a_row, int(metrics["nonfinite_total"]))
    limit = self.cfg.max_nonfinite_in_a_row
    if in_a_row >= limit:
      raise FloatingPointError(
          f"{in_a_row} train steps in a row had a non-finite loss or gradients "
          f"(config.train.max_nonfinite_in_a_row={limit}); stopping. Lower the "
          "learning rate, look for NaN/inf in rewards or advantages, or train "
          "with float32 params.")

  def _loss_context(self, alg, temperature, window, batch: TrainBatch, ref_params, backbone,
                    alg_state, rng):
    agg, norm = alg.aggregation()
    model, plain = self._model, self._plain
    chunk = self.cfg.logprob_chunk

    def logprobs(p, mb, temperature=temperature, with_entropy=False):
      return model.logprobs(p, mb.inputs, mb.targets, chunk, temperature, with_entropy,
                            backbone=backbone, rng=rng, loss_mask=mb.loss_mask,
                            window=window)

    return algorithms_lib.LossContext(
        logprobs=logprobs,
        hidden=lambda p, inputs: model.hidden(p, inputs, backbone, rng),
        unembed=lambda p, h: model.unembed(p, h, backbone, rng),
        ref_hidden=lambda inputs: jax.lax.stop_gradient(plain.hidden(ref_params, inputs)),
        ref_unembed=lambda h: jax.lax.stop_gradient(plain.unembed(ref_params, h)),
        chunked=lambda fn, *xs: chunked_over_length(fn, chunk, *xs),
        temperature=temperature,
        den=_denominator(batch.loss_mask, agg, norm),
        tokens=_denominator(batch.loss_mask, "token-mean", None),
        state=alg_state)

  def _train_step(self, alg, temperature, window, state: TrainState, batch: TrainBatch,
                  ref_params, backbone):
    c = self.cfg
    stateful = alg is self.algorithm
    alg_state = state.algorithm_state if stateful else None
    batch, new_alg_state, alg_metrics = alg.prepare(alg_state, batch)
    trainable, frozen = optim.split(state.params, self._mask)
    # LoRA dropout: a key per step and micro-batch (the state's rng moves every step).
    step_key = jax.random.fold_in(state.rng, 0x10A)

    def loss_fn(trainable, mb, index):
      ctx = self._loss_context(alg, temperature, window, batch, ref_params, backbone,
                               alg_state, jax.random.fold_in(step_key, index))
      return alg.loss(ctx, optim.merge(self._mask, trainable, frozen), self._constrain(mb))

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    mbs = _split_micro(batch, c.micro_batches)
    first = jax.tree.map(lambda x: x[0], mbs)
    if c.micro_batches == 1:
      # No accumulator: gradients stay in the params' dtype, no extra copy.
      (_, sums), grads = grad_fn(trainable, first, 0)
    else:
      acc_dtype = jnp.dtype(c.grad_accum_dtype)

      def body(carry, xs):
        mb, index = xs
        (_, sums), g = grad_fn(trainable, mb, index)
        acc_g = jax.tree.map(lambda a, b: a + b.astype(a.dtype), carry[0], g)
        return (acc_g, losses.merge_sums(carry[1], sums)), None

      sums_shape = jax.eval_shape(lambda: loss_fn(trainable, first, 0)[1])
      trainable_sh, _ = optim.split(self._param_shardings, self._mask)
      g0 = jax.lax.with_sharding_constraint(
          jax.tree.map(lambda x: jnp.zeros(x.shape, acc_dtype), trainable), trainable_sh)
      s0 = {k: jnp.full(s.shape, -jnp.inf if k.endswith("_max") else 0, s.dtype)
            for k, s in sums_shape.items()}
      (grads, sums), _ = jax.lax.scan(body, (g0, s0), (mbs, jnp.arange(c.micro_batches)))

    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(sums["loss"]) & jnp.isfinite(grad_norm)
    updates, opt_state = self._tx.update(grads, state.opt_state, trainable)
    new_trainable = optax.apply_updates(trainable, updates)
    # Old values where the step is skipped; old dtypes always (bf16 params'
    # Adam moments would otherwise come back as f32 from the f32 gradients).
    keep = lambda new, old: jax.tree.map(
        lambda a, b: jnp.where(ok, a, b).astype(b.dtype), new, old)
    applied = state.step - state.nonfinite_total  # optimizer updates so far
    metrics = _finalize(sums)
    new_state = state.replace(
        params=optim.merge(self._mask, keep(new_trainable, trainable), frozen),
        opt_state=keep(opt_state, state.opt_state),
        step=state.step + 1,
        rng=jax.random.split(state.rng)[0],
        nonfinite_in_a_row=jnp.where(ok, 0, state.nonfinite_in_a_row + 1),
        nonfinite_total=state.nonfinite_total + (~ok).astype(jnp.int32))
    if stateful and state.algorithm_state is not None:
      new_state = new_state.replace(algorithm_state=keep(
          alg.finish(new_alg_state, metrics), state.algorithm_state))
    metrics.update(alg_metrics)
    metrics.update(
        grad_norm=grad_norm, lr=optim.schedule(c)(applied),
        skipped=(~ok).astype(jnp.float32), step=new_state.step.astype(jnp.float32),
        nonfinite_in_a_row=new_state.nonfinite_in_a_row.astype(jnp.float32),
        nonfinite_total=new_state.nonfinite_total.astype(jnp.float32))
    return new_state, metrics


def _unroll(setting, mesh) -> bool:
  if setting is None:
    return mesh.devices.flat[0].platform == "cpu"
  if not isinstance(setting, bool):
    raise ValueError(f"config.train.unroll_layers={setting!r} must be True, False or None "
                     "(unrolled on CPU only).")
  return setting


def _check_temperature(t) -> float:
  if not float(t) > 0:
    raise ValueError(f"temperature={t} must be > 0 (the role's sampling temperature).")
  return float(t)


def _scoring_view(batch: TrainBatch) -> TrainBatch:
  """Only what scoring and SFT read: inputs, targets, loss mask."""
  return TrainBatch(inputs=batch.inputs, targets=batch.targets, loss_mask=batch.loss_mask)
