"""How one benchmark is scored under one reference harness: the rule, and its judge.

A `Scorer` is the reference's procedure for one benchmark, in two stages:

  rule        the reference's rule on the profile's answer text -> a `Grade`
              (decided=False where the reference would ask its judge, or
              where it falls back to chance);
  judge       where the rule leaves an item undecided (or for every item, under
              MM-Zero), the reference's judge prompt (`ask_judge`) and how its
              reply is read into a verdict (`read_judge`).

Scorers are looked up by (benchmark, harness); the profile names the harness
(eve: vlmevalkit, evolmm: lmms_eval, mmzero: mmzero). A harness without a rule
for a benchmark uses the benchmark's own harness (the paper that reported
it), and the summary names the rule used:

  benchmark  vlmevalkit                lmms_eval                mmzero
  mmstar     can_infer + GPT matcher   (vlmevalkit)             boxed == gold + judge, all items
  hallusion  YOrN + GPT matcher        (vlmevalkit)             boxed == gold + judge, all items
  mathvista  prefetch + GPT extractor  extract_answer + GPT     boxed == gold + judge, all items
  chartqa    relaxed, max over golds   relaxed_correctness      boxed == gold + judge, all items
  ai2d       can_infer + GPT matcher   leading "X." + exact     boxed == gold + judge, all items
  mmmu       (lmms_eval)               MMMU parser (no judge)   boxed == gold + judge, all items
"""
from __future__ import annotations

import dataclasses
import hashlib
import random
from typing import Callable, Mapping

from evejax.eval import graders
from evejax.eval import lmms_eval_rules as lmms
from evejax.eval import mmzero_rules as mmzero
from evejax.eval import templates
from evejax.eval import vlmevalkit_rules as vlmeval
from evejax.eval.graders import Grade
from evejax.eval.records import Item

HARNESSES = ("vlmevalkit", "lmms_eval", "mmzero")


@dataclasses.dataclass(frozen=True)
class JudgeRequest:
  """One question to the judge model."""
  prompt: str
  chat: bool = True            # in the judge's chat template (False: raw text, MM-Zero)
  max_new_tokens: int = 32
  stop_at_newline: bool = False


@dataclasses.dataclass(frozen=True)
class Scorer:
  name: str                                      # e.g. "vlmevalkit.can_infer"
  rule: Callable[[str, Item], Grade]             # (the profile's answer text, item)
  # (item, prompt, answer text, raw reply) -> the reference's judge request.
  ask_judge: Callable[[Item, str, str, str], JudgeRequest] | None = None
  read_judge: Callable[[Item, str], Grade] | None = None   # (item, judge output)
  judge_all: bool = False                        # judge every item, not only undecided
  judge_label: str = ""                          # which reference judge this stands in for

  def needs_judge(self, grade: Grade) -> bool:
    return self.ask_judge is not None and (self.judge_all or not grade.decided)


def item_rng(item_id: str) -> random.Random:
  """A generator fixed per item, for the references' random fallbacks (resume-safe)."""
  seed = int.from_bytes(hashlib.sha256(str(item_id).encode()).digest()[:8], "little")
  return random.Random(seed)


def _same(a: str, b: str) -> bool:
  return str(a).strip().lower() == str(b).strip().lower()


# ---------------------------------------------------------------- VLMEvalKit
def _vlm_mcq_rule(answer: str, item: Item) -> Grade:
  letter = vlmeval.can_infer(answer, item.options)
  return Grade(letter or "", float(letter == item.answer), letter is not None)


def _vlm_mcq_ask(item: Item, prompt: str, answer: str, reply: str) -> JudgeRequest:
  return JudgeRequest(vlmeval.mcq_judge_prompt(item.question, item.options, answer))


def _vlm_mcq_read(item: Item, output: str) -> Grade:
  letter = vlmeval.can_infer(output, item.options)
  if not letter:   # the reference retries, then picks at random among the options and Z
    letter = item_rng(item.id).choice(list(item.options) + ["Z"])
  return Grade(letter, float(letter == item.answer), True)


