"""MM-Zero: a Proposer, a Coder and a Solver evolve from zero images through rendered code.

The algorithm (reference/METHODS.md, MM-Zero), one method per stage kind:

  (warm start, tiny preset only: SFT the three roles on the built-in library)
  for iteration i in 1..I:
    Proposer phase, Coder_{i-1} and Solver_{i-1} frozen, for each step:
      proposals = Proposer samples G replies per topic prompt      (device)
      codes     = Coder_{i-1} writes N per parsed proposal         (device)
      renders   = sandbox renders each code                        (host, overlapped)
      answers   = Solver_{i-1} answers easy and hard n times each  (device)
      s, c      = visual verification, hard-question consistency
      R_P       = (1/N) sum_rendered [min(s, .5) + min(c, 1 - c)] - too-easy
                  - BLEU-cluster diversity - content-type share; -1 unparseable
      GRPO update of the Proposer
    Coder phase: at its start, Proposer_i's proposals whose render success over
      N samples of Coder_{i-1} lies in [0.25, 0.75] form the Coder's data; each
      step: G codes per proposal, rendered, scored by Solver_{i-1};
      R_C = 1 + s + min(c, 1 - c) if it renders, else the published penalties
    Solver phase: at its start, Proposer_i's proposals, one render each from
      Coder_i, answered 10 times by Solver_{i-1}; kept when the easy question's
      consistency >= 0.5 and the hard one's lies in [0.25, 0.75]; the majority
      hard answer is the silver label; each step: G answers per item,
      R_S = 0.9 acc + 0.1 fmt against it
    evaluation: the Coder's render success and the Solver's accuracy on
      held-out library items; the co-evolution curves, a chart and a gallery

Everything else (schedule, resume, roles, metrics) is the recipe runner's.

Several processes: each owns a contiguous block of every step's prompts (topic
prompts, Coder data, Solver items, held-out items) and everything that grows
from them: the Coder's codes of its proposals, their renders in its own
sandbox pool, the Solver's answers about them. Rows carry ids that number
them as one process would (`Samples.row_id`; a code is its proposal's row
times N plus its member, a question its render's id times 2 plus easy or
hard), so sampling draws alike on any layout, and what spans the batch is
decided from rows gathered in id order: the Proposer's rewards (diversity
clusters and content-type shares are batch-wide), the Coder and Solver data,
the metrics and the co-evolution curves.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
from typing import Any, Sequence

import numpy as np
from absl import logging
from PIL import Image

from evejax import sandbox as sandbox_lib
from evejax.data import mmzero_library as library
from evejax.recipes import mmzero_tasks as tasks
from evejax.recipes import runner
from evejax.recipes.runner import Stage
from evejax.rewards import mmzero as rewards
from evejax.rl import answers


@dataclasses.dataclass
class Render:
  """One code sample of a proposal: what it drew, and what the Solver made of it."""
  code: str
  image: np.ndarray | None       # None: it did not render (see `reason`)
  reason: str
  easy_answers: list[str | None] = dataclasses.field(default_factory=list)
  hard_answers: list[str | None] = dataclasses.field(default_factory=list)

  @property
  def rendered(self) -> bool:
    return self.image is not None


def in_coder_band(renders: Sequence[Render], band: Sequence[float]) -> tuple[bool, float]:
  """(kept, render rate): a proposal is Coder data when its render success over
  the Coder's N samples lies in [low, high]."""
  rate = sum(r.rendered for r in renders) / max(len(renders), 1)
  return bool(renders) and band[0] <= rate <= band[1], rate


def solver_item(render: Render, easy_min: float, hard_band: Sequence[float]
                ) -> tuple[bool, str | None, float, float]:
  """(kept, silver label, easy consistency, hard consistency) of one rendered item.

  Kept when the easy question's answers agree at least `easy_min` and the hard
  question's consistency lies in `hard_band`; the silver label is the majority
  hard answer.
  """
  if not render.rendered:
    return False, None, 0.0, 0.0
  easy_c = rewards.consistency(render.easy_answers)[0]
  hard_c, silver, _ = rewards.consistency(render.hard_answers)
  keep = easy_c >= easy_min and hard_band[0] <= hard_c <= hard_band[1]
  return keep, silver, easy_c, hard_c


