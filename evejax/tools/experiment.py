r"""Controlled experiments: arms x seeds of one preset, one table and one chart.

  python -m evejax.tools.experiment --config configs/mmzero.py:small \
      --arms method,control --seeds 3 --workdir W [--config.a.b=v ...]

An arm is a named set of config overrides on the preset, listed in the config
file's `ARMS` ({name: {key: value}}, each with a comment saying what it tests);
`--config.*` overrides apply to every arm (an arm's own values win). Each arm x
seed runs `python -m evejax.main` in its own workdir W/<arm>/seed<s> with
config.seed = s, one run at a time; a run whose summary.json exists is done and
one with checkpoints resumes, so running the command again resumes the
experiment. `--report_only` rebuilds the table and chart from what is there.

Shared warm starts (`--share_warmstart`, on by default): the arms of a recipe
differ only after its warm start, so each seed's warm start runs once, as the
preset with 0 iterations (W/warmstart/seed<s>), and every arm of that seed
starts from a copy of its last checkpoint and metrics. The arms of a seed then
begin from identical weights (a paired comparison) and an arm costs only its
iterations. An arm that overrides a key the warm start reads (`WARMSTART_KEYS`)
is refused while sharing.

Output, in W:
  commands.sh    the exact commands (runnable: `bash W/commands.sh` redoes it all)
  results.json   every run's evaluations, per-iteration metrics and wall times
  table.md       per arm and evaluation point, mean ± std over seeds of the
                 recipe's held-out metric and the config file's
                 `EXPERIMENT_METRICS`; the gain of each arm over the start of
                 self-evolution, and each arm against the first (paired by seed)
  chart.png      the same numbers, one panel per metric, mean ± std bands

A metric named "eval/<key>" is read from the run's evaluations (summary.json);
any other name is the mean of that metrics.jsonl key over the train steps of
the iteration (the rows whose schedule position lies in its stages).
"""
from __future__ import annotations

