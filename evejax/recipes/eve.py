"""EVE: a Challenger writes image-editing programs, a Solver answers questions about them.

The algorithm (reference/METHODS.md, EVE), as `Eve.run` executes it:

  (warm start, tiny preset only: SFT both roles on the built-in library)
  for iteration in 1..I:
    Challenger phase, the Solver frozen, for each step:
      prompts  = source image + 1-2 programs from the example queue + instructions
      programs = Challenger samples G replies per prompt          (device)
      outputs  = sandbox runs each program on its image            (host, overlapped)
      questions of types 0 and 1 from every valid program          (host)
      p_q      = frozen Solver's pass rate over S samples each     (device)
      R_C      = w_f f + w_v v + w_d d - w_c c_hat                 (host)
      GRPO update of the Challenger; admit programs to the queue; log the questions
    Solver phase, for each step:
      questions logged with 0 < p < 1, hardest first
      R_S = w_fmt fmt + w_acc acc over G replies each; GRPO update of the Solver
    held-out evaluation (families never shown to the Challenger), gallery

Every step is a pure function of the run's seed and its position in the schedule
(stage, step), so a run killed anywhere resumes from its last checkpoint with
the same metrics.
"""
from __future__ import annotations

import collections
import copy
import dataclasses
import hashlib
import json
import os
from typing import Any

import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from evejax import checkpoint as checkpoint_lib
from evejax import observe
from evejax.data import sources
from evejax.data import transforms
from evejax.processing import batching
from evejax.recipes import common
from evejax.recipes import eve_queue
from evejax.recipes import eve_tasks
from evejax.rewards import eve as eve_rewards
from evejax.rewards import registry as reward_registry
from evejax.rl import advantages as adv_lib
from evejax.rl import learner as learner_lib
from evejax.rl import rollouts
from evejax.sampling import Sampler
from evejax import sandbox as sandbox_lib


@dataclasses.dataclass(frozen=True)
class Stage:
  """One segment of the schedule: `steps` steps of one kind for one role."""
  kind: str        # warmstart | challenger | solver | eval
  role: str        # challenger | solver | ""
  iteration: int   # 0 before the EVE iterations
  steps: int

  @property
  def name(self) -> str:
    if self.kind == "eval":
      return f"eval/iter{self.iteration}"
    return f"{self.kind}/{self.role}/iter{self.iteration}"


def schedule(config) -> list[Stage]:
  """The whole run as a list of stages; resume = (stage index, step in stage)."""
  e, w = config.eve, config.warmstart
  stages = [Stage("eval", "", 0, 1)]
  if w.enabled:
    stages += [Stage("warmstart", "challenger", 0, w.challenger_steps),
               Stage("warmstart", "solver", 0, w.solver_steps),
               Stage("eval", "", 0, 1)]
  for it in range(1, e.iterations + 1):
    stages += [Stage("challenger", "challenger", it, e.challenger_steps),
               Stage("solver", "solver", it, e.solver_steps),
               Stage("eval", "", it, 1)]
  return stages


def _seed(*parts: Any) -> int:
  """A stable 31-bit seed from any JSON-able parts (not Python's salted hash)."""
  h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
  return int.from_bytes(h.digest()[:4], "little") & 0x7FFFFFFF


def _pil(x) -> Image.Image:
  return x if isinstance(x, Image.Image) else Image.fromarray(np.asarray(x, np.uint8))


@dataclasses.dataclass
class Task:
  """One executed program and the questions built from it."""
  image_index: int
  program: str                   # the code block as written
  function_text: str             # the program above args_list
  args: list[dict]
  outputs: list[Image.Image]
  questions: list[eve_tasks.Question]
  seed: int = 0                  # the questions' shuffle seed


