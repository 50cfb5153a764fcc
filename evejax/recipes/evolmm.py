"""EvoLMM: a Proposer and a Solver, two LoRA adapters on one frozen backbone, agree with themselves.

The algorithm (reference/METHODS.md, EvoLMM), `evolmm.update="sequential"` as published:

  (warm start, tiny preset only: SFT the backbone on built-in scene questions)
  for step in 1..S:
    image    = the source's next image
    question = the Proposer samples one <question>...</question>      (device)
    answers  = the Solver samples N answers to it                     (device)
    p(a)     = share of the N normalised answers equal to a
    r_i      = p(a_i)^gamma (1 - lambda clip((w_i - tau) / tau, 0, 1))  (Solver, per answer)
    r_q      = exp(-(H - mu)^2 / (2 sigma^2)), H the answers' entropy    (Proposer)
    N Solver updates, one per answer, then every 5th step one Proposer update:
      KL-regularised REINFORCE: (r - b) NLL_mean + beta KL(pi || base), b an EMA per
      role, beta adapted towards the KL target (evejax.rl.algorithms.Reinforce)

`evolmm.update="grpo"` (for pods): B images per step, G questions per image and
a group of N answers per question, group-relative advantages plus a KL term
against the base (config.train.algorithm="grpo"); everything else as above.
`evolmm.reward="majority"` replaces the continuous Solver reward by the
paper's baseline: 1 for an answer equal to the majority, else 0.

The reference of the KL term is the backbone with the adapters truly off (the
learner's LoRA mode). Held-out accuracy is measured on built-in procedural
scenes whose answers are known by construction and that training never sees.

Several processes: each owns a contiguous block of every step's images (and
of the warm start's and held-out questions); it reads only those, and its
questions and their answers stay with it, so every reward is computed where
its rows are. Rows carry ids numbering them as one process would
(`Samples.row_id`), so sampling draws alike on any layout; the advantages
(`Role.update`) and the metrics come from rows gathered in that order. The
published sequential update takes the step's answers one at a time in that
order, each a train step of every process (the others add padding rows).
"""
from __future__ import annotations

import collections
import copy
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from evejax.data import scene_questions as scenes
from evejax.data import sources
from evejax.recipes import evolmm_tasks as tasks
from evejax.recipes import role as role_lib
from evejax.recipes import runner
from evejax.recipes.runner import Stage
from evejax.rewards import evolmm as rewards
from evejax.rewards.registry import Reward

UPDATES = {"sequential": "reinforce", "grpo": "grpo"}   # update -> train.algorithm
REWARDS = ("continuous", "majority")


def schedule(config) -> list[Stage]:
  e, w = config.evolmm, config.warmstart
  stages = [Stage("eval", iteration=0, trains=False)]
  if w.enabled:
    stages += [Stage("warmstart", "base", 0, w.steps), Stage("eval", iteration=0, trains=False)]
  for it in range(1, e.iterations + 1):
    stages += [Stage("evolve", "solver", it, e.steps_per_iteration),
               Stage("eval", iteration=it, trains=False)]
  return stages


