"""Summaries as markdown: one table per benchmark, one table for a whole evaluation."""
from __future__ import annotations

from typing import Any, Mapping, Sequence


def _fmt(x: Any) -> str:
  if x is None:
    return "-"
  if isinstance(x, float):
    return f"{x:.2f}"
  return str(x)


def _failures(summary: Mapping[str, Any]) -> str:
  failures = summary.get("failures") or {}
  return ", ".join(f"{k} {v}" for k, v in failures.items()) or "none"


def _score(summary: Mapping[str, Any], which: str) -> Any:
  part = summary.get(which)
  return part.get("score") if part else None


def benchmark_markdown(summary: Mapping[str, Any]) -> str:
  """The headline, rule-only vs judged, the benchmark's own metrics, categories, counts."""
  profile = summary.get("profile", {})
  judge = profile.get("judge") or {}
  lines = [f"# {summary['title']} — profile `{profile.get('name', '?')}`", "",
           f"**{summary['headline']}: {_fmt(summary['score'])}** ({summary.get('scored_by', '')}) "
           f"over {summary['num_counted']} items ({summary['num_graded']} graded, "
           f"{summary['num_undecided']} undecided by the rule, "
           f"{summary.get('num_judged', 0)} judged); failures: {_failures(summary)}.", "",
           f"Rule: {', '.join(summary.get('rule', [])) or '-'}; judge: "
           f"{judge.get('model') or judge.get('fn') or 'none'}.", "",
           f"Denominator: {summary['denominator']}.", ""]
  extra = [k for k in ("aAcc", "fAcc", "qAcc", "mean") if k in summary]
  lines += ["| scored by | " + " | ".join(["score"] + extra) + " |",
            "|---|" + "---|" * (1 + len(extra))]
  for which in ("rule_only", "judged"):
    part = summary.get(which)
    if part:
      lines.append(f"| {which.replace('_', '-')} | " + " | ".join(
          _fmt(part.get(k)) for k in ["score"] + extra) + " |")
  lines.append("")
  lines += ["| category | items | score |", "|---|---|---|"]
  lines += [f"| {name} | {v['n']} | {_fmt(v['score'])} |"
            for name, v in summary.get("per_category", {}).items()]
  rate = summary.get("items_per_s")
  lines += ["", f"items/s: {_fmt(rate)} ({_fmt(summary.get('items_per_s_compiled'))} without "
            f"compiles; {summary.get('sampled_this_run', 0)} sampled in this run)", ""]
  return "\n".join(lines)


def overview_markdown(summaries: Sequence[Mapping[str, Any]]) -> str:
  """One row per benchmark: the headline score, counts, failures and speed."""
  lines = ["| benchmark | profile | metric | score | rule-only | judged | items | failures "
           "| items/s |", "|---|---|---|---|---|---|---|---|---|"]
  for s in summaries:
    lines.append(f"| {s['title']} | {s.get('profile', {}).get('name', '?')} | {s['headline']} "
                 f"| {_fmt(s['score'])} | {_fmt(_score(s, 'rule_only'))} "
                 f"| {_fmt(_score(s, 'judged'))} | {s['num_counted']} | {_failures(s)} "
                 f"| {_fmt(s.get('items_per_s'))} |")
  return "\n".join(lines) + "\n"
