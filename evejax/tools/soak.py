"""Soak: does a recipe's host memory stay flat over a long run?

  python -m evejax.tools.soak --config configs/eve.py:tiny --steps 200 \\
      [--workdir DIR] [--warmup 20] [--config.a.b=value ...]

Runs the preset through the recipe runner (`runner.Runner`, as `evejax.main`
does) with its warm start cut to a few steps and enough iterations for at
least `--steps` RL steps (the overrides of `SHORTENED`, then the command
line's), and after every RL step records this process's resident memory,
open file descriptors, threads (the OS's count: XLA's and the sandbox pool's
included) and child processes (sandbox workers, all generations). It prints
and writes `<workdir>/soak.json`:

  rss_mib      at the first and last RL step and the largest; per phase (a
               recipe's RL stage kind and role, e.g. challenger/challenger),
               the RSS at the phase's last step of every iteration and the
               slope of a least-squares line through those points after
               `--warmup` RL steps (early steps fill compilation and allocator
               caches), in MiB per 100 RL steps; `slope_per_100_steps` is the
               largest phase slope
  fds, threads, children   at the first and the last RL step, and the largest

Phases hold very different transient memory (an EVE Challenger step holds
its programs' images, a Solver step does not), so RSS is compared at the
same point of each iteration. A leak shows as a phase slope that stays
positive, or counts that grow; BENCHMARKS.md ("Soak") has the numbers.
The report is rewritten after every RL step; SIGTERM or Ctrl-C stops the run
at the next step boundary (as in any run) with the report of what it measured.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np
import psutil

# Per recipe: overrides that cut the warm start short, and the key whose value
# sets how many iterations (of RL phases) the run has.
SHORTENED = {
    "eve": ({"warmstart.challenger_steps": 2, "warmstart.solver_steps": 2,
             "eve.heldout_eval_questions": 8}, "eve.iterations"),
    "mmzero": ({"warmstart.proposer_steps": 2, "warmstart.coder_steps": 2,
                "warmstart.solver_steps": 2, "mmzero.heldout_items": 7},
               "mmzero.iterations"),
    "evolmm": ({"warmstart.steps": 2, "evolmm.heldout_questions": 8}, "evolmm.iterations"),
}


def snapshot() -> dict[str, float]:
  """This process now: resident MiB, open fds, OS threads, descendant processes."""
  me = psutil.Process()
  return {"rss_mib": me.memory_info().rss / 2**20, "fds": me.num_fds(),
          "threads": me.num_threads(), "children": len(me.children(recursive=True))}


def slope_per_100(steps: list[int], values: list[float]) -> float | None:
  """Least-squares slope of values against steps, per 100 steps."""
  if len(steps) < 3:
    return None
  return float(np.polyfit(np.asarray(steps, float), np.asarray(values, float), 1)[0] * 100)


def is_rl(stage) -> bool:
  return bool(stage.trains and stage.role and stage.optimizer == "rl")


def configure(spec: str, overrides: list[str], steps: int):
  """The preset with SHORTENED's overrides, iterations for >= `steps` RL steps, and the
  command line's overrides (which win)."""
  from evejax import config_utils  # pylint: disable=g-import-not-at-top
  from evejax import recipes  # pylint: disable=g-import-not-at-top
  config = config_utils.load_config(spec)
  cut, iterations_key = SHORTENED.get(config.recipe, ({}, None))
  for key, value in cut.items():
    config_utils.set_value(config, key, value)
  if iterations_key:
    config_utils.set_value(config, iterations_key, 1)
    per_iteration = sum(st.steps for st in recipes.resolve(config.recipe).stages(config)
                        if is_rl(st) and st.iteration == 1)
    config_utils.set_value(config, iterations_key, max(1, math.ceil(steps / per_iteration)))
  for item in overrides:
    key, _, value = item.partition("=")
    config_utils.set_text(config, key, value)
  config.log.progress = False
  return config


