"""The recipe runner: everything a method needs that is not the method.

A recipe (EVE, MM-Zero, EvoLMM, or one of a user's) is a `Recipe` subclass
that declares its roles (`role_specs(config)`), its schedule (`stages(config)`, usually
`schedule.iterated(...)`) and one function per stage kind,
`<kind>_step(stage, step)`; its module names it as `RECIPE`. The runner owns:

  schedule and cursor  the run is a list of `Stage`s; the cursor (stage index,
                       step in stage) is the one position counter
  role lifecycles      what stages declare: warm-start optimizers and the start
                       of RL after the last warm start, frozen roles for a
                       stage (copies when the stage trains the same weights)
  exact resume         checkpoints every `checkpoint.every` units and at every
                       stage end hold each policy's train state (and its KL
                       reference when a warm start made it), frozen copies, the
                       cursor, the counts, evaluation results, phase data and
                       the recipe's own host state (`Recipe.state()`, JSON)
  seeds                `run.seed(*parts)`: one stable hash of the run's seed and
                       any parts, so every step is a pure function of its place
                       in the schedule
  the sandbox          `run.open_sandbox()`: one pool for the run, closed with
                       it; `run.sandbox_results` waits and counts failures
  phase data           `run.phase_data(...)`: records a phase trains on, built
                       at its first step, cycled, the next step prepared ahead
  evaluation           an `eval_step` returns its numbers; they are recorded as
                       init / after_warmstart / iterN and the summary's
                       `heldout_gain_points` is one definition for every recipe
  observability        metrics (JSONL, TensorBoard) at the current train step,
                       counted reasons (`run.counts`), per-stage timing
                       breakdowns, progress bars with ETA, one HTML gallery per
                       iteration (`run.add_card`) that survives a resume,
                       summary.json, the run's config.json and roles.json

    run_recipe(eve.Eve, config, workdir)       # python -m evejax.main does this

Several processes (`--distributed`): every process runs the same schedule. A
recipe's steps give each process a contiguous block of the work
(`run.share`); rows carry ids that number them as one process would
(`role.Samples`), and what must be identical is decided from rows gathered in
that order (`Samples.gather`, `run.gather`). The runner keeps the rest the
same everywhere: counted reasons are summed over processes before they are
logged or saved, and every checkpoint position compares the processes' host
state and stops the run, naming the part, if one differs. Only process 0
writes metrics, galleries, summaries and config.json; checkpoints are written
and restored by all processes together (a directory every process reaches).
Each step also logs host memory (`host/rss_mib`, the largest over processes).
"""
from __future__ import annotations

import collections
import copy
import dataclasses
import hashlib
import json
import os
import shlex
import sys
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from absl import logging
import ml_collections

from evejax import checkpoint as checkpoint_lib
from evejax import distributed
from evejax import lifecycle
from evejax import loading
from evejax import observe
from evejax import parallel
from evejax import sandbox as sandbox_lib
from evejax import storage
from evejax.data import sources
from evejax.eval import restore as restore_lib
from evejax.eval import validation as validation_lib
from evejax.models import lora as lora_lib
from evejax.models import vlm
from evejax.processing import images as images_lib
from evejax.processing import prompts as prompts_lib
from evejax.recipes import role as role_lib
from evejax.recipes.schedule import Schedule
from evejax.recipes.schedule import Stage
from evejax.rl import learner as learner_lib
from evejax.sampling import Sampler

# Changes whenever the checkpoint layout does; older checkpoints are refused
# with one message instead of a tree mismatch.
CHECKPOINT_FORMAT = "recipe-core-2"


def stable_seed(*parts: Any) -> int:
  """A stable 31-bit seed from any JSON-able parts (not Python's salted hash)."""
  h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
  return int.from_bytes(h.digest()[:4], "little") & 0x7FFFFFFF


def warmstart_optimizer(lr: float, schedule: str, steps: int, warmup_steps: int) -> dict:
  """`config.train.optimizer` overrides of a warm start whose schedule spans its `steps`."""
  return dict(lr=lr, schedule=schedule, total_steps=max(steps, 1),
              warmup_steps=min(warmup_steps, max(steps - 1, 0)))


