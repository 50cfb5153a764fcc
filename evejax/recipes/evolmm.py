"""EvoLMM: a Proposer and a Solver, two LoRA adapters on one frozen backbone, agree with themselves.

The algorithm (reference/METHODS.md, EvoLMM), `evolmm.update_rule="sequential"` as published:

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

Departures from the paper, each by config:
  `update_rule="grpo"` (for pods and the tiny preset): B images per step, G questions
  per image and a group of N answers per question, group-relative advantages plus a
  KL term against the base (config.train.algorithm="grpo").
  `reward="majority"`: the paper's baseline (1 for the majority answer, else 0).
  `warmstart.enabled` (tiny preset only): the backbone itself is first trained by SFT
  on built-in scene questions (a model from scratch has no language for low-rank
  adapters to steer); both adapters then sit on it, and it is their KL reference.

The KL reference is the backbone with the adapters truly off (the learner's LoRA
mode). Held-out accuracy is measured on built-in procedural scenes whose answers
are known by construction and that training never sees.
"""
from __future__ import annotations

import collections
import copy
from typing import Any

import ml_collections
import numpy as np

from evejax.data import scene_questions as scenes
from evejax.data import sources
from evejax.recipes import evolmm_tasks as tasks
from evejax.recipes import role as role_lib
from evejax.recipes import runner
from evejax.recipes import schedule
from evejax.recipes.schedule import Stage
from evejax.rewards import evolmm as rewards
from evejax.rewards.registry import Reward

UPDATE_RULES = {"sequential": "reinforce", "grpo": "grpo"}   # update_rule -> train.algorithm
REWARDS = ("continuous", "majority")


