"""The learner: GRPO, REINFORCE and SFT train steps, jit-compiled on a mesh.

    learner = Learner(model_config, config.train, params, mesh=mesh)
    metrics = learner.grpo_step(TrainBatch(inputs, targets, loss_mask,
                                           old_logp=..., advantages=...))
    sampler.generate(learner.params, ...)

One step = micro-batches accumulated exactly, one optax update, skipped if the
loss or any gradient is non-finite. Exactness: every loss is a numerator over
the whole batch divided by a denominator that depends only on the masks
(`evejax.rl.losses.aggregate_terms`). The denominators are taken from the full
batch before the micro-batch loop and each micro-batch contributes
numerator / full denominator, so the summed gradients are those of one big
batch, not a mean of means. Micro-batch j takes rows j, j+k, j+2k, ..., which
keeps every micro-batch spread over the same devices as the batch.

Log-probs come from one scoring path (`token_logprobs`) shared by the policy
pass, the old/ref passes and tests: log-softmax in fp32 of logits / T (the
sampler's "policy" log-prob convention), optionally over sequence chunks so
[batch, length, vocab] logits never exist at once.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

from absl import logging
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from evejax import parallel
from evejax.models import vlm
from evejax.models.inputs import ModelInputs
from evejax.models.presets import ModelConfig
from evejax.rl import advantages as adv_lib
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
  sampler_logp: jax.Array | None = None  # f32 [B, T]; the sampler's log-probs (metric only)

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
  baselines: adv_lib.EmaBaseline  # REINFORCE EMA baseline, one entry per role
  kl_beta: jax.Array              # f32; REINFORCE adaptive KL coefficient


def default_train_config() -> ml_collections.ConfigDict:
  """Published EVE GRPO defaults (reference/METHODS.md) plus the learner's knobs."""
  return ml_collections.ConfigDict(dict(
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
          temperature=1.0,        # log-probs of logits / T, as the sampler reports them (not SFT)
          advantage="grpo", adv_eps=1e-6),   # read by recipes (group advantages)
      reinforce=dict(             # EvoLMM: KL-regularised REINFORCE
          roles=("proposer", "solver"),
          agg="seq-mean-token-mean",   # mean over samples of the completion NLL mean
          baseline_momentum=0.9,
          kl_beta=1e-3, kl_target=0.02, kl_rate=0.1, kl_beta_min=1e-8, kl_beta_max=100.0),
      micro_batches=1,
      grad_accum_dtype="float32",  # gradient sum over micro-batches (> 1 only)
      # Regexes (re.search) on '/'-joined parameter paths, e.g. "^vision/";
      # frozen params get no gradient and no optimizer state.
      freeze=(),
      ref_on_host=False,          # keep reference params in host RAM between uses
      logprob_chunk=0,            # >0: unembed + log-softmax this many positions at a time
      max_nonfinite_in_a_row=5,
      param_dtype="float32",      # float32 | bfloat16
  ))


def _merge_config(cfg) -> ml_collections.ConfigDict:
  """Defaults overlaid with `cfg`; unknown keys are typos and fail loudly."""
  out = default_train_config()

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


def _logp_entropy(logits: jax.Array, targets: jax.Array, temperature: float):
  logits = logits.astype(jnp.float32) / temperature
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1),
                             targets[..., None], axis=-1)[..., 0]
  return logp, losses.token_entropy(logits)


def token_logprobs(params: PyTree, config: ModelConfig, inputs: ModelInputs,
                   targets: jax.Array, chunk_size: int = 0, *, temperature: float = 1.0,
                   with_entropy: bool = False):
  """log softmax(logits / T)[targets], f32 [B, T] (and the entropy [B, T]).

  Args:
    params: model params.
    config: model shapes.
    inputs: the full sequences (prompt + completion).
    targets: int [B, T], the token each position predicts.
    chunk_size: > 0 unembeds and log-softmaxes that many positions at a time.
    temperature: the sampling temperature the log-probs refer to.
    with_entropy: also return the per-position entropy.
  """
  h = vlm.hidden_states(params, config, inputs)
  fn = lambda hc, tc: _logp_entropy(vlm.unembed(params, config, hc), tc, temperature)
  logp, ent = chunked_over_length(fn, chunk_size, h, targets)
  return (logp, ent) if with_entropy else logp


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