import bisect
import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from evejax import config_utils

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
TIME_FILE = "experiment_time.json"
# Keys that change what a warm start does: an arm that sets one cannot share it.
# train.loss.kl_coef too: it decides whether checkpoints hold a KL reference.
WARMSTART_KEYS = ("seed", "model.", "init.", "mesh.", "data.", "processing.", "warmstart.",
                  "train.loss.kl_coef")


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of the experiment: an arm (or the shared warm start) at a seed."""
  arm: str
  seed: int
  overrides: dict          # on the preset, in order: common, arm, seed
  workdir: str
  warmstart: str | None = None   # the workdir whose last checkpoint it starts from

  def command(self, spec: str) -> list[str]:
    return ([sys.executable, "-m", "evejax.main", "--config", spec]
            + [f"--config.{k}={_literal(v)}" for k, v in self.overrides.items()]
            + ["--workdir", self.workdir])


def _literal(value) -> str:
  return value if isinstance(value, str) else repr(value)


def _is_warmstart_key(key: str) -> bool:
  return any(key == k.rstrip(".") or (k.endswith(".") and key.startswith(k))
             for k in WARMSTART_KEYS)


def arms_of(spec: str) -> dict[str, dict]:
  """The `ARMS` of the config file of `spec` ({name: overrides})."""
  module, _ = config_utils.config_module(spec)
  arms = getattr(module, "ARMS", None)
  if not arms:
    raise config_utils.ConfigError(
        f"{spec.partition(':')[0]} has no ARMS (a dict {{arm name: {{config key: value}}}}) "
        "for experiments.")
  return dict(arms)


def experiment_metrics(spec: str) -> tuple[str, ...]:
  module, _ = config_utils.config_module(spec)
  return tuple(getattr(module, "EXPERIMENT_METRICS", ()))


def plan(spec: str, arms: Sequence[str] | Mapping[str, dict], seeds: Sequence[int],
         workdir: str, *, common: Mapping[str, Any] | None = None,
         share_warmstart: bool = True) -> list[Run]:
  """The runs, in the order they run: per seed, its warm start, then each arm.

  `arms`: names from the config file's ARMS, or {name: overrides} itself.
  """
  if isinstance(arms, Mapping):
    known, arms = dict(arms), list(arms)
  else:
    known = arms_of(spec)
  unknown = [a for a in arms if a not in known]
  if unknown:
    raise config_utils.ConfigError(f"arms {unknown} are not in {spec}'s ARMS: {sorted(known)}.")
  common = dict(common or {})
  config = config_utils.load_config(spec, common)
  iterations_key = f"{config.recipe}.iterations"
  if share_warmstart:
    config_utils.check_key(config, iterations_key)
    for arm in arms:
      touched = [k for k in known[arm] if _is_warmstart_key(k)]
      if touched:
        raise config_utils.ConfigError(
            f"arm {arm!r} sets {touched}, which the warm start reads: run with "
            "--noshare_warmstart, or move them out of the arm.")
  runs = []
  for seed in seeds:
    warm = None
    if share_warmstart:
      warm = os.path.join(workdir, "warmstart", f"seed{seed}")
      runs.append(Run("warmstart", seed, {**common, iterations_key: 0, "seed": seed}, warm))
    for arm in arms:
      runs.append(Run(arm, seed, {**common, **known[arm], "seed": seed},
                      os.path.join(workdir, arm, f"seed{seed}"), warm))
  return runs


# -- running ----------------------------------------------------------------------


def subprocess_runner(spec: str, run: Run) -> None:
  """Runs `python -m evejax.main` for `run`, its output appended to workdir/run.log."""
  with open(os.path.join(run.workdir, "run.log"), "a") as log:
    code = subprocess.call(run.command(spec), stdout=log, stderr=subprocess.STDOUT)
  if code:
    raise RuntimeError(f"{run.arm} seed {run.seed} failed (exit {code}); see "
                       f"{os.path.join(run.workdir, 'run.log')}.")


def start_from_warmstart(run: Run) -> None:
  """Copies the warm start's last checkpoint and metrics into a fresh arm workdir."""
  ckpt = os.path.join(run.warmstart, "checkpoints")
  steps = sorted(int(n) for n in os.listdir(ckpt) if n.isdigit())
  target = os.path.join(run.workdir, "checkpoints")
  shutil.copytree(os.path.join(ckpt, str(steps[-1])), os.path.join(target, str(steps[-1])))
  for name in (METRICS,):
    if os.path.exists(os.path.join(run.warmstart, name)):
      shutil.copy(os.path.join(run.warmstart, name), os.path.join(run.workdir, name))


def execute(spec: str, runs: Sequence[Run], *,
            run_one: Callable[[str, Run], None] = subprocess_runner,
            log: Callable[[str], None] = print) -> None:
  """Runs each run that is not done, in order; records each one's wall time."""
  for run in runs:
    if os.path.exists(os.path.join(run.workdir, SUMMARY)):
      log(f"done: {run.arm} seed {run.seed} ({run.workdir})")
      continue
    os.makedirs(run.workdir, exist_ok=True)
    if run.warmstart and not os.path.exists(os.path.join(run.workdir, "checkpoints")):
      start_from_warmstart(run)
    log(f"running: {run.arm} seed {run.seed} -> {run.workdir}")
    start = time.time()
    run_one(spec, run)
    times = _read_json(os.path.join(run.workdir, TIME_FILE)) or {"wall_s": 0.0}
    times["wall_s"] += time.time() - start   # over every invocation that ran it
    _write_json(os.path.join(run.workdir, TIME_FILE), times)


