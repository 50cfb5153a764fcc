"""MM-Zero task text: the 8 topics, the three roles' prompts, warm-start pairs, render jobs.

The roles (reference/METHODS.md, MM-Zero):

  Proposer  topic -> six tagged blocks: content_type, caption, easy_question,
            easy_answer, hard_question, hard_answer (answers one number, word or
            short phrase). Parsed by `rewards.mmzero.parse_proposer_output`.
  Coder     caption + questions (+ answers in the full style, as the reference
            service passes them) -> SVG in a ```svg block, or with
            backend="plot" a Python program in a ```python block that follows
            the sandbox's PlotJob contract (`draw()` returns the image).
  Solver    image + question -> <think>...</think> then \\boxed{answer}.

Every prompt has a "full" style (the method's instructions, for real models) and
a "compact" one (the same contract in a line or two, for tiny CPU models where
every prompt token costs), as EVE's `challenger_instructions` does.

Rendering: `render_job(reply, backend)` extracts the code (SVG: ```svg fence,
then ```xml, then a bare <svg>...</svg>, by `rewards.mmzero.extract_svg`) and
wraps it in the sandbox job of its backend. A reply without code still becomes
a job: the sandbox resolves it at once, without a worker, to `no_code`; every
other failure (syntax, entities, huge or deeply nested documents, a program that
raises) comes back as a classified `JobResult`, so a render failure is always
data with a reason.

Warm start: `proposer_sft_pair`, `coder_sft_pair` and `solver_sft_pair` turn an
`evejax.data.mmzero_library.LibraryItem` into (prompt text, target) pairs; the
targets parse back through the rewards' own parsers to the item's fields.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from evejax.rewards import mmzero as mmzero_rewards
from evejax.sandbox.jobs import PlotJob, SvgJob

# Our wording of the 8 seed topics of the published Proposer.
TOPICS = {
    "charts": "reading charts and graphs",
    "trends": "statistics and trends in data",
    "quantities": "quantities and arithmetic shown in a figure",
    "geometry": "shapes, lengths and positions in space",
    "logic": "patterns, sequences and abstract logic",
    "structure": "diagrams, tables and how their parts relate",
    "text": "reading words and numbers written in a picture",
    "shapes": "recognising and counting simple shapes and objects",
}
STYLES = ("full", "compact")
BACKENDS = ("svg", "plot")
# The six blocks of a proposal, in the order the Proposer writes them.
PROPOSAL_TAGS = ("content_type",) + mmzero_rewards.PROPOSAL_FIELDS
SHORT_ANSWER_WORDS = mmzero_rewards.MAX_ANSWER_WORDS

# Where the Coder phase's proposals come from: Proposer_i's (the method) or the
# warm-start library's train items (static data: the control and the ablation).
CODER_PROPOSALS = ("proposer", "library")

_PYTHON_FENCE_RE = re.compile(r"```(?:python|py)[ \t]*\r?\n(.*?)```", re.DOTALL)


def _check_style(style: str) -> None:
  if style not in STYLES:
    raise ValueError(f"MM-Zero prompt style {style!r}: use one of {list(STYLES)}.")


def _check_backend(backend: str) -> None:
  if backend not in BACKENDS:
    raise ValueError(f"MM-Zero render backend {backend!r}: use one of {list(BACKENDS)}.")


def is_short_answer(answer: str, max_words: int = SHORT_ANSWER_WORDS) -> bool:
  """Whether `answer` is a single number, word or short phrase (1..max_words words)."""
  answer = (answer or "").strip()
  return 0 < len(answer.split()) <= max_words and "\n" not in answer


# ---------------------------------------------------------------------------
# Proposer.


def proposer_prompt(topic: str, style: str = "full") -> str:
  """The Proposer's prompt for one topic (a value of TOPICS, or any topic text)."""
  _check_style(style)
  types = ", ".join(mmzero_rewards.CONTENT_TYPES)
  if style == "compact":
    return (f"Topic: {topic}\nPropose a picture and two questions as <content_type>, "
            "<caption>, <easy_question>, <easy_answer>, <hard_question>, <hard_answer>. "
            "Each answer is one number or word.")
  return (
      f"Topic: {topic}\n\n"
      "Invent a picture on this topic that can be drawn with SVG (a chart, a diagram, a "
      "table, a geometric figure, a timeline, a map or anything else), and two questions "
      "that can only be answered by looking at it.\n\n"
      "Reply with exactly these six tagged blocks, in this order, and nothing else:\n"
      f"<content_type>one of: {types}</content_type>\n"
      "<caption>a precise description of the picture: every element, label, number and "
      "colour that is needed to draw it</caption>\n"
      "<easy_question>a question answered by reading one thing off the picture"
      "</easy_question>\n"
      "<easy_answer>its answer</easy_answer>\n"
      "<hard_question>a question that needs several values read off the picture and "
      "combined in more than one step; do not state those values in the question"
      "</hard_question>\n"
      "<hard_answer>its answer</hard_answer>\n\n"
      "Each answer is a single number, a single word or a short phrase of a few words, "
      "with no units, no explanation and no full sentence.")