def _vlm_yes_no_rule(answer: str, item: Item) -> Grade:
  said = vlmeval.yes_no(answer)
  return Grade(said, float(_same(said, item.answer)), said != "Unknown")


def _vlm_yes_no_ask(item: Item, prompt: str, answer: str, reply: str) -> JudgeRequest:
  return JudgeRequest(vlmeval.yes_no_judge_prompt(item.question, answer))


def _vlm_yes_no_read(item: Item, output: str) -> Grade:
  said = vlmeval.yes_no(output)
  return Grade(said, float(_same(said, item.answer)), True)


def _mathvista_type(item: Item) -> str:
  return item.answer_type or "text"


def _vlm_mathvista_rule(answer: str, item: Item) -> Grade:
  res = vlmeval.mathvista_prefetch(answer, item.options, item.answer, _mathvista_type(item))
  if res is None:
    return Grade(str(answer).strip(), 0.0, False)
  ok = vlmeval.mathvista_correct(res, item.options, item.answer, _mathvista_type(item))
  return Grade(res, float(ok), True)


def _query(item: Item) -> str:
  return str(item.extra.get("query") or item.question)


def _vlm_mathvista_ask(item: Item, prompt: str, answer: str, reply: str) -> JudgeRequest:
  return JudgeRequest(vlmeval.mathvista_judge_prompt(_query(item), answer), max_new_tokens=128)


def _vlm_mathvista_read(item: Item, output: str) -> Grade:
  ok = vlmeval.mathvista_correct(output, item.options, item.answer, _mathvista_type(item))
  return Grade(str(output).strip(), float(ok), True)


def _vlm_relaxed_rule(answer: str, item: Item) -> Grade:
  pred = str(answer).strip()   # several golds (a list literal): the best of them
  ok = any(vlmeval.relaxed_correctness(g, pred) for g in graders.answers_list(item.answer))
  return Grade(pred, float(ok), True)


# ----------------------------------------------------------------- lmms-eval
def _lmms_ai2d_rule(answer: str, item: Item) -> Grade:
  read, ok = lmms.ai2d_correct(answer, item.answer)
  return Grade(read, float(ok), True)


def _lmms_chartqa_rule(answer: str, item: Item) -> Grade:
  pred = str(answer).strip()
  return Grade(pred, float(vlmeval.relaxed_correctness(item.answer, pred)), True)


def _lmms_mmmu_rule(answer: str, item: Item) -> Grade:
  answer = str(answer).strip()
  if item.options:
    letter, found = lmms.mmmu_choice(answer, item.options, item_rng(item.id))
    return Grade(letter, float(letter == item.answer), found)
  preds = lmms.parse_open_response(answer)
  return Grade(str(preds[0]) if preds else "", float(lmms.eval_open(item.answer, preds)), True)


def _choice_texts(item: Item) -> list[str]:
  return list(item.options.values())


def _gold_text(item: Item) -> str:
  return item.options.get(item.answer, item.answer) if item.options else item.answer


def _lmms_mathvista_verdict(extraction: str, item: Item) -> Grade:
  pred = lmms.mathvista_normalize(extraction, _choice_texts(item), bool(item.options),
                                  _mathvista_type(item), item.precision or 0)
  return Grade("" if pred is None else str(pred), float(lmms.safe_equal(pred, _gold_text(item))),
               True)


def _lmms_mathvista_rule(answer: str, item: Item) -> Grade:
  answer = str(answer).strip()
  extraction = lmms.mathvista_extract(answer, _choice_texts(item), bool(item.options),
                                      _mathvista_type(item))
  if extraction is None:
    return Grade(answer, 0.0, False)
  return _lmms_mathvista_verdict(extraction, item)


def _lmms_mathvista_ask(item: Item, prompt: str, answer: str, reply: str) -> JudgeRequest:
  return JudgeRequest(lmms.mathvista_judge_prompt(_query(item), str(answer).strip()),
                      max_new_tokens=256)