def soak(config, workdir: str, warmup: int = 20) -> dict[str, Any]:
  """Runs `config`'s recipe in `workdir`, sampling after every RL step; the report."""
  from evejax import lifecycle  # pylint: disable=g-import-not-at-top
  from evejax import recipes  # pylint: disable=g-import-not-at-top
  from evejax.recipes import runner as runner_lib  # pylint: disable=g-import-not-at-top
  before = snapshot()
  samples: list[dict[str, float]] = []
  t0 = time.perf_counter()

  def report(stopped: str | None = None) -> dict[str, Any]:
    """Written after every RL step, so a soak cut short still says what it measured."""
    out = {"recipe": config.recipe, "preset": config.get("preset_name", ""),
           "wall_s": time.perf_counter() - t0, "before_run": before,
           "planned_rl_steps": planned, "stopped": stopped, **summarise(samples, warmup)}
    with open(os.path.join(workdir, "soak.json"), "w") as f:
      json.dump(out, f, indent=1)
    return out

  with runner_lib.Runner(recipes.resolve(config.recipe), config, workdir) as runner:
    planned = sum(st.steps for st in runner.schedule.stages if is_rl(st))
    run_step = runner.recipe.step

    def step(stage, k):
      out = run_step(stage, k)
      if is_rl(stage):
        samples.append({"rl_step": len(samples) + 1, "stage": stage.name, **snapshot()})
        s = samples[-1]
        print(f"soak: RL step {len(samples)}/{planned} {stage.name} rss {s['rss_mib']:.0f} "
              f"MiB, fds {s['fds']}, threads {s['threads']}, children {s['children']}",
              flush=True)
        report("running")
      return out

    runner.recipe.step = step
    try:
      runner.run_schedule()
      stopped = None
    except lifecycle.Preempted as e:   # SIGTERM / Ctrl-C: report what was measured
      stopped = e.reason
  if not samples:
    raise SystemExit("soak: the schedule has no RL steps; raise the recipe's iterations.")
  return report(stopped)


def summarise(samples: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
  """The report's numbers from the samples taken after each RL step (see the docstring)."""
  rss = [s["rss_mib"] for s in samples]
  phases: dict[str, list] = {}
  for s, following in zip(samples, samples[1:] + [None]):
    if following is None or following["stage"] != s["stage"]:   # a phase's last step
      phases.setdefault(s["stage"].rsplit("/iter", 1)[0], []).append(s)
  by_phase = {}
  for name, ends in phases.items():
    settled = [e for e in ends if e["rl_step"] > warmup] or ends
    by_phase[name] = {"first": ends[0]["rss_mib"], "last": ends[-1]["rss_mib"],
                      "points": len(settled),
                      "slope_per_100_steps": slope_per_100([e["rl_step"] for e in settled],
                                                           [e["rss_mib"] for e in settled])}
  slopes = [p["slope_per_100_steps"] for p in by_phase.values()
            if p["slope_per_100_steps"] is not None]
  if not samples:
    return {"rl_steps": 0, "warmup": warmup}
  return {
      "rl_steps": len(samples), "warmup": warmup,
      "rss_mib": {"first": rss[0], "last": rss[-1], "max": max(rss),
                  "slope_per_100_steps": max(slopes) if slopes else None,
                  "phases": by_phase},
      **{k: {"first": samples[0][k], "last": samples[-1][k], "max": max(s[k] for s in samples)}
         for k in ("fds", "threads", "children")},
      "samples": samples,
  }


def summary_line(report: dict[str, Any]) -> str:
  r = report["rss_mib"]
  fmt = lambda x: "n/a" if x is None else f"{round(x, 1) + 0.0:+.1f}"  # noqa: E731 (no -0.0)
  phases = ", ".join(f"{name} {fmt(p['slope_per_100_steps'])}"
                     for name, p in r["phases"].items())
  cut = f" (of {report['planned_rl_steps']}, stopped by {report['stopped']})" if report.get(
      "stopped") else ""
  return (f"{report['recipe']} {report['preset']}: {report['rl_steps']} RL steps{cut} in "
          f"{report['wall_s'] / 60:.1f} min; RSS {r['first']:.0f} -> {r['last']:.0f} MiB "
          f"(max {r['max']:.0f}); slope per phase end, MiB/100 RL steps: {phases}; fds "
          f"{report['fds']['first']} -> {report['fds']['last']}, threads "
          f"{report['threads']['first']} -> {report['threads']['last']}, children "
          f"{report['children']['first']} -> {report['children']['last']}")


def main(argv: list[str] | None = None) -> None:
  from evejax import config_utils  # pylint: disable=g-import-not-at-top
  spec, overrides, rest = config_utils.split_overrides(list(sys.argv[1:] if argv is None
                                                            else argv))
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=200, help="RL steps at least")
  parser.add_argument("--warmup", type=int, default=20,
                      help="RL steps left out of the main slope (caches filling)")
  parser.add_argument("--workdir", default=None, help="default: a new temporary directory")
  args = parser.parse_args(rest)
  if spec is None:
    parser.error("--config path.py:preset is required, e.g. --config configs/eve.py:tiny")
  try:
    config = configure(spec, overrides, args.steps)
  except config_utils.ConfigError as e:
    raise SystemExit(f"soak: config error: {e}") from None
  workdir = args.workdir or tempfile.mkdtemp(prefix=f"evejax_soak_{config.recipe}_")
  report = soak(config, workdir, args.warmup)
  print(summary_line(report))
  print(f"soak: report in {os.path.join(workdir, 'soak.json')}")


if __name__ == "__main__":
  main()
