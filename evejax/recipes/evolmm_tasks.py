"""EvoLMM task text: the Proposer's and Solver's prompts, warm-start pairs, grading.

The roles (reference/METHODS.md, EvoLMM), both reading the same image:

  Proposer  image -> one question in <question>...</question> plus a short
            rationale, and no answer. Parsed by `rewards.evolmm.parse_question`.
  Solver    image + question -> <answer>...</answer> (else its last non-empty
            line), normalised by `rl.answers.normalize_text` through
            `rewards.evolmm.extract_answer`. The Solver reward shortens replies
            past 6 words before the tag, so the prompt asks for the answer
            with at most a few words before it.

"full" prompts state the method's format for real models; "compact" ones say
the same in a line for tiny CPU models. `proposer_sft_pair` and
`solver_sft_pair` turn an `evejax.data.scene_questions.SceneQuestion` into
(prompt text, target); the image is `question.image()`. `is_correct` grades a
Solver reply against a ground-truth answer (the held-out accuracy the tiny
preset reports before and after EvoLMM steps); `vote_outcomes` and
`answer_variety` measure what rewarding agreement can reach and whether the
answers still depend on the image.
"""
from __future__ import annotations

import collections
from typing import Any

from evejax.rewards import evolmm as evolmm_rewards
from evejax.rl import answers

STYLES = ("full", "compact")


def _check_style(style: str) -> None:
  if style not in STYLES:
    raise ValueError(f"EvoLMM prompt style {style!r}: use one of {list(STYLES)}.")


def proposer_prompt(style: str = "full") -> str:
  """The Proposer's text (its image comes first in the prompt)."""
  _check_style(style)
  if style == "compact":
    return "Ask one short question about the image in <question></question>, then say why."
  return ("Look at the image and write one question about it that has a single short "
          "answer someone can check by looking: a number, a colour, a shape, a word, or yes "
          "or no. Put the question inside <question></question>, then give one sentence on "
          "why it is a good question to ask about this image. Do not answer it.")


def solver_prompt(question: str, style: str = "full") -> str:
  """The Solver's text for one question (its image comes first in the prompt)."""
  _check_style(style)
  if style == "compact":
    return f"{question}\nAnswer in <answer></answer>."
  return (f"{question}\nGive the final answer as a single word or number inside "
          "<answer></answer>, with at most a few words before it.")


def proposer_target(question: str, rationale: str) -> str:
  """A Proposer reply: the question in its tag, then the rationale."""
  return f"<question>{question.strip()}</question>\n{rationale.strip()}"


def solver_target(answer: str) -> str:
  """A Solver reply: the answer alone in its tag."""
  return f"<answer>{answer.strip()}</answer>"


def proposer_sft_pair(question: Any, style: str = "full") -> tuple[str, str]:
  """(prompt text, target) for Proposer SFT from a `scene_questions.SceneQuestion`."""
  return proposer_prompt(style), proposer_target(question.question, question.rationale)


def solver_sft_pair(question: Any, style: str = "full") -> tuple[str, str]:
  """(prompt text, target) for Solver SFT from a `scene_questions.SceneQuestion`."""
  return solver_prompt(question.question, style), solver_target(question.answer)


def parse_question(reply: str) -> tuple[str | None, str]:
  """(question, 'ok') or (None, 'no_question_tag') from a Proposer reply."""
  return evolmm_rewards.parse_question(reply)


def solver_answer(reply: str) -> str:
  """The normalised answer of a Solver reply ('' when there is none)."""
  return evolmm_rewards.extract_answer(reply)


def is_correct(reply: str, gold: str) -> bool:
  """Whether a Solver reply answers `gold` (normalised text, or equal numbers)."""
  pred = solver_answer(reply)
  return bool(pred) and answers.grade(pred, gold, "text")


def vote_outcomes(groups: dict[int, list[str]], questions) -> dict[str, list[float]]:
  """{question j: its N sampled replies} -> per-sample correctness, and per question
  whether the majority answer is right, the answers' consistency and distinct count."""
  out = collections.defaultdict(list)
  for j, replies in groups.items():
    gold = questions[j].answer
    out["sample_accuracy"] += [float(is_correct(t, gold)) for t in replies]
    top = next((x.parts["answer"] for x in evolmm_rewards.majority_rewards(replies)
                if x.value), "")
    out["majority_accuracy"].append(float(bool(top) and answers.grade(top, gold, "text")))
    stats = evolmm_rewards.answer_statistics(replies)
    out["consistency"].append(stats["consistency"])
    out["distinct_answers"].append(stats["distinct_answers"])
  return dict(out)


def answer_variety(questions, given: dict[int, str]) -> list[float]:
  """Per question text asked of several scenes whose gold answers differ: distinct
  answers given / distinct gold answers (at most 1). Near 0 for a Solver that gives
  one answer per question whatever the image (a collapse), 1 when it varies as the
  truth does."""
  by_text: dict[str, list[int]] = {}
  for j in given:
    by_text.setdefault(questions[j].question, []).append(j)
  out = []
  for js in by_text.values():
    gold = {questions[j].answer for j in js}
    if len(gold) > 1:
      out.append(min(1.0, len({given[j] for j in js}) / len(gold)))
  return out
