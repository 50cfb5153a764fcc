"""EVE rewards: the Challenger's program reward and the Solver's answer reward.

Challenger (reference/METHODS.md):  R_C = 0.2 f + 0.4 v + 0.4 d - 0.3 c_hat

* f, format: 1 when the reply has exactly one think block of the tag its
  prompt asked for (``<think>...</think>``, or ``<thinking>...</thinking>``
  for Qwen3-VL: ``think_tag``) and a non-empty fenced python
  block after it, and the function text has at most ``max_comment_markers``
  (2) comment markers; else 0. A *comment marker* is, as in the reference
  code, each occurrence of ``#``, ``\"\"\"`` or ``'''`` in the function text
  (the code before the top-level ``args_list =``), so a ``'#ff0000'`` literal
  counts too. f depends on the text only. (The reference first cuts the reply
  at ``</think>`` and then asks for exactly one think block in what is left,
  which a well-formed reply never has; we check the whole reply.)
* v, validity: 1 when the program passed every sandbox check (given).
* d, difficulty: per question type q, d_q = 1 - 2 |p_q - 0.5| with p_q the
  frozen Solver's pass rate; d = mean over types. ``reference_quirk=True``
  reproduces the reference: when any p_q is in [0.25, 1), d = d of the last
  type. Invalid programs have no questions: d = 0.
* c_hat, diversity penalty over the batch: the last 1000 characters of each
  valid program's function text are clustered by BLEU distance (average
  linkage, threshold 0.5); c_i = cluster size / batch size, min-max
  normalised across the batch; invalid programs take part as empty texts
  (singletons, counted in the batch size) and get 0.

Solver: R_S = 0.2 fmt + 0.8 acc; fmt = 1 with a ``\\boxed{}`` answer, 0.5 when
the reply starts with it (no reasoning), 0 without; acc (`solver_accuracy`, the
one grader of a Solver reply) = the first stand-alone option letter inside the
box equals the gold letter (``kind`` selects number, text, math or
letter-sequence grading for other golds).
"""

import re
from typing import Sequence

import numpy as np

from evejax.rewards import diversity
from evejax.rewards.registry import Reward
from evejax.rl import answers

_FENCE_RE = re.compile(r"```(?:python|py)?[ \t]*\r?\n(.*?)```", re.DOTALL)
_ARGS_RE = re.compile(r"^[ \t]*args_list\s*=", re.MULTILINE)
_COMMENT_MARKERS = ("#", '"""', "'''")


def parse_challenger_output(text: str, think_tag: str = "think"
                            ) -> tuple[str | None, str | None, str]:
  """Splits a Challenger reply into (think, code, reason).

  `think_tag` is the reasoning block's tag the prompt asked for ("think" for
  Qwen2.5-VL, "thinking" for Qwen3-VL); the other one does not count.

  ``think`` is the single think block's content (None unless there is exactly
  one), ``code`` the last fenced python block after it (None if absent), and
  ``reason`` 'ok' or the first format problem: 'think_blocks=N',
  'no_code_block' or 'empty_code_block'. Code is returned even when the think
  block is malformed, since validity does not depend on the format.
  """
  text = text or ""
  think, think_end, reason = None, 0, "ok"
  open_tag, close_tag = f"<{think_tag}>", f"</{think_tag}>"
  n_open, n_close = text.count(open_tag), text.count(close_tag)
  if n_open == n_close == 1 and text.index(open_tag) < text.index(close_tag):
    start = text.index(open_tag) + len(open_tag)
    think_end = text.index(close_tag)
    think = text[start:think_end].strip()
    think_end += len(close_tag)
  else:
    reason = f"think_blocks={n_open}"
  blocks = _FENCE_RE.findall(text, think_end)
  code = blocks[-1].strip() if blocks else None
  if reason == "ok":
    if code is None:
      reason = "no_code_block"
    elif not code:
      reason = "empty_code_block"
  return think, code, reason


def split_program(code: str) -> tuple[str, str]:
  """(function text, args text): split at the first line ``args_list =``."""
  m = _ARGS_RE.search(code or "")
  if m is None:
    return (code or "").strip(), ""
  return code[:m.start()].strip(), code[m.start():].strip()


def count_comment_markers(function_text: str) -> int:
  """Occurrences of '#', '\"\"\"' and \"'''\" (the reference's definition)."""
  return sum(function_text.count(m) for m in _COMMENT_MARKERS)


def format_score(text: str, *, max_comment_markers: int = 2, think_tag: str = "think"
                 ) -> tuple[float, str]:
  """f in {0, 1} and the reason (see the module docstring)."""
  _, code, reason = parse_challenger_output(text, think_tag)
  if reason != "ok":
    return 0.0, reason
  k = count_comment_markers(split_program(code)[0])
  if k > max_comment_markers:
    return 0.0, f"comment_markers={k}>{max_comment_markers}"
  return 1.0, "ok"


def question_difficulty(pass_rate: float) -> float:
  """1 - 2 |p - 0.5|: 1 at a 50% pass rate, 0 at 0% or 100%."""
  return 1.0 - 2.0 * abs(float(pass_rate) - 0.5)


def difficulty(pass_rates: Sequence[float], *, reference_quirk: bool = False,
               quirk_low: float = 0.25, quirk_high: float = 1.0) -> float:
  """Mean of per-question-type difficulties (types in order 0, 1, ...)."""
  if not len(pass_rates):
    return 0.0
  ds = [question_difficulty(p) for p in pass_rates]
  if reference_quirk and any(quirk_low <= p < quirk_high for p in pass_rates):
    return ds[-1]
  return sum(ds) / len(ds)


