"""A Role: one policy of a recipe — how it samples and how it learns.

    samples = solver.generate(prompts, group=8, seed=run.seed("solver", step))
    metrics = solver.update(samples, rewards)        # advantages -> batch -> step
    metrics = solver.sft(prompts, targets)           # warm start

A `Policy` is a learner and the optimizer it currently runs (the RL one from
`config.train`, or an SFT one a recipe passes for a warm start); a `Role` is a
name, a policy and the sampling block it samples with (`config.sampling.<role>`).
Roles can share one policy (EVE's `share_params`); the trainer always scores at
the temperature of the role whose rollouts it trains on, so the importance
ratio of an on-policy step starts at 1.

`generate` drops prompts that cannot fit the largest buckets with their token
budget (never truncating image tokens) and counts them; `update` turns rewards
into the algorithm's batch fields (`config.train.loss.advantage` for GRPO),
builds the batch, runs the step and returns its metrics. `frozen()` gives a
role that samples with the policy as it is now: a copy when another role keeps
training the shared weights, else a view that refuses to sample once its
policy has moved. `ScriptedRole` replies with fixed text but reports the
policy's real log-probs: the public seam for tests.

Several processes: every method takes and returns this process's rows (its
prompts, its completions, its rewards) and every process calls it in step.
What spans the batch is decided from gathered data: whether anyone has a
prompt at all (`Samples.total_rows`), the shapes of a train batch (every
process pads its block to the same rows and buckets; a process with no rows
sends padding), and the advantages (computed from every process's rewards,
so a group's statistics and the logged 'adv/...' metrics are the batch's).
"""
from __future__ import annotations

import collections
import copy
import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from evejax import distributed
from evejax import observe
from evejax.processing import batching
from evejax.processing import prompts as prompts_lib
from evejax.rl import learner as learner_lib
from evejax.rl import rollouts
from evejax.sampling import Sampler
from evejax.sampling import SamplingParams


@dataclasses.dataclass
class Services:
  """What every role of a run uses: the model's shapes, tokenizer, one sampler."""
  model_config: Any
  tokenizer: Any
  sampler: Sampler
  mesh: Any
  rules: Any
  seed: int
  counts: collections.Counter
  timer: observe.Timer

  @property
  def length_buckets(self):
    return self.sampler.length_buckets

  @property
  def patch_buckets(self):
    return self.sampler.patch_buckets


def fits(example: batching.Example, length_buckets: Sequence[int],
         patch_buckets: Sequence[int], reserve: int = 0) -> bool:
  """Whether a prompt (plus `reserve` new tokens) fits the largest buckets."""
  n_patches = sum(p.shape[0] for p, _ in example.images)
  return (len(example.tokens) + reserve <= max(length_buckets)
          and n_patches <= (max(patch_buckets) if len(patch_buckets) else 0))


