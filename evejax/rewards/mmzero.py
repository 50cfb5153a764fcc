"""MM-Zero rewards: Proposer, Coder and Solver (reference/METHODS.md).

Solver consistency service, per (image, question) and n Solver samples:
  c = largest answer cluster / number of *valid* answers (``answers.
  cluster_answers``: equal after normalising case/whitespace, or
  mathematically equal; none, n/a, unknown... are not votes);
  s = share of *all* n answers equal to the Proposer's easy answer.

Proposer, per proposal with N Coder samples k (failed renders add 0):
  R = (1/N) sum_{rendered k} [min(s_k, 0.5) + min(c_k, 1 - c_k)]
      - 0.3                 if some render succeeded and the mean of
                            min(c_k, 1 - c_k) is below 0.15 (too easy)
      - diversity           per text field f in (caption 0.45, easy question
                            0.20, hard question 0.35): BLEU-cluster share_f
                            - 1/n, summed with the weights, times 0.5 n,
                            clipped to +-0.5. A share is never below 1/n, so
                            the term is >= 0: a proposal unique in every
                            field pays 0, repeated ones pay up to 0.5
      - content type        0.15 * max(0, type share - 0.5) / 0.5 when the
                            batch has more than one content type
  R = -1 when the tags cannot be parsed (missing or duplicated, or an answer
  that is not a short phrase). The diversity terms are computed over
  the batch's parsed proposals (n of them) when there are at least two. The
  text clustering threshold is 0.25, the reference Proposer code's value (EVE
  uses 0.5). A content type that is missing or not one of CONTENT_TYPES is
  inferred from caption keywords, as the reference does.

Coder: 1 + s + min(c, 1 - c) when the SVG renders; otherwise -0.1, a further
-0.05 for an empty block and -0.5 for output that is not SVG, floored at -0.5.

Solver: 0.9 acc + 0.1 fmt; acc compares the boxed answer with the silver label
(the Solver's own majority answer on the hard question); fmt requires the reply
to be exactly a think block followed by a boxed answer.
"""

import dataclasses
import re
from typing import Sequence

import numpy as np

from evejax.rewards import diversity
from evejax.rewards.registry import Reward
from evejax.rl import answers

CONTENT_TYPES = ("data_chart", "diagram", "geometry", "timeline", "map",
                 "table", "other")
PROPOSAL_FIELDS = ("caption", "easy_question", "easy_answer", "hard_question",
                   "hard_answer")
# "A single number, word or short phrase."
MAX_ANSWER_WORDS = 4

# Caption keywords for the fallback content type, most specific first.
CAPTION_TYPE_KEYWORDS = (
    ("diagram", ("flowchart", "flow chart", "network diagram", "org chart",
                 "state diagram", "circuit diagram", "block diagram")),
    ("data_chart", ("bar chart", "line chart", "pie chart", "scatter",
                    "histogram", "area chart", "stacked", "heatmap",
                    "treemap", "radar chart", "bubble chart")),
    ("geometry", ("angle", "triangle", "circle", "radius", "coordinate",
                  "geometry", "perpendicular", "chord", "polygon",
                  "rectangle")),
    ("timeline", ("timeline", "schedule", "gantt")),
    ("map", ("map", "region", "geographic", "country")),
    ("table", ("table", "grid", "comparison table")),
)


@dataclasses.dataclass(frozen=True)
class Proposal:
  """A parsed Proposer reply."""
  content_type: str
  caption: str
  easy_question: str
  easy_answer: str
  hard_question: str
  hard_answer: str


@dataclasses.dataclass(frozen=True)
class RenderOutcome:
  """One Coder sample for a proposal: rendered? and the Solver's s and c."""
  rendered: bool
  solvability: float = 0.0
  consistency: float = 0.0


def _tag(text: str, name: str) -> str | None:
  m = re.search(rf"<\s*{name}\s*>(.*?)<\s*/\s*{name}\s*>", text, re.DOTALL)
  return m.group(1).strip() if m else None


def infer_content_type(caption: str) -> str:
  """Content type from caption keywords ('other' when none matches)."""
  c = (caption or "").lower()
  for kind, words in CAPTION_TYPE_KEYWORDS:
    if any(w in c for w in words):
      return kind
  return "other"


