r"""Profiles: each paper's evaluation settings (prompts, sampling, pixels, extraction).

A profile is everything about *how the model is asked and read*; a benchmark
(benchmarks.py) is *what is asked and how the answer is scored*. The profile
is written into every summary, with the values actually used.

  eve     VLMEvalKit dataset prompts with EVE's post-processing ON (the prompt
          stripped, "\nPlease put your final answer within \boxed{}." appended;
          the reply replaced by its last \boxed{} read to its balancing brace,
          or to the end of a reply cut inside it, a wrapping \text{} peeled).
          Qwen2.5-VL entry: near-greedy (T 0.01, top_p 0.001: greedy here),
          <= 8192 new tokens, pixels 1280*28^2 .. 16384*28^2; its reply is
          first cut after a last </think> and stripped. Qwen3-VL entry (also
          Qwen3.5's): T 1.0, top_k 40, presence_penalty 2.0, <= 16384 tokens,
          qwen-vl-utils' pixel defaults. Scored by VLMEvalKit's rules; its GPT matcher and
          MathVista extractor are the judge (eval.judge).
  evolmm  lmms-eval task prompts, greedy, system "You are a helpful assistant.",
          pixels 256*28^2 .. 12845056, per-task token limits (ChartQA, AI2D,
          MMMU 16; MathVista 16384); reply = first <answer>..</answer>, else
          first \boxed{..}, else the reply. Scored by lmms-eval 0.7.3's task
          rules; MathVista's GPT extractor is the judge.
  mmzero  the Solver's step-by-step \boxed{} instruction, T 0.6, top_p 0.95,
          <= 4096 tokens, image area <= 1280^2; reply = last flat \boxed{..},
          else the reply. Rule: that answer equals the gold (lowercase, a final
          period dropped); the paper's headline asks its judge about every
          item, and so does eval.judge under this profile.

A benchmark its profile's harness has no rule for is scored by the rule of
the paper that reported it (scoring.py lists which); departures from a
reference that are decisions are listed in `DEPARTURES` and in BENCHMARKS.md.

What the sampler cannot do is listed in `Profile.departures` (EVE's Qwen3-VL
presence penalty), never silently dropped. On Qwen2.5-VL the chat template's
default system prompt is "You are a helpful assistant.", the one EvoLMM and
MM-Zero set.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from evejax.eval import graders
from evejax.eval import templates
from evejax.eval.records import Item

DEFAULT_SYSTEM = "You are a helpful assistant."


@dataclasses.dataclass(frozen=True)
class Sampling:
  """Decoding settings of one profile for one model family."""
  greedy: bool
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  presence_penalty: float = 0.0   # recorded; the sampler has no presence penalty
  max_new_tokens: int = 1024
  min_pixels: int = 56 * 56
  max_pixels: int = 28 * 28 * 1280


@dataclasses.dataclass(frozen=True)
class Profile:
  name: str
  template: str                               # a key of templates.TEMPLATES
  harness: str                                # whose rules score it (scoring.HARNESSES)
  extract: Callable[[str, str], str | None]   # (reply, family) -> answer (None: the reply)
  sampling: Mapping[str, Sampling]            # by model family
  system: str | None = DEFAULT_SYSTEM
  boxed_suffix: bool = False                  # EVE's post-processing of the prompt
  max_new_tokens_by_benchmark: Mapping[str, int] = dataclasses.field(default_factory=dict)
  notes: str = ""

  def sampling_for(self, family: str) -> Sampling:
    if family in self.sampling:
      return self.sampling[family]
    raise ValueError(f"Profile {self.name!r} has no settings for the model family "
                     f"{family!r}; it has {sorted(self.sampling)}.")

  def settings(self, family: str, benchmark: str, *, max_new_tokens: int = 0,
               min_pixels: int = 0, max_pixels: int = 0) -> Sampling:
    """The family's settings for one benchmark, with overrides (0 keeps a value)."""
    base = self.sampling_for(family)
    return dataclasses.replace(
        base,
        max_new_tokens=int(max_new_tokens) or self.max_new_tokens_by_benchmark.get(
            benchmark, base.max_new_tokens),
        min_pixels=int(min_pixels) or base.min_pixels,
        max_pixels=int(max_pixels) or base.max_pixels)

  def prompt(self, item: Item, style: str) -> str:
    text = templates.TEMPLATES[self.template](item, style)
    return templates.eve_post_processing(text) if self.boxed_suffix else text

  def answer(self, reply: str, family: str = "") -> str:
    """The part of the reply the benchmark's rule reads."""
    found = self.extract(reply, family)
    return reply.strip() if found is None else found

  def departures(self, family: str) -> list[str]:
    s = self.sampling_for(family)
    out = []
    if s.presence_penalty:
      out.append(f"presence_penalty {s.presence_penalty} not applied: the sampler has none")
    return out

  def describe(self, family: str, sampling: Sampling) -> dict[str, Any]:
    """The profile as written into results: the values actually used, the departures."""
    return {"name": self.name, "template": self.template, "harness": self.harness,
            "system": self.system,
            "boxed_suffix": self.boxed_suffix, "family": family,
            "sampling": dataclasses.asdict(sampling),
            "departures": self.departures(family) + list(DEPARTURES.get(self.name, ())),
            "notes": self.notes}


_QWEN2_5_PIXELS = dict(min_pixels=1280 * 28 * 28, max_pixels=16384 * 28 * 28)

