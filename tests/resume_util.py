"""Kill-and-resume harness for exact-resume tests.

Runs a training script in a subprocess, SIGKILLs it once it has reported a
given step, restarts it on the same workdir, and collects what each run
reported, so a test can check that the resumed run reproduces an
uninterrupted run step for step.

Protocol a training script follows (any loop: the toy one in
checkpoint_test.py, or the real GRPO train step):
  * after each step print `METRICS {"step": s, ...}` (`emit_metrics`), flushed;
  * after restoring a checkpoint print `RESUMED <step>` (`emit_resumed`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def emit_metrics(step: int, metrics: dict[str, Any]) -> None:
  print("METRICS " + json.dumps({"step": int(step), **metrics}), flush=True)


def emit_resumed(step: int) -> None:
  print(f"RESUMED {int(step)}", flush=True)


@dataclasses.dataclass
class RunOutput:
  lines: list[str]
  metrics: dict[int, dict[str, Any]]   # step -> metrics (last report wins)
  resumed_step: int | None
  returncode: int | None
  stderr: str = ""


def parse(lines: list[str]) -> tuple[dict[int, dict[str, Any]], int | None]:
  metrics, resumed = {}, None
  for line in lines:
    if line.startswith("METRICS "):
      record = json.loads(line[len("METRICS "):])
      metrics[record.pop("step")] = record
    elif line.startswith("RESUMED "):
      resumed = int(line.split()[1])
  return metrics, resumed


def subprocess_env(devices: int = 8) -> dict[str, str]:
  """Environment for a child: CPU JAX with `devices` devices, evejax importable."""
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  env["PYTHONPATH"] = os.pathsep.join(
      [REPO_ROOT, TESTS_DIR] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  env["PYTHONUNBUFFERED"] = "1"
  return env


def run(argv: list[str], *, kill_after_step: int | None = None, timeout_s: float = 120.0,
        env: dict[str, str] | None = None) -> RunOutput:
  """Runs `python argv...`; with `kill_after_step`, SIGKILLs it right after it
  reports that step (mid-run: the next step and any async save are in flight).

  Raises AssertionError if the run times out, or fails (other than by our kill).
  """
  proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env or subprocess_env())
  # Drain stderr in the background so a chatty child never blocks on a full pipe.
  err_chunks: list[str] = []
  err_thread = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()),
                                daemon=True)
  err_thread.start()
  timed_out = threading.Event()

  def on_timeout():
    timed_out.set()
    proc.kill()

  watchdog = threading.Timer(timeout_s, on_timeout)
  watchdog.start()
  lines, killed = [], False
  try:
    for line in proc.stdout:
      lines.append(line.rstrip("\n"))
      if kill_after_step is not None and not killed and line.startswith("METRICS "):
        if json.loads(line[len("METRICS "):])["step"] >= kill_after_step:
          os.kill(proc.pid, signal.SIGKILL)
          killed = True
    proc.wait()
  finally:
    watchdog.cancel()
  err_thread.join(timeout=10)
  stderr = "".join(err_chunks)
  if timed_out.is_set():
    raise AssertionError(f"{argv} timed out after {timeout_s}s; stderr tail:\n{stderr[-3000:]}")
  if kill_after_step is not None and not killed:
    raise AssertionError(f"{argv} ended before reporting step {kill_after_step}; "
                         f"stderr tail:\n{stderr[-3000:]}")
  if not killed and proc.returncode != 0:
    raise AssertionError(f"{argv} failed with code {proc.returncode}; stderr tail:\n"
                         f"{stderr[-3000:]}")
  metrics, resumed = parse(lines)
  return RunOutput(lines, metrics, resumed, proc.returncode, stderr)


def kill_and_resume(argv_reference: list[str], argv_interrupted: list[str], *,
                    kill_after_step: int,
                    timeout_s: float = 120.0) -> tuple[RunOutput, RunOutput, RunOutput]:
  """Runs the reference to the end; runs, kills and reruns the interrupted one.

  The two argvs must describe the same run in different workdirs. Returns
  (reference, killed, resumed).
  """
  # The reference runs alongside the interrupted pair: they share nothing.
  result: dict[str, Any] = {}

  def run_reference():
    try:
      result["reference"] = run(argv_reference, timeout_s=timeout_s)
    except BaseException as e:  # noqa: BLE001 -- re-raised in the caller's thread.
      result["error"] = e

  thread = threading.Thread(target=run_reference)
  thread.start()
  try:
    killed = run(argv_interrupted, kill_after_step=kill_after_step, timeout_s=timeout_s)
    resumed = run(argv_interrupted, timeout_s=timeout_s)
  finally:
    thread.join()
  if "error" in result:
    raise result["error"]
  return result["reference"], killed, resumed