def proposal_text(proposal: Any) -> str:
  """The six tagged blocks of a proposal (a `rewards.mmzero.Proposal` or a LibraryItem)."""
  return "\n".join(f"<{tag}>{getattr(proposal, tag)}</{tag}>" for tag in PROPOSAL_TAGS)


def proposal_of(item: Any) -> mmzero_rewards.Proposal:
  """The `rewards.mmzero.Proposal` of a library item (or anything with the six fields)."""
  return mmzero_rewards.Proposal(**{tag: getattr(item, tag) for tag in PROPOSAL_TAGS})


def proposal_of_record(record: dict) -> mmzero_rewards.Proposal:
  """A proposal from its parsed tags {tag: text}."""
  return mmzero_rewards.Proposal(**{f: record[f] for f in PROPOSAL_TAGS})


@dataclasses.dataclass
class Render:
  """One code sample of a proposal: what it drew, and what the Solver made of it."""
  code: str
  image: np.ndarray | None       # None: it did not render (see `reason`)
  reason: str
  easy_answers: list[str | None] = dataclasses.field(default_factory=list)
  hard_answers: list[str | None] = dataclasses.field(default_factory=list)
  truncated: bool = False        # the reply reached max_new_tokens without ending

  @property
  def rendered(self) -> bool:
    return self.image is not None


def proposer_sft_pair(item: Any, topic: str | None = None,
                      style: str = "full") -> tuple[str, str]:
  """(prompt text, target) for Proposer SFT: the item's topic -> its six blocks.

  Args:
    item: a `mmzero_library.LibraryItem`.
    topic: the topic text shown; TOPICS[item.topic] when None.
    style: "full" or "compact".
  """
  return proposer_prompt(topic or TOPICS[item.topic], style), proposal_text(item)


# ---------------------------------------------------------------------------
# Coder.


def coder_prompt(proposal: Any, backend: str = "svg", style: str = "full") -> str:
  """The Coder's prompt: draw the proposal's picture with the chosen backend.

  Args:
    proposal: a `rewards.mmzero.Proposal` (or anything with its fields).
    backend: "svg" (SVG in a ```svg block) or "plot" (a PIL/matplotlib program
      in a ```python block whose draw() returns the image).
    style: "full" (with the answers and the rules) or "compact" (caption and
      questions only).
  """
  _check_style(style)
  _check_backend(backend)
  if style == "compact":
    ask = ("Reply with one ```svg block." if backend == "svg" else
           "Reply with one ```python block whose draw() returns a PIL image.")
    return (f"Draw as {'SVG' if backend == 'svg' else 'a PIL program'}: {proposal.caption}\n"
            f"Q: {proposal.easy_question}\nQ: {proposal.hard_question}\n{ask}")
  spec = (f"Description: {proposal.caption}\n"
          f"Easy question: {proposal.easy_question}\n"
          f"Easy answer: {proposal.easy_answer}\n"
          f"Hard question: {proposal.hard_question}\n"
          f"Hard answer: {proposal.hard_answer}\n\n")
  shared = ("- Draw every label, number and colour the questions depend on, so that the "
            "given answers follow from the picture; do not write the answers on it as extra "
            "text.\n")
  if backend == "svg":
    return ("Write SVG code for the picture described below. Someone who sees only the "
            "rendered picture must be able to answer both questions.\n\n" + spec +
            "Requirements:\n"
            "- One self-contained <svg> element with xmlns=\"http://www.w3.org/2000/svg\" "
            "and a width and height in pixels (at most a few thousand).\n" + shared +
            "- No external images, fonts, links, scripts or entity declarations.\n\n"
            "Reply with the code in one ```svg block.")
  return ("Write a Python program that draws the picture described below. Someone who sees "
          "only the picture must be able to answer both questions.\n\n" + spec +
          "Requirements:\n"
          "- Use PIL (or matplotlib) and define draw(), which returns the picture as a PIL "
          "image (with matplotlib, leave the figure open instead).\n" + shared +
          "- No reading or writing files, no network, no subprocesses, no randomness.\n\n"
          "Reply with the program in one ```python block.")