def schedule(config) -> list[Stage]:
  """Evaluation, the warm start (if any), then I x (Proposer, Coder, Solver, evaluation)."""
  m, w = config.mmzero, config.warmstart
  stages = [Stage("eval", iteration=0, trains=False)]
  if w.enabled:
    stages += [Stage("warmstart", role, 0, w[f"{role}_steps"])
               for role in ("proposer", "coder", "solver") if w[f"{role}_steps"]]
    stages.append(Stage("eval", iteration=0, trains=False))
  for it in range(1, m.iterations + 1):
    stages += [Stage("proposer", "proposer", it, m.proposer_steps),
               Stage("coder", "coder", it, m.coder_steps),
               Stage("solver", "solver", it, m.solver_steps),
               Stage("eval", iteration=it, trains=False)]
  return stages


class MmZero(runner.Recipe):
  """The MM-Zero recipe; see the module docstring."""

  multiprocess = True

  @classmethod
  def role_specs(cls, config) -> list[runner.RoleSpec]:
    warm = bool(config.warmstart.enabled)
    shared = "proposer" if config.mmzero.share_params else None
    return [runner.RoleSpec("proposer", trained_reference=warm),
            runner.RoleSpec("coder", share_policy_with=shared, trained_reference=warm),
            runner.RoleSpec("solver", share_policy_with=shared, trained_reference=warm)]

  def __init__(self, run: runner.Run):
    super().__init__(run)
    m = self.config.mmzero
    if m.backend not in tasks.BACKENDS:
      raise ValueError(f"config.mmzero.backend={m.backend!r}: use one of {tasks.BACKENDS}.")
    unknown = [t for t in m.topics if t not in tasks.TOPICS]
    if unknown:
      raise ValueError(f"config.mmzero.topics {unknown} are unknown; valid: {sorted(tasks.TOPICS)}.")
    self.topics = list(m.topics) or list(tasks.TOPICS)
    self.pool = sandbox_lib.SandboxPool(sandbox_lib.SandboxConfig.from_config(
        {**self.config.sandbox.to_dict(), "checks": self.config.checks.to_dict()}))
    self.coder_data: list[dict] = []    # Proposer_i's proposals in the Coder's band
    self.solver_data: list[dict] = []   # items with a silver label, for the Solver phase
    self.curves: dict[str, dict] = {}   # co-evolution metrics per iteration
    self.results: dict[str, dict] = {}  # held-out evaluations by stage
    self._phase: dict[str, list[float]] = collections.defaultdict(list)
    self._renders_ahead: tuple[int, Any] | None = None

  def stages(self) -> list[Stage]:
    return schedule(self.config)

  # -- host state --------------------------------------------------------------

  def state(self) -> dict[str, Any]:
    return {"coder_data": self.coder_data, "solver_data": self.solver_data,
            "curves": self.curves, "results": self.results, "phase": dict(self._phase)}

  def load_state(self, state) -> None:
    self.coder_data = state["coder_data"]
    self.solver_data = state["solver_data"]
    self.curves = state["curves"]
    self.results = state["results"]
    self._phase = collections.defaultdict(list, state["phase"])

  def close(self) -> None:
    self.pool.close()

  # -- the three services: propose, code and render, answer ----------------------

  def _propose(self, role, n: int, group: int, seed: int):
    """(topics, samples, proposals) of this process's topic prompts of the `n`:
    proposals[r] is row r's Proposal or None; `samples.row_id` numbers rows."""
    rng = np.random.default_rng(seed)
    topics = [self.topics[i] for i in rng.integers(len(self.topics), size=n)]
    mine = list(self.run.share(n))
    style = self.config.mmzero.style
    prompts = [self.run.prompt(tasks.proposer_prompt(tasks.TOPICS[topics[j]], style))
               for j in mine]
    samples = role.generate(prompts, group, seed, prompt_ids=mine)
    parsed = [rewards.parse_proposer_output(t) for t in samples.texts]
    for p, why in parsed:
      if p is None:
        self.run.counts[f"proposer/{why.split('=')[0]}"] += 1
    return [topics[mine[samples.prompt_of(r)]] for r in range(len(samples))], samples, \
        [p for p, _ in parsed]

  def _draw(self, role, proposals: Sequence, ids: Sequence[int], n: int, seed: int
            ) -> list[list[Render]]:
    """`n` code samples of `role` per proposal, rendered in the sandbox.

    `ids`: the proposals' ids over every process (this process's proposals);
    render k of proposal i has id ids[i] * n + k. The sandbox renders chunk c
    while the device samples chunk c+1; chunks split every process's proposals
    in id order. A proposal whose prompt does not fit gets no samples (counted
    by the role).
    """
    m = self.config.mmzero
    prompts = [self.run.prompt(tasks.coder_prompt(p, m.backend, m.style)) for p in proposals]
    out: list[list[Render]] = [[] for _ in proposals]
    everyone = sorted(self.run.gather([int(i) for i in ids]))
    place = {i: k for k, i in enumerate(everyone)}
    pending = []
    bounds = np.array_split(np.arange(len(everyone)),
                            max(1, min(len(everyone), m.pipeline_chunks)))
    for ci, chunk in enumerate(bounds):
      if not len(chunk):
        continue
      lo, hi = int(chunk[0]), int(chunk[-1])
      mine = [i for i, x in enumerate(ids) if lo <= place[int(x)] <= hi]
      samples = role.generate([prompts[i] for i in mine], n, runner.seed(seed, ci),
                              prompt_ids=[int(ids[i]) for i in mine])
      for r, text in enumerate(samples.texts):
        pending.append((mine[samples.prompt_of(r)], tasks.extract_code(text, m.backend),
                        self.pool.submit(tasks.render_job(text, m.backend))))
    with self.run.timer("waiting"):
      for i, code, fut in pending:
        out[i].append(self._render(code, fut.result()))
    return out

  def _render(self, code: str, result) -> Render:
    if not result.ok:
      self.run.counts[f"sandbox/{result.reason}"] += 1
      return Render(code, None, result.reason)
    return Render(code, np.asarray(result.images[0]), "ok")

  def _answer(self, role, renders: list[Render], ids: Sequence[int],
              questions: list[tuple[str, str]], n: int, seed: int) -> None:
    """`role` answers each rendered item's (easy, hard) questions `n` times (in place).

    `ids`: the renders' ids over every process (question q of render i has id
    2 ids[i] + q).
    """
    style = self.config.mmzero.style
    items = [(r, q, int(i)) for r, q, i in zip(renders, questions, ids) if r.rendered]
    prompts = [self.run.prompt(tasks.solver_prompt(text, style), [Image.fromarray(r.image)])
               for r, qs, _ in items for text in qs]
    samples = role.generate(prompts, n, seed,
                            prompt_ids=[2 * i + q for _, _, i in items for q in (0, 1)])
    boxed = collections.defaultdict(list)
    for row, text in enumerate(samples.texts):
      boxed[samples.prompt_of(row)].append(answers.extract_boxed(text))
    for k, (r, _, _) in enumerate(items):
      r.easy_answers, r.hard_answers = boxed.get(2 * k, []), boxed.get(2 * k + 1, [])

  @staticmethod
  def _outcome(r: Render, proposal) -> rewards.RenderOutcome:
    if not r.rendered:
      return rewards.RenderOutcome(False)
    return rewards.RenderOutcome(
        True, rewards.visual_verification(r.easy_answers, proposal.easy_answer),
        rewards.consistency(r.hard_answers)[0])

  # -- warm start ----------------------------------------------------------------

  def sft_optimizer(self, role: str) -> dict:
    w = self.config.warmstart
    steps = (sum(w[f"{r}_steps"] for r in ("proposer", "coder", "solver"))
             if self.config.mmzero.share_params else w[f"{role}_steps"])
    return dict(lr=w[f"{role}_lr"] or w.lr, schedule=w.schedule, total_steps=max(steps, 1),
                warmup_steps=min(w.warmup_steps, max(steps - 1, 0)))

  def warmstart_step(self, stage: Stage, step: int) -> None:
    """SFT on library items: proposals for topics, their code, answers about their pictures."""
    c, run = self.config, self.run
    role = self.roles[stage.role]
    role.policy.use_optimizer("sft", self.sft_optimizer(role.policy.name))
    rng = np.random.default_rng(run.seed(stage.name, step))
    items = library.sample_items(rng, c.warmstart.batch_size, kinds=tuple(c.mmzero.kinds))
    style, backend = c.mmzero.style, c.mmzero.backend
    mine = run.share(len(items))
    if stage.role == "proposer":
      pairs = [(run.prompt(t), x) for t, x in (tasks.proposer_sft_pair(items[k], style=style)
                                               for k in mine)]
    elif stage.role == "coder":
      pairs = [(run.prompt(t), x) for t, x in (tasks.coder_sft_pair(items[k], backend, style)
                                               for k in mine)]
    else:
      pairs = []
      for k in mine:
        text, target = tasks.solver_sft_pair(items[k], ("easy", "hard")[k % 2], style)
        pairs.append((run.prompt(text, [library.render_trusted(items[k].svg)]), target))
    metrics = role.sft([p for p, _ in pairs], [run.completion(t) for _, t in pairs])
    if metrics is not None:
      run.log(metrics, prefix=f"warmstart/{stage.role}")

  def end_stage(self, stage: Stage) -> None:
    if stage.kind == "warmstart" and stage == self._last_warmstart():
      for policy in self.run.policies.values():
        policy.start_rl()
    if stage.kind in ("proposer", "coder", "solver"):
      self.run.frozen.clear()
    if stage.kind == "eval" and stage.iteration > 0:
      self._end_iteration(stage.iteration)

  def _last_warmstart(self) -> Stage | None:
    warm = [s for s in self.stages() if s.kind == "warmstart"]
    return warm[-1] if warm else None

  def _frozen(self, name: str, copy: bool = False):
    """The role as it was when this phase began (frozen at its first use in it)."""
    if name not in self.run.frozen:
      self.run.freeze(name, copy=copy)
    return self.run.frozen[name]

  # -- Proposer phase ------------------------------------------------------------

  def proposer_step(self, stage: Stage, step: int) -> None:
    c, run = self.config, self.run
    m = c.mmzero
    coder, solver = self._frozen("coder"), self._frozen("solver")
    seed = run.seed(stage.name, step)
    topics, samples, proposals = self._propose(self.roles["proposer"], m.proposer_prompts,
                                               m.proposer_group, seed)
    if not samples.total_rows:
      return
    parsed = [i for i, p in enumerate(proposals) if p is not None]
    renders = self._draw(coder, [proposals[i] for i in parsed],
                         [samples.row_id(i) for i in parsed], m.coder_samples,
                         runner.seed(seed, "coder"))
    flat = [(i, k, r) for i, rs in zip(parsed, renders) for k, r in enumerate(rs)]
    self._answer(solver, [r for *_, r in flat],
                 [samples.row_id(i) * m.coder_samples + k for i, k, _ in flat],
                 [(proposals[i].easy_question, proposals[i].hard_question) for i, *_ in flat],
                 m.solver_samples, runner.seed(seed, "solver"))
    outcomes: list[list[rewards.RenderOutcome]] = [[] for _ in proposals]
    for i, _, r in flat:
      outcomes[i].append(self._outcome(r, proposals[i]))
    # The rewards span the batch (diversity clusters, content-type shares).
    everyone = self.run.gather([
        (samples.row_id(r), samples.texts[r], [dataclasses.astuple(o) for o in outcomes[r]])
        for r in range(len(samples))], key=lambda x: x[0])
    all_outcomes = [[rewards.RenderOutcome(*o) for o in x[2]] for x in everyone]
    with run.timer("rewards"):
      rs = rewards.proposer_rewards([x[1] for x in everyone], all_outcomes,
                                    **self._proposer_reward_args())
    values = np.array([x.value for x in rs], np.float32)
    place = {x[0]: k for k, x in enumerate(everyone)}
    mine = [place[samples.row_id(r)] for r in range(len(samples))]   # this process's rows
    train = self.roles["proposer"].update(samples, values[mine])

    content_types = [x.parts["content_type"] for x in rs if "content_type" in x.parts]
    rendered = [o for os_ in all_outcomes for o in os_ if o.rendered]
    drawn = sum(len(os_) for os_ in all_outcomes)
    metrics = {
        "reward_mean": float(values.mean()),
        "parse_rate": len(content_types) / len(everyone),
        "render_success": len(rendered) / drawn if drawn else 0.0,
        "solvability": float(np.mean([o.solvability for o in rendered])) if rendered else 0.0,
        "difficulty": float(np.mean([min(o.consistency, 1 - o.consistency)
                                     for o in rendered])) if rendered else 0.0,
        "too_easy_rate": float(np.mean([x.parts.get("too_easy", False) for x in rs])),
        "diversity_penalty": float(np.mean([x.parts.get("diversity_penalty", 0.0) for x in rs])),
        "content_types": float(len(set(content_types))),
        **train}
    for k in ("render_success", "solvability", "difficulty"):
      self._phase[k].append(metrics[k])
    run.log(metrics, prefix="proposer")
    run.log_counts()
    self._gallery_cards(stage, step, topics, samples, proposals, parsed, renders,
                        [rs[k] for k in mine])

  def _proposer_reward_args(self) -> dict:
    r = self.config.reward.proposer
    return dict(unparseable_reward=r.unparseable, solvability_cap=r.solvability_cap,
                easy_threshold=r.easy_threshold, easy_penalty=r.easy_penalty,
                diversity_weights=tuple(r.diversity_weights),
                diversity_budget=r.diversity_budget,
                diversity_threshold=r.diversity_threshold,
                content_type_weight=r.content_type_weight,
                content_type_threshold=r.content_type_threshold)

  def _gallery_cards(self, stage, step, topics, samples, proposals, parsed, renders, rs
                     ) -> None:
    """Cards of this process's rendered proposals (process 0 writes the gallery)."""
    gallery = self.run.gallery(stage.iteration, f"MM-Zero, iteration {stage.iteration}")
    texts = samples.texts
    for i, rlist in zip(parsed, renders):
      key = f"step{step:05d}_row{samples.row_id(i):04d}"
      shown = [r for r in rlist if r.rendered]
      if not shown or not gallery.has_room(key):
        continue
      p, r = proposals[i], shown[0]
      gallery.add({
          "title": f"{stage.name} {key}: {tasks.TOPICS[topics[i]]}",
          "images": {f"render {k}": x.image for k, x in enumerate(shown)},
          "proposal": {f: getattr(p, f) for f in tasks.PROPOSAL_TAGS},
          "code": r.code,
          "easy answers": [str(a) for a in r.easy_answers],
          "hard answers": [str(a) for a in r.hard_answers],
          "hard majority": str(rewards.consistency(r.hard_answers)[1]),
          "render reasons": [x.reason for x in rlist],
          "reward": dict(rs[i].parts) | {"total": rs[i].value},
          "reply": texts[i],
      }, key=key)

  # -- Coder phase -----------------------------------------------------------------

  def _build_coder_data(self, stage: Stage) -> list[dict]:
    """Proposer_i's proposals whose render success over N Coder samples is in the band."""
    c, run = self.config, self.run
    m = c.mmzero
    seed = run.seed(stage.name, "data")
    _, samples, proposals = self._propose(self._frozen("proposer"), m.coder_pool, 1, seed)
    parsed = [r for r, p in enumerate(proposals) if p is not None]
    coder = self._frozen("coder", copy=m.coder_scored_by_coder)   # it trains in this phase
    renders = self._draw(coder, [proposals[r] for r in parsed],
                         [samples.row_id(r) for r in parsed], m.coder_samples,
                         runner.seed(seed, "coder"))
    mine = []
    for r, rs in zip(parsed, renders):
      kept, rate = in_coder_band(rs, m.coder_band)
      p = proposals[r]
      mine.append(kept and {f: getattr(p, f) for f in tasks.PROPOSAL_TAGS} | {"render_rate": rate})
    everyone = run.gather_by_id([samples.row_id(r) for r in parsed], mine)
    keep = [rec for rec in everyone if rec]
    run.log({"pool": len(everyone), "kept": len(keep)}, prefix="coder_data")
    self._phase["coder_data"].append(float(len(keep)))
    if not keep:
      logging.warning("Coder phase of iteration %d: no proposal in the render band %s; its "
                      "steps are skipped.", stage.iteration, tuple(m.coder_band))
    return keep

  def coder_step(self, stage: Stage, step: int) -> None:
    c, run = self.config, self.run
    m = c.mmzero
    if step == 0:
      self.coder_data = self._build_coder_data(stage)
    if not self.coder_data:
      run.counts["coder/no_data_steps"] += 1
      return
    mine = list(run.share(m.coder_prompts))
    recs = [self.coder_data[(step * m.coder_prompts + i) % len(self.coder_data)] for i in mine]
    proposals = [rewards.Proposal(**{f: r[f] for f in tasks.PROPOSAL_TAGS}) for r in recs]
    seed = run.seed(stage.name, step)
    coder = self.roles["coder"]
    prompts = [run.prompt(tasks.coder_prompt(p, m.backend, m.style)) for p in proposals]
    samples = coder.generate(prompts, m.coder_group, seed, prompt_ids=mine)
    if not samples.total_rows:
      return
    futures = [self.pool.submit(tasks.render_job(t, m.backend)) for t in samples.texts]
    with run.timer("waiting"):
      renders = [self._render(tasks.extract_code(t, m.backend), f.result())
                 for t, f in zip(samples.texts, futures)]
    # The published Coder phase serves its "Solver" from the Coder's checkpoint.
    scorer = (self._frozen("coder", copy=True) if m.coder_scored_by_coder
              else self._frozen("solver"))
    self._answer(scorer, renders, [samples.row_id(r) for r in range(len(renders))],
                 [(proposals[samples.prompt_of(r)].easy_question,
                   proposals[samples.prompt_of(r)].hard_question) for r in range(len(renders))],
                 m.solver_samples, runner.seed(seed, "solver"))
    r = c.reward.coder
    with run.timer("rewards"):
      rs = []
      for row, (text, rend) in enumerate(zip(samples.texts, renders)):
        o = self._outcome(rend, proposals[samples.prompt_of(row)])
        rs.append(rewards.coder_reward(
            text, o.rendered, o.solvability, o.consistency, no_render_penalty=r.no_render,
            empty_penalty=r.empty, non_svg_penalty=r.non_svg, floor=r.floor))
    values = np.array([x.value for x in rs], np.float32)
    train = coder.update(samples, values)
    everyone = run.gather_by_id(samples.row_ids, [(float(values[r]), rend.rendered, rs[r].reason)
                                                  for r, rend in enumerate(renders)])
    reasons = collections.Counter(x[2] for x in everyone)
    run.log({"reward_mean": float(np.array([x[0] for x in everyone], np.float32).mean()),
             "render_success": float(np.mean([x[1] for x in everyone])),
             **{f"reason/{k}": float(v) for k, v in reasons.items()}, **train}, prefix="coder")

  # -- Solver phase ----------------------------------------------------------------

  def _build_solver_data(self, stage: Stage) -> list[dict]:
    """Proposer_i's proposals, one render by Coder_i, answered by Solver_{i-1}; the band."""
    c, run = self.config, self.run
    m = c.mmzero
    seed = run.seed(stage.name, "data")
    _, samples, proposals = self._propose(self._frozen("proposer"), m.solver_pool, 1, seed)
    rows = [r for r, p in enumerate(proposals) if p is not None]
    parsed, ids = [proposals[r] for r in rows], [samples.row_id(r) for r in rows]
    renders = [rs[0] if rs else Render("", None, "dropped")
               for rs in self._draw(self._frozen("coder"), parsed, ids, 1,
                                    runner.seed(seed, "coder"))]
    self._answer(self._frozen("solver"), renders, ids,
                 [(p.easy_question, p.hard_question) for p in parsed], m.solver_select_samples,
                 runner.seed(seed, "solver"))
    mine = []
    for p, r in zip(parsed, renders):
      kept, silver, easy_c, hard_c = solver_item(r, m.solver_easy_min, m.solver_hard_band)
      mine.append((r.rendered, kept and {
          "question": p.hard_question, "code": r.code, "silver": silver,
          "easy_consistency": easy_c, "hard_consistency": hard_c}))
    everyone = run.gather_by_id(ids, mine)
    keep = [rec for _, rec in everyone if rec]
    run.log({"pool": len(everyone), "rendered": sum(x[0] for x in everyone),
             "kept": len(keep)}, prefix="solver_data")
    if not keep:
      logging.warning("Solver phase of iteration %d: no item passed the consistency filters; "
                      "its steps are skipped.", stage.iteration)
    return keep

  def _rerender(self, recs: list[dict]):
    """Submits the stored codes of Solver items again (renders are deterministic)."""
    m = self.config.mmzero
    job = (lambda code: sandbox_lib.SvgJob(code)) if m.backend == "svg" else \
        (lambda code: sandbox_lib.PlotJob(code))
    return recs, [self.pool.submit(job(r["code"])) for r in recs]

  def solver_step(self, stage: Stage, step: int) -> None:
    c, run = self.config, self.run
    m = c.mmzero
    if step == 0:
      self.solver_data = self._build_solver_data(stage)
    if not self.solver_data:
      run.counts["solver/no_data_steps"] += 1
      return
    mine = list(run.share(m.solver_prompts))   # this process's items of each step
    step_recs = lambda s: [self.solver_data[(s * m.solver_prompts + i) % len(self.solver_data)]
                           for i in mine]
    # The sandbox renders the next step's items while this step samples and trains.
    ahead, self._renders_ahead = self._renders_ahead, None
    recs, futures = ahead[1] if ahead and ahead[0] == step else self._rerender(step_recs(step))
    if step + 1 < stage.steps:
      self._renders_ahead = (step + 1, self._rerender(step_recs(step + 1)))
    with run.timer("sandbox"):
      renders = [self._render(rec["code"], f.result()) for rec, f in zip(recs, futures)]
    items = [(rec, r, i) for rec, r, i in zip(recs, renders, mine) if r.rendered]
    prompts = [run.prompt(tasks.solver_prompt(rec["question"], m.style), [Image.fromarray(r.image)])
               for rec, r, _ in items]
    samples = self.roles["solver"].generate(prompts, m.solver_group, run.seed(stage.name, step),
                                            prompt_ids=[i for *_, i in items])
    if not samples.total_rows:
      return
    w = c.reward.solver
    with run.timer("rewards"):
      rs = [rewards.solver_reward(t, items[samples.prompt_of(row)][0]["silver"],
                                  w_accuracy=w.accuracy, w_format=w.format)
            for row, t in enumerate(samples.texts)]
    values = np.array([x.value for x in rs], np.float32)
    train = self.roles["solver"].update(samples, values)
    everyone = run.gather_by_id(samples.row_ids, [
        (float(values[r]), x.parts["accuracy"], x.parts["format"]) for r, x in enumerate(rs)])
    run.log({"reward_mean": float(np.array([x[0] for x in everyone], np.float32).mean()),
             "accuracy": float(np.mean([x[1] for x in everyone])),
             "format": float(np.mean([x[2] for x in everyone])), **train},
            prefix="solver")

  # -- evaluation and the co-evolution curves ----------------------------------

  def _heldout_items(self) -> list:
    e = self.config.mmzero
    rng = np.random.default_rng(self.run.seed("heldout"))
    return library.sample_items(rng, e.heldout_items, split="heldout", kinds=tuple(e.kinds))

  def eval_step(self, stage: Stage, step: int) -> None:
    """The Coder's render success and the Solver's accuracy on held-out library items."""
    m, run = self.config.mmzero, self.run
    items = self._heldout_items()
    mine = list(run.share(len(items)))   # this process's items
    renders = self._draw(self.roles["coder"], [tasks.proposal_of(items[j]) for j in mine], mine,
                         m.heldout_coder_samples, run.seed("eval", "coder"))
    prompts, golds, ids = [], [], []
    for j in mine:
      image = library.render_trusted(items[j].svg)
      for q, question in enumerate((items[j].easy, items[j].hard)):
        prompts.append(run.prompt(tasks.solver_prompt(question.question, m.style), [image]))
        golds.append(question.answer)
        ids.append(2 * j + q)
    samples = self.roles["solver"].generate(prompts, 1, seed=0, greedy=True, prompt_ids=ids)
    correct = [answers.answers_equal(answers.extract_boxed(t) or "", golds[samples.prompt_of(r)])
               for r, t in enumerate(samples.texts)]
    _, _, parsed = self._propose(self.roles["proposer"], len(self.topics), 2,
                                 run.seed("eval", "proposer"))
    rendered = run.gather([r.rendered for rs in renders for r in rs])
    correct, parsed = run.gather(correct), run.gather([p is not None for p in parsed])
    result = {"proposer_parse_rate": float(np.mean(parsed)) if parsed else 0.0,
              "coder_render_success": float(np.mean(rendered)) if rendered else 0.0,
              "solver_accuracy": float(np.mean(correct)) if correct else 0.0,
              "items": len(items)}
    key = "init" if stage.iteration == 0 and not self.results else (
        "after_warmstart" if stage.iteration == 0 else f"iter{stage.iteration}")
    self.results[key] = result
    logging.info("Held-out evaluation (%s): %s", key, result)
    run.log(result, prefix="eval")

  def _end_iteration(self, iteration: int) -> None:
    """The iteration's point on the co-evolution curves: scalars, chart, gallery."""
    phase = self._phase
    point = {"render_success": float(np.mean(phase["render_success"] or [0.0])),
             "solvability": float(np.mean(phase["solvability"] or [0.0])),
             "difficulty": float(np.mean(phase["difficulty"] or [0.0])),
             "coder_data": float(sum(phase["coder_data"])),
             "heldout_coder_render_success":
                 self.results[f"iter{iteration}"]["coder_render_success"]}
    self.curves[str(iteration)] = point
    self._phase = collections.defaultdict(list)
    self.run.log(point, prefix="coevolution")
    if self.run.is_writer:
      write_chart(self.curves, os.path.join(self.run.workdir, "coevolution.png"))
    self.run.write_gallery(iteration)

  def summary(self) -> dict[str, Any]:
    res = dict(self.results)
    if "after_warmstart" in res and self.curves:
      last = res[f"iter{max(int(k) for k in self.curves)}"]
      res["heldout_render_gain_points"] = 100 * (
          last["coder_render_success"] - res["after_warmstart"]["coder_render_success"])
    res["curves"] = self.curves
    return res


def write_chart(curves: dict[str, dict], path: str) -> str:
  """The co-evolution curves per iteration as one PNG (matplotlib, no display)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  its = sorted(int(k) for k in curves)
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
  for key, label in (("render_success", "render success"), ("solvability", "solvability (s)"),
                     ("difficulty", "difficulty min(c, 1-c)"),
                     ("heldout_coder_render_success", "held-out render success")):
    axes[0].plot(its, [curves[str(i)][key] for i in its], marker="o", label=label)
  axes[0].set_xlabel("iteration")
  axes[0].set_ylim(0, 1.05)
  axes[0].legend(fontsize=7)
  axes[1].bar(its, [curves[str(i)]["coder_data"] for i in its])
  axes[1].set_xlabel("iteration")
  axes[1].set_title("Coder data after filtering", fontsize=9)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


RECIPE = MmZero


def run(config, workdir: str, **kwargs) -> dict[str, Any]:
  """Entry point for `python -m evejax.main --config configs/mmzero.py:<preset>`."""
  return runner.run(MmZero, config, workdir, **kwargs)