class Eve:
  """The EVE recipe; `run()` executes (or resumes) the whole schedule."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = c = config
    self.workdir = workdir
    self.rt = common.build_runtime(c)
    self.tok = self.rt.tokenizer
    self.stages = schedule(c)
    self.timer = observe.Timer()
    self.counts = collections.Counter()   # reasons of drops and failures, whole run

    self.library = dict(transforms.library())
    if c.eve.transforms:
      self.library.update(transforms.load_library(c.eve.transforms))
    self.heldout = [n for n in transforms.HELDOUT_FAMILIES if n in self.library]
    self.train_families = [n for n in self.library if n not in self.heldout]

    data = c.data.to_dict()
    self.source = sources.make_source({**data, "seed": c.seed})
    self.eval_source = sources.make_source({**data, "seed": c.seed + 1_000_003})
    size = self.source.item(0)[1].size
    seed_rng = np.random.default_rng(_seed(c.seed, "seed_programs"))
    self.queue = eve_queue.ExampleQueue(
        eve_queue.QueueConfig.from_config(c.queue),
        seeds=[(n, self.library[n].program(self.library[n].sample(seed_rng, *size)))
               for n in transforms.SEED_FAMILIES if n in self.library])

    p = c.processing
    self.length_buckets = tuple(p.length_buckets)
    self.patch_buckets = tuple(p.patch_buckets)
    max_new = max(c.sampling.challenger.max_new_tokens, c.sampling.solver.max_new_tokens)
    self.sampler = Sampler(
        self.rt.model_config, mesh=self.rt.mesh, rules=self.rt.rules,
        length_buckets=self.length_buckets, patch_buckets=self.patch_buckets,
        batch_buckets=tuple(p.batch_buckets), max_cache=max(self.length_buckets) + max_new,
        prompt_pad_id=self.tok.pad_id)
    self.pool = sandbox_lib.SandboxPool(sandbox_lib.SandboxConfig.from_config(
        {**c.sandbox.to_dict(), "checks": c.checks.to_dict()}))
    self.extra_rewards = [reward_registry.resolve(n) for n in c.reward.extra]

    # Learners: separate weights per role unless share_params.
    self.learners = {"challenger": self._make_learner(c.train, role="challenger")}
    self.learners["solver"] = (self.learners["challenger"] if c.eve.share_params
                               else self._make_learner(c.train, role="solver"))
    self.learner_kind = "rl"
    self.row_multiple = self.learners["challenger"].row_multiple
    self.rt.params = None  # the learners hold their own copies
    # With a warm start and a KL term, the reference (warm-started) weights
    # cannot be rebuilt from the config, so checkpoints carry them.
    self._ref_in_checkpoint = bool(c.warmstart.enabled and c.train.loss.kl_coef > 0)
    self.ref_params: dict[str, Any] = {}

    self.logged: list[dict] = []        # Challenger-phase questions for the Solver
    self.solver_data: list[dict] = []   # selected at the start of a Solver phase
    self.results: dict[str, Any] = {}   # evaluation results by stage
    self._galleries: dict[int, observe.Gallery] = {}
    self.cursor = (0, 0)                # (stage index, step within the stage)
    self.global_step = 0                # train steps of any role: the metrics' step
    self.position = 0                   # completed schedule units: the checkpoint's step
    self._eval_tasks: list[Task] | None = None
    self._rebuild_ahead: tuple[int, Any] | None = None  # (Solver step, its programs in the sandbox)

    self.ckpt = checkpoint_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"), save_every=c.checkpoint.every,
        keep=c.checkpoint.keep, async_save=c.checkpoint.async_save)
    self._restore()
    self.writer = observe.MetricsWriter(
        workdir, tensorboard=c.log.tensorboard,
        resume_step=self.global_step if self.global_step else None)

  # ------------------------------------------------------------------ setup
  def _make_learner(self, train_cfg, params=None, *, role: str):
    cfg = copy.deepcopy(train_cfg)
    cfg.param_dtype = self.config.model.param_dtype
    # The trainer scores log pi at the temperature the role samples at, so the
    # importance ratio starts at 1 (verl's convention).
    cfg.loss.temperature = float(self.config.sampling[role].temperature)
    return learner_lib.Learner(self.rt.model_config, cfg,
                               self.rt.params if params is None else params,
                               mesh=self.rt.mesh, rules=self.rt.rules, seed=self.config.seed)

  def _roles(self) -> dict[str, learner_lib.Learner]:
    if self.config.eve.share_params:
      return {"challenger": self.learners["challenger"]}
    return self.learners

  def _state(self) -> dict[str, Any]:
    state = {role: l.state for role, l in self._roles().items()}
    if self._ref_in_checkpoint:
      state["ref"] = self.ref_params or {role: l.params for role, l in self._roles().items()}
    return state

  def _extra(self) -> dict[str, Any]:
    return {"cursor": list(self.cursor), "global_step": self.global_step,
            "position": self.position,
            "queue": self.queue.state(), "logged": self.logged,
            "solver_data": self.solver_data, "results": self.results,
            "counts": dict(self.counts), "source": self.source.state()}

  def _restore(self) -> None:
    abstract = {role: l.abstract_state() for role, l in self._roles().items()}
    if self._ref_in_checkpoint:
      abstract["ref"] = {role: l.abstract_state().params for role, l in self._roles().items()}
    restored = self.ckpt.restore_latest(abstract)
    if restored is None:
      return
    step, state, extra = restored
    for role, l in self._roles().items():
      l.load_state(state[role])
    if self._ref_in_checkpoint:
      self.ref_params = state["ref"]
      for role, l in self._roles().items():
        l.set_ref_params(self.ref_params[role])
    self.cursor = tuple(extra["cursor"])
    self.global_step = int(extra["global_step"])
    self.position = int(extra["position"])
    self.queue.restore(extra["queue"])
    self.logged = extra["logged"]
    self.solver_data = extra["solver_data"]
    self.results = extra["results"]
    self.counts = collections.Counter(extra["counts"])
    self.source.restore(extra["source"])
    stage = self.stages[self.cursor[0]] if self.cursor[0] < len(self.stages) else None
    logging.info("Resumed from checkpoint step %d at %s step %d", step,
                 stage.name if stage else "the end", self.cursor[1])

  def _save(self, force: bool = False) -> None:
    self.position += 1
    self.ckpt.maybe_save(self.position, self._state(), self._extra(), force=force)

  # -------------------------------------------------------------------- run
  def run(self) -> dict[str, Any]:
    try:
      while self.cursor[0] < len(self.stages):
        index, start = self.cursor
        stage = self.stages[index]
        self.timer.reset()
        bar = observe.progress(stage.steps, desc=stage.name, initial=start)
        for step in bar:
          self._run_step(stage, step)
          self.cursor = (index, step + 1)
          if stage.kind != "eval":
            self.global_step += 1
          self._save()
        bar.close()
        self._end_stage(stage)
        self.cursor = (index + 1, 0)
        self._save(force=True)
      return self._summary()
    finally:
      self.ckpt.close()
      self.pool.close()
      self.writer.close()

  def _run_step(self, stage: Stage, step: int) -> None:
    self._set_learners("sft" if stage.kind == "warmstart" else "rl")
    if stage.kind == "eval":
      self._evaluate(stage)
    elif stage.kind == "warmstart":
      self._warmstart_step(stage, step)
    elif stage.kind == "challenger":
      self._challenger_step(stage, step)
    else:
      if step == 0 or not self.solver_data:
        self.solver_data = self._select_solver_data()
      self._solver_step(stage, step)

  def _end_stage(self, stage: Stage) -> None:
    if stage.kind in ("challenger", "solver", "warmstart"):
      line = self.timer.line()
      logging.info("%s timing: %s", stage.name, line)
      self.writer.scalars(self.global_step, {f"time/{k}": v for k, v in self.timer.summary().items()},
                          prefix=stage.kind)
    if stage.kind == "warmstart" and stage.role == "solver":
      self._after_warmstart()
    if stage.kind == "challenger":
      path = self._gallery(stage.iteration).write(
          os.path.join(self.workdir, "gallery", f"iter{stage.iteration}.html"))
      logging.info("Gallery of iteration %d: %s", stage.iteration, path)

  def _after_warmstart(self) -> None:
    """GRPO starts from the warm-started weights with a fresh optimizer; they are
    also the KL reference (saved in checkpoints when kl_coef > 0)."""
    self._set_learners("rl", carry_state=False)
    if self._ref_in_checkpoint:
      self.ref_params = {role: l.params for role, l in self._roles().items()}
      for role, l in self._roles().items():
        l.set_ref_params(self.ref_params[role])

  def _set_learners(self, kind: str, carry_state: bool = True) -> None:
    """Rebuilds the learners with the SFT ('sft') or the RL ('rl') optimizer.

    Both are the same optax chain with other hyperparameters, so the optimizer
    state carries over unchanged (`carry_state`), which keeps resume exact.
    """
    if kind == self.learner_kind and carry_state:
      return
    w = self.config.warmstart
    for role, old in self._roles().items():
      cfg = copy.deepcopy(self.config.train)
      if kind == "sft":
        # Each role's warm start is its own run: its schedule spans its own steps
        # (the optimizer's count starts at 0 for it and travels in checkpoints).
        steps = {"challenger": w.challenger_steps, "solver": w.solver_steps}[role]
        lr, schedule = w.lr, w.schedule
        if role == "solver" and not self.config.eve.share_params:
          lr, schedule = w.solver_lr or lr, w.solver_schedule or schedule
        if self.config.eve.share_params:
          steps = w.challenger_steps + w.solver_steps
        cfg.optimizer.update(dict(lr=lr, schedule=schedule, total_steps=max(steps, 1),
                                  warmup_steps=min(w.warmup_steps, max(steps - 1, 0))))
        cfg.loss.kl_coef = 0.0
      new = self._make_learner(cfg, old.params, role=role)
      if carry_state:
        new.load_state(old.state)
      self.learners[role] = new
    if self.config.eve.share_params:
      self.learners["solver"] = self.learners["challenger"]
    self.learner_kind = kind

  # -------------------------------------------------------------- sampling
  def _generate(self, role: str, prompts: list[batching.Example], block, group: int,
                seed: int, greedy: bool = False):
    sp = common.sampling_params(self.rt, block, group_size=group, greedy=greedy)
    with self.timer("sampling"):
      out = self.sampler.generate(self.learners[role].params, prompts, sp, seed)
    toks, lps = rollouts.completions_from_samples(out)
    self.counts[f"{role}/completion_with_vision_token"] += sum(
        rollouts.has_vision_tokens(self.rt.model_config, t) for t in toks)
    texts = self.tok.decode_batch([t for t in toks], skip_special_tokens=True)
    return toks, lps, texts

  def _question_prompt(self, q: eve_tasks.Question) -> batching.Example:
    return common.prompt_example(self.rt, q.text, q.images, min_pixels=self.config.data.min_pixels,
                                 max_pixels=self.config.data.max_pixels)

  def _fits(self, ex: batching.Example, max_new: int) -> bool:
    ok = common.fits(ex, self.length_buckets, self.patch_buckets, reserve=max_new)
    if not ok:
      self.counts["dropped/prompt_too_long"] += 1
    return ok

  def _pass_rates(self, questions: list[eve_tasks.Question], seed: int) -> list[float]:
    """The frozen Solver's mean accuracy over S samples per question."""
    if not questions:
      return []
    block = self.config.sampling.solver
    prompts = [self._question_prompt(q) for q in questions]
    S = self.config.eve.difficulty_samples
    _, _, texts = self._generate("solver", prompts, block, S, seed)
    acc = [eve_tasks.grade(q, eve_tasks.boxed_content(t) or "")
           for q, t in zip(np.repeat(np.array(questions, dtype=object), S), texts)]
    return [float(np.mean(acc[i * S:(i + 1) * S])) for i in range(len(questions))]

  # ----------------------------------------------------------- the sandbox
  def _submit(self, code: str, image: Image.Image):
    return self.pool.submit(sandbox_lib.EveJob(source=code, image=np.asarray(image),
                                               num_args=self.config.eve.num_args))

  def _task_from_result(self, image_index: int, image: Image.Image, code: str, result,
                        seed: int, types=None) -> Task | None:
    if not result.ok:
      self.counts[f"sandbox/{result.reason}"] += 1
      return None
    outputs = [_pil(o) for o in result.images]
    questions = eve_tasks.build_questions(
        image, result.function_source, result.args, outputs,
        types=tuple(types if types is not None else self.config.eve.question_types), seed=seed)
    return Task(image_index, code, result.function_source, list(result.args), outputs, questions,
                seed)

  # ------------------------------------------------------------- warm start
  def _warmstart_step(self, stage: Stage, step: int) -> None:
    """SFT on the built-in library: Challenger on programs, Solver on their questions."""
    c = self.config
    rng = np.random.default_rng(_seed(c.seed, stage.name, step))
    prompts, targets = [], []
    n = c.warmstart.batch_size   # rows; a Solver image gives one row per question type
    if stage.role == "solver":
      n = c.warmstart.solver_batch_size or n
      n = max(1, n // max(1, len(c.eve.question_types)))
    images = [(i, self.source.item(i)[1]) for i in rng.integers(0, len(self.source), n)]
    if stage.role == "challenger":
      for i, image in images:
        names = list(c.warmstart.challenger_families) or self.train_families
        fam = self.library[names[rng.integers(len(names))]]
        examples = [e.program for e in self.queue.sample_examples(rng)]
        text, target = eve_tasks.challenger_sft_pair(
            fam, rng, image.size, examples, style=c.eve.instructions,
            think_text=fam.description if c.warmstart.short_think else None)
        prompts.append(common.prompt_example(self.rt, text, [image], min_pixels=c.data.min_pixels,
                                             max_pixels=c.data.max_pixels))
        targets.append(common.completion_ids(self.rt, target))
    else:
      fams = [self.library[self.train_families[k]]
              for k in rng.integers(len(self.train_families), size=len(images))]
      programs = [f.program(f.sample(rng, *im.size)) for f, (_, im) in zip(fams, images)]
      with self.timer("sandbox"):
        futures = [self._submit(code, im) for code, (_, im) in zip(programs, images)]
        results = [f.result() for f in futures]
      for (i, image), code, res in zip(images, programs, results):
        task = self._task_from_result(i, image, code, res, seed=_seed(c.seed, i, step))
        if task is None:
          continue
        for q in task.questions:
          _, target = eve_tasks.solver_sft_pair(q, reasoning=c.warmstart.solver_reasoning)
          prompts.append(self._question_prompt(q))
          targets.append(common.completion_ids(self.rt, target))
    keep = [k for k, p in enumerate(prompts) if self._fits(p, len(targets[k]))]
    if not keep:
      return
    batch = rollouts.train_batch(
        [prompts[k] for k in keep], [targets[k] for k in keep], model_config=self.rt.model_config,
        pad_id=self.tok.pad_id, length_buckets=self.length_buckets,
        patch_buckets=self.patch_buckets, row_multiple=self.row_multiple)
    with self.timer("training"):
      metrics = self.learners[stage.role].sft_step(batch)
    self.writer.scalars(self.global_step, metrics, prefix=f"warmstart/{stage.role}")

  # -------------------------------------------------------- Challenger step
  def _challenger_step(self, stage: Stage, step: int) -> None:
    c = self.config
    G = c.eve.challenger_group
    rng = np.random.default_rng(_seed(c.seed, stage.name, step))
    items = [self._next_image() for _ in range(c.eve.challenger_prompts)]
    prompts, images, indices = [], [], []
    for image_index, image in items:
      examples = [e.program for e in self.queue.sample_examples(rng)]
      text = eve_tasks.challenger_instructions(examples, image.size, c.eve.instructions)
      ex = common.prompt_example(self.rt, text, [image], min_pixels=c.data.min_pixels,
                                 max_pixels=c.data.max_pixels)
      if self._fits(ex, c.sampling.challenger.max_new_tokens):
        prompts.append(ex)
        images.append(image)
        indices.append(image_index)
    if not prompts:
      return
    # Sample in chunks; the sandbox runs chunk i while the device samples chunk i+1.
    chunks = np.array_split(np.arange(len(prompts)), min(len(prompts), c.eve.pipeline_chunks))
    toks, lps, texts, futures = [], [], [], []
    for ci, chunk in enumerate(chunks):
      t, l, x = self._generate("challenger", [prompts[i] for i in chunk], c.sampling.challenger,
                               G, _seed(c.seed, stage.name, step, "challenger", ci))
      toks += t
      lps += l
      texts += x
      for r, text in enumerate(x):
        code = eve_rewards.parse_challenger_output(text)[1]
        image = images[chunk[r // G]]
        futures.append(self._submit(code, image) if code else None)
    with self.timer("waiting"):
      results = [f.result() if f is not None else None for f in futures]

    tasks: list[Task | None] = []
    for row, (text, res) in enumerate(zip(texts, results)):
      p = row // G
      if res is None:
        self.counts["challenger/no_code_block"] += 1
        tasks.append(None)
        continue
      code = eve_rewards.parse_challenger_output(text)[1]
      tasks.append(self._task_from_result(indices[p], images[p], code, res,
                                          seed=_seed(c.seed, stage.name, step, row)))
    # Difficulty: the frozen Solver answers every question S times.
    questions = [(row, q) for row, t in enumerate(tasks) if t for q in t.questions]
    qprompts_ok = [(row, q) for row, q in questions
                   if self._fits(self._question_prompt(q), c.sampling.solver.max_new_tokens)]
    rates = self._pass_rates([q for _, q in qprompts_ok], _seed(c.seed, stage.name, step, "solver"))
    per_row = collections.defaultdict(dict)
    for (row, q), p in zip(qprompts_ok, rates):
      per_row[row][q.qtype] = p
    valid = [t is not None and len(per_row[row]) == len(t.questions) for row, t in enumerate(tasks)]
    pass_rates = [[per_row[row][k] for k in sorted(per_row[row])] if valid[row] else None
                  for row in range(len(tasks))]

    with self.timer("rewards"):
      r = c.reward
      rewards = eve_rewards.challenger_rewards(
          texts, valid, pass_rates, max_comment_markers=c.queue.max_comments,
          tail_chars=r.diversity_tail_chars, distance_threshold=r.diversity_threshold,
          reference_quirk=r.difficulty_quirk, w_format=r.format, w_valid=r.validity,
          w_difficulty=r.difficulty, w_diversity=r.diversity)
      values = np.array([x.value for x in rewards], np.float32)
      for fn in self.extra_rewards:
        values += np.array([float(fn(text=t, task=task, pass_rates=pr))
                            for t, task, pr in zip(texts, tasks, pass_rates)], np.float32)
      adv, adv_stats = adv_lib.group_advantages(values, G, eps=c.train.loss.adv_eps)

    batch = rollouts.train_batch(
        [prompts[row // G] for row in range(len(texts))], toks, model_config=self.rt.model_config,
        pad_id=self.tok.pad_id, length_buckets=self.length_buckets,
        patch_buckets=self.patch_buckets, row_multiple=self.row_multiple,
        sampler_logp=lps, advantages=np.asarray(adv))
    with self.timer("training"):
      train_metrics = self.learners["challenger"].grpo_step(batch)

    # Queue admission and the Solver's data log.
    admitted = collections.Counter()
    for row, (t, ok, rew) in enumerate(zip(tasks, valid, rewards)):
      if t is None:
        continue
      d = float(rew.parts["difficulty"])
      admitted[self.queue.offer(t.program, d, ok, step=self.global_step)] += 1
      for q in t.questions:
        p = per_row[row].get(q.qtype)
        if p is not None and c.solver_data.log_min_pass <= p < c.solver_data.log_max_pass:
          self.logged.append(self._log_record(t, q, p))
      key = f"step{step:05d}_row{row:04d}"
      if ok and self._gallery(stage.iteration).has_room(key):
        self._add_to_gallery(stage, key, t, texts[row], rew, per_row[row])

    n = len(texts)
    parts = collections.defaultdict(list)
    for x in rewards:
      for k, v in x.parts.items():
        if isinstance(v, (int, float)):
          parts[k].append(v)
    metrics = {
        "valid_rate": float(np.mean(valid)),
        "has_code_rate": float(np.mean([f is not None for f in futures])),
        "reward_mean": float(values.mean()),
        "difficulty_mean": float(np.mean([x.parts["difficulty"] for x, ok in zip(rewards, valid) if ok]))
        if any(valid) else 0.0,
        "diversity_penalty_mean": float(np.mean(parts["diversity_penalty"])) if parts else 0.0,
        "format_rate": float(np.mean(parts["format"])) if parts else 0.0,
        "solver_pass_rate": float(np.mean(rates)) if rates else 0.0,
        "admitted": float(admitted["admitted"]),
        **{f"offer/{k}": float(v) for k, v in admitted.items()},  # admitted or why not
        "logged_questions": float(len(self.logged)),
        "completion_tokens": float(np.mean([len(t) for t in toks])),
        "rows": float(n),
        **{f"adv/{k}": float(v) for k, v in adv_stats.items()},
        **self.queue.stats(),
        **{f"train/{k}": v for k, v in train_metrics.items()},
    }
    self.writer.scalars(self.global_step, metrics, prefix="challenger")
    self.writer.scalars(self.global_step, {k: float(v) for k, v in self.counts.items()},
                        prefix="counts")

  def _log_record(self, task: Task, q: eve_tasks.Question, p: float) -> dict:
    return {"image": task.image_index, "program": task.program, "qtype": q.qtype,
            "k": q.meta.get("k"), "seed": task.seed, "answer": q.answer,
            "order": q.meta.get("order"), "pass_rate": p,
            "difficulty": eve_rewards.question_difficulty(p)}

  def _gallery(self, iteration: int) -> observe.Gallery:
    """The iteration's gallery; its cards live on disk, so mid-phase resume keeps them."""
    if iteration not in self._galleries:
      self._galleries[iteration] = observe.Gallery(
          title=f"EVE tasks, iteration {iteration}", max_cards=self.config.log.gallery_tasks,
          cards_dir=os.path.join(self.workdir, "gallery", f"iter{iteration}.cards"))
    return self._galleries[iteration]

  def _add_to_gallery(self, stage, key: str, t: Task, reply: str, rew, rates) -> None:
    q = t.questions[0]
    self._gallery(stage.iteration).add({
        "title": f"{stage.name} {key}",
        "images": {"source": self._image(t.image_index),
                   **{f"args {i}": o for i, o in enumerate(t.outputs)}},
        "args": [json.dumps(a) for a in t.args],
        "question": q.text, "options": q.options, "answer": q.answer,
        "solver pass rate by type": rates,
        "reward": {k: v for k, v in rew.parts.items()} | {"total": rew.value},
        "program": t.program, "reply": reply,
    }, key=key)

  # ------------------------------------------------------------ Solver step
  def _image(self, image_index: int) -> Image.Image:
    return self.source.item(image_index)[1]

  def _next_image(self) -> tuple[int, Image.Image]:
    """The source's next image and its index (so logged questions can rebuild it)."""
    epoch, i = divmod(self.source.state()["position"], len(self.source))
    index = int(self.source.order(epoch)[i])
    return index, next(self.source)[1]

  def _start_rebuild(self, recs: list[dict]):
    """Rebuilding logged questions exactly as the frozen Solver saw them, part 1:
    submits the distinct programs of `recs` to the sandbox; returns the pending work.

    Programs are deterministic, so each distinct one is re-run on its image;
    nothing is kept between steps, so host memory does not grow with the
    Solver data.
    """
    images = {i: self._image(i) for i in {r["image"] for r in recs}}
    keys = [(r["image"], r["program"]) for r in recs]
    futures = {key: self._submit(key[1], images[key[0]]) for key in dict.fromkeys(keys)}
    return recs, images, futures

  def _finish_rebuild(self, pending) -> list[eve_tasks.Question | None]:
    """Waits for `_start_rebuild`'s programs; rebuilds each question with its logged
    k and shuffle seed (the options order and answer it was scored with)."""
    recs, images, futures = pending
    with self.timer("sandbox"):
      tasks = {key: self._task_from_result(key[0], images[key[0]], key[1], fut.result(),
                                           seed=0, types=())
               for key, fut in futures.items()}
    questions = []
    for rec in recs:
      task = tasks[(rec["image"], rec["program"])]
      qs = task and eve_tasks.build_questions(
          images[rec["image"]], task.function_text, task.args, task.outputs,
          types=(rec["qtype"],), ks=None if rec["k"] is None else [rec["k"]],
          seed=rec.get("seed", 0))
      questions.append(qs[0] if qs else None)
    return questions

  def _select_solver_data(self) -> list[dict]:
    """Logged questions with 0 < p < 1, hardest first, the top `keep`."""
    keep = [r for r in self.logged if 0.0 < r["pass_rate"] < 1.0]
    keep.sort(key=lambda r: -r["difficulty"])
    selected = keep[:self.config.solver_data.keep]
    self.writer.scalars(self.global_step, {"selected": len(selected), "logged": len(self.logged)},
                        prefix="solver_data")
    self.logged = []
    if not selected:
      logging.warning("Solver phase: no logged question with 0 < p < 1; the phase is skipped.")
    return selected

  def _solver_step(self, stage: Stage, step: int) -> None:
    c = self.config
    if not self.solver_data:
      self.counts["solver/no_data_steps"] += 1
      return
    G = c.eve.solver_group
    n = c.eve.solver_prompts
    step_recs = lambda s: [self.solver_data[(s * n + i) % len(self.solver_data)]
                           for i in range(n)]
    # The sandbox re-runs the next step's programs while this step samples and trains.
    ahead, self._rebuild_ahead = self._rebuild_ahead, None
    pending = ahead[1] if ahead and ahead[0] == step else self._start_rebuild(step_recs(step))
    if step + 1 < stage.steps:
      self._rebuild_ahead = (step + 1, self._start_rebuild(step_recs(step + 1)))
    questions = [q for q in self._finish_rebuild(pending) if q is not None]
    prompts = [self._question_prompt(q) for q in questions]
    pairs = [(q, p) for q, p in zip(questions, prompts) if self._fits(p, c.sampling.solver.max_new_tokens)]
    if not pairs:
      return
    questions, prompts = map(list, zip(*pairs))
    toks, lps, texts = self._generate("solver", prompts, c.sampling.solver, G,
                                      _seed(c.seed, stage.name, step))
    with self.timer("rewards"):
      rewards = [self._solver_reward(questions[i // G], t) for i, t in enumerate(texts)]
      values = np.array([r.value for r in rewards], np.float32)
      adv, adv_stats = adv_lib.group_advantages(values, G, eps=c.train.loss.adv_eps)
    batch = rollouts.train_batch(
        [prompts[i // G] for i in range(len(texts))], toks, model_config=self.rt.model_config,
        pad_id=self.tok.pad_id, length_buckets=self.length_buckets,
        patch_buckets=self.patch_buckets, row_multiple=self.row_multiple,
        sampler_logp=lps, advantages=np.asarray(adv))
    with self.timer("training"):
      train_metrics = self.learners["solver"].grpo_step(batch)
    self.writer.scalars(self.global_step, {
        "reward_mean": float(values.mean()),
        "accuracy": float(np.mean([r.parts.get("accuracy", 0.0) for r in rewards])),
        "format": float(np.mean([r.parts.get("format", 0.0) for r in rewards])),
        **{f"adv/{k}": float(v) for k, v in adv_stats.items()},
        **{f"train/{k}": v for k, v in train_metrics.items()},
    }, prefix="solver")

  def _solver_reward(self, q: eve_tasks.Question, reply: str):
    r = self.config.reward
    return eve_rewards.solver_reward(
        reply, q.answer, kind="letter_sequence" if q.qtype == 2 else "letter",
        w_format=r.solver_format, w_accuracy=r.solver_accuracy)

  # ------------------------------------------------------------- evaluation
  def _heldout_tasks(self) -> list[Task]:
    """Fixed questions from held-out families on images the run never trains on."""
    if self._eval_tasks is None:
      c = self.config
      rng = np.random.default_rng(_seed(c.seed, "heldout"))
      per = max(1, -(-c.eve.heldout_eval_questions // (2 * max(1, len(self.heldout)))))
      jobs = []
      for name in self.heldout:
        fam = self.library[name]
        for j in range(per):
          image = self.eval_source.item(int(rng.integers(len(self.eval_source))))[1]
          code = fam.program(fam.sample(rng, *image.size))
          jobs.append((image, code, self._submit(code, image)))
      tasks = []
      for j, (image, code, fut) in enumerate(jobs):
        t = self._task_from_result(-1, image, code, fut.result(), seed=_seed(c.seed, "eval", j),
                                   types=(0, 1))
        if t is not None:
          tasks.append(t)
      self._eval_tasks = tasks
    return self._eval_tasks

  def _evaluate(self, stage: Stage) -> None:
    """Greedy Solver accuracy on the held-out families."""
    c = self.config
    questions = [q for t in self._heldout_tasks() for q in t.questions]
    prompts = [self._question_prompt(q) for q in questions]
    pairs = [(q, p) for q, p in zip(questions, prompts) if self._fits(p, c.sampling.solver.max_new_tokens)]
    if not pairs:
      return
    _, _, texts = self._generate("solver", [p for _, p in pairs], c.sampling.solver, 1,
                                 seed=0, greedy=True)
    acc = {0: [], 1: []}
    for (q, _), t in zip(pairs, texts):
      acc.setdefault(q.qtype, []).append(eve_tasks.grade(q, eve_tasks.boxed_content(t) or ""))
    result = {"heldout_accuracy": float(np.mean([a for v in acc.values() for a in v])),
              **{f"heldout_accuracy_type{k}": float(np.mean(v)) for k, v in acc.items() if v},
              "heldout_questions": len(pairs),
              "boxed_rate": float(np.mean([eve_tasks.boxed_content(t) is not None for t in texts]))}
    key = "init" if stage.iteration == 0 and not self.results else (
        "after_warmstart" if stage.iteration == 0 else f"iter{stage.iteration}")
    self.results[key] = result
    logging.info("Held-out evaluation (%s): %s", key, result)
    self.writer.scalars(self.global_step, result, prefix="eval")

  def _summary(self) -> dict[str, Any]:
    res = dict(self.results)
    final = [k for k in res if k.startswith("iter")]
    if final and "init" in res:
      last = res[sorted(final, key=lambda k: int(k[4:]))[-1]]
      res["heldout_gain_points"] = 100 * (last["heldout_accuracy"] - res["init"]["heldout_accuracy"])
      if "after_warmstart" in res:
        res["heldout_gain_over_warmstart_points"] = 100 * (
            last["heldout_accuracy"] - res["after_warmstart"]["heldout_accuracy"])
    res["queue"] = self.queue.stats()
    res["counts"] = dict(self.counts)
    path = os.path.join(self.workdir, "summary.json")
    with open(path, "w") as f:
      json.dump(res, f, indent=2)
    logging.info("EVE summary (%s): %s", path, json.dumps(res))
    print(json.dumps(res, indent=2))
    return res


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Entry point for `python -m evejax.main --config configs/eve.py:<preset>`."""
  observe.setup_logging(workdir)
  try:
    return Eve(config, workdir).run()
  except (common.SetupError, sources.ImageReadError) as e:
    raise SystemExit(f"evejax: {e}") from None
