"""MM-Zero: a Proposer, a Coder and a Solver evolve from zero images through rendered code.

The algorithm (reference/METHODS.md, MM-Zero), one method per stage kind:

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
      held-out library items; the co-evolution curves and chart

Departures from the paper, each by config: `warmstart.enabled` (tiny preset
only: SFT of the three roles on the built-in library, since no pretrained model
reaches a CPU machine); `backend="plot"` (plotting Python instead of SVG);
`coder_scored_by_coder` (the published code's Coder-phase "Solver" is the
Coder's own checkpoint; the paper's text says Solver_{i-1}, the default).
The experiments' controls and ablations: configs/mmzero.py ARMS.

Ids: a code is its proposal's row id times N plus its member, a question its
render's id times 2 plus easy (0) or hard (1), so every sample's randomness and
every row's place in its batch is the same on any number of processes.
"""
from __future__ import annotations

import collections
import dataclasses
import os
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from evejax import sandbox as sandbox_lib
from evejax.data import mmzero_library as library
from evejax.recipes import mmzero_tasks as tasks
from evejax.recipes import runner
from evejax.recipes import schedule
from evejax.recipes.schedule import Stage
from evejax.rewards import mmzero as rewards
from evejax.rl import answers


def in_coder_band(renders: Sequence[tasks.Render], band: Sequence[float]) -> tuple[bool, float]:
  """(kept, render rate): a proposal is Coder data when its render success over
  the Coder's N samples lies in [low, high]."""
  rate = sum(r.rendered for r in renders) / max(len(renders), 1)
  return bool(renders) and band[0] <= rate <= band[1], rate