def write_commands(spec: str, runs: Sequence[Run], path: str) -> None:
  lines = ["#!/bin/bash", "# The experiment's runs, in order (evejax.tools.experiment).",
           "set -e"]
  for run in runs:
    lines.append(f"# {run.arm}, seed {run.seed}")
    if run.warmstart:
      lines.append(f"# starts from the last checkpoint of {run.warmstart}:")
      lines.append(f"mkdir -p {shlex.quote(run.workdir)}/checkpoints && cp -r \"$(ls -d "
                   f"{shlex.quote(run.warmstart)}/checkpoints/[0-9]* | sort -V | "
                   f"tail -1)\" {shlex.quote(run.workdir)}/checkpoints/ && cp "
                   f"{shlex.quote(run.warmstart)}/{METRICS} {shlex.quote(run.workdir)}/")
    cmd = run.command(spec)
    cmd[0] = "python"
    lines.append(" ".join(shlex.quote(x) for x in cmd))
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


# -- reading the runs --------------------------------------------------------------


def _read_json(path: str):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _write_json(path: str, value) -> None:
  with open(path, "w") as f:
    json.dump(value, f, indent=2)


def _read_jsonl(path: str) -> list[dict]:
  from evejax import observe  # pylint: disable=g-import-not-at-top
  return observe.read_jsonl(path)


def eval_points(summary: Mapping[str, Any]) -> list[str]:
  """The evaluation keys of a summary in schedule order: init, after_warmstart, iterN."""
  iters = sorted((k for k in summary if k.startswith("iter") and k[4:].isdigit()),
                 key=lambda k: int(k[4:]))
  return [k for k in ("init", "after_warmstart") if k in summary] + iters


def iteration_metrics(spec: str, run: Run, names: Sequence[str]) -> dict[str, dict[str, float]]:
  """{evaluation key: {name: mean over that iteration's train rows}} of metrics.jsonl.

  Iteration 0 (the warm start) is reported at `after_warmstart`.
  """
  from evejax import recipes  # pylint: disable=g-import-not-at-top
  from evejax.recipes import schedule as schedule_lib  # pylint: disable=g-import-not-at-top
  config = config_utils.load_config(spec, run.overrides)
  sched = schedule_lib.Schedule(recipes.resolve(config.recipe).stages(config))
  starts = [sched.units_done((i, 0)) for i in range(len(sched))]
  values: dict[tuple[int, str], list[float]] = {}
  for rec in _read_jsonl(os.path.join(run.workdir, METRICS)):
    if "position" not in rec:
      continue
    index = bisect.bisect_right(starts, rec["position"]) - 1
    if index < 0 or index >= len(sched):
      continue
    iteration = sched.stages[index].iteration
    for name in names:
      if name in rec and not name.startswith("eval/"):
        values.setdefault((iteration, name), []).append(float(rec[name]))
  out: dict[str, dict[str, float]] = {}
  for (iteration, name), vs in values.items():
    key = f"iter{iteration}" if iteration else "after_warmstart"
    out.setdefault(key, {})[name] = float(np.mean(vs))
  return out


def collect(spec: str, runs: Sequence[Run], metric: str, names: Sequence[str]) -> dict:
  """{arm: {seed: {point: {name: value}}, ...}} of the finished runs, plus wall times."""
  results: dict[str, Any] = {}
  for run in runs:
    summary = _read_json(os.path.join(run.workdir, SUMMARY))
    if summary is None:
      continue
    points = {k: {f"eval/{m}": v for m, v in summary[k].items()
                  if isinstance(v, (int, float))} for k in eval_points(summary)}
    for key, ms in iteration_metrics(spec, run, names).items():
      points.setdefault(key, {}).update(ms)
    times = _read_json(os.path.join(run.workdir, TIME_FILE)) or {}
    results.setdefault(run.arm, {})[str(run.seed)] = {
        "points": points, "heldout_gain_points": summary.get("heldout_gain_points"),
        "wall_s": times.get("wall_s"), "workdir": run.workdir,
        "overrides": run.overrides}
  return {"config": spec, "heldout_metric": metric, "metrics": list(names),
          "arms": results}