class EvoLmm(runner.Recipe):
  """The EvoLMM recipe; see the module docstring."""

  multiprocess = True

  @classmethod
  def role_specs(cls, config) -> list[runner.RoleSpec]:
    return [runner.RoleSpec("proposer"), runner.RoleSpec("solver")]

  def __init__(self, run: runner.Run):
    e, c = run.config.evolmm, run.config
    update = e["update"]   # by item: ConfigDict.update is a method
    if update not in UPDATES:
      raise ValueError(f"config.evolmm.update={update!r}: use one of {sorted(UPDATES)}.")
    if c.train.algorithm != UPDATES[update]:
      raise ValueError(
          f"config.evolmm.update={update!r} trains with config.train.algorithm="
          f"{UPDATES[update]!r}, but it is {c.train.algorithm!r}; set both.")
    if e.reward not in REWARDS:
      raise ValueError(f"config.evolmm.reward={e.reward!r}: use one of {REWARDS}.")
    if not c.train.lora.rank:
      raise ValueError("EvoLMM plays both roles as LoRA adapters on one backbone; set "
                       "config.train.lora.rank > 0.")
    super().__init__(run)
    self.source = (scenes.SceneSource(c.data.num_images, split="train", seed=c.seed,
                                      size=(c.data.size, c.data.size))
                   if c.data.kind == "scenes" else sources.make_source({**c.data.to_dict(),
                                                                        "seed": c.seed}))
    self.base = None
    if c.warmstart.enabled:
      # The warm start trains the backbone itself (a model from scratch has no
      # language for low-rank adapters to steer); the adapters then start on it.
      # A full fine-tune with no reference: SFT is all it runs.
      cfg = ml_collections.ConfigDict({k: copy.deepcopy(v) for k, v in c.train.items()
                                       if k != "reinforce"})
      cfg.lora.rank, cfg.algorithm, cfg.loss.kl_coef = 0, "grpo", 0.0
      policy = role_lib.Policy("base", run.services, cfg, run.initial_params,
                               param_dtype=c.model.param_dtype)
      run.policies["base"] = policy
      self.base = role_lib.Role("base", policy, c.sampling.solver)
    self.on_base = False             # whether the adapters sit on the warm-started backbone
    self.results: dict[str, dict] = {}
    self._heldout = None

  def stages(self) -> list[Stage]:
    return schedule(self.config)

  def state(self) -> dict[str, Any]:
    return {"source": self.source.state(), "results": self.results, "on_base": self.on_base}

  def load_state(self, state) -> None:
    self.source.restore(state["source"])
    self.results = state["results"]
    if state["on_base"]:
      self._adapt_on_base()

  # -- warm start ------------------------------------------------------------------

  def sft_optimizer(self, policy: str) -> dict:
    w = self.config.warmstart
    return dict(lr=w.lr, schedule=w.schedule, total_steps=max(w.steps, 1),
                warmup_steps=min(w.warmup_steps, max(w.steps - 1, 0)))

  def warmstart_step(self, stage: Stage, step: int) -> None:
    """SFT of the backbone on built-in scene questions: half to ask, half to answer."""
    c, run = self.config, self.run
    self.base.policy.use_optimizer("sft", self.sft_optimizer("base"))
    qs = scenes.sample_questions(c.seed, c.warmstart.batch_size, split="train",
                                 start=step * c.warmstart.batch_size,
                                 size=(c.data.size, c.data.size))
    style = c.evolmm.style
    pairs = []
    for k in run.share(len(qs)):
      text, target = (tasks.proposer_sft_pair(qs[k], style) if k % 2 else
                      tasks.solver_sft_pair(qs[k], style))
      pairs.append((run.prompt(text, [qs[k].image()]), run.completion(target)))
    metrics = self.base.sft([p for p, _ in pairs], [t for _, t in pairs])
    if metrics is not None:
      run.log(metrics, prefix="warmstart/base")

  def end_stage(self, stage: Stage) -> None:
    if stage.kind == "warmstart":
      self._adapt_on_base()

  def _adapt_on_base(self) -> None:
    """Puts both adapters on the warm-started backbone (it is also their KL reference)."""
    for name in ("proposer", "solver"):
      self.run.policies[name].learner.set_backbone(self.base.policy.learner.params)
    self.on_base = True

  # -- one EvoLMM step ---------------------------------------------------------------

  def _solver_rewards(self, replies: list[str]) -> list[Reward]:
    e = self.config.evolmm
    if e.reward == "continuous":
      return rewards.solver_rewards(replies, gamma=e.gamma, length_penalty=e.length_penalty,
                                    tau=e.tau)
    normed = [rewards.extract_answer(r) for r in replies]
    top = collections.Counter(a for a in normed if a).most_common(1)
    majority = top[0][0] if top else None
    return [Reward(float(bool(a) and a == majority), "ok" if a else "no_answer",
                   {"answer": a}) for a in normed]

  def evolve_step(self, stage: Stage, step: int) -> None:
    c, run = self.config, self.run
    e = c.evolmm
    seed = run.seed(stage.name, step)
    positions = self.source.reserve(e.images_per_step)
    mine = list(run.share(len(positions)))   # this process's images of the step
    images = [self.source.item(self.source.index_at(positions[j]))[1] for j in mine]
    proposer, solver = self.roles["proposer"], self.roles["solver"]
    qsamples = proposer.generate([run.prompt(tasks.proposer_prompt(e.style), [im])
                                  for im in images], e.proposer_group, runner.seed(seed, "p"),
                                 prompt_ids=mine)
    if not qsamples.total_rows:
      return
    questions = []
    for text in qsamples.texts:
      q, why = tasks.parse_question(text)
      if q is None:   # the published fallback: the Solver still answers something
        run.counts["proposer/no_question_tag"] += 1
        q = e.fallback_question
      questions.append(q)
    prompts = [run.prompt(tasks.solver_prompt(q, e.style), [images[qsamples.prompt_of(r)]])
               for r, q in enumerate(questions)]
    samples = solver.generate(prompts, e.samples, runner.seed(seed, "s"),
                              prompt_ids=[qsamples.row_id(r) for r in range(len(qsamples))])
    if not samples.total_rows:
      return
    by_question = collections.defaultdict(list)
    for r, text in enumerate(samples.texts):
      by_question[samples.kept[r // samples.group]].append(r)
    solver_values = np.zeros(len(samples), np.float32)
    question_values = np.zeros(len(qsamples), np.float32)
    stats = []   # per question row, its statistics, gathered for the metrics
    for qi, rows in by_question.items():
      replies = [samples.texts[r] for r in rows]
      for r, rw in zip(rows, self._solver_rewards(replies)):
        solver_values[r] = rw.value
      pr = rewards.proposer_reward(replies, mu=e.mu, sigma=e.sigma)
      question_values[qi] = pr.value
      normed = [rewards.extract_answer(x) for x in replies]
      shares = rewards.answer_shares(normed)
      stats.append({
          "consistency": float(np.mean(shares)), "unanimous": float(len(set(normed)) == 1),
          "distinct_answers": float(len(set(normed))), "entropy": pr.parts["entropy"],
          "no_answer": float(np.mean([not a for a in normed]))})
    stats = run.gather_by_id([qsamples.row_id(qi) for qi in by_question], stats)
    metrics = {k: float(np.mean([x[k] for x in stats])) for k in (stats[0] if stats else ())}

    def gathered_mean(s, v):   # of every process's per-row values of `s`, in row-id order
      return float(np.array(run.gather_by_id(s.row_ids, v.tolist()), np.float32).mean())
    metrics.update(solver_reward=gathered_mean(samples, solver_values),
                   proposer_reward=gathered_mean(qsamples, question_values))
    metrics.update(self._update(stage, step, qsamples, question_values, samples, solver_values))
    run.log(metrics, prefix="evolmm")
    run.log_counts()

  def _update(self, stage, step, qsamples, question_values, samples, solver_values) -> dict:
    """The published order: N Solver updates, one per sample; a Proposer update every
    `proposer_every` steps (on this step's questions). GRPO mode: one update each."""
    e = self.config.evolmm
    proposer, solver = self.roles["proposer"], self.roles["solver"]
    out = {}
    if e["update"] == "sequential":
      # Every process takes each answer's step, in row order; its owner gives the row.
      mine = {samples.row_id(r): r for r in range(len(samples))}
      for i in sorted(self.run.gather(list(mine))):
        rows = [mine[i]] if i in mine else []
        m = solver.update_rows([samples.row_prompts[k] for k in rows],
                               [samples.tokens[k] for k in rows],
                               [solver_values[k] for k in rows], group=1,
                               logprobs=[samples.logprobs[k] for k in rows])
      out.update({f"solver/{k}": v for k, v in m.items()})
    else:
      out.update({f"solver/{k}": v for k, v in solver.update(samples, solver_values).items()})
    global_step = stage.steps * (stage.iteration - 1) + step + 1
    if global_step % e.proposer_every == 0:
      out.update({f"proposer/{k}": v for k, v in
                  proposer.update(qsamples, question_values).items()})
    return out

  # -- evaluation ------------------------------------------------------------------

  def _heldout_questions(self):
    if self._heldout is None:
      c = self.config
      self._heldout = scenes.sample_questions(c.seed + 1, c.evolmm.heldout_questions,
                                              split="heldout", size=(c.data.size, c.data.size))
    return self._heldout

  def eval_step(self, stage: Stage, step: int) -> None:
    """Greedy Solver accuracy on held-out ground-truth scene questions."""
    run, style = self.run, self.config.evolmm.style
    qs = self._heldout_questions()
    mine = list(run.share(len(qs)))   # this process's questions
    prompts = [run.prompt(tasks.solver_prompt(qs[j].question, style), [qs[j].image()])
               for j in mine]
    samples = self.roles["solver"].generate(prompts, 1, seed=0, greedy=True, prompt_ids=mine)
    graded = run.gather([(qs[mine[samples.prompt_of(r)]].template,
                          tasks.is_correct(t, qs[mine[samples.prompt_of(r)]].answer))
                         for r, t in enumerate(samples.texts)])
    correct = [ok for _, ok in graded]
    by_template = collections.defaultdict(list)
    for template, ok in graded:
      by_template[template].append(ok)
    result = {"heldout_accuracy": float(np.mean(correct)) if correct else 0.0,
              "heldout_questions": len(correct),
              **{f"heldout_accuracy/{k}": float(np.mean(v)) for k, v in sorted(by_template.items())}}
    key = "init" if stage.iteration == 0 and not self.results else (
        "after_warmstart" if stage.iteration == 0 else f"iter{stage.iteration}")
    self.results[key] = result
    logging.info("Held-out evaluation (%s): %s", key, result)
    run.log(result, prefix="eval")

  def summary(self) -> dict[str, Any]:
    res = dict(self.results)
    start = res.get("after_warmstart", res.get("init"))
    iters = sorted((k for k in res if k.startswith("iter")), key=lambda k: int(k[4:]))
    if start and iters:
      res["heldout_gain_points"] = 100 * (res[iters[-1]]["heldout_accuracy"]
                                          - start["heldout_accuracy"])
    return res


RECIPE = EvoLmm


def run(config, workdir: str, **kwargs) -> dict[str, Any]:
  """Entry point for `python -m evejax.main --config configs/evolmm.py:<preset>`."""
  return runner.run(EvoLmm, config, workdir, **kwargs)