def _backbone_training(train: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The warm start trains the whole backbone by SFT: no adapter, no reference."""
  cfg = ml_collections.ConfigDict({k: copy.deepcopy(v) for k, v in train.items()
                                   if k != "reinforce"})
  cfg.lora.rank, cfg.algorithm, cfg.loss.kl_coef = 0, "grpo", 0.0
  return cfg


class EvoLmm(runner.Recipe):
  """The EvoLMM recipe; see the module docstring."""

  multiprocess = True
  gallery_title = "EvoLMM questions"

  @classmethod
  def role_specs(cls, config) -> list[runner.RoleSpec]:
    specs = [runner.RoleSpec("proposer"), runner.RoleSpec("solver")]
    if config.warmstart.enabled:
      specs.append(runner.RoleSpec("base", sampling="solver", rl=False,
                                   train=_backbone_training))
    return specs

  def __init__(self, run: runner.Run):
    e, c = run.config.evolmm, run.config
    if e.update_rule not in UPDATE_RULES:
      raise ValueError(f"config.evolmm.update_rule={e.update_rule!r}: use one of "
                       f"{sorted(UPDATE_RULES)}.")
    if c.train.algorithm != UPDATE_RULES[e.update_rule]:
      raise ValueError(
          f"config.evolmm.update_rule={e.update_rule!r} trains with config.train.algorithm="
          f"{UPDATE_RULES[e.update_rule]!r}, but it is {c.train.algorithm!r}; set both.")
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
    self.on_base = False             # whether the adapters sit on the warm-started backbone
    self._heldout = None

  @classmethod
  def stages(cls, config) -> list[Stage]:
    e, w = config.evolmm, config.warmstart
    warm = [Stage("warmstart", "base", 0, w.steps, optimizer="sft")] if w.enabled else []
    return schedule.iterated(warm, e.iterations,
                             lambda it: [Stage("evolve", "solver", it, e.steps_per_iteration)])

  def state(self) -> dict[str, Any]:
    return {"source": self.source.state(), "on_base": self.on_base}

  def load_state(self, state) -> None:
    self.source.restore(state["source"])
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
    qs = scenes.sample_questions(c.seed, c.warmstart.batch_size, split="train",
                                 start=step * c.warmstart.batch_size,
                                 size=(c.data.size, c.data.size))
    pairs = [(tasks.proposer_sft_pair if k % 2 else tasks.solver_sft_pair)(qs[k], c.evolmm.style)
             + (qs[k],) for k in run.share(len(qs))]
    metrics = self.roles["base"].sft([run.prompt(text, [q.image()]) for text, _, q in pairs],
                                     [run.completion(target) for _, target, _ in pairs])
    if metrics is not None:
      run.log(metrics, prefix="warmstart/base")

  def end_stage(self, stage: Stage) -> None:
    if stage.kind == "warmstart":
      self._adapt_on_base()

  def _adapt_on_base(self) -> None:
    """Puts both adapters on the warm-started backbone (it is also their KL reference)."""
    for name in ("proposer", "solver"):
      self.run.policies[name].learner.set_backbone(self.run.policies["base"].learner.params)
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
    e, run = self.config.evolmm, self.run
    positions = self.source.reserve(e.images_per_step)
    mine = list(run.share(len(positions)))   # this process's images of the step
    images = [self.source.item(self.source.index_at(positions[j]))[1] for j in mine]
    qsamples = self.roles["proposer"].generate(
        [run.prompt(tasks.proposer_prompt(e.style), [im]) for im in images], e.proposer_group,
        run.seed(stage.name, step, "proposer"), ids=mine)
    if not qsamples.total_rows:
      return
    questions = [tasks.parse_question(text)[0] for text in qsamples.texts]
    run.counts["proposer/no_question_tag"] += sum(q is None for q in questions)
    questions = [q or e.fallback_question for q in questions]   # as published: still answered
    samples = self.roles["solver"].generate(
        [run.prompt(tasks.solver_prompt(q, e.style), [images[qsamples.prompt_of(r)]])
         for r, q in enumerate(questions)], e.samples, run.seed(stage.name, step, "solver"),
        ids=qsamples.row_ids)
    if not samples.total_rows:
      return
    # Each question's N answers are one group of the batch: every reward is of its group.
    batch = samples.gather(list(zip(samples.row_ids, samples.texts)))
    groups = [[t for _, t in batch[k:k + e.samples]] for k in range(0, len(batch), e.samples)]
    solver_rewards = [r for g in groups for r in self._solver_rewards(g)]
    by_question = {batch[k][0] // e.samples: rewards.proposer_reward(g, mu=e.mu, sigma=e.sigma)
                   for k, g in zip(range(0, len(batch), e.samples), groups)}
    question_rewards = [by_question.get(i, Reward(0.0, "no_solver_samples"))
                        for i in qsamples.gather(qsamples.row_ids)]
    stats = [self._statistics(g) for g in groups]
    metrics = {k: float(np.mean([x[k] for x in stats])) for k in stats[0]}
    metrics.update(self._update(stage, step, samples, [i for i, _ in batch], solver_rewards,
                                qsamples, question_rewards))
    for r in range(0, len(samples), e.samples):
      self._card(stage, step, samples, r, images[qsamples.prompt_of(samples.prompt_of(r))],
                 questions[samples.prompt_of(r)])
    run.log(metrics, prefix="evolmm")
    run.log_counts()

  @staticmethod
  def _statistics(replies: list[str]) -> dict[str, float]:
    normed = [rewards.extract_answer(x) for x in replies]
    shares = rewards.answer_shares(normed)
    return {"consistency": float(np.mean(shares)), "unanimous": float(len(set(normed)) == 1),
            "distinct_answers": float(len(set(normed))),
            "entropy": rewards.answer_entropy(normed),
            "no_answer": float(np.mean([not a for a in normed]))}

  def _update(self, stage, step, samples, row_ids, solver_rewards, qsamples,
              question_rewards) -> dict:
    """The published order: N Solver updates, one per answer (every process takes each
    answer's step, in row order; its owner gives the row); a Proposer update every
    `proposer_every` steps, on this step's questions. GRPO: one update each."""
    e, solver = self.config.evolmm, self.roles["solver"]
    if e.update_rule == "sequential":
      local = dict(zip(samples.row_ids, range(len(samples))))
      for row_id, reward in zip(row_ids, solver_rewards):
        metrics = solver.update(samples.select([local[row_id]] if row_id in local else []),
                                [reward])
    else:
      metrics = solver.update(samples, solver_rewards)
    # Rewards of the whole step (a sequential update's metrics are its last answer's).
    out = {f"solver/{k}": v for k, v in {**metrics, **role_lib.reward_metrics(
        solver_rewards)}.items()}
    out.update({f"proposer/{k}": v for k, v in role_lib.reward_metrics(question_rewards).items()})
    if (stage.steps * (stage.iteration - 1) + step + 1) % e.proposer_every == 0:
      out.update({f"proposer/{k}": v for k, v in
                  self.roles["proposer"].update(qsamples, question_rewards).items()})
    return out

  def _card(self, stage, step, samples, first_row, image, question) -> None:
    """A question with its image, the Solver's answers and their rewards' inputs."""
    e = self.config.evolmm
    replies = samples.texts[first_row:first_row + e.samples]
    normed = [rewards.extract_answer(x) for x in replies]
    shares = rewards.answer_shares(normed)
    self.run.add_card(stage, f"step{step:05d}_q{samples.row_id(first_row) // e.samples:04d}",
                      lambda: {
        "images": [image], "question": question, "answers": replies,
        "share of each answer (p)": [round(float(s), 3) for s in shares],
        "solver rewards": [round(r.value, 3) for r in self._solver_rewards(replies)],
        "proposer reward": rewards.proposer_reward(replies, mu=e.mu, sigma=e.sigma).value})

  # -- evaluation ------------------------------------------------------------------

  def eval_step(self, stage: Stage, step: int) -> dict:
    """Greedy Solver accuracy on held-out ground-truth scene questions."""
    c, run = self.config, self.run
    if self._heldout is None:
      self._heldout = scenes.sample_questions(c.seed + 1, c.evolmm.heldout_questions,
                                              split="heldout", size=(c.data.size, c.data.size))
    qs, mine = self._heldout, list(run.share(len(self._heldout)))
    samples = self.roles["solver"].generate(
        [run.prompt(tasks.solver_prompt(qs[j].question, c.evolmm.style), [qs[j].image()])
         for j in mine], 1, seed=0, greedy=True, ids=mine)
    graded = samples.gather([(qs[mine[samples.prompt_of(r)]].template,
                              tasks.is_correct(t, qs[mine[samples.prompt_of(r)]].answer))
                             for r, t in enumerate(samples.texts)])
    by_template = collections.defaultdict(list)
    for template, ok in graded:
      by_template[template].append(ok)
    return {"heldout_accuracy": float(np.mean([ok for _, ok in graded])) if graded else 0.0,
            "heldout_questions": len(graded),
            **{f"heldout_accuracy/{k}": float(np.mean(v)) for k, v in sorted(by_template.items())}}


RECIPE = EvoLmm