# -- the table and the chart -------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
  """Mean, sample standard deviation (0 for one value) and count."""
  v = np.asarray([x for x in values if x is not None], np.float64)
  if not len(v):
    return float("nan"), float("nan"), 0
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def _fmt(values: Sequence[float], points: bool = False) -> str:
  """mean ± std: of fractions and rates to 3 decimals, of points signed to 0.1."""
  m, s, n = mean_std(values)
  if not n:
    return "—"
  return f"{m:+.1f} ± {s:.1f}" if points else f"{m:.3f} ± {s:.3f}"


def _columns(data: dict) -> list[str]:
  """The held-out metric, then the other metrics that some run logged (a preset
  may leave one out, e.g. a question type it does not ask)."""
  heldout = f"eval/{data['heldout_metric']}"
  logged = {name for runs in data["arms"].values() for run in runs.values()
            for point in run["points"].values() for name in point}
  return [heldout] + [n for n in data["metrics"] if n != heldout and n in logged]


def _arm_points(runs: Mapping[str, Any]) -> list[str]:
  keys = {k for r in runs.values() for k in r["points"]}
  return [k for k in ("init", "after_warmstart") if k in keys] + sorted(
      (k for k in keys if k.startswith("iter")), key=lambda k: int(k[4:]))


def table(data: dict) -> str:
  """The markdown table: per arm and point, mean ± std over seeds of each column."""
  cols = _columns(data)
  lines = [f"Held-out metric: `{data['heldout_metric']}`; mean ± sample std over seeds "
           f"(config `{data['config']}`).", "",
           "| arm | point | seeds | " + " | ".join(f"`{c}`" for c in cols) + " |",
           "|---|---|---:|" + "---:|" * len(cols)]
  for arm, runs in data["arms"].items():
    for point in _arm_points(runs):
      have = [r["points"].get(point, {}) for r in runs.values()]
      lines.append(f"| {arm} | {point} | {sum(bool(h) for h in have)} | " + " | ".join(
          _fmt([h.get(c) for h in have if c in h]) for c in cols) + " |")
  arms = list(data["arms"])
  reference = "control" if "control" in arms else (arms[0] if arms else "")
  lines += ["", "| arm | seeds | held-out gain (points, last iteration vs start of "
            f"self-evolution) | vs {reference}, paired by seed (points) | wall per run (s) |",
            "|---|---:|---:|---:|---:|"]
  first = data["arms"].get(reference, {})
  for arm in arms:
    runs = data["arms"][arm]
    gains = [r["heldout_gain_points"] for r in runs.values()]
    paired = [100 * (runs[s]["points"].get(_last(runs[s]), {}).get(cols[0], np.nan)
                     - first[s]["points"].get(_last(first[s]), {}).get(cols[0], np.nan))
              for s in runs if s in first] if arm != reference else []
    walls = mean_std([r["wall_s"] for r in runs.values()])
    lines.append(f"| {arm} | {len(runs)} | {_fmt(gains, points=True)} | "
                 f"{_fmt(paired, points=True) if paired else '—'} | "
                 f"{walls[0]:.0f} ± {walls[1]:.0f} |")
  return "\n".join(lines) + "\n"


def _last(run: Mapping[str, Any]) -> str:
  iters = [k for k in run["points"] if k.startswith("iter")]
  return max(iters, key=lambda k: int(k[4:])) if iters else "after_warmstart"


_X = {"init": -1, "after_warmstart": 0}   # where the evaluations before iteration 1 sit


