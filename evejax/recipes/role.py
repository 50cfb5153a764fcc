"""A Role: one policy of a recipe — how it samples and how it learns.

    samples = solver.generate(prompts, group=8, seed=run.seed("solver", step))
    rewards = samples.gather([...per row...]) -> one Reward per row of the batch
    metrics = solver.update(samples, rewards)        # advantages -> batch -> step
    metrics = solver.sft(prompts, targets)           # warm start

A `Policy` is a learner and the optimizer it currently runs (the RL one from
`config.train`, or an SFT one for a warm start); a `Role` is a name, a policy,
the sampling block it samples with (`config.sampling.<role>`), where its
replies come from, and optionally a snapshot of the policy's weights:

  replies    `SampledReplies` (the sampler, the default) or `ScriptedReplies`
             (fixed text scored by the policy: the seam for tests, as tunix's
             mock rollout is);
  snapshot   a frozen role (`role.frozen()`) samples with the weights as they
             were when it was frozen: a copy when something keeps training
             them, else a view that refuses to sample once they have moved.
             It never trains.

Roles can share one policy (EVE's `share_params`); the trainer always scores at
the temperature of the role whose rollouts it trains on, so the importance
ratio of an on-policy step starts at 1.

`generate` drops prompts that cannot fit the largest buckets with their token
budget (never truncating image tokens) and counts them; `on_row` gets each
row as soon as the host has it (as it ends with slot decoding, by chunk with
static decoding), so the host (the sandbox) works while the device samples.

Several processes: every method takes and returns this process's rows (its
prompts, its completions) and every process calls it in step. Rows are
numbered alike on any number of processes (`Samples.id_of`); what spans the
batch is decided from rows gathered in that order (`Samples.gather`), and
`update` takes the rewards of the whole batch, in that order.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from evejax import distributed
from evejax.processing import batching
from evejax.processing import prompts as prompts_lib
from evejax.rewards.registry import Reward
from evejax.rl import learner as learner_lib
from evejax.rl import rollouts
from evejax.sampling import SamplingParams


def fits(example: batching.Example, length_buckets: Sequence[int],
         patch_buckets: Sequence[int], reserve: int = 0) -> bool:
  """Whether a prompt (plus `reserve` new tokens) fits the largest buckets."""
  n_patches = sum(p.shape[0] for p, _ in example.images)
  return (len(example.tokens) + reserve <= max(length_buckets)
          and n_patches <= (max(patch_buckets) if len(patch_buckets) else 0))


# ------------------------------------------------------------------- samples

@dataclasses.dataclass
class Samples:
  """Completions of a `generate` call, rows prompt-major and group-minor.

  Only prompts that fit are sampled: `kept[j]` is the index (into the prompts
  given; with a dict of prompts, the key) of the j-th sampled prompt, and row
  r belongs to kept[r // group]. `prompt_ids[j]` is that prompt's id over every
  process (the key, `generate`'s `ids`, else its place in the call), and
  `id_of(r) = prompt_ids[r // group] * group + r % group` numbers rows as one
  process would: `gather` returns every process's rows in that order, `mine`
  takes this process's rows back out of such a list.
  With several processes these are this process's rows; `total_rows` counts
  every process's (decide "nothing was sampled" from it, never from len).
  """
  kept: list[int]
  group: int
  prompts: list[batching.Example]   # the sampled prompts (len(kept))
  tokens: list[np.ndarray]          # per row, completion ids (EOS included)
  logprobs: list[np.ndarray]        # per row, the sampler's log-prob of each token
  texts: list[str]                  # per row, decoded without special tokens
  total_rows: int | None = None     # rows over every process (None: len(self))
  prompt_ids: list[int] | None = None   # per sampled prompt, its id (None: `kept`)
  _places: np.ndarray | None = dataclasses.field(default=None, repr=False)

  def __post_init__(self):
    if self.total_rows is None:
      self.total_rows = len(self.tokens)
    if self.prompt_ids is None:
      self.prompt_ids = list(self.kept)

  def __len__(self) -> int:
    return len(self.tokens)

  def prompt_of(self, row: int) -> int:
    """Which prompt given to generate `row` answers: its index (with a dict, its key)."""
    return self.kept[row // self.group]

  def id_of(self, row: int) -> int:
    """`row`'s number over every process: its prompt's id times group, plus its member."""
    return int(self.prompt_ids[row // self.group]) * self.group + row % self.group

  def ids_of(self, rows: Sequence[int] | None = None) -> list[int]:
    """The ids of `rows` (default: every row of this process)."""
    return [self.id_of(r) for r in (range(len(self.tokens)) if rows is None else rows)]

  @property
  def batch_ids(self) -> list[int]:
    """Every process's row ids, in order: the batch's rows as `gather` lists them."""
    return sorted(distributed.gather_rows(self.ids_of()))

  @property
  def row_prompts(self) -> list[batching.Example]:
    return [self.prompts[r // self.group] for r in range(len(self.tokens))]

  # -- the batch: every process's rows in row-id order ----------------------

  def gather(self, per_row: Sequence[Any]) -> list[Any]:
    """Every process's `per_row` values (JSON-able), in row-id order."""
    return distributed.gather_by_id(self.ids_of(), per_row)

  def gather_rewards(self, rewards: Sequence[Reward]) -> list[Reward]:
    """Every process's rows' rewards (JSON-able parts), in row-id order."""
    if not distributed.is_multiprocess():
      return [rewards[r] for r in self._places_order()]
    return [Reward(v, why, parts) for v, why, parts in
            self.gather([(float(x.value), x.reason, dict(x.parts)) for x in rewards])]

  def mine(self, batch_values: Sequence[Any]) -> list[Any]:
    """This process's rows' entries of a list in row-id order (as `gather` gives)."""
    return [batch_values[k] for k in self._batch_places()]

  def _batch_places(self) -> np.ndarray:
    """Each of this process's rows' place in the batch's row-id order."""
    if self._places is None:
      place = {i: k for k, i in enumerate(self.batch_ids)}
      self._places = np.asarray([place[i] for i in self.ids_of()], np.int64)
    return self._places

  def _places_order(self) -> np.ndarray:
    """This process's rows in row-id order (one process: the whole batch)."""
    return np.argsort(self._batch_places(), kind="stable")

  def select(self, rows: Sequence[int]) -> "Samples":
    """These rows (this process's) as a batch of their own, one row per group."""
    rows = [int(r) for r in rows]
    return Samples(
        kept=[self.prompt_of(r) for r in rows], group=1,
        prompts=[self.prompts[r // self.group] for r in rows],
        tokens=[self.tokens[r] for r in rows], logprobs=[self.logprobs[r] for r in rows],
        texts=[self.texts[r] for r in rows], total_rows=distributed.total(len(rows)),
        prompt_ids=self.ids_of(rows))

  @classmethod
  def concat(cls, parts: Sequence["Samples"]) -> "Samples":
    """One Samples from the chunks of one call (each chunk's `kept` already global)."""
    if not parts:
      raise ValueError("Samples.concat needs at least one part.")
    return cls(kept=[k for p in parts for k in p.kept], group=parts[0].group,
               prompts=[x for p in parts for x in p.prompts],
               tokens=[x for p in parts for x in p.tokens],
               logprobs=[x for p in parts for x in p.logprobs],
               texts=[x for p in parts for x in p.texts],
               total_rows=sum(p.total_rows for p in parts),
               prompt_ids=[i for p in parts for i in p.prompt_ids])


def reward_metrics(rewards: Sequence[Reward | float]) -> dict[str, float]:
  """`reward/mean` and the mean of every numeric part, over the rows that have it."""
  values = [float(getattr(r, "value", r)) for r in rewards]
  out = {"reward/mean": float(np.mean(values)) if values else 0.0}
  parts: dict[str, list[float]] = {}
  for r in rewards:
    for k, v in getattr(r, "parts", {}).items():
      if isinstance(v, (bool, int, float, np.number)):
        parts.setdefault(k, []).append(float(v))
  out.update({f"reward/{k}": float(np.mean(v)) for k, v in parts.items()})
  return out


# ------------------------------------------------------------------ policies

class Policy:
  """A learner and the optimizer it currently runs ('rl' or 'sft').

  Both optimizers are the same optax chain with other hyperparameters, so a
  switch keeps the optimizer state (and resume stays exact); `start_rl` after a
  warm start begins with a fresh one, and makes the warm-started weights the
  KL reference (then saved in checkpoints: the config cannot rebuild them).
  `rl=False`: a policy only warm-started (EvoLMM's backbone); it never starts RL.
  """

  def __init__(self, name: str, run, train_config, params, *, param_dtype: str,
               checkpoint_reference: bool = False, rl: bool = True):
    self.name = name
    self.run = run
    self.train_config = train_config
    self.param_dtype = param_dtype
    self.checkpoint_reference = checkpoint_reference
    self.rl = rl
    self.optimizer_kind = "rl"
    self.learner = self._learner(train_config, params, ref_params=None, reference=rl)

  def _learner(self, cfg, params, ref_params, reference: bool) -> learner_lib.Learner:
    r = self.run
    return learner_lib.Learner(
        r.model_config, cfg, params, param_dtype=self.param_dtype, mesh=r.mesh,
        rules=r.rules, seed=r.config.seed, ref_params=ref_params, keep_reference=reference)

  @property
  def weights(self):
    """What a Sampler samples this policy with (`Learner.sampler_weights`)."""
    return self.learner.sampler_weights

  def _start_weights(self, learner):
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
    self.learner = self._learner(cfg, self._start_weights(old), ref_params=ref,
                                 reference=kind == "rl" and self.rl)
    self.learner.load_state(old.state)
    self.optimizer_kind = kind

  def start_rl(self) -> None:
    """RL from the current weights: a fresh RL optimizer, these weights as reference."""
    old = self.learner
    self.learner = self._learner(self.train_config, self._start_weights(old), ref_params=None,
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


def decoding(block, tokenizer, *, group: int, greedy: bool = False) -> SamplingParams:
  """The decoding settings of a sampling block {temperature, top_p, top_k, max_new_tokens}."""
  return SamplingParams(
      max_new_tokens=int(block.max_new_tokens), temperature=float(block.temperature),
      top_k=int(block.top_k), top_p=float(block.top_p), greedy=greedy,
      group_size=group, eos_ids=tuple(tokenizer.stop_ids), pad_id=tokenizer.pad_id)


# ------------------------------------------------------------- reply sources

# (row of the call, its completion ids): a reply source hands each row over as it ends.
RowHook = Callable[[int, np.ndarray], None]


class SampledReplies:
  """Replies sampled from the role's weights by the run's sampler."""

  def __call__(self, role: "Role", prompts, group: int, seed: int, greedy: bool,
               prompt_ids: np.ndarray, on_row: RowHook | None = None):
    run = role.run
    settings = decoding(role.sampling, run.tokenizer, group=group, greedy=greedy)
    hand = None if on_row is None else (lambda r, tokens, *_: on_row(r, tokens))
    with run.timer("sampling"):
      out = run.sampler.generate(role.weights, prompts, settings, seed, prompt_ids=prompt_ids,
                                 on_row=hand)
    if run.writer is not None and out.stats is not None:
      run.log(out.stats.metrics(), prefix=role.name)
    return rollouts.completions_from_samples(out)


class ScriptedReplies:
  """Replies from `reply(prompt_id, member, rng) -> text`, scored by the policy.

  Log-probs are the policy's own, so an update is exactly what training on
  those replies is (a frozen role reports zeros: nothing reads them). `rng` is
  seeded by (seed, prompt id), so a prompt's replies depend neither on how
  many processes share the prompts nor on how a call is chunked.
  """

  def __init__(self, reply: Callable[[int, int, np.random.Generator], str]):
    self.reply = reply

  def __call__(self, role: "Role", prompts, group: int, seed: int, greedy: bool,
               prompt_ids: np.ndarray, on_row: RowHook | None = None):
    texts = []
    for i in prompt_ids:
      rng = np.random.default_rng((int(seed), int(i)))
      texts += [self.reply(int(i), g, rng) for g in range(group)]
    toks = [prompts_lib.completion_ids(role.run.tokenizer, t) for t in texts]
    for r, t in enumerate(toks if on_row is not None else ()):
      on_row(r, t)
    if role.snapshot is not None:
      return toks, [np.zeros(len(t), np.float32) for t in toks]
    rows = [p for p in prompts for _ in range(group)]
    return toks, role.score(rows, toks)


# --------------------------------------------------------------------- roles

@dataclasses.dataclass
class Snapshot:
  """A frozen role's weights: a copy (`params`), or a view of the policy at `step`."""
  step: int
  params: Any = None

  @property
  def copied(self) -> bool:
    return self.params is not None


@jax.jit
def _device_copy(tree):
  return jax.tree.map(jnp.copy, tree)


class Role:
  """A named policy with its sampling block; see the module docstring."""

  def __init__(self, name: str, policy: Policy, sampling: ml_collections.ConfigDict, *,
               replies=None, snapshot: Snapshot | None = None):
    self.name = name
    self.policy = policy
    self.sampling = sampling
    self.replies = replies or SampledReplies()
    self.snapshot = snapshot

  @property
  def run(self):
    return self.policy.run

  def replace(self, **changes) -> "Role":
    """This role with other replies or snapshot (same name, policy and sampling)."""
    fields = {"replies": self.replies, "snapshot": self.snapshot, **changes}
    return type(self)(self.name, self.policy, self.sampling, **fields)

  def scripted(self, reply: Callable[[int, int, np.random.Generator], str]) -> "Role":
    """This role replying from a script (tests; see `ScriptedReplies`)."""
    return self.replace(replies=ScriptedReplies(reply))

  @property
  def temperature(self) -> float:
    return float(self.sampling.temperature)

  @property
  def max_new_tokens(self) -> int:
    return int(self.sampling.max_new_tokens)

  def truncated(self, tokens) -> bool:
    """Whether a sampled reply stopped at the token budget instead of ending."""
    return (len(tokens) >= self.max_new_tokens
            and int(tokens[-1]) not in self.run.tokenizer.stop_ids)

  @property
  def weights(self):
    """The weights this role samples with (a frozen role's snapshot)."""
    s, learner = self.snapshot, self.policy.learner
    if s is None:
      return self.policy.weights
    if s.copied:
      return learner.sampler_weights_for(s.params)
    if learner.step_count != s.step:
      raise RuntimeError(
          f"frozen {self.name}: its policy trained since it was frozen (step {s.step} -> "
          f"{learner.step_count}); freeze a copy when another role trains the same weights.")
    return self.policy.weights

  def fits(self, example: batching.Example, reserve: int | None = None) -> bool:
    """Whether `example` fits the buckets with this role's token budget (or `reserve`)."""
    s = self.run.sampler
    return fits(example, s.length_buckets, s.patch_buckets,
                self.max_new_tokens if reserve is None else reserve)

  # -- sampling --------------------------------------------------------------

  def generate(self, prompts: Sequence[batching.Example] | Mapping[int, batching.Example],
               group: int, seed: int, *, greedy: bool = False,
               ids: Sequence[int] | None = None, chunks: int = 1,
               on_row: Callable[[int, Any, str, np.ndarray], None] | None = None) -> Samples:
    """`group` completions of each prompt that fits; the others are counted drops.

    `prompts`: this process's prompts, a list (numbered by `ids`, distinct over
    every process; default: process order) or a dict {id: prompt} (as
    `Run.owned` builds). A row's randomness is a function of (seed, its id), so
    a run gives the same rows on any number of processes when callers give the
    same ids.

    `on_row(row, prompt, text, tokens)` gets each of this process's rows (its
    index in the returned Samples, its prompt's index or key, its text and
    completion ids) as soon as the host has it, e.g. to start its sandbox run:
    with slot decoding (config.decoding.mode "slots") as the row ends; with
    static decoding when its chunk ends, and `chunks` > 1 then samples this
    process's prompts in that many pieces (every process the same number) so
    that the host works on one piece while the device samples the next. Slot
    decoding never splits a call (pieces would drain its slots).
    """
    if isinstance(prompts, Mapping):
      keys, ids, prompts = list(prompts), list(prompts), list(prompts.values())
    else:
      keys = list(range(len(prompts)))
    kept = [i for i, p in enumerate(prompts) if self.fits(p)]
    dropped = len(prompts) - len(kept)
    if dropped:
      self.run.counts[f"{self.name}/dropped_prompt_too_long"] += dropped
    all_ids = _call_ids(len(prompts), ids)
    if self.run.sampler.decode_mode == "slots":
      chunks = 1
    pieces = np.array_split(np.asarray(kept, np.int64), max(1, int(chunks)))
    parts, first = [], 0
    for piece in pieces:
      piece = [int(i) for i in piece]
      hook = None if on_row is None else self._row_hook(on_row, [keys[i] for i in piece],
                                                        group, first)
      part = self._generate(prompts, piece, group, seed, greedy, all_ids, hook)
      part.kept = [keys[i] for i in part.kept]
      parts.append(part)
      first += len(part)
    return Samples.concat(parts)

  def _row_hook(self, on_row, keys: list, group: int, first: int) -> RowHook:
    """A reply source's (row of a piece, tokens) as on_row(row of the call, key, text, tokens)."""
    def hook(r: int, tokens: np.ndarray) -> None:
      text = self.run.tokenizer.decode(tokens, skip_special_tokens=True)
      on_row(first + r, keys[r // group], text, tokens)
    return hook

  def _generate(self, prompts, kept, group, seed, greedy, all_ids, on_row=None) -> Samples:
    chosen = [prompts[i] for i in kept]
    ids = [int(all_ids[i]) for i in kept]
    total = distributed.total(len(chosen))
    if not total:
      return Samples(kept, group, [], [], [], [], total_rows=0, prompt_ids=ids)
    hand = {} if on_row is None else {"on_row": on_row}   # reply sources without it still work
    toks, lps = self.replies(self, chosen, group, seed, greedy, np.asarray(ids, np.int64),
                             **hand)
    run = self.run
    run.counts[f"{self.name}/completion_with_vision_token"] += sum(
        rollouts.has_vision_tokens(run.model_config, t) for t in toks)
    texts = run.tokenizer.decode_batch(toks, skip_special_tokens=True) if toks else []
    return Samples(kept, group, chosen, toks, lps, texts, total_rows=total * group,
                   prompt_ids=ids)

  # -- learning --------------------------------------------------------------

  def _trainable(self) -> learner_lib.Learner:
    if self.snapshot is not None:
      raise RuntimeError(f"frozen {self.name} does not train.")
    return self.policy.learner

  def _batch(self, row_prompts, completions, **fields) -> learner_lib.TrainBatch:
    """A train batch of this process's rows (with several, shaped alike everywhere)."""
    run = self.run
    s = run.sampler
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
        row_prompts = [batching.Example(tokens=np.array([run.tokenizer.pad_id], np.int32))]
        completions = [np.zeros((0,), np.int32)]
        fields = {k: (None if v is None else [np.zeros((0,), np.float32)] if k == "sampler_logp"
                      else np.zeros((1,) + np.shape(v)[1:], np.float32))
                  for k, v in fields.items()}
    return rollouts.train_batch(
        row_prompts, completions, model_config=run.model_config, pad_id=run.tokenizer.pad_id,
        length_buckets=lengths, patch_buckets=patches, row_multiple=multiple, **fields)

  def update(self, samples: Samples, rewards: Sequence[Reward | float]) -> dict[str, float]:
    """One RL step on this process's rows of `samples`.

    `rewards`: one per row of the whole batch (every process's rows, in row-id
    order, as `Samples.gather` / `gather_rewards` give them). Returns
    `reward/mean` and the mean of each numeric reward part, the algorithm's
    host metrics (GRPO: 'adv/...') and the step's 'train/...' metrics.
    """
    learner = self._trainable()
    if len(rewards) != samples.total_rows:
      raise ValueError(f"{self.name}.update: {len(rewards)} rewards for a batch of "
                       f"{samples.total_rows} rows; pass one per row of every process.")
    values = np.asarray([float(getattr(r, "value", r)) for r in rewards], np.float32)
    with self.run.timer("rewards"):
      fields, host_metrics = learner.batch_fields(values, samples.group)
      fields = {k: None if v is None else np.asarray(samples.mine(np.asarray(v)))
                for k, v in fields.items()}
    batch = self._batch(samples.row_prompts, samples.tokens, sampler_logp=samples.logprobs,
                        **fields)
    with self.run.timer("training"):
      metrics = learner.step(learner.algorithm.name, batch, temperature=self.temperature)
    return {**reward_metrics(rewards), **host_metrics,
            **{f"train/{k}": v for k, v in metrics.items()}}

  def sft(self, prompts: Sequence[batching.Example], targets: Sequence[Sequence[int]]
          ) -> dict[str, float] | None:
    """One SFT step on (prompt, target) pairs that fit; None if none fits (anywhere)."""
    learner = self._trainable()
    keep = [k for k, p in enumerate(prompts) if self.fits(p, reserve=len(targets[k]))]
    dropped = len(prompts) - len(keep)
    if dropped:
      self.run.counts[f"{self.name}/dropped_prompt_too_long"] += dropped
    if not distributed.total(len(keep)):
      return None
    batch = self._batch([prompts[k] for k in keep], [targets[k] for k in keep])
    with self.run.timer("training"):
      return learner.step("sft", batch)

  def score(self, row_prompts: Sequence[batching.Example],
            completions: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """The policy's log-probs of each completion token, at this role's temperature."""
    batch = self._batch(list(row_prompts), list(completions))
    logp = distributed.local_rows(
        self.policy.learner.score_policy(batch, temperature=self.temperature))
    return [logp[i, len(p.tokens) - 1:len(p.tokens) - 1 + len(t)]
            for i, (p, t) in enumerate(zip(row_prompts, completions))]

  # -- frozen copies ---------------------------------------------------------

  def frozen(self, copy_params: bool, params=None) -> "Role":
    """This role sampling with the weights it has now (see the module docstring).

    `params`: the trained params of a copy restored from a checkpoint.
    """
    learner = self.policy.learner
    if params is None and copy_params:
      params = _device_copy(learner.params)   # with LoRA only the adapter moves
    return self.replace(snapshot=Snapshot(learner.step_count, params))


def _call_ids(n: int, ids) -> np.ndarray:
  """Prompt ids of this process's n prompts in a call (default: process order)."""
  if ids is not None:
    ids = np.asarray(ids, np.int64)
    if len(ids) != n:
      raise ValueError(f"generate: {len(ids)} ids for {n} prompts.")
    return ids
  counts = distributed.allgather(n)
  return sum(counts[:distributed.process_index()]) + np.arange(n)
