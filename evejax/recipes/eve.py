"""EVE: a Challenger writes image-editing programs, a Solver answers questions about them.

The algorithm (reference/METHODS.md, EVE), one method per stage kind:

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

Everything else (schedule, resume, roles, metrics) is the recipe runner's.

Several processes: each owns a contiguous block of every step's work (the
Challenger's prompts of each pipeline chunk, the warm start's images, the
Solver's questions, the held-out programs), reads only those images and runs
only those programs in its own sandbox pool. Random draws that span the step
(queue examples, families, arguments) are made by every process alike, from
image sizes it can tell without reading the images. Rows are numbered as one
process would number them, and what spans the batch is decided from rows
gathered in that order: rewards (the diversity penalty is batch-wide),
queue admissions, the Solver's data log, metrics. So a run gives the same
queue, data and rewards on any number of processes.
"""
from __future__ import annotations

import collections
import dataclasses
import json
from typing import Any

import numpy as np
from absl import logging
from PIL import Image

from evejax import sandbox as sandbox_lib
from evejax.data import sources
from evejax.data import transforms
from evejax.recipes import eve_queue
from evejax.recipes import eve_tasks
from evejax.recipes import role as role_lib
from evejax.recipes import runner
from evejax.recipes.runner import Stage
from evejax.rewards import eve as eve_rewards
from evejax.rewards import registry as reward_registry


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


def schedule(config) -> list[Stage]:
  """Evaluation, the warm start (if any), then I x (Challenger, Solver, evaluation)."""
  e, w = config.eve, config.warmstart
  stages = [Stage("eval", iteration=0, trains=False)]
  if w.enabled:
    stages += [Stage("warmstart", "challenger", 0, w.challenger_steps),
               Stage("warmstart", "solver", 0, w.solver_steps),
               Stage("eval", iteration=0, trains=False)]
  for it in range(1, e.iterations + 1):
    stages += [Stage("challenger", "challenger", it, e.challenger_steps),
               Stage("solver", "solver", it, e.solver_steps),
               Stage("eval", iteration=it, trains=False)]
  return stages