def whole_backbone_sft(train: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config.train` for a role that trains the whole backbone by SFT (no adapter, no
  KL reference): a `RoleSpec.train` for warm-starting the base of LoRA roles."""
  cfg = ml_collections.ConfigDict({k: copy.deepcopy(v) for k, v in train.items()
                                   if k != "reinforce"})
  cfg.lora.rank, cfg.algorithm, cfg.loss.kl_coef = 0, "grpo", 0.0
  return cfg


@dataclasses.dataclass(frozen=True)
class RoleSpec:
  """A role a recipe plays: sampling with `config.sampling.<sampling or name>`,
  learning by `config.train` (or `train(config.train)`), with its own weights or
  those of `share_policy_with`.

  `trained_reference`: the role's KL reference will be weights the run trains
  (a warm start); it is then saved in every checkpoint. `rl=False`: the role is
  only ever warm-started (EvoLMM's backbone).
  """
  name: str
  share_policy_with: str | None = None
  trained_reference: bool = False
  sampling: str | None = None
  rl: bool = True
  train: Callable[[Any], Any] | None = None

  def train_config(self, config):
    return config.train if self.train is None else self.train(config.train)


class PhaseData:
  """The records a phase trains on, in the run's host state.

  Built by `build(stage)` at the phase's first step: a list that every process
  holds alike, or this process's candidates {id: record, or None when it is
  not kept}, gathered into every process's kept records in id order (and
  logged as `<name>/pool` and `<name>/kept`). No records skip every step,
  counted as `<role>/no_data_steps`. Step s takes records {i: records[(s *
  per_step + i) mod len]} for i in this process's share of `per_step`;
  `prepare(records)` turns them into the step's work (e.g. sandbox futures) and
  runs one step ahead, while the device works on the current step.
  """

  def __init__(self, run: "Run", name: str, per_step: int,
               build: Callable[[Stage], list | dict],
               prepare: Callable[[dict[int, Any]], Any] | None = None):
    self.run, self.name, self.per_step = run, name, int(per_step)
    self.build, self.prepare = build, prepare or (lambda records: records)
    self.records: list = []
    self._ahead: tuple[int, Any] | None = None

  def _build(self, stage: Stage) -> list:
    built = self.build(stage)
    if not isinstance(built, Mapping):
      return list(built)
    pool = distributed.gather_by_id(list(built), list(built.values()))
    kept = [r for r in pool if r]
    self.run.log({"pool": len(pool), "kept": len(kept)}, prefix=self.name)
    return kept

  def _records(self, step: int) -> dict[int, Any]:
    n = self.per_step
    return {i: self.records[(step * n + i) % len(self.records)] for i in distributed.share(n)}

  def for_step(self, stage: Stage, step: int) -> Any | None:
    """The step's prepared work, or None when the phase has no data."""
    if step == 0:
      self.records = self._build(stage)
      if not self.records:
        logging.warning("%s: no %s; its steps are skipped.", stage.name, self.name)
    if not self.records:
      self.run.counts[f"{stage.role}/no_data_steps"] += 1
      return None
    ahead, self._ahead = self._ahead, None
    work = ahead[1] if ahead and ahead[0] == step else self.prepare(self._records(step))
    if step + 1 < stage.steps:
      self._ahead = (step + 1, self.prepare(self._records(step + 1)))
    return work


def decoding_kwargs(config) -> dict:
  """The Sampler's decode-mode arguments from config.decoding (absent: its defaults)."""
  d = config.get("decoding")
  if d is None:
    return {}
  return dict(decode_mode=d.mode, refill_fraction=float(d.refill_fraction),
              refill_every=int(d.refill_every))


class Run:
  """What a recipe's steps use: roles, one sampler, the sandbox, seeds, metrics,
  counts, galleries. Built by `Runner`; a recipe reaches it as `self.run`."""

  def __init__(self, config, workdir: str, model: loading.LoadedModel):
    self.config = config
    self.workdir = workdir
    self.model_config = model.model_config
    self.tokenizer = model.tokenizer
    self.mesh, self.rules = model.mesh, model.rules
    self.initial_params = model.params   # the loaded weights, until the roles hold them
    p = config.processing
    blocks = [b for b in config.sampling.values()]
    self.sampler = Sampler(
        model.model_config, mesh=model.mesh, rules=model.rules,
        length_buckets=tuple(p.length_buckets), patch_buckets=tuple(p.patch_buckets),
        batch_buckets=tuple(p.batch_buckets),
        max_cache=max(p.length_buckets) + max(
            [int(b.max_new_tokens) for b in blocks]
            + [validation_lib.new_tokens(config.get("validation"), model.model_config)]),
        prompt_pad_id=model.tokenizer.pad_id, model=_sampling_model(config),
        **decoding_kwargs(config))
    distributed.check_batch_layout(model.mesh, model.rules)
    self.counts: collections.Counter = collections.Counter()
    self._counts_everywhere: collections.Counter = collections.Counter()  # at the last sync
    self.timer = observe.Timer()
    self.roles: dict[str, role_lib.Role] = {}
    self.policies: dict[str, role_lib.Policy] = {}
    self.frozen: dict[str, role_lib.Role] = {}
    self.results: dict[str, dict] = {}          # evaluations: init, after_warmstart, iterN
    self.phases: dict[str, PhaseData] = {}
    self.cursor = (0, 0)
    self.schedule: Schedule | None = None
    self.writer: observe.MetricsWriter | None = None
    self.sandbox: sandbox_lib.SandboxPool | None = None
    self.gallery_title = "evejax tasks"
    self._galleries: dict[int, observe.Gallery] = {}
    # The image processor: the family's, then the checkpoint's preprocessor_config.json.
    self.image_settings = images_lib.image_settings(model.model_config, config.init.hf_dir or None)
    self.validation = validation_lib.from_config(config.get("validation"), model.model_config,
                                                 model.tokenizer, self.sampler)

  # -- roles -----------------------------------------------------------------

  def add_roles(self, specs: Sequence[RoleSpec]) -> None:
    """Builds the recipe's roles (in order: a shared policy is an earlier role's)."""
    for spec in specs:
      block = spec.sampling or spec.name
      if block not in self.config.sampling:
        raise ValueError(f"role {spec.name!r} has no sampling block config.sampling.{block}; "
                         f"there are {sorted(self.config.sampling)}.")
      if spec.share_policy_with is not None:
        policy = self.roles[spec.share_policy_with].policy
      else:
        if self.initial_params is None:
          raise ValueError("roles are built in the recipe's constructor, before the run starts.")
        policy = role_lib.Policy(spec.name, self, spec.train_config(self.config),
                                 self.initial_params, param_dtype=self.config.model.param_dtype,
                                 checkpoint_reference=spec.trained_reference, rl=spec.rl)
        self.policies[spec.name] = policy
      self.roles[spec.name] = role_lib.Role(spec.name, policy, self.config.sampling[block])

  def freeze(self, name: str, copy: bool = False) -> role_lib.Role:
    """`roles[name]` with its weights as they are now, kept until `unfreeze`.

    A copy when asked, or when its policy is shared with another role; else a
    view, which refuses to sample once its policy has trained. Copies are saved
    in checkpoints, so a resumed run samples the same frozen weights.
    """
    role = self.roles[name]
    shared = sum(r.policy is role.policy for r in self.roles.values()) > 1
    self.frozen[name] = role.frozen(copy_params=copy or shared)
    return self.frozen[name]

  def unfreeze(self, name: str) -> None:
    self.frozen.pop(name, None)

  @property
  def is_writer(self) -> bool:
    """Whether this process writes files (metrics, galleries, charts): process 0."""
    return jax.process_index() == 0

  # -- several processes ------------------------------------------------------

  def share(self, n: int) -> range:
    """The items of range(n) this process owns (a contiguous block; all with one)."""
    return distributed.share(n)

  def owned(self, n: int, build: Callable[[int], Any]) -> dict[int, Any]:
    """{i: build(i)} for the items i of a step's n that this process owns."""
    return {i: build(i) for i in distributed.share(n)}

  def gather(self, rows) -> list:
    """Every process's JSON-able rows, in process order (blocks of `share`, in order)."""
    return distributed.gather_rows(rows)

  def mean(self, values: Sequence[float]) -> float:
    """The mean of every process's `values` (0 when there are none anywhere)."""
    n = distributed.total(len(values))
    return float(distributed.total(float(sum(values))) / n) if n else 0.0

  def restore_counts(self, counts: Mapping[str, int]) -> None:
    """The counts of a checkpoint (every process's, summed when it was saved)."""
    self.counts.update(counts)
    self._counts_everywhere.update(counts)

  def sync_counts(self) -> None:
    """Makes `counts` every process's counts summed (each counts its own rows)."""
    for reason, n in sources.take_skips().items():   # unreadable images, served by stand-ins
      self.counts[f"data/skipped_{reason}"] += n
    if not distributed.is_multiprocess():
      return
    base = self._counts_everywhere
    delta = {k: v - base.get(k, 0) for k, v in self.counts.items()
             if k not in base or v != base[k]}   # a key counted 0 times is kept
    total = collections.Counter(base)
    for part in distributed.allgather(delta):
      total.update(part)
    self.counts.clear()
    self.counts.update(total)
    self._counts_everywhere = collections.Counter(total)

  # -- the sandbox and phase data ---------------------------------------------

  def open_sandbox(self, **checks) -> sandbox_lib.SandboxPool:
    """The run's sandbox pool (`config.sandbox`, `config.checks` updated by `checks`)."""
    if self.sandbox is None:
      self.sandbox = sandbox_lib.SandboxPool(sandbox_lib.SandboxConfig.from_config(
          {**self.config.sandbox.to_dict(),
           "checks": {**self.config.checks.to_dict(), **checks}}))
    return self.sandbox

  def sandbox_results(self, futures: Sequence[Any]) -> list[Any]:
    """Waits for sandbox futures (None stays None); counts each failure's reason."""
    with self.timer("sandbox"):
      results = [None if f is None else f.result() for f in futures]
    for r in results:
      if r is not None and not r.ok:
        self.counts[f"sandbox/{r.reason}"] += 1
      if r is not None and r.stats.get("worker_deaths"):   # killed from outside, replaced
        self.counts["sandbox/worker_deaths"] += r.stats["worker_deaths"]
    return results

  def phase_data(self, name: str, per_step: int, build: Callable[[Stage], list | dict],
                 prepare: Callable[[dict[int, Any]], Any] | None = None) -> PhaseData:
    """A phase's data (see `PhaseData`), saved in checkpoints under `name`."""
    self.phases[name] = PhaseData(self, name, per_step, build, prepare)
    return self.phases[name]

  # -- seeds, prompts, metrics, galleries -------------------------------------

  def seed(self, *parts: Any) -> int:
    """A seed that is a pure function of the run's seed and `parts`."""
    return stable_seed(self.config.seed, *parts)

  @property
  def train_step(self) -> int:
    """Train steps taken so far in the run: the step metrics are logged at."""
    return self.schedule.train_steps_done(self.cursor)

  def prompt(self, text: str, images=()):
    """A one-turn user prompt with the run's image pixel bounds (config.data)."""
    d = self.config.data
    return prompts_lib.user_prompt(self.model_config, self.tokenizer, text, images,
                                   min_pixels=d.min_pixels, max_pixels=d.max_pixels,
                                   settings=self.image_settings)

  def completion(self, text: str):
    return prompts_lib.completion_ids(self.tokenizer, text)

  def log(self, metrics: Mapping[str, Any], prefix: str | None = None) -> None:
    """Scalars at the current train step (JSONL + TensorBoard)."""
    self.writer.scalars(self.train_step, metrics, prefix=prefix,
                        position=self.schedule.units_done(self.cursor))

  def log_counts(self) -> None:
    self.sync_counts()
    self.log({k: float(v) for k, v in self.counts.items()}, prefix="counts")

  def add_card(self, stage: Stage, key: str, build: Callable[[], Mapping[str, Any]]) -> None:
    """A card in the gallery of `stage`'s iteration, built only if it has room.

    Process 0 writes the gallery, from the rows it owns; elsewhere nothing is built.
    """
    if not self.is_writer:
      return
    gallery = self._gallery(stage.iteration)
    key = f"{stage.kind}_{key}"
    if gallery.has_room(key):
      gallery.add({"title": f"{stage.name} {key}", **build()}, key=key)

  def _gallery(self, iteration: int) -> observe.Gallery:
    if iteration not in self._galleries:
      self._galleries[iteration] = observe.Gallery(
          title=f"{self.gallery_title}, iteration {iteration}",
          max_cards=self.config.log.gallery_tasks,
          cards_dir=os.path.join(self.workdir, "gallery", f"iter{iteration}.cards"))
    return self._galleries[iteration]

  def write_gallery(self, iteration: int) -> str | None:
    """The iteration's gallery page (every iteration of self-evolution has one,
    with no cards if it made no task worth showing)."""
    if not self.is_writer or (iteration == 0 and iteration not in self._galleries):
      return None
    path = self._gallery(iteration).write(
        os.path.join(self.workdir, "gallery", f"iter{iteration}.html"))
    logging.info("Gallery of iteration %d: %s", iteration, path)
    return path

  def close(self) -> None:
    if self.sandbox is not None:
      self.sandbox.close()
      self.sandbox = None
    if self.writer is not None:
      self.writer.close()


class Recipe:
  """A method: its roles, stages and per-step functions (`<kind>_step`).

  `heldout_metric`: the evaluation number the summary's gain is of.
  `gallery_title`: the heading of its galleries.
  `multiprocess`: whether the recipe shares each step's work out between
  processes (`Run.share`, ids on its rows) and decides what spans the batch
  from gathered rows; a recipe that does not is refused on several processes,
  where each would sample, render and decide on its own.
  """

  heldout_metric = "heldout_accuracy"
  gallery_title = "evejax tasks"
  multiprocess = False

  def __init__(self, run: Run):
    self.run = run
    self.config = run.config
    run.gallery_title = self.gallery_title
    run.add_roles(self.role_specs(run.config))

  @property
  def roles(self) -> dict[str, role_lib.Role]:
    """The run's roles by name (scripted or wrapped ones included)."""
    return self.run.roles

  @classmethod
  def role_specs(cls, config) -> list[RoleSpec]:
    """The roles the recipe plays under `config` (also what memory plans build)."""
    raise NotImplementedError

  @classmethod
  def stages(cls, config) -> list[Stage]:
    """The schedule under `config` (usually `schedule.iterated(...)`)."""
    raise NotImplementedError

  def step(self, stage: Stage, step: int) -> dict | None:
    """Runs step `step` of `stage` by calling `self.<stage.kind>_step`.

    An evaluation step returns its numbers (recorded and logged as `eval/...`),
    a warm-start step its SFT metrics (logged as `<kind>/<role>/...`), if any.
    """
    fn = getattr(self, f"{stage.kind}_step", None)
    if fn is None:
      raise NotImplementedError(f"{type(self).__name__} has no {stage.kind}_step for "
                                f"stage {stage.name}.")
    return fn(stage, step)

  def end_stage(self, stage: Stage) -> None:
    """After a stage's last step and the runner's own stage-end work."""

  def sft_optimizer(self, policy: str) -> dict:
    """`config.train.optimizer` overrides of a policy's warm start (SFT) optimizer."""
    return {}

  def state(self) -> dict[str, Any]:
    """The recipe's own host state for checkpoints (plain JSON)."""
    return {}

  def load_state(self, state: Mapping[str, Any]) -> None:
    """Restores what `state()` returned."""

  def summary(self) -> dict[str, Any]:
    """The recipe's own results for summary.json (evaluations are added)."""
    return {}

  def close(self) -> None:
    """Releases what the recipe holds beyond the run's (which the run closes)."""


class Runner:
  """Builds a recipe's run, resumes it from its workdir, runs it to the end.

    with Runner(eve.Eve, config, workdir) as runner:
      summary = runner.run_schedule()

  Args:
    recipe_cls: a `Recipe` subclass.
    config: the run's ConfigDict.
    workdir: checkpoints, metrics, galleries and summaries go here.
    role_wrappers: {role name: fn(role) -> role} applied after the recipe has
      built its roles (tests drive a recipe with `role.scripted(...)`).
  """

  def __init__(self, recipe_cls: type[Recipe], config, workdir: str, *,
               role_wrappers: Mapping[str, Callable] | None = None):
    observe.setup_logging(workdir)
    if distributed.is_multiprocess():
      distributed.describe()
    self.config = c = config
    self.workdir = workdir
    if distributed.is_multiprocess() and not recipe_cls.multiprocess:
      raise loading.SetupError(
          f"{recipe_cls.__name__} runs on one process: it does not yet share its steps' work "
          f"out between processes, and this run has {distributed.process_count()}. Run it "
          "without --distributed (one host: the mesh still spans all its devices).")
    self.run = Run(c, workdir, loading.load_model(c))
    self.recipe = recipe_cls(self.run)
    self.run.initial_params = None   # every policy holds its own copy
    for name, wrap in (role_wrappers or {}).items():
      self.run.roles[name] = wrap(self.run.roles[name])
    self.run.schedule = self.schedule = Schedule(recipe_cls.stages(c))
    self.ckpt = checkpoint_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"), save_every=c.checkpoint.every,
        keep=c.checkpoint.keep, async_save=c.checkpoint.async_save)
    self._closed = False
    self.guard = lifecycle.from_config(c.checkpoint)   # [lifecycle] preemption, watchdog
    restored = self._restore()
    self.run.writer = observe.MetricsWriter(
        workdir, tensorboard=c.log.tensorboard,
        resume_position=self.schedule.units_done(self.run.cursor) if restored else None,
        resume_step=self.run.train_step if restored else None)
    _write_config(c, workdir, {n: r.policy.name for n, r in self.run.roles.items()})

  def __enter__(self) -> "Runner":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    """Closes the checkpointer (waiting for saves), the recipe, the sandbox, the writer."""
    if self._closed:
      return
    self._closed = True
    try:
      self.ckpt.close()
      self.recipe.close()
      self.run.close()
    finally:
      self.guard.stop()   # [lifecycle] after the last save is written

  # -- checkpoints -----------------------------------------------------------

  def _state(self) -> dict[str, Any]:
    run = self.run
    state = {f"policy/{n}": p.state() for n, p in run.policies.items()}
    state.update({f"frozen/{n}": f.snapshot.params for n, f in run.frozen.items()
                  if f.snapshot.copied})
    return state

  def _host_state(self) -> dict[str, Any]:
    run = self.run
    run.sync_counts()
    return {"format": CHECKPOINT_FORMAT, "cursor": list(run.cursor),
            "counts": dict(run.counts),
            "optimizers": {n: p.optimizer_kind for n, p in run.policies.items()},
            "frozen": [n for n, f in run.frozen.items() if f.snapshot.copied],
            "results": run.results,
            "phases": {n: p.records for n, p in run.phases.items()},
            "recipe": self.recipe.state()}

  def _abstract_state(self, host: Mapping[str, Any]) -> dict[str, Any]:
    run = self.run
    if host.get("format") != CHECKPOINT_FORMAT:
      raise loading.SetupError(
          f"the checkpoints in {self.ckpt.directory} were written by another evejax "
          f"checkpoint format ({host.get('format', 'before the recipe core')!r}, this one "
          f"is {CHECKPOINT_FORMAT!r}); resume them with that version, or start a new "
          "--workdir.")
    # The optimizer a policy ran when saved sets whether it has a reference.
    for name, kind in host["optimizers"].items():
      run.policies[name].use_optimizer(kind, self.recipe.sft_optimizer(name)
                                       if kind == "sft" else None)
    state = {f"policy/{n}": p.abstract_state() for n, p in run.policies.items()}
    for name in host["frozen"]:
      state[f"frozen/{name}"] = run.roles[name].policy.learner.abstract_params()
    return state

  def _restore(self) -> bool:
    run = self.run
    restored = self.ckpt.restore_latest(self._abstract_state)
    if restored is None:
      return False
    step, state, host = restored
    for name, policy in run.policies.items():
      policy.load_state(state[f"policy/{name}"])
    for name in host["frozen"]:
      run.frozen[name] = run.roles[name].frozen(True, params=state[f"frozen/{name}"])
    run.cursor = tuple(host["cursor"])
    run.restore_counts(host["counts"])
    run.results = host["results"]
    for name, records in host["phases"].items():
      run.phases[name].records = records
    self.recipe.load_state(host["recipe"])
    index = run.cursor[0]
    where = self.schedule.stages[index].name if index < len(self.schedule) else "the end"
    logging.info("Resumed from checkpoint step %d at %s step %d", step, where, run.cursor[1])
    return True

  def _save(self, force: bool = False) -> None:
    host = self._host_state()
    self._check_same_everywhere(host)
    self.ckpt.maybe_save(self.schedule.units_done(self.run.cursor), self._state(),
                         host, force=force)

  def _stop_if_preempted(self, where: str) -> None:
    """At a unit boundary: after a stop request, a checkpoint here on every process, then
    `Preempted` (exit 0 through run_recipe)."""
    unit = self.schedule.units_done(self.run.cursor)
    reason = self.guard.preemption.due(unit)
    if reason is None:
      return
    self._save(force=True)
    self.ckpt.wait()
    logging.warning("%s: checkpoint %d saved after %s; stopping.", reason, unit, where)
    raise lifecycle.Preempted(reason, unit, where, self.ckpt.directory)

  def _check_same_everywhere(self, host: dict[str, Any]) -> None:
    """Stops a multi-process run whose processes' host states differ (process 0's is saved)."""
    if not distributed.is_multiprocess():
      return
    data = json.dumps(host, sort_keys=True, default=str).encode()
    if distributed.same_everywhere(data):
      return
    parts = {**{k: v for k, v in host.items() if k != "recipe"},
             **{f"recipe.{k}": v for k, v in host["recipe"].items()}}
    digests = {k: hashlib.sha256(json.dumps(v, sort_keys=True, default=str).encode()).hexdigest()
               for k, v in parts.items()}
    everyone = distributed.allgather(digests)
    differ = sorted(k for k in digests if len({d.get(k) for d in everyone}) > 1)
    raise RuntimeError(
        f"the processes' host state differs at schedule position {self.run.cursor} in "
        f"{differ}: a recipe decided something from one process's data; gather it first "
        "(Samples.gather, run.gather) so that every process decides alike.")

  def _log_memory(self) -> None:
    """Resident host memory after a step: process 0's and the largest over processes."""
    rss = distributed.allgather(distributed.resident_mib())
    self.run.log({"rss_mib": rss[0], "rss_mib_max": max(rss)}, prefix="host")

  # -- the loop --------------------------------------------------------------

  def run_schedule(self) -> dict[str, Any]:
    """Runs (or resumes) the schedule to its end; returns the summary."""
    run, show = self.run, bool(self.config.log.progress)
    self.guard.start()   # [lifecycle]
    try:
      while run.cursor[0] < len(self.schedule):
        index, start = run.cursor
        stage = self.schedule.stages[index]
        run.timer.reset()
        self._begin_stage(stage)
        steps = range(start, stage.steps)
        if show:
          steps = observe.progress(stage.steps, desc=stage.name, initial=start)
        for step in steps:
          self.guard.beat(f"{stage.name} step {step}", self.schedule.units_done(run.cursor))
          result = self.recipe.step(stage, step)
          if not stage.trains and result is not None:
            self._record_evaluation(index, result)
          elif stage.optimizer == "sft" and result is not None:
            run.log(result, prefix=f"{stage.kind}/{stage.role}")
          self._log_memory()
          run.cursor = (index, step + 1)
          if stage.trains:
            self._validate()
          self._save()
          self._stop_if_preempted(f"{stage.name} step {step}")   # [lifecycle]
        self.guard.beat(f"{stage.name} end", self.schedule.units_done(run.cursor))
        self._end_stage(index)
        run.cursor = (index + 1, 0)
        self._save(force=True)
        self._stop_if_preempted(f"the end of {stage.name}")   # [lifecycle]
      return self._summary()
    finally:
      self.close()

  def _begin_stage(self, stage: Stage) -> None:
    """The stage's declared lifecycle: its warm-start optimizer, its frozen roles."""
    run = self.run
    trained = run.roles[stage.role].policy if stage.role else None
    if stage.optimizer == "sft":
      trained.use_optimizer("sft", self.recipe.sft_optimizer(trained.name))
    for name in stage.frozen:
      if name not in run.frozen:   # a copy restored by a resume is kept
        run.freeze(name, copy=run.roles[name].policy is trained)

  def _end_stage(self, index: int) -> None:
    run, stage = self.run, self.schedule.stages[index]
    if stage.trains:
      logging.info("%s timing: %s", stage.name, run.timer.line())
      run.log({f"time/{k}": v for k, v in run.timer.summary().items()}, prefix=stage.kind)
    for name in stage.frozen:
      run.unfreeze(name)
    if index == self.schedule.last_warmstart:
      # RL starts from the warm-started weights with a fresh optimizer; they
      # are also its KL reference.
      for policy in run.policies.values():
        if policy.optimizer_kind == "sft" and policy.rl:
          policy.start_rl()
    self.recipe.end_stage(stage)
    following = self.schedule.stages[index + 1:index + 2]
    if not following or following[0].iteration != stage.iteration:
      run.write_gallery(stage.iteration)

  def _record_evaluation(self, index: int, result: Mapping[str, Any]) -> None:
    key = self.schedule.eval_key(index)
    self.run.results[key] = dict(result)
    logging.info("Held-out evaluation (%s): %s", key, dict(result))
    self.run.log(result, prefix="eval")

  def _validate(self) -> None:
    """In-loop validation of `validation.role` every `validation.every` train steps."""
    val, run = self.run.validation, self.run
    if val is None or not val.due(run.train_step):
      return
    with run.timer("validation"):
      metrics = val.evaluate(run.roles[self.config.validation.role].weights)
    run.log(metrics, prefix=f"val/{val.name}")

  def _summary(self) -> dict[str, Any]:
    run = self.run
    run.sync_counts()
    res = {**run.results, **self.recipe.summary()}
    metric = self.recipe.heldout_metric
    start = res.get("after_warmstart", res.get("init"))
    last = [k for k in run.results if k.startswith("iter")]
    if start and last and metric in start:
      final = run.results[max(last, key=lambda k: int(k[4:]))]
      # One definition: the last iteration against the start of self-evolution.
      res["heldout_gain_points"] = 100 * (final[metric] - start[metric])
    res["counts"] = dict(run.counts)
    if jax.process_index() == 0:
      path = os.path.join(self.workdir, "summary.json")
      with open(path, "w") as f:
        json.dump(res, f, indent=2)
      logging.info("Summary (%s): %s", path, json.dumps(res))
      print(json.dumps(res, indent=2))
    return res


def abstract_policies(recipe_cls: type[Recipe], config, mesh=None) -> dict[str, Any]:
  """{policy name: abstract Learner} of the roles `recipe_cls` plays under `config`.

  Nothing is allocated or compiled (parameters are ShapeDtypeStructs): what a
  memory plan lowers, and what a test builds to check that a config makes its
  roles. `mesh` defaults to the config's.
  """
  model_config = loading.model_config_from(config)
  if mesh is None:
    mesh = loading.make_mesh(config)
  dtype = jnp.dtype(config.model.param_dtype)
  shapes = jax.eval_shape(lambda: vlm.init_params(model_config, jax.random.PRNGKey(0), dtype))
  return {spec.name: learner_lib.Learner(
              model_config, spec.train_config(config), shapes,
              param_dtype=config.model.param_dtype, mesh=mesh,
              rules=parallel.rules_from_config(config.mesh))
          for spec in recipe_cls.role_specs(config) if spec.share_policy_with is None}


def _sampling_model(config):
  """The model the sampler runs: the VLM, or with `train.lora` the VLM with an adapter."""
  cfg = lora_lib.from_config(learner_lib.merge_config(config.train).lora)
  return None if cfg is None else lora_lib.AdaptedModel(cfg)


def _write_config(config, workdir: str, roles: Mapping[str, str]) -> None:
  """The run's config and its {role: policy} map as JSON: what `python -m evejax.eval
  --config.init.workdir` reads, so a run (of any recipe) is evaluable without it."""
  if jax.process_index() != 0:
    return
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  with open(os.path.join(workdir, restore_lib.ROLES_FILE), "w") as f:
    json.dump(dict(roles), f, indent=2)


# What ends a run with one message instead of a traceback: a user's mistake, a
# full or unwritable disk, a sandbox that cannot replace its workers, unreadable data.
STOPPING_ERRORS = (loading.SetupError, storage.StorageError, sandbox_lib.SandboxBroken,
                   sources.SourceError, checkpoint_lib.CheckpointError)


def run_recipe(recipe_cls: type[Recipe], config, workdir: str, **kwargs) -> dict[str, Any]:
  """Runs (or resumes) `recipe_cls` in `workdir`; a user's mistake ends in one message.

  A stop request (SIGTERM, SIGINT, a preemption notice) returns after the
  checkpoint is saved, with {"preempted": reason, "unit": n} (exit 0 from main).
  """
  try:
    with Runner(recipe_cls, config, workdir, **kwargs) as runner:
      return runner.run_schedule()
  except lifecycle.Preempted as e:
    command = shlex.join(sys.orig_argv) if "evejax.main" in sys.orig_argv else ""
    print(f"evejax: {e}" + (f"\n  {command}" if command else ""), file=sys.stderr, flush=True)
    return {"preempted": e.reason, "unit": e.unit}
  except STOPPING_ERRORS as e:
    raise SystemExit(f"evejax: {e}") from None