def parse_proposer_output(text: str, *, max_answer_words: int = MAX_ANSWER_WORDS
                          ) -> tuple[Proposal | None, str]:
  """(Proposal, 'ok') or (None, reason) from a Proposer reply.

  Reasons: 'missing_tags=...' (the five text fields are required),
  'duplicate_tags=...' (a block written twice is ambiguous), 'long_answer=...'
  (an answer must be one number, word or short phrase: at most
  `max_answer_words` words on one line). ``content_type`` is optional and is
  normalised to CONTENT_TYPES, falling back to the caption's keywords.
  """
  text = text or ""
  fields = {name: _tag(text, name) for name in PROPOSAL_FIELDS}
  missing = [k for k, v in fields.items() if not v]
  if missing:
    return None, "missing_tags=" + ",".join(missing)
  duplicated = [k for k in ("content_type",) + PROPOSAL_FIELDS
                if len(re.findall(rf"<\s*{k}\s*>", text)) > 1]
  if duplicated:
    return None, "duplicate_tags=" + ",".join(duplicated)
  long = [k for k in ("easy_answer", "hard_answer")
          if len(fields[k].split()) > max_answer_words or "\n" in fields[k]]
  if long:
    return None, "long_answer=" + ",".join(long)
  raw = (_tag(text, "content_type") or "").lower().replace(" ", "_")
  kind = raw if raw in CONTENT_TYPES and raw != "other" else None
  return Proposal(content_type=kind or infer_content_type(fields["caption"]),
                  **fields), "ok"


def consistency(solver_answers: Sequence[str | None], **kwargs
                ) -> tuple[float, str | None, int]:
  """(c, majority answer, number of valid answers); c = 0 with none valid."""
  rep, count, n_valid = answers.majority_answer(solver_answers, **kwargs)
  return (count / n_valid if n_valid else 0.0), rep, n_valid


def visual_verification(solver_answers: Sequence[str | None],
                        easy_answer: str) -> float:
  """s = share of all answers equal to the Proposer's easy answer."""
  if not solver_answers or not easy_answer:
    return 0.0
  hits = sum(1 for a in solver_answers
             if a and answers.answers_equal(a, easy_answer))
  return hits / len(solver_answers)


def proposal_score(outcomes: Sequence[RenderOutcome], *,
                   solvability_cap: float = 0.5, easy_threshold: float = 0.15,
                   easy_penalty: float = 0.3) -> tuple[float, dict]:
  """The per-proposal part of the Proposer reward, before batch terms."""
  n = max(len(outcomes), 1)
  rendered = [o for o in outcomes if o.rendered]
  diffs = [min(o.consistency, 1.0 - o.consistency) for o in rendered]
  base = sum(min(o.solvability, solvability_cap) + d
             for o, d in zip(rendered, diffs)) / n
  mean_diff = sum(diffs) / len(diffs) if diffs else 0.0
  too_easy = bool(diffs) and mean_diff < easy_threshold
  value = base - (easy_penalty if too_easy else 0.0)
  return value, {"base": base, "num_rendered": len(rendered),
                 "num_samples": len(outcomes), "mean_difficulty": mean_diff,
                 "too_easy": too_easy}


def diversity_terms(proposals: Sequence[Proposal], *,
                    weights: Sequence[float] = (0.45, 0.20, 0.35),
                    budget: float = 0.5,
                    distance_threshold: float = 0.25) -> np.ndarray:
  """Per-proposal diversity penalty over a batch, in [0, budget]."""
  n = len(proposals)
  if n < 2:
    return np.zeros((n,))
  total = np.zeros((n,))
  for w, field in zip(weights, ("caption", "easy_question", "hard_question")):
    shares = diversity.bleu_cluster_shares(
        [getattr(p, field) for p in proposals], threshold=distance_threshold)
    total += w * (shares - 1.0 / n)
  return np.clip(total * n * budget, -budget, budget)


def content_type_penalties(content_types: Sequence[str], *,
                           weight: float = 0.15,
                           threshold: float = 0.5) -> np.ndarray:
  """Penalty for over-represented content types (0 with a single type)."""
  n = len(content_types)
  kinds, inverse, counts = np.unique(np.asarray(content_types, object),
                                     return_inverse=True, return_counts=True)
  if n < 2 or len(kinds) < 2:
    return np.zeros((n,))
  share = counts[inverse] / n
  scale = (1.0 - threshold) if threshold < 1.0 else 1.0
  return weight * np.maximum(0.0, share - threshold) / scale