@dataclasses.dataclass
class Samples:
  """Completions of a `generate` call, rows prompt-major and group-minor.

  Only prompts that fit are sampled: `kept[j]` is the index (into the prompts
  given) of the j-th sampled prompt, and row r belongs to kept[r // group].
  With several processes these are this process's rows; `total_rows` counts
  every process's (decide "nothing was sampled" from it, never from len).
  `ids[j]` is the sampled prompt's id over every process (`generate`'s
  `prompt_ids`, else its place in the call), so `row_id(r)` numbers rows alike
  on any number of processes: sort gathered rows by it to see them in the
  order one process has them.
  """
  kept: list[int]
  group: int
  prompts: list[batching.Example]   # the sampled prompts (len(kept))
  tokens: list[np.ndarray]          # per row, completion ids (EOS included)
  logprobs: list[np.ndarray]        # per row, the sampler's log-prob of each token
  texts: list[str]                  # per row, decoded without special tokens
  total_rows: int | None = None     # rows over every process (None: len(self))
  ids: list[int] | None = None      # per sampled prompt, its id (None: its index)

  def __post_init__(self):
    if self.total_rows is None:
      self.total_rows = len(self.tokens)
    if self.ids is None:
      self.ids = list(self.kept)

  def __len__(self) -> int:
    return len(self.tokens)

  def prompt_of(self, row: int) -> int:
    """Index into the prompts given to generate of the prompt of `row`."""
    return self.kept[row // self.group]

  def row_id(self, row: int) -> int:
    """`row`'s number over every process: its prompt's id times group, plus its member."""
    return int(self.ids[row // self.group]) * self.group + row % self.group

  @property
  def row_ids(self) -> list[int]:
    return [self.row_id(r) for r in range(len(self.tokens))]

  @property
  def row_prompts(self) -> list[batching.Example]:
    return [self.prompts[r // self.group] for r in range(len(self.tokens))]


class Policy:
  """A learner and the optimizer it currently runs ('rl' or 'sft').

  Both optimizers are the same optax chain with other hyperparameters, so a
  switch keeps the optimizer state (and resume stays exact); `start_rl` after a
  warm start begins with a fresh one, and makes the warm-started weights the
  KL reference (then saved in checkpoints: the config cannot rebuild them).
  """

  def __init__(self, name: str, services: Services, train_config, params, *,
               param_dtype: str, checkpoint_reference: bool = False):
    self.name = name
    self.services = services
    self.train_config = train_config
    self.param_dtype = param_dtype
    self.checkpoint_reference = checkpoint_reference
    self.optimizer_kind = "rl"
    self.learner = self._learner(train_config, params, ref_params=None, reference=True)

  def _learner(self, cfg, params, ref_params, reference: bool) -> learner_lib.Learner:
    s = self.services
    return learner_lib.Learner(
        s.model_config, cfg, params, param_dtype=self.param_dtype, mesh=s.mesh,
        rules=s.rules, seed=s.seed, ref_params=ref_params, keep_reference=reference)

  @property
  def params(self):
    """What a Sampler samples this policy with (`Learner.sampling_params`)."""
    return self.learner.sampling_params

  def _weights(self, learner):
    """What a new learner of this policy starts from: the params, or the backbone."""
    return learner.backbone if learner.lora is not None else learner.params

  def use_optimizer(self, kind: str, sft_optimizer: dict | None = None) -> None:
    """Switches to the 'rl' optimizer of config.train or an 'sft' one (its
    `optimizer` block updated with `sft_optimizer`), keeping the train state."""
    if kind == self.optimizer_kind:
      return
    if kind not in ("rl", "sft"):
      raise ValueError(f"optimizer kind {kind!r}: use 'rl' or 'sft'.")
    cfg = copy.deepcopy(self.train_config)
    if kind == "sft":
      cfg.optimizer.update(sft_optimizer or {})
    old = self.learner
    # A warm start needs no reference policy; the RL one keeps its own.
    ref = old.reference_params if old.owns_reference else None
    self.learner = self._learner(cfg, self._weights(old), ref_params=ref,
                                 reference=kind == "rl")
    self.learner.load_state(old.state)
    self.optimizer_kind = kind

  def start_rl(self) -> None:
    """RL from the current weights: a fresh RL optimizer, these weights as reference."""
    old = self.learner
    self.learner = self._learner(self.train_config, self._weights(old), ref_params=None,
                                 reference=True)
    if old.lora is not None:   # the adapter is the policy: keep it, not the optimizer
      self.learner.load_state(self.learner.state.replace(params=old.params))
    self.optimizer_kind = "rl"

  # -- checkpoint ------------------------------------------------------------

  def state(self) -> dict:
    out = {"train": self.learner.state}
    if self.checkpoint_reference and self.learner.owns_reference:
      out["reference"] = self.learner.reference_params
    return out

  def abstract_state(self) -> dict:
    out = {"train": self.learner.abstract_state()}
    if self.checkpoint_reference and self.learner.owns_reference:
      out["reference"] = self.learner.abstract_params()
    return out

  def load_state(self, state: dict) -> None:
    self.learner.load_state(state["train"])
    if "reference" in state:
      self.learner.set_ref_params(state["reference"])


def sampling_params(block, tokenizer, *, group: int, greedy: bool = False) -> SamplingParams:
  """SamplingParams from a config block {temperature, top_p, top_k, max_new_tokens}."""
  return SamplingParams(
      max_new_tokens=int(block.max_new_tokens), temperature=float(block.temperature),
      top_k=int(block.top_k), top_p=float(block.top_p), greedy=greedy,
      group_size=group, eos_ids=tuple(tokenizer.stop_ids), pad_id=tokenizer.pad_id)


class Role:
  """A named policy with its sampling block; see the module docstring."""

  def __init__(self, name: str, policy: Policy, sampling: ml_collections.ConfigDict):
    self.name = name
    self.policy = policy
    self.sampling = sampling
    self.services = policy.services

  @property
  def temperature(self) -> float:
    return float(self.sampling.temperature)

  @property
  def max_new_tokens(self) -> int:
    return int(self.sampling.max_new_tokens)

  @property
  def params(self):
    """The params this role samples with."""
    return self.policy.params

  def fits(self, example: batching.Example, reserve: int | None = None) -> bool:
    """Whether `example` fits the buckets with this role's token budget (or `reserve`)."""
    s = self.services
    return fits(example, s.length_buckets, s.patch_buckets,
                self.max_new_tokens if reserve is None else reserve)

  # -- sampling --------------------------------------------------------------

  def generate(self, prompts: Sequence[batching.Example], group: int, seed: int, *,
               greedy: bool = False, prompt_ids: Sequence[int] | None = None) -> Samples:
    """`group` completions of each prompt that fits; the others are counted drops.

    `prompt_ids` order the prompts over every process (distinct numbers; the
    default is process order): a prompt's randomness follows its rank among
    the prompts sampled, so a run gives the same rows on any number of
    processes when its callers give the same order.
    """
    s = self.services
    kept = [i for i, p in enumerate(prompts) if self.fits(p)]
    dropped = len(prompts) - len(kept)
    if dropped:
      s.counts[f"{self.name}/dropped_prompt_too_long"] += dropped
    chosen = [prompts[i] for i in kept]
    ids = [int(i) for i in _call_ids(len(prompts), prompt_ids)[kept]]
    total = distributed.total(len(chosen))
    if not total:
      return Samples(kept, group, [], [], [], [], total_rows=0, ids=ids)
    ranks = None if prompt_ids is None else _ranks(ids)
    toks, lps = self._sample(chosen, group, seed, greedy, ranks)
    s.counts[f"{self.name}/completion_with_vision_token"] += sum(
        rollouts.has_vision_tokens(s.model_config, t) for t in toks)
    texts = s.tokenizer.decode_batch(toks, skip_special_tokens=True) if toks else []
    return Samples(kept, group, chosen, toks, lps, texts, total_rows=total * group, ids=ids)

  def _sample(self, prompts, group, seed, greedy, ids=None):
    s = self.services
    sp = sampling_params(self.sampling, s.tokenizer, group=group, greedy=greedy)
    with s.timer("sampling"):
      out = s.sampler.generate(self.params, prompts, sp, seed, prompt_ids=ids)
    return rollouts.completions_from_samples(out)

  # -- learning --------------------------------------------------------------

  def _batch(self, row_prompts, completions, **fields) -> learner_lib.TrainBatch:
    """A train batch of this process's rows (with several, shaped alike everywhere)."""
    s = self.services
    multiple = self.policy.learner.row_multiple
    lengths, patches = s.length_buckets, s.patch_buckets
    if distributed.is_multiprocess():
      multiple //= distributed.process_count()
      sizes = distributed.allgather([len(row_prompts)] + [
          max([len(p.tokens) + len(c) for p, c in zip(row_prompts, completions)], default=1),
          max([p.num_patches for p in row_prompts], default=0)])
      rows, longest, most = (max(x[i] for x in sizes) for i in range(3))
      multiple = max(multiple, -(-rows // multiple) * multiple)
      lengths = (batching.bucket_for(longest, lengths),)
      patches = (batching.bucket_for(most, patches),) if len(patches) else patches
      if not row_prompts:   # padding only: one row without a completion, no loss
        row_prompts = [batching.Example(tokens=np.array([s.tokenizer.pad_id], np.int32))]
        completions = [np.zeros((0,), np.int32)]
        fields = {k: (None if v is None else [np.zeros((0,), np.float32)] if k == "sampler_logp"
                      else np.zeros((1,) + np.shape(v)[1:], np.float32))
                  for k, v in fields.items()}
    return rollouts.train_batch(
        row_prompts, completions, model_config=s.model_config, pad_id=s.tokenizer.pad_id,
        length_buckets=lengths, patch_buckets=patches, row_multiple=multiple, **fields)

  def update(self, samples: Samples, rewards: Sequence[float]) -> dict[str, float]:
    """One RL step on `samples` with one reward per row; returns its metrics.

    Keys: the algorithm's host metrics (GRPO: 'adv/...') and the step's
    'train/...' metrics.
    """
    return self.update_rows(samples.row_prompts, samples.tokens, rewards,
                            group=samples.group, logprobs=samples.logprobs)

  def update_rows(self, row_prompts: Sequence[batching.Example],
                  completions: Sequence[Sequence[int]], rewards: Sequence[float], *,
                  group: int, logprobs: Sequence[Sequence[float]] | None = None
                  ) -> dict[str, float]:
    """`update` for explicit rows (group-major), e.g. a subset of a Samples' rows."""
    learner = self.policy.learner
    s = self.services
    with s.timer("rewards"):
      fields, host_metrics = self._batch_fields(rewards, group)
    batch = self._batch(list(row_prompts), list(completions), sampler_logp=logprobs, **fields)
    with s.timer("training"):
      metrics = learner.step(learner.algorithm.name, batch, temperature=self.temperature)
    return {**host_metrics, **{f"train/{k}": v for k, v in metrics.items()}}

  def _batch_fields(self, rewards, group: int) -> tuple[dict, dict]:
    """The algorithm's row fields of this process's rows, from every process's rewards."""
    learner = self.policy.learner
    if not distributed.is_multiprocess():
      return learner.batch_fields(rewards, group)
    mine = np.asarray(rewards, np.float32).reshape(-1)
    parts = distributed.allgather(mine.tolist())
    start = sum(len(p) for p in parts[:distributed.process_index()])
    fields, host_metrics = learner.batch_fields(
        np.asarray([r for p in parts for r in p], np.float32), group)
    return ({k: None if v is None else np.asarray(v)[start:start + len(mine)]
             for k, v in fields.items()}, host_metrics)

  def sft(self, prompts: Sequence[batching.Example], targets: Sequence[Sequence[int]]
          ) -> dict[str, float] | None:
    """One SFT step on (prompt, target) pairs that fit; None if none fits (anywhere)."""
    keep = [k for k, p in enumerate(prompts) if self.fits(p, reserve=len(targets[k]))]
    dropped = len(prompts) - len(keep)
    if dropped:
      self.services.counts[f"{self.name}/dropped_prompt_too_long"] += dropped
    if not distributed.total(len(keep)):
      return None
    batch = self._batch([prompts[k] for k in keep], [targets[k] for k in keep])
    with self.services.timer("training"):
      return self.policy.learner.step("sft", batch)

  def score(self, row_prompts: Sequence[batching.Example],
            completions: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """The policy's log-probs of each completion token, at this role's temperature."""
    batch = self._batch(list(row_prompts), list(completions))
    logp = distributed.local_rows(
        self.policy.learner.score_policy(batch, temperature=self.temperature))
    return [logp[i, len(p.tokens) - 1:len(p.tokens) - 1 + len(t)]
            for i, (p, t) in enumerate(zip(row_prompts, completions))]

  # -- frozen copies ---------------------------------------------------------

  def frozen(self, copy_params: bool, params=None) -> "FrozenRole":
    """This role sampling with the weights it has now (see the module docstring).

    `params`: the trained params of a copy restored from a checkpoint.
    """
    return FrozenRole(self, copy_params, params=params)


@jax.jit
def _device_copy(tree):
  return jax.tree.map(jnp.copy, tree)


class FrozenRole(Role):
  """A role that samples with a fixed set of weights and never trains."""

  def __init__(self, role: Role, copy_params: bool, params=None):
    super().__init__(role.name, role.policy, role.sampling)
    self.copied = copy_params
    learner = role.policy.learner
    self._step = learner.step_count
    # What the learner trains (with LoRA only the adapter: the backbone is frozen).
    self.trained_params = (params if params is not None
                           else _device_copy(learner.params) if copy_params else None)

  @property
  def params(self):
    if self.trained_params is not None:
      return self.policy.learner.sampling_params_for(self.trained_params)
    if self.policy.learner.step_count != self._step:
      raise RuntimeError(
          f"frozen {self.name}: its policy trained since it was frozen (step "
          f"{self._step} -> {self.policy.learner.step_count}); freeze with "
          "copy_params=True when another role trains the same weights.")
    return self.policy.params

  def update(self, *args, **kwargs):
    raise RuntimeError(f"frozen {self.name} does not train.")

  update_rows = sft = update


class ScriptedRole(Role):
  """Replies come from `reply(prompt_index, member, rng) -> text`; log-probs are
  the policy's own, so updates are exactly what training on those replies is.

  The seam for tests: a recipe runs end to end with a role whose outputs are
  known (e.g. a Challenger that writes library programs). `rng` is one
  generator per call, drawn prompt after prompt in the call's order over every
  process, so replies do not depend on how many processes share the prompts.
  Its frozen copies reply from the same script.
  """

  def __init__(self, role: Role, reply: Callable[[int, int, np.random.Generator], str]):
    super().__init__(role.name, role.policy, role.sampling)
    self._reply = reply

  def _replies(self, prompts, group, seed, ids):
    """Texts of this process's prompts; the draws of every process's prompts are made."""
    ids = _call_ids(len(prompts), ids)
    rng = np.random.default_rng(seed)
    mine = {int(i): k for k, i in enumerate(ids)}
    texts = [None] * (len(prompts) * group)
    for i in range(distributed.total(len(prompts))):
      for g in range(group):
        text = self._reply(i, g, rng)
        if i in mine:
          texts[mine[i] * group + g] = text
    return [prompts_lib.completion_ids(self.services.tokenizer, t) for t in texts]

  def _sample(self, prompts, group, seed, greedy, ids=None):
    toks = self._replies(prompts, group, seed, ids)
    rows = [p for p in prompts for _ in range(group)]
    return toks, self.score(rows, toks)

  def frozen(self, copy_params: bool, params=None) -> FrozenRole:
    return _FrozenScripted(self, copy_params, params=params)


class _FrozenScripted(FrozenRole):
  """A scripted role's frozen copy: the same script; it never trains, and
  reports zero log-probs (no step reads them)."""

  def __init__(self, role: ScriptedRole, copy_params: bool, params=None):
    super().__init__(role, copy_params, params=params)
    self._script = role

  def _sample(self, prompts, group, seed, greedy, ids=None):
    toks = self._script._replies(prompts, group, seed, ids)   # pylint: disable=protected-access
    return toks, [np.zeros(len(t), np.float32) for t in toks]


def _ranks(ids: Sequence[int]) -> np.ndarray:
  """Each id's rank among every process's ids (0, 1, ... in id order)."""
  everyone = sorted(int(i) for i in distributed.gather_rows([int(i) for i in ids]))
  if len(set(everyone)) != len(everyone):
    raise ValueError("Role.generate: prompt_ids repeat across the call; give distinct ids.")
  rank = {i: r for r, i in enumerate(everyone)}
  return np.asarray([rank[int(i)] for i in ids], np.int64)


def _call_ids(n: int, ids) -> np.ndarray:
  """Prompt ids of this process's n prompts in a call (default: process order)."""
  if ids is not None:
    return np.asarray(ids, np.int64)
  counts = distributed.allgather(n)
  return sum(counts[:distributed.process_index()]) + np.arange(n)