def _lmms_mathvista_read(item: Item, output: str) -> Grade:
  return _lmms_mathvista_verdict(str(output).strip(), item)


# ------------------------------------------------------------------- MM-Zero
def _mmzero_rule(answer: str, item: Item) -> Grade:
  return Grade(str(answer).strip(), float(mmzero.rule_correct(answer, item.answer)), True)


def _mmzero_ask(item: Item, prompt: str, answer: str, reply: str) -> JudgeRequest:
  problem = prompt[:-len(templates.MMZERO_SUFFIX)] if prompt.endswith(
      templates.MMZERO_SUFFIX) else prompt
  shown = mmzero.judge_answer(mmzero.last_flat_boxed(reply), reply)
  return JudgeRequest(mmzero.judge_prompt(problem, item.answer, shown), chat=False,
                      max_new_tokens=mmzero.JUDGE_MAX_NEW_TOKENS, stop_at_newline=True)


def _mmzero_read(item: Item, output: str) -> Grade:
  ok = mmzero.judge_says_correct(output)
  return Grade("yes" if ok else "no", float(ok), True)


# ------------------------------------------------------------------ registry
_GPT_MATCHER = "VLMEvalKit's GPT matcher (chatgpt-0125 -> gpt-4.1 in EVE's fork)"
_MCQ = Scorer("vlmevalkit.can_infer", _vlm_mcq_rule, _vlm_mcq_ask, _vlm_mcq_read,
              judge_label=_GPT_MATCHER)
_MMZERO = Scorer("mmzero.boxed_equal", _mmzero_rule, _mmzero_ask, _mmzero_read, judge_all=True,
                 judge_label="MM-Zero's judge (Qwen2.5-14B-Instruct)")
_LMMS_MMMU = Scorer("lmms_eval.mmmu_parser", _lmms_mmmu_rule)

SCORERS: Mapping[tuple[str, str], Scorer] = {
    ("mmstar", "vlmevalkit"): _MCQ,
    ("ai2d", "vlmevalkit"): _MCQ,
    ("hallusion", "vlmevalkit"): Scorer("vlmevalkit.yorn", _vlm_yes_no_rule, _vlm_yes_no_ask,
                                        _vlm_yes_no_read, judge_label=_GPT_MATCHER),
    ("mathvista", "vlmevalkit"): Scorer(
        "vlmevalkit.mathvista_prefetch", _vlm_mathvista_rule, _vlm_mathvista_ask,
        _vlm_mathvista_read, judge_label="VLMEvalKit's GPT extractor (gpt-4o-mini in EVE's fork)"),
    ("chartqa", "vlmevalkit"): Scorer("vlmevalkit.relaxed_accuracy", _vlm_relaxed_rule),
    ("ai2d", "lmms_eval"): Scorer("lmms_eval.ai2d_exact_match", _lmms_ai2d_rule),
    ("chartqa", "lmms_eval"): Scorer("lmms_eval.relaxed_correctness", _lmms_chartqa_rule),
    ("mmmu", "lmms_eval"): _LMMS_MMMU,
    ("mathvista", "lmms_eval"): Scorer(
        "lmms_eval.mathvista_extract", _lmms_mathvista_rule, _lmms_mathvista_ask,
        _lmms_mathvista_read, judge_label="lmms-eval's GPT extractor (gpt-4o-2024-11-20)"),
    **{(b, "mmzero"): _MMZERO
       for b in ("mmstar", "hallusion", "mathvista", "chartqa", "ai2d", "mmmu")},
}


def scorer_for(benchmark: str, harness: str, native: str) -> Scorer:
  """The harness's scorer of the benchmark, else the one of its native harness."""
  if harness not in HARNESSES:
    raise ValueError(f"Unknown harness {harness!r}; valid: {HARNESSES}.")
  found = SCORERS.get((benchmark, harness)) or SCORERS.get((benchmark, native))
  if found is None:
    raise ValueError(f"No scorer for benchmark {benchmark!r} (harness {harness!r}).")
  return found