def proposer_rewards(replies: Sequence[str],
                     outcomes: Sequence[Sequence[RenderOutcome]], *,
                     unparseable_reward: float = -1.0,
                     solvability_cap: float = 0.5,
                     easy_threshold: float = 0.15, easy_penalty: float = 0.3,
                     diversity_weights: Sequence[float] = (0.45, 0.20, 0.35),
                     diversity_budget: float = 0.5,
                     diversity_threshold: float = 0.25,
                     content_type_weight: float = 0.15,
                     content_type_threshold: float = 0.5) -> list[Reward]:
  """Rewards for a batch of Proposer replies.

  Args:
    replies: the Proposer replies.
    outcomes: per reply, one RenderOutcome per Coder sample (empty for
      unparseable replies).
    Other arguments: the constants of the module docstring.
  """
  if len(replies) != len(outcomes):
    raise ValueError(f"replies ({len(replies)}) and outcomes "
                     f"({len(outcomes)}) must have equal length.")
  parsed = [parse_proposer_output(r) for r in replies]
  valid_idx = [i for i, (p, _) in enumerate(parsed) if p is not None]
  valid = [parsed[i][0] for i in valid_idx]
  div = diversity_terms(valid, weights=diversity_weights,
                        budget=diversity_budget,
                        distance_threshold=diversity_threshold)
  ctype = content_type_penalties([p.content_type for p in valid],
                                 weight=content_type_weight,
                                 threshold=content_type_threshold)
  batch_terms = {i: (float(d), float(c))
                 for i, d, c in zip(valid_idx, div, ctype)}
  out = []
  for i, (proposal, reason) in enumerate(parsed):
    if proposal is None:
      out.append(Reward(unparseable_reward, reason))
      continue
    value, parts = proposal_score(
        outcomes[i], solvability_cap=solvability_cap,
        easy_threshold=easy_threshold, easy_penalty=easy_penalty)
    d, c = batch_terms[i]
    out.append(Reward(value - d - c, "ok", {
        **parts, "diversity_penalty": d, "content_type_penalty": c,
        "content_type": proposal.content_type}))
  return out


def extract_svg(text: str) -> str:
  """SVG of a Coder reply: ```svg fence, ```xml fence with <svg, bare <svg>."""
  text = text or ""
  m = re.search(r"```svg[ \t]*\r?\n(.*?)```", text, re.DOTALL)
  if m:
    return m.group(1).strip()
  m = re.search(r"```xml[ \t]*\r?\n(.*?)```", text, re.DOTALL)
  if m and "<svg" in m.group(1).lower():
    return m.group(1).strip()
  m = re.search(r"(<svg.*?</svg>)", text, re.DOTALL | re.IGNORECASE)
  return m.group(1).strip() if m else ""


def coder_reward(reply: str, rendered: bool, solvability: float = 0.0,
                 consistency_score: float = 0.0, *,
                 no_render_penalty: float = 0.1, empty_penalty: float = 0.05,
                 non_svg_penalty: float = 0.5, floor: float = -0.5) -> Reward:
  """Coder reward from the render outcome and the Solver's s and c."""
  svg = extract_svg(reply)
  is_svg = bool(svg) and (svg.startswith("<") or "<svg" in svg.lower())
  penalty = 0.0 if svg else empty_penalty
  penalty += 0.0 if is_svg else non_svg_penalty
  if rendered:
    value = 1.0 + solvability + min(consistency_score, 1 - consistency_score)
    reason = "ok"
  else:
    value, penalty = 0.0, penalty + no_render_penalty
    reason = "empty_code" if not svg else (
        "not_svg" if not is_svg else "render_failed")
  return Reward(max(floor, value - penalty), reason, {
      "rendered": float(rendered), "solvability": solvability,
      "consistency": consistency_score, "penalty": penalty})


_SOLVER_FORMAT_RE = re.compile(r"<think>.*?</think>\s*\\boxed\{.*\}\s*",
                               re.DOTALL)
_TAG_SPACE_RE = re.compile(r"<\s*(/?)\s*think\s*>")


def solver_format_ok(reply: str) -> bool:
  """The reply is exactly ``<think>...</think>`` then ``\\boxed{...}``."""
  reply = _TAG_SPACE_RE.sub(r"<\1think>", (reply or "").strip())
  return _SOLVER_FORMAT_RE.fullmatch(reply) is not None


def solver_reward(reply: str, silver_label: str | None, *,
                  w_accuracy: float = 0.9, w_format: float = 0.1) -> Reward:
  """0.9 acc + 0.1 fmt against the silver (majority) label."""
  fmt = float(solver_format_ok(reply))
  boxed = answers.extract_boxed(reply)
  if boxed is None:
    acc, reason = 0.0, "no_boxed_answer"
  elif answers.is_invalid_answer(silver_label):
    acc, reason = 0.0, "no_silver_label"
  else:
    acc = float(answers.answers_equal(boxed, silver_label))
    reason = "ok" if acc else "wrong_answer"
  return Reward(w_accuracy * acc + w_format * fmt, reason,
                {"format": fmt, "accuracy": acc, "answer": boxed})