class Eve(runner.Recipe):
  """The EVE recipe; see the module docstring."""

  multiprocess = True

  @classmethod
  def role_specs(cls, config) -> list[runner.RoleSpec]:
    warm = bool(config.warmstart.enabled)
    return [runner.RoleSpec("challenger", trained_reference=warm),
            runner.RoleSpec("solver", trained_reference=warm,
                            share_policy_with="challenger" if config.eve.share_params else None)]

  def __init__(self, run: runner.Run):
    super().__init__(run)
    c = self.config
    self.library = dict(transforms.library(c.eve.coordinates))
    if c.eve.transforms:
      self.library.update(transforms.load_library(c.eve.transforms))
    self.heldout = [n for n in transforms.HELDOUT_FAMILIES if n in self.library]
    self.train_families = [n for n in self.library if n not in self.heldout]

    data = c.data.to_dict()
    self.source = sources.make_source({**data, "seed": c.seed})
    self.eval_source = sources.make_source({**data, "seed": c.seed + 1_000_003})
    size = self.source.size_of(0)
    seed_rng = np.random.default_rng(run.seed("seed_programs"))
    self.queue = eve_queue.ExampleQueue(
        eve_queue.QueueConfig.from_config(c.queue),
        seeds=[(n, self.library[n].program(self.library[n].sample(seed_rng, *size)))
               for n in self._seed_families() if n in self.library])
    # One home for the function-length rule: the queue's, shared by the checks.
    checks = {**c.checks.to_dict(), "max_function_chars": c.queue.max_function_chars}
    self.pool = sandbox_lib.SandboxPool(sandbox_lib.SandboxConfig.from_config(
        {**c.sandbox.to_dict(), "checks": checks}))
    self.extra_rewards = [reward_registry.resolve(n) for n in c.reward.extra]

    self.logged: list[dict] = []        # Challenger-phase questions for the Solver
    self.solver_data: list[dict] = []   # selected at the start of a Solver phase
    self.results: dict[str, Any] = {}   # evaluation results by stage
    self._eval_tasks: list[Task] | None = None
    self._reruns_ahead: tuple[int, Any] | None = None  # (Solver step, its programs in the sandbox)

  def stages(self) -> list[Stage]:
    return schedule(self.config)

  # -- host state --------------------------------------------------------------

  def state(self) -> dict[str, Any]:
    return {"queue": self.queue.state(), "logged": self.logged,
            "solver_data": self.solver_data, "results": self.results,
            "source": self.source.state()}

  def load_state(self, state) -> None:
    self.queue.restore(state["queue"])
    self.logged = state["logged"]
    self.solver_data = state["solver_data"]
    self.results = state["results"]
    self.source.restore(state["source"])

  def close(self) -> None:
    self.pool.close()

  # -- warm start ----------------------------------------------------------------

  def sft_optimizer(self, role: str) -> dict:
    """The warm start's optimizer of a role: its schedule spans its own steps."""
    w, shared = self.config.warmstart, self.config.eve.share_params
    steps = {"challenger": w.challenger_steps, "solver": w.solver_steps}[role]
    lr, schedule = w.lr, w.schedule
    if shared:
      steps = w.challenger_steps + w.solver_steps
    elif role == "solver":
      lr, schedule = w.solver_lr or lr, w.solver_schedule or schedule
    return dict(lr=lr, schedule=schedule, total_steps=max(steps, 1),
                warmup_steps=min(w.warmup_steps, max(steps - 1, 0)))

  def warmstart_step(self, stage: Stage, step: int) -> None:
    """SFT on the built-in library: Challenger on programs, Solver on their questions."""
    c, run = self.config, self.run
    role = self.roles[stage.role]
    role.policy.use_optimizer("sft", self.sft_optimizer(role.policy.name))
    rng = np.random.default_rng(run.seed(stage.name, step))
    n = c.warmstart.batch_size   # rows; a Solver image gives one row per question type
    if stage.role == "solver":
      n = max(1, (c.warmstart.solver_batch_size or n) // max(1, len(c.eve.question_types)))
    indices = rng.integers(0, len(self.source), n)
    mine = run.share(n)
    pairs = (self._challenger_sft_pairs(indices, mine, rng) if stage.role == "challenger"
             else self._solver_sft_pairs(indices, mine, rng, step))
    metrics = role.sft([p for p, _ in pairs], [run.completion(t) for _, t in pairs])
    if metrics is not None:
      run.log(metrics, prefix=f"warmstart/{stage.role}")

  def _challenger_sft_pairs(self, indices, mine: range, rng):
    """Pairs of the images `mine` owns; every image's draws are made (sizes suffice)."""
    c = self.config
    names = list(c.warmstart.challenger_families) or self.train_families
    pairs = []
    for j, i in enumerate(indices):
      fam = self.library[names[rng.integers(len(names))]]
      examples = [e.program for e in self.queue.sample_examples(rng)]
      text, target = eve_tasks.challenger_sft_pair(
          fam, rng, self.source.size_of(i), examples, style=c.eve.instructions,
          think_text=fam.description if c.warmstart.short_think else None,
          limits=self._program_limits)
      if j in mine:
        pairs.append((self.run.prompt(text, [self._image(i)]), target))
    return pairs

  def _solver_sft_pairs(self, indices, mine: range, rng, step):
    fams = [self.library[self.train_families[k]]
            for k in rng.integers(len(self.train_families), size=len(indices))]
    programs = [f.program(f.sample(rng, *self.source.size_of(i))) for f, i in zip(fams, indices)]
    images = [(indices[j], self._image(indices[j])) for j in mine]
    programs = [programs[j] for j in mine]
    with self.run.timer("sandbox"):
      results = [f.result() for f in [self._submit(p, im) for p, (_, im) in zip(programs, images)]]
    pairs = []
    for (i, image), code, res in zip(images, programs, results):
      task = self._task_from_result(i, image, code, res, seed=self.run.seed(i, step))
      for q in task.questions if task else ():
        _, target = eve_tasks.solver_sft_pair(q, reasoning=self.config.warmstart.solver_reasoning)
        pairs.append((self._question_prompt(q), target))
    return pairs

  def end_stage(self, stage: Stage) -> None:
    if stage.kind == "warmstart" and stage.role == "solver":
      # GRPO starts from the warm-started weights with a fresh optimizer; they
      # are also its KL reference.
      for policy in self.run.policies.values():
        policy.start_rl()
    if stage.kind == "challenger":
      self.run.frozen.pop("solver", None)
      self.run.write_gallery(stage.iteration)

  def _seed_families(self) -> tuple[str, ...]:
    return (transforms.RELATIVE_SEED_FAMILIES if self.config.eve.coordinates == "relative"
            else transforms.SEED_FAMILIES)

  @property
  def _program_limits(self) -> dict:
    """The Challenger prompt's rules: the queue's limits and the family's conventions."""
    q, e = self.config.queue, self.config.eve
    return {"max_function_chars": q.max_function_chars, "max_comments": q.max_comments,
            "coordinates": e.coordinates, "think_tag": e.think_tag}

  # -- grading (one rule for rewards, pass rates and evaluation) -----------------

  def _accuracy(self, q: eve_tasks.Question, reply: str) -> float:
    return eve_rewards.solver_accuracy(
        reply, q.answer, kind=self._answer_kind(q),
        partial_credit=self.config.eve.type2_partial_credit)

  @staticmethod
  def _answer_kind(q: eve_tasks.Question) -> str:
    return "letter_sequence" if q.qtype == 2 else "letter"

  def _solver_reward(self, q: eve_tasks.Question, reply: str):
    r = self.config.reward
    return eve_rewards.solver_reward(
        reply, q.answer, kind=self._answer_kind(q), w_format=r.solver_format,
        w_accuracy=r.solver_accuracy, partial_credit=self.config.eve.type2_partial_credit)

  def _question_prompt(self, q: eve_tasks.Question):
    return self.run.prompt(q.text, q.images)

  def _pass_rates(self, solver, questions: list[eve_tasks.Question], seed: int,
                  ids: list[int] | None = None) -> list[float | None]:
    """The frozen Solver's mean accuracy over S samples per question (None: dropped).

    `ids` order the questions over every process (`Role.generate`).
    """
    S = self.config.eve.difficulty_samples
    samples = solver.generate([self._question_prompt(q) for q in questions], S, seed,
                              prompt_ids=ids)
    acc = [self._accuracy(questions[samples.prompt_of(r)], t)
           for r, t in enumerate(samples.texts)]
    rates: list[float | None] = [None] * len(questions)
    for j, i in enumerate(samples.kept):
      rates[i] = float(np.mean(acc[j * S:(j + 1) * S]))
    return rates

  # -- the sandbox ---------------------------------------------------------------

  def _submit(self, code: str, image: Image.Image):
    return self.pool.submit(sandbox_lib.EveJob(source=code, image=np.asarray(image),
                                               num_args=self.config.eve.num_args))

  def _task_from_result(self, image_index: int, image: Image.Image, code: str, result,
                        seed: int, types=None) -> Task | None:
    if not result.ok:
      self.run.counts[f"sandbox/{result.reason}"] += 1
      return None
    outputs = [_pil(o) for o in result.images]
    questions = eve_tasks.build_questions(
        image, result.function_source, result.args, outputs,
        types=tuple(types if types is not None else self.config.eve.question_types), seed=seed)
    return Task(image_index, code, result.function_source, list(result.args), outputs, questions,
                seed)

  # -- Challenger phase ----------------------------------------------------------

  def challenger_step(self, stage: Stage, step: int) -> None:
    c, run = self.config, self.run
    G = c.eve.challenger_group
    if step == 0 or "solver" not in run.frozen:
      run.freeze("solver")   # the previous Solver scores this whole phase
    rng = np.random.default_rng(run.seed(stage.name, step))
    P = c.eve.challenger_prompts
    indices = [self.source.index_at(p) for p in self.source.reserve(P)]
    # Sample in chunks; the sandbox runs chunk i while the device samples chunk
    # i+1. A process owns a block of every chunk and reads only its images.
    chunks = [chunk[list(run.share(len(chunk)))]
              for chunk in np.array_split(np.arange(P), min(P, c.eve.pipeline_chunks))]
    owned = {int(j) for chunk in chunks for j in chunk}
    items, prompts = {}, {}
    for j, index in enumerate(indices):
      examples = [e.program for e in self.queue.sample_examples(rng)]   # drawn everywhere
      if j in owned:
        items[j] = (index, self._image(index))
        text = eve_tasks.challenger_instructions(examples, items[j][1].size, c.eve.instructions,
                                                 **self._program_limits)
        prompts[j] = run.prompt(text, [items[j][1]])
    parts, futures = [], []
    for ci, chunk in enumerate(chunks):
      samples = self.roles["challenger"].generate(
          [prompts[int(j)] for j in chunk], G, run.seed(stage.name, step, "challenger", ci))
      parts.append((chunk, samples))
      for r, text in enumerate(samples.texts):
        code = eve_rewards.parse_challenger_output(text, c.eve.think_tag)[1]
        image = items[int(chunk[samples.prompt_of(r)])][1]
        futures.append(self._submit(code, image) if code else None)
    samples = _concat(parts)
    if not samples.total_rows:
      return
    with run.timer("waiting"):
      results = [f.result() if f is not None else None for f in futures]
    rows = _row_numbers(run, samples)

    tasks: list[Task | None] = []
    for r, (text, res) in enumerate(zip(samples.texts, results)):
      index, image = items[samples.prompt_of(r)]
      if res is None:
        run.counts["challenger/no_code_block"] += 1
        tasks.append(None)
        continue
      code = eve_rewards.parse_challenger_output(text, c.eve.think_tag)[1]
      tasks.append(self._task_from_result(index, image, code, res,
                                          seed=run.seed(stage.name, step, rows[r])))
    # Difficulty: the frozen Solver answers every question S times.
    questions = [(r, k, q) for r, t in enumerate(tasks) if t for k, q in enumerate(t.questions)]
    slots = max(1, len(c.eve.question_types))
    rates = self._pass_rates(run.frozen["solver"], [q for _, _, q in questions],
                             run.seed(stage.name, step, "solver"),
                             ids=[rows[r] * slots + k for r, k, _ in questions])
    per_row = collections.defaultdict(dict)
    for (r, _, q), p in zip(questions, rates):
      if p is not None:
        per_row[r][q.qtype] = p
    valid = [t is not None and len(per_row[r]) == len(t.questions) for r, t in enumerate(tasks)]
    pass_rates = [[per_row[r][k] for k in sorted(per_row[r])] if ok else None
                  for r, ok in enumerate(valid)]
    extras = [[float(fn(text=t, task=task, pass_rates=pr)) for fn in self.extra_rewards]
              for t, task, pr in zip(samples.texts, tasks, pass_rates)]
    everyone = run.gather([{
        "row": rows[r], "text": samples.texts[r], "valid": valid[r], "rates": pass_rates[r],
        "extra": extras[r], "has_code": futures[r] is not None,
        "tokens": len(samples.tokens[r]), "task": tasks[r] is not None,
        "program": tasks[r].program if tasks[r] else None,
        "question_rates": [p for (rq, _, _), p in zip(questions, rates) if rq == r],
        "log": self._log_candidates(tasks[r], per_row[r]),
    } for r in range(len(samples))], key=lambda x: x["row"])
    rewards, values = self._challenger_rewards(everyone)
    train_metrics = self.roles["challenger"].update(samples, values[rows])
    admitted = self._admit_and_log(everyone, rewards)
    self._gallery_cards(stage, step, samples, tasks, rows, rewards, per_row)

    parts_by_name = collections.defaultdict(list)
    for x in rewards:
      for k, v in x.parts.items():
        if isinstance(v, (int, float)):
          parts_by_name[k].append(v)
    all_valid = [x["valid"] for x in everyone]
    kept_rates = [p for x in everyone for p in x["question_rates"] if p is not None]
    run.log({
        "valid_rate": float(np.mean(all_valid)),
        "has_code_rate": float(np.mean([x["has_code"] for x in everyone])),
        "reward_mean": float(values.mean()),
        "difficulty_mean": float(np.mean([x.parts["difficulty"]
                                          for x, ok in zip(rewards, all_valid) if ok]))
                           if any(all_valid) else 0.0,
        "diversity_penalty_mean": float(np.mean(parts_by_name["diversity_penalty"])),
        "format_rate": float(np.mean(parts_by_name["format"])),
        "solver_pass_rate": float(np.mean(kept_rates)) if kept_rates else 0.0,
        "admitted": float(admitted["admitted"]),
        **{f"offer/{k}": float(v) for k, v in admitted.items()},  # admitted or why not
        "logged_questions": float(len(self.logged)),
        "completion_tokens": float(np.mean([x["tokens"] for x in everyone])),
        "rows": float(samples.total_rows),
        **self.queue.stats(), **train_metrics,
    }, prefix="challenger")
    run.log_counts()

  def _challenger_rewards(self, rows: list[dict]):
    """Every row's reward (the diversity penalty spans the batch), in row order."""
    r = self.config.reward
    with self.run.timer("rewards"):
      rewards = eve_rewards.challenger_rewards(
          [x["text"] for x in rows], [x["valid"] for x in rows], [x["rates"] for x in rows],
          max_comment_markers=self.config.queue.max_comments,
          think_tag=self.config.eve.think_tag,
          tail_chars=r.diversity_tail_chars, distance_threshold=r.diversity_threshold,
          reference_quirk=r.difficulty_quirk, w_format=r.format, w_valid=r.validity,
          w_difficulty=r.difficulty, w_diversity=r.diversity)
      values = np.array([x.value for x in rewards], np.float32)
      for k in range(len(self.extra_rewards)):
        values += np.array([x["extra"][k] for x in rows], np.float32)
    return rewards, values

  def _log_candidates(self, task: Task | None, rates: dict) -> list[dict]:
    """The Solver-data records of a task's questions whose pass rate is in the log band."""
    lo, hi = self.config.solver_data.log_min_pass, self.config.solver_data.log_max_pass
    return [self._log_record(task, q, rates[q.qtype]) for q in (task.questions if task else ())
            if rates.get(q.qtype) is not None and lo <= rates[q.qtype] < hi]

  def _admit_and_log(self, rows: list[dict], rewards) -> collections.Counter:
    """Queue admissions and the Solver's data log, row by row; counts of offer outcomes."""
    admitted = collections.Counter()
    for x, rew in zip(rows, rewards):
      if not x["task"]:
        continue
      d = float(rew.parts["difficulty"])
      admitted[self.queue.offer(x["program"], d, x["valid"], step=self.run.train_step)] += 1
      self.logged.extend(x["log"])
    return admitted

  def _gallery_cards(self, stage, step, samples, tasks, rows, rewards, per_row) -> None:
    """Cards of this process's valid tasks (process 0 writes the gallery)."""
    gallery = self.run.gallery(stage.iteration, f"EVE tasks, iteration {stage.iteration}")
    for r, t in enumerate(tasks):
      key = f"step{step:05d}_row{rows[r]:04d}"
      ok = t is not None and len(per_row[r]) == len(t.questions)
      if ok and gallery.has_room(key):
        rew = rewards[rows[r]]
        gallery.add(self._card(stage, key, t, samples.texts[r], rew, per_row[r]), key=key)

  def _log_record(self, task: Task, q: eve_tasks.Question, p: float) -> dict:
    return {"image": task.image_index, "program": task.program, "qtype": q.qtype,
            "k": q.meta.get("k"), "seed": task.seed, "answer": q.answer,
            "order": q.meta.get("order"), "pass_rate": p,
            "difficulty": eve_rewards.question_difficulty(p)}

  def _card(self, stage, key: str, t: Task, reply: str, rew, rates) -> dict:
    q = t.questions[0]
    return {
        "title": f"{stage.name} {key}",
        "images": {"source": self._image(t.image_index),
                   **{f"args {i}": o for i, o in enumerate(t.outputs)}},
        "args": [json.dumps(a) for a in t.args],
        "question": q.text, "options": q.options, "answer": q.answer,
        "solver pass rate by type": rates,
        "reward": dict(rew.parts) | {"total": rew.value},
        "program": t.program, "reply": reply,
    }

  # -- Solver phase --------------------------------------------------------------

  def _image(self, image_index: int) -> Image.Image:
    return self.source.item(image_index)[1]

  def _rerun_programs(self, recs: list[dict]):
    """Submits the distinct programs of logged questions to the sandbox again.

    Programs are deterministic, so re-running them rebuilds each question exactly
    as the frozen Solver saw it; nothing is kept between steps, so host memory
    does not grow with the Solver data.
    """
    images = {i: self._image(i) for i in {r["image"] for r in recs}}
    keys = [(r["image"], r["program"]) for r in recs]
    futures = {key: self._submit(key[1], images[key[0]]) for key in dict.fromkeys(keys)}
    return recs, images, futures

  def _logged_questions(self, reruns) -> list[eve_tasks.Question | None]:
    """Waits for `_rerun_programs`; rebuilds each question with its logged k and
    shuffle seed (the options order and answer it was scored with)."""
    recs, images, futures = reruns
    with self.run.timer("sandbox"):
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
    self.run.log({"selected": len(selected), "logged": len(self.logged)}, prefix="solver_data")
    self.logged = []
    if not selected:
      logging.warning("Solver phase: no logged question with 0 < p < 1; the phase is skipped.")
    return selected

  def solver_step(self, stage: Stage, step: int) -> None:
    c, run = self.config, self.run
    if step == 0 or not self.solver_data:
      self.solver_data = self._select_solver_data()
    if not self.solver_data:
      run.counts["solver/no_data_steps"] += 1
      return
    G, n = c.eve.solver_group, c.eve.solver_prompts
    mine = run.share(n)   # this process's questions of each step
    step_recs = lambda s: [self.solver_data[(s * n + i) % len(self.solver_data)]
                           for i in mine]
    # The sandbox re-runs the next step's programs while this step samples and trains.
    ahead, self._reruns_ahead = self._reruns_ahead, None
    reruns = ahead[1] if ahead and ahead[0] == step else self._rerun_programs(step_recs(step))
    if step + 1 < stage.steps:
      self._reruns_ahead = (step + 1, self._rerun_programs(step_recs(step + 1)))
    questions = [q for q in self._logged_questions(reruns) if q is not None]
    samples = self.roles["solver"].generate([self._question_prompt(q) for q in questions], G,
                                            run.seed(stage.name, step))
    if not samples.total_rows:
      return
    with run.timer("rewards"):
      rewards = [self._solver_reward(questions[samples.prompt_of(r)], t)
                 for r, t in enumerate(samples.texts)]
    values = np.array([r.value for r in rewards], np.float32)
    train_metrics = self.roles["solver"].update(samples, values)
    everyone = run.gather([[float(v), r.parts["accuracy"], r.parts["format"]]
                           for v, r in zip(values, rewards)])
    run.log({
        "reward_mean": float(np.array([x[0] for x in everyone], np.float32).mean()),
        "accuracy": float(np.mean([x[1] for x in everyone])),
        "format": float(np.mean([x[2] for x in everyone])),
        **train_metrics,
    }, prefix="solver")

  # -- evaluation ----------------------------------------------------------------

  def _heldout_tasks(self) -> list[Task]:
    """Fixed questions from held-out families on images the run never trains on."""
    if self._eval_tasks is None:
      c, run = self.config, self.run
      rng = np.random.default_rng(run.seed("heldout"))
      per = max(1, -(-c.eve.heldout_eval_questions // (2 * max(1, len(self.heldout)))))
      programs = []   # every process draws them all, and runs its own share
      for name in self.heldout:
        fam = self.library[name]
        for _ in range(per):
          index = int(rng.integers(len(self.eval_source)))
          programs.append((index, fam.program(fam.sample(rng, *self.eval_source.size_of(index)))))
      jobs = {}
      for j in run.share(len(programs)):
        index, code = programs[j]
        image = self.eval_source.item(index)[1]
        jobs[j] = (image, code, self._submit(code, image))
      tasks = [self._task_from_result(-1, image, code, fut.result(), seed=run.seed("eval", j),
                                      types=(0, 1))
               for j, (image, code, fut) in jobs.items()]
      self._eval_tasks = [t for t in tasks if t is not None]
    return self._eval_tasks

  def eval_step(self, stage: Stage, step: int) -> None:
    """Greedy Solver accuracy on the held-out families."""
    questions = [q for t in self._heldout_tasks() for q in t.questions]
    samples = self.roles["solver"].generate([self._question_prompt(q) for q in questions], 1,
                                            seed=0, greedy=True)
    if not samples.total_rows:
      return
    everyone = self.run.gather([
        [questions[samples.prompt_of(r)].qtype, self._accuracy(questions[samples.prompt_of(r)], t),
         bool(eve_rewards.solver_format_score(t) > 0)] for r, t in enumerate(samples.texts)])
    acc = collections.defaultdict(list)
    for qtype, a, _ in everyone:
      acc[qtype].append(a)
    result = {"heldout_accuracy": float(np.mean([a for v in acc.values() for a in v])),
              **{f"heldout_accuracy_type{k}": float(np.mean(v)) for k, v in sorted(acc.items())},
              "heldout_questions": samples.total_rows,
              "boxed_rate": float(np.mean([boxed for *_, boxed in everyone]))}
    key = "init" if stage.iteration == 0 and not self.results else (
        "after_warmstart" if stage.iteration == 0 else f"iter{stage.iteration}")
    self.results[key] = result
    logging.info("Held-out evaluation (%s): %s", key, result)
    self.run.log(result, prefix="eval")

  def summary(self) -> dict[str, Any]:
    res = dict(self.results)
    final = [k for k in res if k.startswith("iter")]
    if final and "init" in res:
      last = res[sorted(final, key=lambda k: int(k[4:]))[-1]]
      res["heldout_gain_points"] = 100 * (last["heldout_accuracy"] - res["init"]["heldout_accuracy"])
      if "after_warmstart" in res:
        res["heldout_gain_over_warmstart_points"] = 100 * (
            last["heldout_accuracy"] - res["after_warmstart"]["heldout_accuracy"])
    res["queue"] = self.queue.stats()
    return res


def _concat(parts) -> role_lib.Samples:
  """One Samples from the chunks of a step (prompt indices into the step's prompts)."""
  kept, prompts, toks, lps, texts = [], [], [], [], []
  group = parts[0][1].group if parts else 1
  for chunk, s in parts:
    kept += [int(chunk[i]) for i in s.kept]
    prompts += s.prompts
    toks += s.tokens
    lps += s.logprobs
    texts += s.texts
  return role_lib.Samples(kept, group, prompts, toks, lps, texts,
                          total_rows=sum(s.total_rows for _, s in parts), ids=kept)


def _row_numbers(run: runner.Run, samples: role_lib.Samples) -> list[int]:
  """Each of this process's rows' number in the step, as one process numbers them:
  prompt after prompt in step order (sampled prompts only), G rows each."""
  G = samples.group
  kept = sorted(run.gather(sorted(set(samples.kept))))
  rank = {j: k for k, j in enumerate(kept)}
  return [rank[samples.prompt_of(r)] * G + r % G for r in range(len(samples))]


RECIPE = Eve


def run(config, workdir: str, **kwargs) -> dict[str, Any]:
  """Entry point for `python -m evejax.main --config configs/eve.py:<preset>`."""
  return runner.run(Eve, config, workdir, **kwargs)