def solver_item(render: tasks.Render, easy_min: float, hard_band: Sequence[float]
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


class MmZero(runner.Recipe):
  """The MM-Zero recipe; see the module docstring."""

  multiprocess = True
  heldout_metric = "coder_render_success"
  gallery_title = "MM-Zero"

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
    if m.coder_proposals not in tasks.CODER_PROPOSALS:
      raise ValueError(f"config.mmzero.coder_proposals={m.coder_proposals!r}: use one of "
                       f"{tasks.CODER_PROPOSALS}.")
    unknown = [t for t in m.topics if t not in tasks.TOPICS]
    if unknown:
      raise ValueError(f"config.mmzero.topics {unknown} are unknown; valid: {sorted(tasks.TOPICS)}.")
    self.topics = list(m.topics) or list(tasks.TOPICS)
    self.pool = run.open_sandbox()
    self.coder_data = run.phase_data("coder_data", m.coder_prompts, self._build_coder_data)
    self.solver_data = run.phase_data("solver_data", m.solver_prompts, self._build_solver_data,
                                      prepare=self._rerender)
    self.curves: dict[str, dict] = {}   # the co-evolution curves: a point per iteration
    self.curve_inputs: dict[str, list[float]] = collections.defaultdict(list)  # this iteration's

  @classmethod
  def stages(cls, config) -> list[Stage]:
    m, w = config.mmzero, config.warmstart
    warm = [Stage("warmstart", role, 0, w[f"{role}_steps"], optimizer="sft")
            for role in ("proposer", "coder", "solver") if w.enabled and w[f"{role}_steps"]]
    return schedule.iterated(warm, m.iterations, lambda it: [
        Stage("proposer", "proposer", it, m.proposer_steps, frozen=("coder", "solver")),
        Stage("coder", "coder", it, m.coder_steps, frozen=("proposer", "coder", "solver")),
        Stage("solver", "solver", it, m.solver_steps, frozen=("proposer", "coder", "solver"))])

  def state(self) -> dict[str, Any]:
    return {"curves": self.curves, "curve_inputs": dict(self.curve_inputs)}

  def load_state(self, state) -> None:
    self.curves = state["curves"]
    self.curve_inputs = collections.defaultdict(list, state["curve_inputs"])

  # -- the three services: propose, code and render, answer ----------------------

  def _propose(self, role, n: int, group: int, seed: int):
    """(samples, {row: Proposal} of the rows that parse, topics) of this process's
    topic prompts of the step's `n` (topics[samples.prompt_of(r)] is row r's)."""
    rng = np.random.default_rng(seed)
    topics = [self.topics[i] for i in rng.integers(len(self.topics), size=n)]
    samples = role.generate(self.run.owned(n, lambda j: self.run.prompt(tasks.proposer_prompt(
        tasks.TOPICS[topics[j]], self.config.mmzero.style))), group, seed)
    proposals = {}
    for r, text in enumerate(samples.texts):
      proposal, why = rewards.parse_proposer_output(text)
      if proposal is None:
        self.run.counts[f"proposer/{why.split('=')[0]}"] += 1
      else:
        proposals[r] = proposal
    return samples, proposals, topics

  def _draw(self, role, proposals: Mapping[int, Any], n: int, seed: int
            ) -> dict[int, list[tasks.Render]]:
    """`n` code samples of `role` per proposal {id: Proposal}, each rendered in the sandbox
    as soon as the host has it (`Role.generate`'s on_row), while the device samples on.
    Code k of proposal i has id i * n + k."""
    m = self.config.mmzero
    submitted = {}

    def render(r, i, text, tokens):
      submitted[r] = (i, tasks.extract_code(text, m.backend), role.truncated(tokens),
                      self.pool.submit(tasks.render_job(text, m.backend)))

    role.generate({i: self.run.prompt(tasks.coder_prompt(p, m.backend, m.style))
                   for i, p in proposals.items()}, n, seed, chunks=m.pipeline_chunks,
                  on_row=render)
    pending = [submitted[r] for r in sorted(submitted)]
    out: dict[int, list[tasks.Render]] = {i: [] for i in proposals}
    for (i, code, cut, _), result in zip(pending,
                                         self.run.sandbox_results([f for *_, f in pending])):
      out[i].append(dataclasses.replace(_render(code, result), truncated=cut))
    return out

  def _answer(self, role, items: Mapping[int, tuple[tasks.Render, Any]], n: int, seed: int) -> None:
    """`role` answers `n` times the easy and hard questions of each rendered item
    {id: (render, proposal)} (in place). Question q of item i has id 2 i + q."""
    style = self.config.mmzero.style
    items = {i: (r, p) for i, (r, p) in items.items() if r.rendered}
    samples = role.generate(
        {2 * i + q: self.run.prompt(tasks.solver_prompt(text, style), [Image.fromarray(r.image)])
         for i, (r, p) in items.items()
         for q, text in enumerate((p.easy_question, p.hard_question))}, n, seed)
    boxed = collections.defaultdict(list)
    for row, text in enumerate(samples.texts):
      boxed[samples.prompt_of(row)].append(answers.extract_boxed(text))
    for i, (r, _) in items.items():
      r.easy_answers, r.hard_answers = boxed[2 * i], boxed[2 * i + 1]

  @staticmethod
  def _outcome(r: tasks.Render, proposal) -> rewards.RenderOutcome:
    if not r.rendered:
      return rewards.RenderOutcome(False)
    return rewards.RenderOutcome(
        True, rewards.visual_verification(r.easy_answers, proposal.easy_answer),
        rewards.consistency(r.hard_answers)[0])

  # -- warm start ----------------------------------------------------------------

  def sft_optimizer(self, policy: str) -> dict:
    w = self.config.warmstart
    steps = (sum(w[f"{r}_steps"] for r in ("proposer", "coder", "solver"))
             if self.config.mmzero.share_params else w[f"{policy}_steps"])
    return runner.warmstart_optimizer(w[f"{policy}_lr"] or w.lr, w.schedule, steps,
                                      w.warmup_steps)

  def warmstart_step(self, stage: Stage, step: int) -> dict | None:
    """SFT on library items: proposals for topics, their code, answers about their pictures."""
    c, run = self.config, self.run
    rng = np.random.default_rng(run.seed(stage.name, step))
    items = library.sample_items(rng, c.warmstart.batch_size, kinds=tuple(c.mmzero.kinds))
    style, backend = c.mmzero.style, c.mmzero.backend

    def pair(k):   # (prompt, target)
      if stage.role == "solver":
        text, target = tasks.solver_sft_pair(items[k], ("easy", "hard")[k % 2], style)
        return run.prompt(text, [library.render_trusted(items[k].svg)]), target
      text, target = (tasks.proposer_sft_pair(items[k], style=style) if stage.role == "proposer"
                      else tasks.coder_sft_pair(items[k], backend, style))
      return run.prompt(text), target

    pairs = run.owned(len(items), pair).values()
    return self.roles[stage.role].sft([p for p, _ in pairs],
                                      [run.completion(t) for _, t in pairs])

  # -- Proposer phase ------------------------------------------------------------

  def proposer_step(self, stage: Stage, step: int) -> None:
    m, run = self.config.mmzero, self.run
    seed = run.seed(stage.name, step)
    samples, proposals, topics = self._propose(self.roles["proposer"], m.proposer_prompts,
                                               m.proposer_group, seed)
    if not samples.total_rows:
      return
    by_id = {samples.id_of(r): p for r, p in proposals.items()}
    renders = self._draw(run.frozen["coder"], by_id, m.coder_samples,
                         run.seed(stage.name, step, "coder"))
    self._answer(run.frozen["solver"], {i * m.coder_samples + k: (rd, by_id[i])
                                        for i, rs in renders.items() for k, rd in enumerate(rs)},
                 m.solver_samples, run.seed(stage.name, step, "solver"))
    outcomes = {r: [self._outcome(rd, p) for rd in renders[samples.id_of(r)]]
                for r, p in proposals.items()}
    # The rewards span the batch (diversity clusters, content-type shares).
    batch = samples.gather([(t, [dataclasses.astuple(o) for o in outcomes.get(r, [])])
                            for r, t in enumerate(samples.texts)])
    batch_outcomes = [[rewards.RenderOutcome(*o) for o in os_] for _, os_ in batch]
    r = self.config.reward.proposer
    with run.timer("rewards"):
      rs = rewards.proposer_rewards(
          [t for t, _ in batch], batch_outcomes, unparseable_reward=r.unparseable,
          solvability_cap=r.solvability_cap, easy_threshold=r.easy_threshold,
          easy_penalty=r.easy_penalty, diversity_weights=tuple(r.diversity_weights),
          diversity_budget=r.diversity_budget, diversity_threshold=r.diversity_threshold,
          content_type_weight=r.content_type_weight,
          content_type_threshold=r.content_type_threshold)
    rendered = [o for os_ in batch_outcomes for o in os_ if o.rendered]
    drawn = sum(len(os_) for os_ in batch_outcomes)
    content_types = [x.parts["content_type"] for x in rs if "content_type" in x.parts]
    metrics = {
        "parse_rate": len(content_types) / len(batch),
        "render_success": len(rendered) / drawn if drawn else 0.0,
        "solvability": float(np.mean([o.solvability for o in rendered])) if rendered else 0.0,
        "difficulty": float(np.mean([min(o.consistency, 1 - o.consistency)
                                     for o in rendered])) if rendered else 0.0,
        "content_types": float(len(set(content_types))),
        **self.roles["proposer"].update(samples, rs)}
    for k in ("render_success", "solvability", "difficulty"):
      self.curve_inputs[k].append(metrics[k])
    run.log(metrics, prefix="proposer")
    run.log_counts()
    for r, p in proposals.items():
      shown = [x for x in renders[samples.id_of(r)] if x.rendered]
      if shown:
        run.add_card(stage, f"step{step:05d}_row{samples.id_of(r):04d}",
                     lambda r=r, p=p, shown=shown: {
            "images": {f"render {k}": x.image for k, x in enumerate(shown)},
            "topic": tasks.TOPICS[topics[samples.prompt_of(r)]],
            "proposal": {f: getattr(p, f) for f in tasks.PROPOSAL_TAGS},
            "code": shown[0].code, "easy answers": [str(a) for a in shown[0].easy_answers],
            "hard answers": [str(a) for a in shown[0].hard_answers],
            "hard majority": str(rewards.consistency(shown[0].hard_answers)[1]),
            "render reasons": [x.reason for x in renders[samples.id_of(r)]],
            "reply": samples.texts[r]})

  # -- Coder phase -----------------------------------------------------------------

  def _build_coder_data(self, stage: Stage) -> dict[int, dict | None]:
    """Proposer_i's proposals (or, with `coder_proposals="library"`, warm-start library
    items) whose render success over N Coder samples is in the band."""
    m, run = self.config.mmzero, self.run
    if m.coder_proposals == "library":
      items = library.sample_items(np.random.default_rng(run.seed(stage.name, "data")),
                                   m.coder_pool, kinds=tuple(m.kinds))
      by_id = run.owned(len(items), lambda j: tasks.proposal_of(items[j]))
    else:
      samples, proposals, _ = self._propose(run.frozen["proposer"], m.coder_pool, 1,
                                            run.seed(stage.name, "data"))
      by_id = {samples.id_of(r): p for r, p in proposals.items()}
    renders = self._draw(run.frozen["coder"], by_id, m.coder_samples,
                         run.seed(stage.name, "data", "coder"))
    data = {}
    for i, p in by_id.items():
      kept, rate = in_coder_band(renders[i], m.coder_band)
      data[i] = ({f: getattr(p, f) for f in tasks.PROPOSAL_TAGS} | {"render_rate": rate}
                 if kept else None)
    return data

  def coder_step(self, stage: Stage, step: int) -> None:
    m, run = self.config.mmzero, self.run
    recs = self.coder_data.for_step(stage, step)
    if step == 0:
      self.curve_inputs["coder_data"].append(float(len(self.coder_data.records)))
    if recs is None:
      return
    proposals = {i: tasks.proposal_of_record(rec) for i, rec in recs.items()}
    coder = self.roles["coder"]
    samples = coder.generate({i: run.prompt(tasks.coder_prompt(p, m.backend, m.style))
                              for i, p in proposals.items()}, m.coder_group,
                             run.seed(stage.name, step))
    if not samples.total_rows:
      return
    futures = [self.pool.submit(tasks.render_job(t, m.backend)) for t in samples.texts]
    renders = [_render(tasks.extract_code(t, m.backend), result)
               for t, result in zip(samples.texts, run.sandbox_results(futures))]
    r = self.config.reward.coder
    if not r.render_only:
      # The published Coder phase serves its "Solver" from the Coder's checkpoint.
      scorer = run.frozen["coder" if m.coder_scored_by_coder else "solver"]
      self._answer(scorer, {samples.id_of(r): (rd, proposals[samples.prompt_of(r)])
                            for r, rd in enumerate(renders)}, m.solver_samples,
                   run.seed(stage.name, step, "solver"))
    with run.timer("rewards"):
      outcomes = [self._outcome(rd, proposals[samples.prompt_of(row)]) if not r.render_only
                  else rewards.RenderOutcome(rd.rendered) for row, rd in enumerate(renders)]
      rs = [rewards.coder_reward(t, o.rendered, o.solvability, o.consistency,
                                 no_render_penalty=r.no_render, empty_penalty=r.empty,
                                 non_svg_penalty=r.non_svg, floor=r.floor)
            for t, o in zip(samples.texts, outcomes)]
    batch = samples.gather_rewards(rs)
    reasons = collections.Counter(x.reason for x in batch)
    run.log({**{f"reason/{k}": float(v) for k, v in reasons.items()},
             "truncated": run.mean([coder.truncated(t) for t in samples.tokens]),
             **coder.update(samples, batch)}, prefix="coder")

  # -- Solver phase ----------------------------------------------------------------

  def _build_solver_data(self, stage: Stage) -> dict[int, dict | None]:
    """Proposer_i's proposals, one render by Coder_i, answered by Solver_{i-1}; the band."""
    m, run = self.config.mmzero, self.run
    samples, proposals, _ = self._propose(run.frozen["proposer"], m.solver_pool, 1,
                                          run.seed(stage.name, "data"))
    by_id = {samples.id_of(r): p for r, p in proposals.items()}
    renders = {i: rs[0] if rs else tasks.Render("", None, "dropped") for i, rs in self._draw(
        run.frozen["coder"], by_id, 1, run.seed(stage.name, "data", "coder")).items()}
    self._answer(run.frozen["solver"], {i: (renders[i], p) for i, p in by_id.items()},
                 m.solver_select_samples, run.seed(stage.name, "data", "solver"))
    run.counts["solver_data/rendered"] += sum(r.rendered for r in renders.values())
    data = {}
    for i, p in by_id.items():
      kept, silver, easy_c, hard_c = solver_item(renders[i], m.solver_easy_min,
                                                 m.solver_hard_band)
      data[i] = {"question": p.hard_question, "code": renders[i].code, "silver": silver,
                 "easy_consistency": easy_c, "hard_consistency": hard_c} if kept else None
    return data

  def _rerender(self, recs: dict[int, dict]):
    """Submits the stored codes of Solver items again (renders are deterministic)."""
    job = sandbox_lib.SvgJob if self.config.mmzero.backend == "svg" else sandbox_lib.PlotJob
    return recs, {i: self.pool.submit(job(r["code"])) for i, r in recs.items()}

  def solver_step(self, stage: Stage, step: int) -> None:
    m, run = self.config.mmzero, self.run
    work = self.solver_data.for_step(stage, step)
    if work is None:
      return
    recs, futures = work
    renders = {i: _render(recs[i]["code"], result)
               for i, result in zip(futures, run.sandbox_results(list(futures.values())))}
    samples = self.roles["solver"].generate(
        {i: run.prompt(tasks.solver_prompt(recs[i]["question"], m.style),
                       [Image.fromarray(r.image)]) for i, r in renders.items() if r.rendered},
        m.solver_group, run.seed(stage.name, step))
    if not samples.total_rows:
      return
    w = self.config.reward.solver
    with run.timer("rewards"):
      rs = [rewards.solver_reward(t, recs[samples.prompt_of(row)]["silver"],
                                  w_accuracy=w.accuracy, w_format=w.format)
            for row, t in enumerate(samples.texts)]
    run.log(self.roles["solver"].update(samples, samples.gather_rewards(rs)), prefix="solver")

  # -- evaluation and the co-evolution curves ----------------------------------

  def eval_step(self, stage: Stage, step: int) -> dict:
    """The Coder's render success and the Solver's accuracy on held-out library items."""
    m, run = self.config.mmzero, self.run
    items = library.sample_items(np.random.default_rng(run.seed("heldout")), m.heldout_items,
                                 split="heldout", kinds=tuple(m.kinds))
    renders = self._draw(self.roles["coder"], run.owned(len(items), lambda j: tasks.proposal_of(
        items[j])), m.heldout_coder_samples, run.seed("eval", "coder"))
    golds = {}
    for j in renders:
      for q, question in enumerate((items[j].easy, items[j].hard)):
        golds[2 * j + q] = (run.prompt(tasks.solver_prompt(question.question, m.style),
                                       [library.render_trusted(items[j].svg)]), question.answer)
    samples = self.roles["solver"].generate({i: p for i, (p, _) in golds.items()}, 1, seed=0,
                                            greedy=True)
    proposer, proposals, _ = self._propose(self.roles["proposer"], len(self.topics), 2,
                                           run.seed("eval", "proposer"))
    return {"proposer_parse_rate": run.mean([r in proposals for r in range(len(proposer))]),
            "coder_render_success": run.mean([r.rendered for rs in renders.values() for r in rs]),
            "coder_truncated": run.mean([r.truncated for rs in renders.values() for r in rs]),
            "solver_accuracy": run.mean([answers.answers_equal(
                answers.extract_boxed(t) or "", golds[samples.prompt_of(r)][1])
                for r, t in enumerate(samples.texts)]),
            "items": len(items)}

  def end_stage(self, stage: Stage) -> None:
    """After an iteration's evaluation: its point on the co-evolution curves, the chart."""
    if stage.kind != "eval" or stage.iteration == 0:
      return
    inputs = self.curve_inputs
    # A phase that took no step (e.g. no Proposer phase) has no point on its curves.
    point = {k: float(np.mean(inputs[k])) for k in ("render_success", "solvability",
                                                    "difficulty") if inputs[k]}
    point.update(coder_data=float(sum(inputs["coder_data"])),
                 heldout_coder_render_success=self.run.results[
                     f"iter{stage.iteration}"]["coder_render_success"])
    self.curves[str(stage.iteration)] = point
    self.curve_inputs = collections.defaultdict(list)
    self.run.log(point, prefix="coevolution")
    if self.run.is_writer:
      write_chart(self.curves, os.path.join(self.run.workdir, "coevolution.png"))

  def summary(self) -> dict[str, Any]:
    return {"curves": self.curves}


def _render(code: str, result) -> tasks.Render:
  """A sandbox result as a tasks.Render (its failure already counted by the run)."""
  if not result.ok:
    return tasks.Render(code, None, result.reason)
  return tasks.Render(code, np.asarray(result.images[0]), "ok")


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
    shown = [i for i in its if key in curves[str(i)]]
    axes[0].plot(shown, [curves[str(i)][key] for i in shown], marker="o", label=label)
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