# The Qwen3-family entries: Qwen3-VL's, and Qwen3.5's (no paper evaluated
# it; it shares Qwen3-VL's processor, so the Qwen3-VL settings carry over).
_EVE_QWEN3 = Sampling(greedy=False, temperature=1.0, top_p=1.0, top_k=40,
                      presence_penalty=2.0, max_new_tokens=16384,
                      min_pixels=4 * 32 * 32, max_pixels=16384 * 32 * 32)
_EVOLMM_QWEN3 = Sampling(greedy=True, max_new_tokens=1024,
                         min_pixels=256 * 32 * 32, max_pixels=12845056)
_MMZERO_QWEN3 = Sampling(greedy=False, temperature=0.6, top_p=0.95,
                         max_new_tokens=4096, min_pixels=64 * 64,
                         max_pixels=1280 * 1280)

PROFILES: dict[str, Profile] = {
    "eve": Profile(
        name="eve", template="vlmevalkit", harness="vlmevalkit",
        extract=graders.eve_answer, boxed_suffix=True,
        system=None,
        sampling={
            # T 0.01 / top_p 0.001 keep only the top token: argmax.
            "qwen2_5_vl": Sampling(greedy=True, max_new_tokens=8192, **_QWEN2_5_PIXELS),
            "qwen3_vl": _EVE_QWEN3,
            "qwen3_5": _EVE_QWEN3,
        },
        notes="VLMEvalKit dataset prompts + boxed post-processing (EVE's fork); no "
              "system prompt (Qwen2.5-VL's template adds its default)."),
    "evolmm": Profile(
        name="evolmm", template="lmms_eval", harness="lmms_eval",
        extract=lambda reply, family: graders.first_answer_tag_or_boxed(reply),
        sampling={
            "qwen2_5_vl": Sampling(greedy=True, max_new_tokens=1024,
                                   min_pixels=256 * 28 * 28, max_pixels=12845056),
            "qwen3_vl": _EVOLMM_QWEN3,
            "qwen3_5": _EVOLMM_QWEN3,
        },
        max_new_tokens_by_benchmark={"chartqa": 16, "ai2d": 16, "mmmu": 16,
                                     "mathvista": 16384},
        notes="lmms-eval 0.5.0 task defaults as EvoLMM ran them (batch 1, greedy)."),
    "mmzero": Profile(
        name="mmzero", template="mmzero", harness="mmzero",
        extract=lambda reply, family: graders.last_flat_boxed(reply),
        sampling={
            "qwen2_5_vl": Sampling(greedy=False, temperature=0.6, top_p=0.95,
                                   max_new_tokens=4096, min_pixels=56 * 56,
                                   max_pixels=1280 * 1280),
            "qwen3_vl": _MMZERO_QWEN3,
            "qwen3_5": _MMZERO_QWEN3,
        },
        notes="MM-Zero's prompt and sampling; its boxed rule, and its judge on every "
              "item when eval.judge names one (the paper's: Qwen2.5-14B-Instruct)."),
}


_LOCAL_JUDGE = ("the judge is a local checkpoint (eval.judge.hf_dir) decoding greedily, asked "
                "once; the reference's API judge retries on failure")
_RULE_ONLY = ("rule-only scores count an item the rule leaves undecided as wrong; the judged "
              "score re-grades exactly those items")
# Where evejax departs from a profile's reference on purpose (BENCHMARKS.md lists them too).
DEPARTURES: dict[str, tuple[str, ...]] = {
    "eve": (
        _LOCAL_JUDGE + " (MCQ 3 tries at T 0, yes/no 5 tries at T 0.5*i) and stands in for "
        "gpt-4.1 (matcher) and gpt-4o-mini (MathVista extractor)",
        "the MCQ and yes/no judges stop after 32 new tokens (the API's default allowed 2048; "
        "the prompt asks for one letter or word); MathVista's after 128, as in the reference",
        "the MCQ judge's last resort, a random pick among the options and Z, is seeded per item",
        "HallusionBench golds are compared case-insensitively (the TSV's are Yes/No)",
        "MMMU is scored by lmms-eval's MMMU parser: VLMEvalKit's MMMU_preproc + can_infer "
        "path is not ported",
        _RULE_ONLY,
    ),
    "evolmm": (
        _LOCAL_JUDGE + " and stands in for gpt-4o-2024-11-20 (MathVista extractor)",
        "MMMU's random fallback letter is seeded per item (lmms-eval draws from the unseeded "
        "global generator)",
        "MathVista: without a judge an undecided item scores 0; lmms-eval would normalise the "
        "empty extraction of a failed API call (the nearest choice to '')",
        "MMStar and HallusionBench (not reported by EvoLMM) are scored by VLMEvalKit's rules",
        _RULE_ONLY,
    ),
    "mmzero": (
        "the judge is any checkpoint evejax loads (a VLM) standing in for the text-only "
        "Qwen2.5-14B-Instruct; its newline stop is applied by cutting the greedy text at the "
        "first newline (the same text)",
    ),
}


def get_profile(name: str) -> Profile:
  if name not in PROFILES:
    raise ValueError(f"Unknown eval profile {name!r}; valid profiles: {sorted(PROFILES)}.")
  return PROFILES[name]


def model_family(model_config) -> str:
  """The family name of a ModelConfig (Qwen2.5-VL unless it says otherwise)."""
  return str(getattr(model_config, "family", "") or "qwen2_5_vl")
