"""EVE: a Challenger writes image-editing programs, a Solver answers questions about them.

The algorithm (reference/METHODS.md, EVE), one method per stage kind:

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

Departures from the paper, each by config: `warmstart.enabled` (tiny preset only: SFT
of both roles on the built-in library, since no pretrained model reaches a CPU
machine); `reward.difficulty_quirk` (the published code's difficulty rule instead of
the paper's); `coordinates`/`think_tag` (the published code's conventions per model
family). The experiments' controls: configs/eve.py ARMS.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
from typing import Any

import ml_collections
import numpy as np
from PIL import Image

from evejax import config_utils
from evejax import sandbox as sandbox_lib
from evejax.data import sources
from evejax.data import transforms
from evejax.recipes import eve_queue
from evejax.recipes import eve_tasks
from evejax.recipes import runner
from evejax.recipes import schedule
from evejax.recipes.schedule import Stage
from evejax.rewards import eve as eve_rewards
from evejax.rewards import registry as reward_registry


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


def families(e) -> tuple[dict[str, transforms.Family], list[str], list[str]]:
  """(library by name, held-out names, seed names) of `config.eve`.

  Named held-out and seed families must be in the library; the defaults (the
  paper's) are kept where the library has them.
  """
  if e.library == "builtin":
    library = dict(transforms.library(e.coordinates))
  else:
    library = transforms.load_library(e.library)
  if e.transforms:
    library.update(transforms.load_library(e.transforms))
  default_seeds = (transforms.RELATIVE_SEED_FAMILIES if e.coordinates == "relative"
                   else transforms.SEED_FAMILIES)
  chosen = {}
  for key, names, default in (("heldout_families", e.heldout_families,
                               transforms.HELDOUT_FAMILIES),
                              ("seed_families", e.seed_families, default_seeds)):
    names = tuple(names)
    if missing := [n for n in names if n not in library]:
      raise config_utils.ConfigError(
          f"config.eve.{key} names {missing}, which the library ({e.library!r}"
          f"{' + ' + repr(e.transforms) if e.transforms else ''}) does not have; its "
          f"families are {sorted(library)}.")
    chosen[key] = [n for n in (names or default) if n in library]
  if overlap := set(chosen["heldout_families"]) & set(chosen["seed_families"]):
    raise config_utils.ConfigError(
        f"config.eve families {sorted(overlap)} are both held out and seeds; a held-out "
        "family is never shown to the Challenger.")
  if not [n for n in library if n not in chosen["heldout_families"]]:
    raise config_utils.ConfigError(
        "config.eve.heldout_families holds out every family of the library; leave at least "
        "one to train on.")
  return library, chosen["heldout_families"], chosen["seed_families"]


def _with_lr(train: ml_collections.ConfigDict, lr: float) -> ml_collections.ConfigDict:
  """`train` (config.train) with another GRPO learning rate."""
  out = train.copy_and_resolve_references()
  out.optimizer.lr = lr
  return out


class Eve(runner.Recipe):
  """The EVE recipe; see the module docstring."""

  multiprocess = True
  gallery_title = "EVE tasks"

  @classmethod
  def role_specs(cls, config) -> list[runner.RoleSpec]:
    warm = bool(config.warmstart.enabled)
    solver_lr = config.eve.solver_lr
    if solver_lr and config.eve.share_params:
      raise ValueError(f"config.eve.solver_lr={solver_lr} with config.eve.share_params=True: "
                       "one set of weights learns at config.train.optimizer.lr; set "
                       "solver_lr=0 or share_params=False.")
    return [runner.RoleSpec("challenger", trained_reference=warm),
            runner.RoleSpec("solver", trained_reference=warm,
                            share_policy_with="challenger" if config.eve.share_params else None,
                            train=functools.partial(_with_lr, lr=solver_lr) if solver_lr else None)]

  def __init__(self, run: runner.Run):
    super().__init__(run)
    c = self.config
    if c.eve.solver_questions not in ("challenger", "library"):
      raise ValueError(f"config.eve.solver_questions={c.eve.solver_questions!r}: use "
                       "'challenger' (the method) or 'library' (the control).")
    if c.eve.option_order not in eve_tasks.OPTION_ORDERS:
      raise ValueError(f"config.eve.option_order={c.eve.option_order!r}: use one of "
                       f"{eve_tasks.OPTION_ORDERS} ('shuffled' is the paper's).")
    self.library, self.heldout, seeds = families(c.eve)
    self.train_families = [n for n in self.library if n not in self.heldout]
    data = c.data.to_dict()
    self.source = sources.make_source({**data, "seed": c.seed})
    self.eval_source = sources.make_source({**data, "seed": c.seed + 1_000_003})
    seed_rng = np.random.default_rng(run.seed("seed_programs"))
    self.queue = eve_queue.ExampleQueue(
        eve_queue.QueueConfig.from_config(c.queue),
        seeds=[(n, self.library[n].program(self.library[n].sample(seed_rng,
                                                                  *self.source.size_of(0))))
               for n in seeds if n in self.library])
    # One home for the function-length rule: the queue's, which the checks use too.
    self.pool = run.open_sandbox(max_function_chars=c.queue.max_function_chars)
    self.extra_rewards = [reward_registry.resolve(n) for n in c.reward.extra]
    self.logged: list[dict] = []        # Challenger-phase questions for the Solver
    self.solver_data = run.phase_data("solver_data", c.eve.solver_prompts,
                                      self._select_solver_data, prepare=self._rerun_programs)
    self._eval_tasks: dict[str, list[Task]] = {}   # fixed evaluation questions by set

  @classmethod
  def stages(cls, config) -> list[Stage]:
    e, w = config.eve, config.warmstart
    warm = ([Stage("warmstart", "challenger", 0, w.challenger_steps, optimizer="sft"),
             Stage("warmstart", "solver", 0, w.solver_steps, optimizer="sft")]
            if w.enabled else [])
    return schedule.iterated(warm, e.iterations, lambda it: [
        Stage("challenger", "challenger", it, e.challenger_steps, frozen=("solver",)),
        Stage("solver", "solver", it, e.solver_steps)])

  def state(self) -> dict[str, Any]:
    return {"queue": self.queue.state(), "logged": self.logged, "source": self.source.state()}

  def load_state(self, state) -> None:
    self.queue.restore(state["queue"])
    self.logged = state["logged"]
    self.source.restore(state["source"])

  # -- warm start ----------------------------------------------------------------

  def sft_optimizer(self, policy: str) -> dict:
    """The warm start's optimizer of a role: its schedule spans its own steps."""
    w, shared = self.config.warmstart, self.config.eve.share_params
    steps = {"challenger": w.challenger_steps, "solver": w.solver_steps}[policy]
    lr, schedule_name = w.lr, w.schedule
    if shared:
      steps = w.challenger_steps + w.solver_steps
    elif policy == "solver":
      lr, schedule_name = w.solver_lr or lr, w.solver_schedule or schedule_name
    return runner.warmstart_optimizer(lr, schedule_name, steps, w.warmup_steps)

  def warmstart_step(self, stage: Stage, step: int) -> dict | None:
    """SFT on the built-in library: Challenger on programs, Solver on their questions."""
    c, run = self.config, self.run
    rng = np.random.default_rng(run.seed(stage.name, step))
    n = c.warmstart.batch_size   # rows; a Solver image gives one row per question type
    if stage.role == "solver":
      n = max(1, (c.warmstart.solver_batch_size or n) // max(1, len(c.eve.question_types)))
    indices = rng.integers(0, len(self.source), n)
    pairs = (self._challenger_sft_pairs(indices, rng) if stage.role == "challenger"
             else self._solver_sft_pairs(indices, rng, step))
    return self.roles[stage.role].sft([p for p, _ in pairs],
                                      [run.completion(t) for _, t in pairs])

  def _challenger_sft_pairs(self, indices, rng):
    """Pairs of this process's images; every image's draws are made (sizes suffice)."""
    c = self.config
    names = list(c.warmstart.challenger_families) or self.train_families
    drawn = []
    for i in indices:
      fam = self.library[names[rng.integers(len(names))]]
      examples = [e.program for e in self.queue.sample_examples(rng)]
      drawn.append(eve_tasks.challenger_sft_pair(
          fam, rng, self.source.size_of(i), examples, style=c.eve.instructions,
          think_text=fam.description if c.warmstart.short_think else None,
          limits=self._program_limits))
    return list(self.run.owned(len(indices), lambda j: (
        self.run.prompt(drawn[j][0], [self._image(indices[j])]), drawn[j][1])).values())

  def _solver_sft_pairs(self, indices, rng, step):
    fams = [self.library[self.train_families[k]]
            for k in rng.integers(len(self.train_families), size=len(indices))]
    programs = [f.program(f.sample(rng, *self.source.size_of(i))) for f, i in zip(fams, indices)]
    images = self.run.owned(len(indices), lambda j: self._image(indices[j]))
    results = self.run.sandbox_results([self._submit(programs[j], im) for j, im in images.items()])
    reasoning = self.config.warmstart.solver_reasoning
    pairs = []
    for (j, image), res in zip(images.items(), results):
      task = self._task(indices[j], image, programs[j], res, seed=self.run.seed(indices[j], step))
      for q in task.questions if task else ():
        _, target = eve_tasks.solver_sft_pair(q, reasoning=reasoning)
        pairs.append((self.run.prompt(q.text, q.images), target))
    return pairs

  @property
  def _program_limits(self) -> dict:
    """The Challenger prompt's rules: the queue's limits and the family's conventions."""
    q, e = self.config.queue, self.config.eve
    return {"max_function_chars": q.max_function_chars, "max_comments": q.max_comments,
            "coordinates": e.coordinates, "think_tag": e.think_tag}

  # -- grading (one rule for rewards, pass rates and evaluation) -----------------

  def _solver_reward(self, q: eve_tasks.Question, reply: str):
    r = self.config.reward
    return eve_rewards.solver_reward(
        reply, q.answer, kind="letter_sequence" if q.qtype == 2 else "letter",
        w_format=r.solver_format, w_accuracy=r.solver_accuracy,
        partial_credit=self.config.eve.type2_partial_credit)

  def _pass_rates(self, questions: dict[int, eve_tasks.Question], seed: int
                  ) -> dict[int, float]:
    """The frozen Solver's mean accuracy over S samples per question {id: question}
    (a question whose prompt does not fit has none)."""
    S = self.config.eve.difficulty_samples
    samples = self.run.frozen["solver"].generate(
        {i: self.run.prompt(q.text, q.images) for i, q in questions.items()}, S, seed)
    acc = [self._solver_reward(questions[samples.prompt_of(r)], t).parts["accuracy"]
           for r, t in enumerate(samples.texts)]
    return {i: float(np.mean(acc[j * S:(j + 1) * S])) for j, i in enumerate(samples.kept)}

  # -- the sandbox ---------------------------------------------------------------

  def _submit(self, code: str, image: Image.Image):
    return self.pool.submit(sandbox_lib.EveJob(source=code, image=np.asarray(image),
                                               num_args=self.config.eve.num_args))

  def _task(self, image_index: int, image: Image.Image, code: str, result, seed: int,
            types=None) -> Task | None:
    if result is None or not result.ok:
      return None
    outputs = [Image.fromarray(np.asarray(o, np.uint8)) for o in result.images]
    questions = eve_tasks.build_questions(
        image, result.function_source, result.args, outputs,
        types=tuple(types if types is not None else self.config.eve.question_types), seed=seed,
        option_order=self.config.eve.option_order)
    return Task(image_index, code, result.function_source, list(result.args), outputs,
                questions, seed)

  # -- Challenger phase ----------------------------------------------------------

  def challenger_step(self, stage: Stage, step: int) -> None:
    c, run = self.config, self.run
    P = c.eve.challenger_prompts
    indices = [self.source.index_at(p) for p in self.source.reserve(P)]
    rng = np.random.default_rng(run.seed(stage.name, step))
    examples = [[e.program for e in self.queue.sample_examples(rng)] for _ in range(P)]
    images = run.owned(P, lambda j: self._image(indices[j]))
    submitted = {}   # row -> (code or None, its sandbox run)

    def run_program(r, j, text, _):   # the sandbox runs a row's program while the device samples
      code = eve_rewards.parse_challenger_output(text, c.eve.think_tag)[1]
      submitted[r] = (code, self._submit(code, images[j]) if code else None)

    samples = self.roles["challenger"].generate(
        {j: run.prompt(eve_tasks.challenger_instructions(examples[j], im.size, c.eve.instructions,
                                                         **self._program_limits), [im])
         for j, im in images.items()}, c.eve.challenger_group, run.seed(stage.name, step),
        chunks=c.eve.pipeline_chunks, on_row=run_program)
    if not samples.total_rows:
      return
    programs = [submitted[r] for r in range(len(samples))]
    run.counts["challenger/no_code_block"] += sum(code is None for code, _ in programs)
    run.counts["challenger/empty_code_block"] += sum(code == "" for code, _ in programs)
    results = run.sandbox_results([future for _, future in programs])
    tasks = [self._task(indices[samples.prompt_of(r)], images[samples.prompt_of(r)], code, res,
                        seed=run.seed(stage.name, step, samples.id_of(r)))
             for r, ((code, _), res) in enumerate(zip(programs, results))]
    rates = self._task_pass_rates(tasks, samples, run.seed(stage.name, step, "solver"))
    extras = [[float(fn(text=t, task=task, pass_rates=pr)) for fn in self.extra_rewards]
              for t, task, pr in zip(samples.texts, tasks, rates)]
    batch = samples.gather([{
        "text": samples.texts[r], "rates": rates[r], "extra": extras[r],
        "program": tasks[r] and tasks[r].program, "log": self._log_candidates(tasks[r], rates[r]),
    } for r in range(len(samples))])
    rewards = self._challenger_rewards(batch)
    train = self.roles["challenger"].update(samples, rewards)
    offers = self._admit_and_log(batch, rewards)
    for r, (task, rate, reward) in enumerate(zip(tasks, rates, samples.mine(rewards))):
      if rate is not None:
        run.add_card(stage, f"step{step:05d}_row{samples.id_of(r):04d}", lambda r=r, task=task,
                     rate=rate, reward=reward: self._card(task, samples.texts[r], rate, reward))
    valid = [x["rates"] is not None for x in batch]
    run.log({
        "valid_rate": float(np.mean(valid)),
        "has_code_rate": run.mean([code is not None for code, _ in programs]),
        "difficulty_mean": float(np.mean([x.parts["difficulty"] for x, ok in zip(rewards, valid)
                                          if ok])) if any(valid) else 0.0,
        "solver_pass_rate": run.mean([p for x in rates if x for p in x]),
        "completion_tokens": run.mean([len(t) for t in samples.tokens]),
        "rows": float(samples.total_rows), "logged_questions": float(len(self.logged)),
        "admitted": float(offers["admitted"]), **{f"offer/{k}": float(v) for k, v in offers.items()},
        **self.queue.stats(), **train}, prefix="challenger")
    run.log_counts()

  def _task_pass_rates(self, tasks, samples, seed) -> list[list[float] | None]:
    """Each valid task's questions' pass rates (by type), or None for an invalid row.
    Question k of row r has id r's id times the number of question types, plus k."""
    slots = max(1, len(self.config.eve.question_types))
    questions = {samples.id_of(r) * slots + k: q for r, t in enumerate(tasks) if t
                 for k, q in enumerate(t.questions)}
    rates = self._pass_rates(questions, seed)
    return [[rates[samples.id_of(r) * slots + k] for k in range(len(t.questions))]
            if t and all(samples.id_of(r) * slots + k in rates for k in range(len(t.questions)))
            else None for r, t in enumerate(tasks)]

  def _challenger_rewards(self, batch: list[dict]):
    """Every row's reward (the diversity penalty spans the batch), in row order."""
    r = self.config.reward
    with self.run.timer("rewards"):
      rewards = eve_rewards.challenger_rewards(
          [x["text"] for x in batch], [x["rates"] is not None for x in batch],
          [x["rates"] for x in batch], max_comment_markers=self.config.queue.max_comments,
          think_tag=self.config.eve.think_tag, tail_chars=r.diversity_tail_chars,
          distance_threshold=r.diversity_threshold, reference_quirk=r.difficulty_quirk,
          w_format=r.format, w_valid=r.validity, w_difficulty=r.difficulty, w_diversity=r.diversity)
    return [dataclasses.replace(x, value=x.value + sum(row["extra"]))
            for x, row in zip(rewards, batch)]

  def _log_candidates(self, task: Task | None, rates: list[float] | None) -> list[dict]:
    """The Solver-data records of a task's questions whose pass rate is in the log band."""
    if task is None or rates is None:
      return []
    lo, hi = self.config.solver_data.log_min_pass, self.config.solver_data.log_max_pass
    return [{"image": task.image_index, "program": task.program, "qtype": q.qtype,
             "k": q.meta.get("k"), "seed": task.seed, "answer": q.answer,
             "order": q.meta.get("order"), "pass_rate": p,
             "difficulty": eve_rewards.question_difficulty(p)}
            for q, p in zip(task.questions, rates) if lo <= p < hi]

  def _admit_and_log(self, batch: list[dict], rewards) -> collections.Counter:
    """Queue admissions and the Solver's data log, row by row; counts of offer outcomes."""
    offers = collections.Counter()
    for x, rew in zip(batch, rewards):
      if x["program"] is not None:
        offers[self.queue.offer(x["program"], float(rew.parts["difficulty"]),
                                x["rates"] is not None, step=self.run.train_step)] += 1
        self.logged.extend(x["log"])
    return offers

  def _card(self, t: Task, reply: str, rates: list[float], reward) -> dict:
    q = t.questions[0]
    return {"images": {"source": self._image(t.image_index),
                       **{f"args {i}": o for i, o in enumerate(t.outputs)}},
            "args": [json.dumps(a) for a in t.args], "question": q.text, "options": q.options,
            "answer": q.answer, "solver pass rate by type": rates,
            "reward": dict(reward.parts) | {"total": reward.value}, "program": t.program,
            "reply": reply}

  # -- Solver phase --------------------------------------------------------------

  def _image(self, image_index: int) -> Image.Image:
    return self.source.item(image_index)[1]

  def _select_solver_data(self, stage: Stage) -> list[dict]:
    """Logged questions with 0 < p < 1, hardest first, the top `keep` (the control: library's)."""
    c = self.config
    if c.eve.solver_questions == "library":
      self.logged = []
      return eve_tasks.library_questions(
          [self.library[f] for f in self.train_families], self.source,
          np.random.default_rng(self.run.seed(stage.name, "library")),
          stage.steps * c.eve.solver_prompts, c.eve.question_types)
    keep = sorted((r for r in self.logged if 0.0 < r["pass_rate"] < 1.0),
                  key=lambda r: -r["difficulty"])[:c.solver_data.keep]
    self.run.log({"selected": len(keep), "logged": len(self.logged)}, prefix="solver_data")
    self.logged = []
    return keep

  def _rerun_programs(self, recs: dict[int, dict]):
    """Submits the distinct programs of logged questions {id: record} to the sandbox again.

    Programs are deterministic, so re-running them rebuilds each question exactly
    as the frozen Solver saw it; nothing is kept between steps, so host memory
    does not grow with the Solver data.
    """
    images = {r["image"]: self._image(r["image"]) for r in recs.values()}
    keys = list(dict.fromkeys((r["image"], r["program"]) for r in recs.values()))
    return recs, images, keys, [self._submit(code, images[i]) for i, code in keys]

  def _logged_questions(self, work) -> dict[int, eve_tasks.Question]:
    """Each logged question rebuilt with its logged k and shuffle seed (the options
    order and answer it was scored with); one whose program fails now is left out."""
    recs, images, keys, futures = work
    tasks = {key: self._task(key[0], images[key[0]], key[1], res, seed=0, types=())
             for key, res in zip(keys, self.run.sandbox_results(futures))}
    questions = {}
    for i, rec in recs.items():
      task = tasks[(rec["image"], rec["program"])]
      qs = task and eve_tasks.build_questions(
          images[rec["image"]], task.function_text, task.args, task.outputs,
          types=(rec["qtype"],), ks=None if rec["k"] is None else [rec["k"]], seed=rec["seed"],
          option_order=self.config.eve.option_order)
      if qs:
        questions[i] = qs[0]
    return questions

  def solver_step(self, stage: Stage, step: int) -> None:
    run = self.run
    work = self.solver_data.for_step(stage, step)
    if work is None:
      return
    questions = self._logged_questions(work)
    samples = self.roles["solver"].generate(
        {i: run.prompt(q.text, q.images) for i, q in questions.items()},
        self.config.eve.solver_group, run.seed(stage.name, step))
    if not samples.total_rows:
      return
    with run.timer("rewards"):
      rewards = [self._solver_reward(questions[samples.prompt_of(r)], t)
                 for r, t in enumerate(samples.texts)]
    run.log(self.roles["solver"].update(samples, samples.gather_rewards(rewards)), prefix="solver")

  # -- evaluation ----------------------------------------------------------------

  def _eval_tasks_of(self, families: list[str], count: int, name: str) -> list[Task]:
    """Fixed questions (about `count`) from `families` on images the run never trains on."""
    if name not in self._eval_tasks:
      run = self.run
      rng = np.random.default_rng(run.seed(name))
      per = max(1, -(-count // (len(self._eval_types) * max(1, len(families)))))
      programs = []   # every process draws them all, and runs its own
      for family in families:
        fam = self.library[family]
        for _ in range(per):
          index = int(rng.integers(len(self.eval_source)))
          programs.append((index, fam.program(fam.sample(rng, *self.eval_source.size_of(index)))))
      mine = run.owned(len(programs), lambda j: (self.eval_source.item(programs[j][0])[1],
                                                 programs[j][1]))
      results = run.sandbox_results([self._submit(code, image) for image, code in mine.values()])
      key = () if name == "heldout" else (name,)
      tasks = [self._task(-1, image, code, res, seed=run.seed("eval", *key, j),
                          types=self._eval_types)
               for (j, (image, code)), res in zip(mine.items(), results)]
      self._eval_tasks[name] = [t for t in tasks if t is not None]
    return self._eval_tasks[name]

  @property
  def _eval_types(self) -> tuple[int, ...]:
    """The question types evaluated: those trained on, of types 0 and 1."""
    return tuple(t for t in self.config.eve.question_types if t in (0, 1)) or (0, 1)

  def _accuracy(self, tasks: list[Task], prefix: str) -> dict:
    """Greedy Solver accuracy on the questions of `tasks`, overall and by type."""
    run = self.run
    questions = [q for t in tasks for q in t.questions]
    samples = self.roles["solver"].generate([run.prompt(q.text, q.images) for q in questions],
                                            1, seed=0, greedy=True)
    if not samples.total_rows:
      return {}
    graded = [(questions[samples.prompt_of(r)].qtype,
               self._solver_reward(questions[samples.prompt_of(r)], t).parts)
              for r, t in enumerate(samples.texts)]
    out = {f"{prefix}_accuracy": run.mean([x["accuracy"] for _, x in graded]),
           **{f"{prefix}_accuracy_type{k}": run.mean([x["accuracy"] for qt, x in graded
                                                      if qt == k]) for k in self._eval_types},
           f"{prefix}_questions": samples.total_rows,
           **({"boxed_rate": run.mean([x["format"] > 0 for _, x in graded])}
              if prefix == "heldout" else {})}
    if self.config.warmstart.solver_reasoning == eve_tasks.RATIONALE:
      out.update(self._rationale_agreement(questions, samples, prefix))
    return out

  def _rationale_agreement(self, questions, samples, prefix: str) -> dict:
    """Type-1 replies that restate arguments: how often they name the answer's
    (the image was read) and answer the letter of what they named (the lookup)."""
    named, follows = [], []
    for r, text in enumerate(samples.texts):
      q = questions[samples.prompt_of(r)]
      if q.qtype != 1:
        continue
      k = eve_tasks.named_option(q, text)
      named.append(k is not None and eve_tasks.LETTERS[k] == q.answer)
      if k is not None:
        follows.append(eve_rewards.solver_accuracy(text, eve_tasks.LETTERS[k]) == 1.0)
    return {f"{prefix}_names_answer_type1": self.run.mean(named),
            f"{prefix}_letter_of_named_type1": self.run.mean(follows)}

  def eval_step(self, stage: Stage, step: int) -> dict | None:
    """Greedy Solver accuracy on the held-out families (and, with
    `train_family_eval_questions`, on the warm-start families, fresh images);
    with a rationale warm start, also how often type-1 replies name the right
    arguments and answer the letter of the ones they name."""
    e = self.config.eve
    out = self._accuracy(self._eval_tasks_of(self.heldout, e.heldout_eval_questions,
                                             "heldout"), "heldout")
    if not out:
      return None
    if e.train_family_eval_questions:
      out.update(self._accuracy(self._eval_tasks_of(
          self.train_families, e.train_family_eval_questions, "train_families"),
                                "train_families"))
    return out

  def summary(self) -> dict[str, Any]:
    return {"queue": self.queue.stats()}


RECIPE = Eve