def _add_sums(a: dict, b: dict) -> dict:
  """Adds metric sums ('_max' keys take the max) and plain loss parts."""
  return {k: jnp.maximum(a[k], b[k]) if k.endswith("_max") else a[k] + b[k] for k in a}


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
    params: initial policy params (cast to `cfg.param_dtype`, copied onto the
      mesh; the caller may drop its own copy).
    mesh: an `evejax.parallel.make_mesh` mesh; None = the default device.
      Params, optimizer state and batches get explicit shardings on it.
    rules: logical-axis rules (None = `evejax.parallel.LOGICAL_RULES`).
    ref_params: frozen reference policy for KL terms; None = a copy of the
      initial `params` when `cfg.loss.kl_coef` > 0 (REINFORCE also needs one).
    seed: seeds the state's rng.
    compiler_options: XLA options for every program the learner compiles
      (e.g. {"xla_backend_optimization_level": 0} for fast CPU tests).
  """

  def __init__(self, model_config: ModelConfig, cfg, params: PyTree, *,
               mesh: jax.sharding.Mesh | None = None, rules=None,
               ref_params: PyTree | None = None, seed: int = 0,
               compiler_options: dict[str, Any] | None = None):
    self.model_config = model_config
    self._jit = functools.partial(jax.jit, compiler_options=compiler_options)
    self.cfg = c = _merge_config(cfg)
    if c.micro_batches < 1:
      raise ValueError(f"config.train.micro_batches={c.micro_batches} must be >= 1.")
    if c.loss.temperature <= 0:
      raise ValueError(f"config.train.loss.temperature={c.loss.temperature} must be > 0.")
    self._dtype = jnp.dtype(c.param_dtype)
    self._rules = parallel.make_rules(rules)
    self._mesh = mesh if mesh is not None else parallel.make_mesh(
        {"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    self._replicated = parallel.replicated(self._mesh)
    self._param_shardings = parallel.shardings_for(
        vlm.param_axes(model_config), self._mesh, self._rules, shapes_tree=params)
    self._mask = optim.trainable_mask(params, c.freeze)
    self._tx = optim.make_optimizer(c)
    self._roles = tuple(c.reinforce.roles)

    # Abstract params (ShapeDtypeStructs) give an abstract learner: its steps
    # can be lowered and compiled ahead of time (memory plans) but not run.
    self.abstract = any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params))
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
    if ref_params is not None or c.loss.kl_coef > 0:
      self.set_ref_params(ref_params if ref_params is not None else params)
    self._steps: dict[Any, Callable] = {}
    self._score_fn = self._jit(self._score)

  # -- state -----------------------------------------------------------------

  def _init_state(self, params, rng) -> TrainState:
    trainable, _ = optim.split(params, self._mask)
    n = len(self._roles)
    return TrainState(
        params=params, opt_state=self._tx.init(trainable),
        step=jnp.zeros((), jnp.int32), rng=rng,
        nonfinite_in_a_row=jnp.zeros((), jnp.int32),
        nonfinite_total=jnp.zeros((), jnp.int32),
        baselines=adv_lib.EmaBaseline(value=jnp.zeros((n,), jnp.float32),
                                      initialized=jnp.zeros((n,), bool)),
        kl_beta=jnp.asarray(self.cfg.reinforce.kl_beta, jnp.float32))

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
    """The current policy params (sharded on the mesh), e.g. for the sampler."""
    return self._state.params

  @property
  def mesh(self) -> jax.sharding.Mesh:
    return self._mesh

  @property
  def param_shardings(self) -> PyTree:
    return self._param_shardings

  @property
  def step(self) -> int:
    return int(self._state.step)

  def abstract_state(self) -> TrainState:
    """ShapeDtypeStructs with shardings: the template a checkpoint restores into."""
    return parallel.abstract_tree(self._state, self._state_shardings)

  def load_state(self, state: TrainState) -> None:
    """Replaces the whole train state (e.g. one restored from a checkpoint)."""
    if jax.tree.structure(state) != jax.tree.structure(self._state):
      raise ValueError(
          "load_state: the state's tree differs from this learner's (another "
          "model, freeze patterns, optimizer or REINFORCE roles?); restore into "
          "learner.abstract_state().")
    self._state = jax.device_put(state, self._state_shardings)

  def step_rng(self, tag: int = 0) -> jax.Array:
    """A key for this step's host-side randomness (e.g. sampling); same after resume."""
    return jax.random.fold_in(jax.random.fold_in(self._state.rng, self.step), tag)

  def set_ref_params(self, ref_params: PyTree) -> None:
    """Sets the frozen reference policy (kept in host RAM if cfg.ref_on_host)."""
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
    if self.abstract:
      return jax.tree.map(
          lambda x, s: jax.ShapeDtypeStruct(
              x.shape, self._dtype if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype,
              sharding=s), params, self._param_shardings)
    return jax.device_put(_cast_floats(params, self._dtype), self._param_shardings)

  # -- batches ---------------------------------------------------------------

  def _batch_shardings(self, batch: TrainBatch) -> TrainBatch:
    return jax.tree.map(
        lambda x, a: parallel.batch_sharding(self._mesh, np.ndim(x), a, self._rules),
        batch, _batch_axes(batch))

  @property
  def row_multiple(self) -> int:
    """Batch sizes must be multiples of this: micro-batches x batch shards."""
    spec = parallel.batch_sharding(self._mesh, 1, 0, self._rules).spec
    axes = spec[0] if spec else ()
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return self.cfg.micro_batches * math.prod(self._mesh.shape[a] for a in axes)

  def _put_batch(self, batch: TrainBatch) -> TrainBatch:
    k = self.cfg.micro_batches
    shards = self.row_multiple // k
    if batch.batch_size % (k * shards):
      raise ValueError(
          f"batch size {batch.batch_size} must be a multiple of micro_batches ({k}) x "
          f"devices the batch is split over ({shards}) = {k * shards}; pad the batch "
          "with rows whose loss_mask is 0, or change config.train.micro_batches.")
    return jax.device_put(batch, self._batch_shardings(batch))

  def _constrain(self, batch: TrainBatch) -> TrainBatch:
    return jax.lax.with_sharding_constraint(batch, self._batch_shardings(batch))

  # -- scoring ---------------------------------------------------------------

  def _logprobs(self, params, mb: TrainBatch, with_entropy=False, temperature=None):
    temperature = self.cfg.loss.temperature if temperature is None else temperature
    return token_logprobs(params, self.model_config, mb.inputs, mb.targets,
                          self.cfg.logprob_chunk, temperature=temperature,
                          with_entropy=with_entropy)

  def _score(self, params, batch: TrainBatch) -> jax.Array:
    mbs = _split_micro(batch, self.cfg.micro_batches)
    return _unsplit_micro(jax.lax.map(
        lambda mb: self._logprobs(params, self._constrain(mb)), mbs))

  def score(self, params: PyTree, batch: TrainBatch) -> jax.Array:
    """log pi(targets) [B, T] f32 under `params`, through the training graph.

    Runs micro-batch by micro-batch like the train step; use it for old and
    reference log-probs.
    """
    view = TrainBatch(inputs=batch.inputs, targets=batch.targets,
                      loss_mask=batch.loss_mask)
    return self._score_fn(params, self._put_batch(view))

  def fill_ref_logp(self, batch: TrainBatch) -> TrainBatch:
    """`batch` with ref_logp from the reference policy (one extra forward pass)."""
    return batch.replace(ref_logp=self.score(self._ref_on_device(), batch))

  # -- steps -----------------------------------------------------------------

  def grpo_step(self, batch: TrainBatch) -> dict[str, float]:
    """One clipped policy-gradient (GRPO) update; returns host-float metrics.

    old_logp None means fully on-policy (ratio 1). With kl_coef > 0 and no
    ref_logp, the reference pass runs first; kl_coef 0 skips it entirely.
    """
    if batch.advantages is None:
      raise ValueError("grpo_step needs batch.advantages (one per row).")
    if self.cfg.loss.kl_coef > 0:
      if batch.ref_logp is None:
        batch = self.fill_ref_logp(batch)
    else:
      batch = batch.replace(ref_logp=None)
    return self._run("grpo", batch.replace(rewards=None), None, None)

  def sft_step(self, batch: TrainBatch) -> dict[str, float]:
    """Cross-entropy on the loss_mask tokens (completion only)."""
    batch = TrainBatch(inputs=batch.inputs, targets=batch.targets, loss_mask=batch.loss_mask)
    return self._run("sft", batch, None, None)

  def reinforce_step(self, batch: TrainBatch, role: str) -> dict[str, float]:
    """EvoLMM update: (r - b_role) * NLL_mean + beta * full-vocabulary KL(pi || ref).

    b_role is the role's EMA baseline from before this batch (on the role's
    first batch, the batch's mean reward; see `evejax.rl.advantages`). After a
    finite step the baseline moves towards the batch mean and beta adapts
    towards `cfg.reinforce.kl_target`.
    """
    if role not in self._roles:
      raise ValueError(
          f"unknown REINFORCE role {role!r}; declared roles are {self._roles} "
          "(config.train.reinforce.roles).")
    if batch.rewards is None:
      raise ValueError("reinforce_step needs batch.rewards (one per row).")
    batch = TrainBatch(inputs=batch.inputs, targets=batch.targets,
                       loss_mask=batch.loss_mask, rewards=batch.rewards,
                       advantages=np.zeros(np.shape(batch.rewards), np.float32))
    return self._run("reinforce", batch, self._ref_on_device(),
                     np.int32(self._roles.index(role)))

  def _program(self, kind: str, batch: TrainBatch, with_ref: bool):
    """The jit-compiled step of `kind` for batches shaped like `batch` (cached)."""
    key = (kind, jax.tree.structure(batch), with_ref)
    if key not in self._steps:
      loss_fn = {"grpo": self._grpo_loss, "sft": self._sft_loss,
                 "reinforce": self._reinforce_loss}[kind]
      self._steps[key] = self._jit(
          functools.partial(self._train_step, kind, loss_fn),
          in_shardings=(self._state_shardings, self._batch_shardings(batch),
                        self._param_shardings if with_ref else None, None),
          out_shardings=(self._state_shardings, self._replicated),
          donate_argnums=(0,))
    return self._steps[key]

  def lower_step(self, kind: str, batch: TrainBatch) -> jax.stages.Lowered:
    """Lowers one `kind` step ('grpo' | 'sft' | 'reinforce') without running it.

    `batch` may hold arrays or ShapeDtypeStructs; with an abstract learner this
    is how a memory plan compiles the real step ahead of time. For GRPO with
    kl_coef > 0 the batch gets a ref_logp slot (the reference pass is a
    separate program: `lower_score`).
    """
    if kind not in ("grpo", "sft", "reinforce"):
      raise ValueError(f"lower_step: unknown step kind {kind!r}; use grpo, sft or reinforce.")
    spec = lambda x, dtype: jax.ShapeDtypeStruct(x.shape, dtype)
    if kind == "grpo" and self.cfg.loss.kl_coef > 0 and batch.ref_logp is None:
      batch = batch.replace(ref_logp=spec(batch.targets, jnp.float32))
    if kind == "reinforce":
      batch = TrainBatch(inputs=batch.inputs, targets=batch.targets,
                         loss_mask=batch.loss_mask,
                         rewards=spec(batch.targets[:, 0], jnp.float32),
                         advantages=spec(batch.targets[:, 0], jnp.float32))
    batch = parallel.abstract_tree(
        jax.tree.map(lambda x: spec(x, x.dtype), batch), self._batch_shardings(batch))
    ref = self._ref_on_device() if kind == "reinforce" else None
    role = np.int32(0) if kind == "reinforce" else None
    return self._program(kind, batch, ref is not None).lower(self._state, batch, ref, role)

  def lower_score(self, batch: TrainBatch) -> jax.stages.Lowered:
    """Lowers the scoring pass (reference / old log-probs) without running it."""
    view = TrainBatch(inputs=batch.inputs, targets=batch.targets, loss_mask=batch.loss_mask)
    view = parallel.abstract_tree(
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), view),
        self._batch_shardings(view))
    params = self._ref_on_device() if self._ref is not None else self._state.params
    return self._score_fn.lower(params, view)

  def _run(self, kind, batch, ref_params, role) -> dict[str, float]:
    if self.abstract:
      raise ValueError("this Learner was built from abstract params (ShapeDtypeStructs): "
                       "it can lower_step() but not run steps; pass real params.")
    batch = self._put_batch(batch)
    program = self._program(kind, batch, ref_params is not None)
    self._state, metrics = program(self._state, batch, ref_params, role)
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    self._check_nonfinite(metrics)
    return metrics

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

  def _train_step(self, kind, loss_fn, state: TrainState, batch: TrainBatch, ref_params,
                  role):
    c = self.cfg
    trainable, frozen = optim.split(state.params, self._mask)
    ctx = dict(ref_params=ref_params, state=state)
    if kind == "reinforce":
      baseline = jax.tree.map(lambda x: x[role], state.baselines)
      adv, new_baseline = adv_lib.ema_advantages(
          batch.rewards, baseline, c.reinforce.baseline_momentum)
      batch = batch.replace(advantages=adv)
      ctx["den"] = _denominator(batch.loss_mask, c.reinforce.agg, None)
    else:
      ctx["den"] = _denominator(batch.loss_mask, c.loss.agg, c.loss.norm_constant or None)
    ctx["tokens"] = _denominator(batch.loss_mask, "token-mean", None)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    mbs = _split_micro(batch, c.micro_batches)
    first = jax.tree.map(lambda x: x[0], mbs)
    if c.micro_batches == 1:
      # No accumulator: gradients stay in the params' dtype, no extra copy.
      (_, sums), grads = grad_fn(trainable, frozen, self._constrain(first), ctx)
    else:
      acc_dtype = jnp.dtype(c.grad_accum_dtype)

      def body(carry, mb):
        (_, sums), g = grad_fn(trainable, frozen, self._constrain(mb), ctx)
        acc_g = jax.tree.map(lambda a, b: a + b.astype(a.dtype), carry[0], g)
        return (acc_g, _add_sums(carry[1], sums)), None

      sums_shape = jax.eval_shape(lambda: loss_fn(trainable, frozen, first, ctx)[1])
      trainable_sh, _ = optim.split(self._param_shardings, self._mask)
      g0 = jax.lax.with_sharding_constraint(
          jax.tree.map(lambda x: jnp.zeros(x.shape, acc_dtype), trainable), trainable_sh)
      s0 = {k: jnp.full(s.shape, -jnp.inf if k.endswith("_max") else 0, s.dtype)
            for k, s in sums_shape.items()}
      (grads, sums), _ = jax.lax.scan(body, (g0, s0), mbs)

    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(sums["loss"]) & jnp.isfinite(grad_norm)
    updates, opt_state = self._tx.update(grads, state.opt_state, trainable)
    new_trainable = optax.apply_updates(trainable, updates)
    # Old values where the step is skipped; old dtypes always (bf16 params'
    # Adam moments would otherwise come back as f32 from the f32 gradients).
    keep = lambda new, old: jax.tree.map(
        lambda a, b: jnp.where(ok, a, b).astype(b.dtype), new, old)
    applied = state.step - state.nonfinite_total  # optimizer updates so far
    new_state = state.replace(
        params=optim.merge(self._mask, keep(new_trainable, trainable), frozen),
        opt_state=keep(opt_state, state.opt_state),
        step=state.step + 1,
        rng=jax.random.split(state.rng)[0],
        nonfinite_in_a_row=jnp.where(ok, 0, state.nonfinite_in_a_row + 1),
        nonfinite_total=state.nonfinite_total + (~ok).astype(jnp.int32))
    metrics = _finalize(sums)
    if kind == "reinforce":
      r = c.reinforce
      beta = losses.adaptive_kl_update(state.kl_beta, metrics["kl"], r.kl_target,
                                       r.kl_rate, r.kl_beta_min, r.kl_beta_max)
      baselines = jax.tree.map(lambda all_, one: all_.at[role].set(one),
                               state.baselines, new_baseline)
      new_state = new_state.replace(baselines=keep(baselines, state.baselines),
                                    kl_beta=jnp.where(ok, beta, state.kl_beta))
      metrics.update(baseline=batch.rewards.mean() - adv.mean(), kl_beta=state.kl_beta,
                     reward_mean=batch.rewards.mean())
    metrics.update(
        grad_norm=grad_norm, lr=optim.schedule(c)(applied),
        skipped=(~ok).astype(jnp.float32), step=new_state.step.astype(jnp.float32),
        nonfinite_in_a_row=new_state.nonfinite_in_a_row.astype(jnp.float32),
        nonfinite_total=new_state.nonfinite_total.astype(jnp.float32))
    return new_state, metrics

  # -- per micro-batch losses ------------------------------------------------
  # Each returns (loss share, sums): shares and sums added over micro-batches
  # give the whole batch's loss and metrics ('x_sum' / token_count -> 'x').

  def _params(self, trainable, frozen):
    return optim.merge(self._mask, trainable, frozen)

  def _grpo_loss(self, trainable, frozen, mb: TrainBatch, ctx):
    l = self.cfg.loss
    logp, ent = self._logprobs(self._params(trainable, frozen), mb, with_entropy=True)
    m = mb.loss_mask.astype(jnp.float32)
    old = jax.lax.stop_gradient(logp) if mb.old_logp is None else mb.old_logp
    norm = l.norm_constant or None
    num, _, sums = losses.policy_loss_terms(
        logp, old, mb.advantages, m, loss_type=l.policy, clip_low=l.clip_low,
        clip_high=l.clip_high, dual_clip=l.dual_clip or None, agg=l.agg,
        norm_constant=norm)
    pg = num / ctx["den"]
    loss = pg
    sums = dict(sums, entropy_sum=(ent * m).sum())
    if mb.ref_logp is not None:
      kl_tok = losses.kl_penalty(logp, mb.ref_logp, l.kl_estimator)
      kl = losses.aggregate_terms(kl_tok, m, l.agg, norm)[0] / ctx["den"]
      loss = loss + l.kl_coef * kl
      sums["kl"] = kl
    if l.entropy_coef:
      loss = loss - l.entropy_coef * losses.aggregate_terms(ent, m, l.agg, norm)[0] / ctx["den"]
    if mb.sampler_logp is not None:
      sums["sampler_approx_kl_sum"] = ((mb.sampler_logp - logp) * m).sum()
    return loss, dict(sums, loss=loss, pg_loss=pg)

  def _sft_loss(self, trainable, frozen, mb: TrainBatch, ctx):
    l = self.cfg.loss
    # Cross-entropy against the data at T=1: `loss.temperature` is the
    # sampling temperature of the policy's log-probs (GRPO), not the data's.
    logp, ent = self._logprobs(self._params(trainable, frozen), mb, with_entropy=True,
                               temperature=1.0)
    m = mb.loss_mask.astype(jnp.float32)
    num, _, sums = losses.sft_loss_terms(logp, m, agg=l.agg,
                                         norm_constant=l.norm_constant or None)
    loss = num / ctx["den"]
    return loss, dict(sums, loss=loss, entropy_sum=(ent * m).sum(),
                      token_prob_sum=(jnp.exp(logp) * m).sum())

  def _reinforce_loss(self, trainable, frozen, mb: TrainBatch, ctx):
    c, state = self.cfg, ctx["state"]
    params, ref = self._params(trainable, frozen), ctx["ref_params"]
    temp = c.loss.temperature
    h = vlm.hidden_states(params, self.model_config, mb.inputs)
    h_ref = jax.lax.stop_gradient(vlm.hidden_states(ref, self.model_config, mb.inputs))

    def fn(hc, hrc, tc):
      logits = vlm.unembed(params, self.model_config, hc).astype(jnp.float32) / temp
      ref_logits = vlm.unembed(ref, self.model_config, hrc).astype(jnp.float32) / temp
      logp, ent = _logp_entropy(logits, tc, 1.0)
      return logp, ent, losses.token_kl_from_logits(logits, ref_logits)

    logp, ent, kl_tok = chunked_over_length(fn, c.logprob_chunk, h, h_ref, mb.targets)
    m = mb.loss_mask.astype(jnp.float32)
    num, _, sums = losses.reinforce_loss_terms(logp, m, mb.advantages, 0.0,
                                               agg=c.reinforce.agg)
    pg = num / ctx["den"]
    kl = (kl_tok * m).sum() / ctx["tokens"]
    loss = pg + state.kl_beta * kl
    return loss, dict(sums, loss=loss, pg_loss=pg, kl=kl, entropy_sum=(ent * m).sum())
