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
  `reward="constant"`: the experiments' control, no signal (configs/evolmm.py ARMS).
  `reward="shuffled"`: the continuous rewards of each group handed to its answers in
  a random order: the method's reward sizes and update noise without its signal.
  `questions="scenes"`: an ablation, the Solver alone on built-in scene questions
  (no Proposer), to separate its consistency rewards from the questions asked.
  `warmstart.enabled` (tiny preset only): the backbone itself is first trained by SFT
  on built-in scene questions (a model from scratch has no language for low-rank
  adapters to steer); both adapters then sit on it, and it is their KL reference.

The KL reference is the backbone with the adapters off. Held-out accuracy: built-in
scenes whose answers are known by construction and that training never sees.
"""
from __future__ import annotations

from typing import Any

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
REWARDS = ("continuous", "majority", "constant", "shuffled")
ANSWER_FORMATS = ("tag_or_line", "tag")
QUESTION_SOURCES = ("proposer", "scenes")


def _evolve_steps_before(stage: Stage, step: int) -> int:
  """Evolve steps of the run before `step` of `stage` (iterations have equal steps)."""
  return (stage.iteration - 1) * stage.steps + step


class EvoLmm(runner.Recipe):
  """The EvoLMM recipe; see the module docstring."""

  multiprocess = True
  gallery_title = "EvoLMM questions"

  @classmethod
  def role_specs(cls, config) -> list[runner.RoleSpec]:
    specs = [runner.RoleSpec("proposer"), runner.RoleSpec("solver")]
    if config.warmstart.enabled:
      specs.append(runner.RoleSpec("base", sampling="solver", rl=False,
                                   train=runner.whole_backbone_sft))
    return specs

  def __init__(self, run: runner.Run):
    e, c = run.config.evolmm, run.config
    algorithm = UPDATE_RULES.get(e.update_rule)
    for ok, problem in (
        (algorithm, f"config.evolmm.update_rule={e.update_rule!r}: use one of "
                    f"{sorted(UPDATE_RULES)}."),
        (c.train.algorithm == algorithm, f"config.evolmm.update_rule={e.update_rule!r} trains "
         f"with config.train.algorithm={algorithm!r}, but it is {c.train.algorithm!r}; set both."),
        (e.reward in REWARDS, f"config.evolmm.reward={e.reward!r}: use one of {REWARDS}."),
        (e.answer_format in ANSWER_FORMATS, f"config.evolmm.answer_format={e.answer_format!r}: "
                                            f"use one of {ANSWER_FORMATS}."),
        (e.questions in QUESTION_SOURCES, f"config.evolmm.questions={e.questions!r}: use one of "
                                          f"{QUESTION_SOURCES}."),
        (e.questions != "scenes" or c.data.kind == "scenes",
         "config.evolmm.questions='scenes' asks built-in scene questions; set "
         "config.data.kind='scenes'."),
        (c.train.lora.rank > 0, "EvoLMM plays both roles as LoRA adapters on one backbone; set "
                                "config.train.lora.rank > 0.")):
      if not ok:
        raise ValueError(problem)
    super().__init__(run)
    self.source = (scenes.SceneSource(c.data.num_images, split="train", seed=c.seed,
                                      size=(c.data.size, c.data.size),
                                      num_shapes=e.scene_shapes or None, grid=e.scene_grid)
                   if c.data.kind == "scenes" else sources.make_source({**c.data.to_dict(),
                                                                        "seed": c.seed}))
    self.on_base = False             # whether the adapters sit on the warm-started backbone
    self.heldout = self._scene_questions(c.seed + 1, e.heldout_questions, split="heldout")

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

  def _scene_questions(self, seed: int, count: int, **kw) -> list:
    c = self.config
    return scenes.sample_questions(seed, count, size=(c.data.size, c.data.size),
                                   num_shapes=c.evolmm.scene_shapes or None,
                                   grid=c.evolmm.scene_grid,
                                   templates=tuple(c.evolmm.scene_templates) or None, **kw)

  # -- warm start ------------------------------------------------------------------

  def sft_optimizer(self, policy: str) -> dict:
    w = self.config.warmstart
    return runner.warmstart_optimizer(w.lr, w.schedule, w.steps, w.warmup_steps)

  def warmstart_step(self, stage: Stage, step: int) -> dict | None:
    """SFT of the backbone on built-in scene questions: half to ask, half to answer."""
    c, run = self.config, self.run
    qs = self._scene_questions(c.seed, c.warmstart.batch_size, split="train",
                               start=step * c.warmstart.batch_size)
    pair = lambda k: (tasks.proposer_sft_pair if k % 2 else tasks.solver_sft_pair)(  # noqa: E731
        qs[k], c.evolmm.style)
    pairs = run.owned(len(qs), lambda k: (run.prompt(pair(k)[0], [qs[k].image()]),
                                          run.completion(pair(k)[1]))).values()
    return self.roles["base"].sft([p for p, _ in pairs], [t for _, t in pairs])

  def end_stage(self, stage: Stage) -> None:
    if stage.kind == "warmstart":
      self._adapt_on_base()

  def _adapt_on_base(self) -> None:
    """Puts both adapters on the warm-started backbone (it is also their KL reference)."""
    for name in ("proposer", "solver"):
      self.run.policies[name].learner.set_backbone(self.run.policies["base"].learner.params)
    self.on_base = True

  # -- one EvoLMM step ---------------------------------------------------------------

  def _answered(self, replies: list[str]) -> list[str]:
    """The replies as the rewards read them: under answer_format="tag" a reply
    without a closed answer tag reads as empty (no answer), so that a tiny model
    cannot agree with itself on a malformed reply such as a lone "<answer>"."""
    if self.config.evolmm.answer_format == "tag_or_line":
      return list(replies)
    return [r if rewards.has_answer_tag(r) else "" for r in replies]

  def _solver_rewards(self, replies: list[str]) -> list[Reward]:
    e = self.config.evolmm
    if e.reward == "majority":
      return rewards.majority_rewards(replies)
    if e.reward == "constant":
      return [Reward(1.0, "constant") for _ in replies]
    paid = rewards.solver_rewards(replies, gamma=e.gamma, length_penalty=e.length_penalty,
                                  tau=e.tau)
    if e.reward == "shuffled":   # seeded by the replies: the same order after a resume
      order = np.random.default_rng(runner.stable_seed(self.config.seed, *replies))
      return [paid[k] for k in order.permutation(len(paid))]
    return paid

  def evolve_step(self, stage: Stage, step: int) -> None:
    e, run = self.config.evolmm, self.run
    if e.questions == "scenes":
      return self._answer_scene_questions(stage, step)
    positions = self.source.reserve(e.images_per_step)
    images = run.owned(len(positions), lambda j: self.source.item(
        self.source.index_at(positions[j]))[1])
    qsamples = self.roles["proposer"].generate(
        {j: run.prompt(tasks.proposer_prompt(e.style), [im]) for j, im in images.items()},
        e.proposer_group, run.seed(stage.name, step, "proposer"))
    if not qsamples.total_rows:
      return
    questions = [tasks.parse_question(text)[0] for text in qsamples.texts]
    run.counts["proposer/no_question_tag"] += sum(q is None for q in questions)
    asked = {qsamples.id_of(r): (q or e.fallback_question,   # as published: still answered
                                 images[qsamples.prompt_of(r)]) for r, q in enumerate(questions)}
    samples = self.roles["solver"].generate(
        {i: run.prompt(tasks.solver_prompt(q, e.style), [im]) for i, (q, im) in asked.items()},
        e.samples, run.seed(stage.name, step, "solver"))
    if not samples.total_rows:
      return
    groups, solver_rewards, metrics = self._answer_groups(samples)
    question_rewards = [rewards.proposer_reward(groups[i], mu=e.mu, sigma=e.sigma)
                        if i in groups else Reward(0.0, "no_solver_samples")
                        for i in qsamples.batch_ids]
    metrics.update(self._update(stage, step, samples, solver_rewards, qsamples, question_rewards))
    for r in range(0, len(samples), e.samples):
      run.add_card(stage, f"step{step:05d}_q{samples.id_of(r) // e.samples:04d}",
                   lambda r=r: self._card(samples.texts[r:r + e.samples],
                                          *asked[samples.prompt_of(r)]))
    run.log(metrics, prefix="evolmm")
    run.log_counts()

  def _answer_groups(self, samples) -> tuple[dict[int, list[str]], list[Reward], dict]:
    """Each question's N answers (as the rewards read them) by question, the Solver's
    rewards in batch order (each of its group) and the groups' mean statistics."""
    texts, N = self._answered(samples.gather(samples.texts)), self.config.evolmm.samples
    groups = {i // N: texts[k:k + N] for k, i in enumerate(samples.batch_ids) if k % N == 0}
    solver_rewards = [r for g in groups.values() for r in self._solver_rewards(g)]
    stats = [rewards.answer_statistics(g) for g in groups.values()]
    return groups, solver_rewards, {k: float(np.mean([x[k] for x in stats])) for k in stats[0]}

  def _answer_scene_questions(self, stage: Stage, step: int) -> None:
    """The Solver alone (`questions="scenes"`): its consistency rewards on built-in
    template questions of fresh train scenes (after the warm start's); no Proposer."""
    c, e, run = self.config, self.config.evolmm, self.run
    count = e.images_per_step * e.proposer_group
    first = c.warmstart.steps * c.warmstart.batch_size if c.warmstart.enabled else 0
    qs = self._scene_questions(c.seed, count, split="train",
                               start=first + _evolve_steps_before(stage, step) * count)
    samples = self.roles["solver"].generate(
        run.owned(count, lambda j: run.prompt(tasks.solver_prompt(qs[j].question, e.style),
                                               [qs[j].image()])),
        e.samples, run.seed(stage.name, step, "solver"))
    if not samples.total_rows:
      return
    _, solver_rewards, metrics = self._answer_groups(samples)
    metrics.update(self._update(stage, step, samples, solver_rewards))
    for r in range(0, len(samples), e.samples):
      q = qs[samples.prompt_of(r)]
      run.add_card(stage, f"step{step:05d}_q{samples.id_of(r) // e.samples:04d}",
                   lambda r=r, q=q: self._card(samples.texts[r:r + e.samples], q.question,
                                               q.image()))
    run.log(metrics, prefix="evolmm")
    run.log_counts()

  def _update(self, stage, step, samples, solver_rewards, qsamples=None,
              question_rewards=()) -> dict:
    """The published order: N Solver updates, one per answer (every process takes each
    answer's step, in row order; its owner gives the row); a Proposer update every
    `proposer_every` steps, on this step's questions (none without `qsamples`). GRPO:
    one update each."""
    e, solver = self.config.evolmm, self.roles["solver"]
    if e.update_rule == "sequential":
      local = {i: r for r, i in enumerate(samples.ids_of())}
      for i, reward in zip(samples.batch_ids, solver_rewards):
        metrics = solver.update(samples.select([local[i]] if i in local else []), [reward])
    else:
      metrics = solver.update(samples, solver_rewards)
    # Rewards of the whole step (a sequential update's metrics are its last answer's).
    out = {f"solver/{k}": v for k, v in {**metrics, **role_lib.reward_metrics(
        solver_rewards)}.items()}
    if qsamples is None:
      return out
    out.update({f"proposer/{k}": v for k, v in role_lib.reward_metrics(question_rewards).items()})
    if (_evolve_steps_before(stage, step) + 1) % e.proposer_every == 0:
      out.update({f"proposer/{k}": v for k, v in
                  self.roles["proposer"].update(qsamples, question_rewards).items()})
    return out

  def _card(self, replies, question, image) -> dict:
    """A question with its image, the Solver's replies as written, and what their
    rewards saw (the replies as `_answered` reads them)."""
    e, read = self.config.evolmm, self._answered(replies)
    shares = rewards.answer_shares([rewards.extract_answer(x) for x in read])
    return {"images": [image], "question": question, "answers": replies,
            "share of each answer (p)": [round(float(s), 3) for s in shares],
            "solver rewards": [round(r.value, 3) for r in self._solver_rewards(read)],
            "proposer reward": rewards.proposer_reward(read, mu=e.mu, sigma=e.sigma).value}

  # -- evaluation ------------------------------------------------------------------

  def eval_step(self, stage: Stage, step: int) -> dict:
    """Greedy held-out accuracy; with `heldout_samples` N > 0 also one sample's and the
    majority-of-N's at the Solver's temperature (what rewarding agreement can reach)."""
    c, run, qs, solver = self.config, self.run, self.heldout, self.roles["solver"]
    prompts = run.owned(len(qs), lambda j: run.prompt(
        tasks.solver_prompt(qs[j].question, c.evolmm.style), [qs[j].image()]))
    samples = solver.generate(prompts, 1, seed=0, greedy=True)
    texts = self._answered(samples.texts)
    correct = {samples.prompt_of(r): tasks.is_correct(t, qs[samples.prompt_of(r)].answer)
               for r, t in enumerate(texts)}
    greedy = dict(samples.gather([(samples.prompt_of(r), tasks.solver_answer(t))
                                  for r, t in enumerate(texts)]))
    out = {"heldout_accuracy": run.mean(list(correct.values())),
           "heldout_questions": samples.total_rows,
           "heldout_answer_variety": float(np.mean(tasks.answer_variety(qs, greedy) or [0.0])),
           **{f"heldout_accuracy/{k}": run.mean([ok for j, ok in correct.items()
                                                 if qs[j].template == k])
              for k in sorted({q.template for q in qs})}}
    if n := c.evolmm.heldout_samples:
      votes = solver.generate(prompts, n, seed=run.seed("eval", "votes"))
      groups = {votes.prompt_of(r): self._answered(votes.texts[r:r + n])
                for r in range(0, len(votes), n)}
      out.update({f"heldout_{k}": run.mean(v)
                  for k, v in tasks.vote_outcomes(groups, qs).items()})
    return out


RECIPE = EvoLmm