def diversity_penalties(function_texts: Sequence[str], valid: Sequence[bool],
                        *, tail_chars: int = 1000,
                        distance_threshold: float = 0.5) -> np.ndarray:
  """c_hat for each program of a batch (0 for invalid programs)."""
  valid = np.asarray(valid, bool)
  texts = [t[-tail_chars:] if ok else ""
           for t, ok in zip(function_texts, valid)]
  shares = diversity.bleu_cluster_shares(texts, threshold=distance_threshold)
  penalty = diversity.minmax_normalize(shares)
  penalty[~valid] = 0.0
  return penalty


def challenger_reward(format_score: float, valid: bool, difficulty: float,
                      diversity_penalty: float, *, w_format: float = 0.2,
                      w_valid: float = 0.4, w_difficulty: float = 0.4,
                      w_diversity: float = 0.3) -> Reward:
  """R_C = w_f f + w_v v + w_d d - w_c c_hat."""
  value = (w_format * format_score + w_valid * float(valid)
           + w_difficulty * difficulty - w_diversity * diversity_penalty)
  return Reward(value=value, reason="ok" if valid else "invalid_program",
                parts={"format": format_score, "valid": float(valid),
                       "difficulty": difficulty,
                       "diversity_penalty": diversity_penalty})


def challenger_rewards(texts: Sequence[str], valid: Sequence[bool],
                       pass_rates: Sequence[Sequence[float] | None], *,
                       max_comment_markers: int = 2, think_tag: str = "think",
                       tail_chars: int = 1000,
                       distance_threshold: float = 0.5,
                       reference_quirk: bool = False, w_format: float = 0.2,
                       w_valid: float = 0.4, w_difficulty: float = 0.4,
                       w_diversity: float = 0.3) -> list[Reward]:
  """Rewards for a batch of Challenger replies.

  Args:
    texts: the Challenger replies.
    valid: whether each program passed every sandbox check.
    pass_rates: per reply, the Solver pass rate of each question type (None
      or empty for invalid programs).
    max_comment_markers, think_tag, tail_chars, distance_threshold,
      reference_quirk, w_*: see the module docstring.

  Returns:
    One Reward per reply; a format failure's reason is kept in ``parts``.
  """
  if not len(texts) == len(valid) == len(pass_rates):
    raise ValueError(f"texts ({len(texts)}), valid ({len(valid)}) and "
                     f"pass_rates ({len(pass_rates)}) must have equal length.")
  funcs, formats = [], []
  for text in texts:
    f, why = format_score(text, max_comment_markers=max_comment_markers, think_tag=think_tag)
    code = parse_challenger_output(text, think_tag)[1] or ""
    funcs.append(split_program(code)[0])
    formats.append((f, why))
  penalties = diversity_penalties(funcs, valid, tail_chars=tail_chars,
                                  distance_threshold=distance_threshold)
  out = []
  for (f, why), ok, rates, c in zip(formats, valid, pass_rates, penalties):
    d = difficulty(rates, reference_quirk=reference_quirk) if ok and rates \
        else 0.0
    r = challenger_reward(f, bool(ok), d, float(c), w_format=w_format,
                          w_valid=w_valid, w_difficulty=w_difficulty,
                          w_diversity=w_diversity)
    out.append(Reward(r.value, r.reason, {**r.parts, "format_reason": why}))
  return out


def solver_format_score(reply: str, *, no_reasoning_score: float = 0.5
                        ) -> float:
  """1 if boxed; ``no_reasoning_score`` if the reply starts with it."""
  if answers.extract_boxed(reply) is None:
    return 0.0
  if reply.strip().startswith(("\\boxed", "\\fbox")):
    return no_reasoning_score
  return 1.0


def solver_accuracy(reply: str, gold: str, *, kind: str = "letter",
                    letter_mode: str = "standalone", partial_credit: bool = True) -> float:
  """acc of a Solver reply: the one grader behind the Solver's reward, the frozen
  Solver's pass rates (difficulty) and the held-out evaluation.

  The answer is the last complete ``\\boxed{}`` (or ``\\fbox{}``); none scores 0.

  Args:
    reply: the Solver's reply.
    gold: the answer known by construction ('B', or 'BDAC' for type 2).
    kind: 'letter' (default: the first stand-alone option letter, so
      ``\\boxed{Answer C}`` reads as C), 'letter_sequence' (type 2: matched
      positions / 4), or any ``answers.grade`` kind.
    letter_mode: see ``answers.extract_letter``.
    partial_credit: for 'letter_sequence', credit per matched position (else
      only an exact match scores).
  """
  boxed = answers.extract_boxed(reply)
  if boxed is None:
    return 0.0
  if kind == "letter_sequence":
    acc = answers.grade_letter_sequence(boxed, gold)
    return acc if partial_credit else float(acc == 1.0)
  return float(answers.grade(boxed, gold, kind, letter_mode=letter_mode))


def solver_reward(reply: str, gold: str, *, kind: str = "letter",
                  letter_mode: str = "standalone", partial_credit: bool = True,
                  w_format: float = 0.2, w_accuracy: float = 0.8,
                  no_reasoning_score: float = 0.5) -> Reward:
  """R_S = w_format fmt + w_accuracy acc (acc: `solver_accuracy`)."""
  fmt = solver_format_score(reply, no_reasoning_score=no_reasoning_score)
  boxed = answers.extract_boxed(reply)
  acc = solver_accuracy(reply, gold, kind=kind, letter_mode=letter_mode,
                        partial_credit=partial_credit)
  reason = ("no_boxed_answer" if boxed is None else
            "ok" if acc == 1.0 else "wrong_answer")
  return Reward(value=w_format * fmt + w_accuracy * acc, reason=reason,
                parts={"format": fmt, "accuracy": acc, "answer": boxed})