def chart(data: dict, path: str) -> str:
  """One panel per column: mean ± std over seeds per evaluation point, a line per arm."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  cols = _columns(data)
  fig, axes = plt.subplots(1, len(cols), figsize=(3.2 * len(cols), 2.8), squeeze=False)
  for ax, col in zip(axes[0], cols):
    for arm, runs in data["arms"].items():
      xs, ms, ss = [], [], []
      for p in _arm_points(runs):
        m, s, n = mean_std([r["points"].get(p, {}).get(col) for r in runs.values()])
        if n:
          xs.append(_X.get(p) if p in _X else int(p[4:]))
          ms.append(m)
          ss.append(s)
      ms, ss = np.asarray(ms), np.asarray(ss)
      line = ax.plot(xs, ms, marker="o", label=arm)[0]
      ax.fill_between(xs, ms - ss, ms + ss, color=line.get_color(), alpha=0.2)
    ax.set_title(col, fontsize=8)
    ax.set_xlabel("iteration (-1: init, 0: after warm start)", fontsize=7)
    ax.tick_params(labelsize=7)
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


def report(spec: str, runs: Sequence[Run], workdir: str, names: Sequence[str]) -> dict:
  """Writes results.json, table.md and chart.png from the finished runs."""
  from evejax import recipes  # pylint: disable=g-import-not-at-top
  config = config_utils.load_config(spec, runs[0].overrides if runs else {})
  metric = recipes.resolve(config.recipe).heldout_metric
  data = collect(spec, [r for r in runs if r.arm != "warmstart"], metric, names)
  data["warmstart_wall_s"] = {str(r.seed): (_read_json(os.path.join(r.workdir, TIME_FILE))
                                            or {}).get("wall_s")
                              for r in runs if r.arm == "warmstart"}
  _write_json(os.path.join(workdir, "results.json"), data)
  text = table(data)
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(text)
  if data["arms"]:
    chart(data, os.path.join(workdir, "chart.png"))
  return data


# -- the command -------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict:
  import argparse  # pylint: disable=g-import-not-at-top
  spec, overrides, rest = config_utils.split_overrides(list(sys.argv[1:] if argv is None
                                                           else argv))
  parser = argparse.ArgumentParser(
      prog="python -m evejax.tools.experiment", description=__doc__.split("\n")[0],
      epilog="--config path.py:preset and --config.a.b=v overrides are also taken.")
  parser.add_argument("--arms", default="method,control", help="names from the config's ARMS")
  parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
  parser.add_argument("--seed_list", default="", help="explicit seeds, e.g. 3,4 (wins)")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--noshare_warmstart", action="store_true",
                      help="every arm runs its own warm start")
  parser.add_argument("--metrics", default="",
                      help="columns besides the held-out metric (default: EXPERIMENT_METRICS)")
  parser.add_argument("--report_only", action="store_true")
  parser.add_argument("--dry_run", action="store_true", help="print the commands only")
  args = parser.parse_args(rest)
  if spec is None:
    parser.error("--config is required, e.g. --config configs/mmzero.py:small")
  seeds = ([int(s) for s in args.seed_list.split(",")] if args.seed_list
           else list(range(args.seeds)))
  common = {"log.progress": False, **{k: config_utils._literal(v) for k, v in  # pylint: disable=protected-access
                                      (o.split("=", 1) for o in overrides)}}
  try:
    runs = plan(spec, [a for a in args.arms.split(",") if a], seeds, args.workdir,
                common=common, share_warmstart=not args.noshare_warmstart)
  except config_utils.ConfigError as e:
    raise SystemExit(f"evejax.tools.experiment: {e}") from None
  names = tuple(n for n in args.metrics.split(",") if n) or experiment_metrics(spec)
  os.makedirs(args.workdir, exist_ok=True)
  write_commands(spec, runs, os.path.join(args.workdir, "commands.sh"))
  if args.dry_run:
    print(open(os.path.join(args.workdir, "commands.sh")).read())
    return {}
  if not args.report_only:
    execute(spec, runs)
  data = report(spec, runs, args.workdir, names)
  print(open(os.path.join(args.workdir, "table.md")).read())
  return data


if __name__ == "__main__":
  main()