def extract_code(reply: str, backend: str = "svg") -> str:
  """The code of a Coder reply ('' when there is none).

  SVG: `rewards.mmzero.extract_svg` (```svg, ```xml with <svg, bare <svg>).
  Plot: the last ```python (or ```py) block.
  """
  _check_backend(backend)
  if backend == "svg":
    return mmzero_rewards.extract_svg(reply)
  blocks = _PYTHON_FENCE_RE.findall(reply or "")
  return blocks[-1].strip() if blocks else ""


def render_job(reply: str, backend: str = "svg") -> SvgJob | PlotJob:
  """The sandbox job that renders a Coder reply (no code -> resolves to `no_code`)."""
  code = extract_code(reply, backend)
  return SvgJob(code) if backend == "svg" else PlotJob(code)


def item_job(item: Any, backend: str = "svg") -> SvgJob | PlotJob:
  """The sandbox job that draws a library item's picture with the chosen backend."""
  _check_backend(backend)
  return SvgJob(item.svg) if backend == "svg" else PlotJob(item.plot_program)


def coder_target(code: str, backend: str = "svg") -> str:
  """A Coder reply: the code in the backend's fence."""
  _check_backend(backend)
  return f"```{'svg' if backend == 'svg' else 'python'}\n{code.strip()}\n```"


def coder_sft_pair(item: Any, backend: str = "svg", style: str = "full") -> tuple[str, str]:
  """(prompt text, target) for Coder SFT: the item's proposal -> its SVG or PIL program."""
  code = item.svg if backend == "svg" else item.plot_program
  return coder_prompt(item, backend, style), coder_target(code, backend)


# ---------------------------------------------------------------------------
# Solver.


def solver_prompt(question: str, style: str = "full") -> str:
  """The Solver's text (its image comes first in the prompt): think, then \\boxed{}."""
  _check_style(style)
  if style == "compact":
    return f"{question}\nReply <think>...</think> then \\boxed{{answer}}."
  return (f"{question}\n\nLook at the image carefully. Reason step by step inside "
          "<think> </think>, then give only the final answer inside \\boxed{}: a single "
          "number, word or short phrase, with no units and no sentence.")


def solver_target(reasoning: str, answer: str) -> str:
  """A Solver reply in the method's format: a think block, then the boxed answer."""
  return f"<think>\n{reasoning.strip()}\n</think>\n\\boxed{{{answer}}}"


def solver_sft_pair(item: Any, which: str = "hard", style: str = "full") -> tuple[str, str]:
  """(prompt text, target) for Solver SFT on the item's easy or hard question.

  The image is the item's picture: `mmzero_library.render_trusted(item.svg)`.
  """
  if which not in ("easy", "hard"):
    raise ValueError(f"Solver question {which!r}: use 'easy' or 'hard'.")
  qa = item.easy if which == "easy" else item.hard
  return solver_prompt(qa.question, style), solver_target(qa.reasoning, qa.answer)
