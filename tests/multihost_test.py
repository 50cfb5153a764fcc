"""Several processes, one program: 2 processes against 1, for every recipe (the
toy, EVE, MM-Zero, EvoLMM).

Each run is `launch/local.sh` starting `python -m evejax.main` on the recipes
of tests/multihost_recipes.py, the processes joined by gloo CPU collectives as
the hosts of a pod would be, each process pinned to its own core by the
launcher (see launch/local.sh: XLA's CPU runtime, jax 0.10, can otherwise start
a program's independent collectives in a different order on each process).
The toy runs 2 processes x 4 devices against 1 x 8. The recipes run 2 x 1
against 1 x 1: with several CPU devices in a process, XLA's CPU runtime (jax
0.10.2) can stall the policy's scoring program, whose scanned layers gather
their weights inside a loop while collectives outside it run concurrently
(seen both with 1 process x 8 devices and 2 x 4: devices wait in two different
collectives until the rendezvous times out). What must hold (README, "Running
on a pod"): the same rewards, data and losses on either layout; host state
byte-identical across processes; checkpoints that a run of the other layout
resumes; a run killed mid-phase that resumes to the same metrics; resident
memory flat step over step.

Opt-in (EVEJAX_MULTIHOST_TESTS=1, about 15 minutes on 2 cores): every case
starts several multi-minute runs, more than the suite's time budget allows;
the launchers' commands are checked in launch_test.py on every run.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl.testing import absltest

from evejax import observe

import resume_util

ROOT = resume_util.REPO_ROOT
TIMEOUT_S = 900
ENABLED = os.environ.get("EVEJAX_MULTIHOST_TESTS") == "1"
SKIP_REASON = ("multi-process runs take minutes each (module docstring); "
               "EVEJAX_MULTIHOST_TESTS=1 runs them")


def _launch(config: str, workdir: str, processes: int, *overrides: str, devices: int = 1,
            kill_when=None) -> subprocess.Popen | None:
  """Runs launch/local.sh with `devices` CPU devices per process to the end (or SIGKILLs
  every process once `kill_when(records)`)."""
  cmd = ["bash", os.path.join(ROOT, "launch", "local.sh"), "--processes", str(processes),
         "--cpu_devices", str(devices), config, workdir, *overrides]
  env = resume_util.subprocess_env(devices)
  log = open(os.path.join(tempfile.mkdtemp(), "launch.log"), "w+")
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                          start_new_session=True)
  start = time.monotonic()
  try:
    while proc.poll() is None:
      if time.monotonic() - start > TIMEOUT_S:
        raise AssertionError(f"{' '.join(cmd)} ran past {TIMEOUT_S}s")
      if kill_when is not None and kill_when(_records(workdir)):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None
      time.sleep(0.5)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  if proc.returncode != 0:
    log.seek(0)
    raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{log.read()[-6000:]}")
  return proc


def _records(workdir):
  return observe.read_jsonl(os.path.join(workdir, "metrics.jsonl"))


def _series(records, key):
  return {r["step"]: r[key] for r in records if key in r}


def _host_states(workdir, processes):
  out = []
  for i in range(processes):
    with open(os.path.join(workdir, f"host_state.p{i}.json")) as f:
      out.append(f.read())
  return out


def _assert_host_state_alike(test, one, two):
  """The 2-process run's processes hold the same bytes, and the 1-process run's state."""
  states = _host_states(two, 2)
  test.assertEqual(states[0], states[1])
  test.assertEqual(json.loads(states[0]), json.loads(_host_states(one, 1)[0]))


def _assert_same_metrics(test, a, b, keys, *, rtol, atol, exact=()):
  for key in keys:
    x, y = _series(a, key), _series(b, key)
    test.assertTrue(x, key)
    test.assertEqual(sorted(x), sorted(y), key)
    if key in exact:
      test.assertEqual([x[s] for s in sorted(x)], [y[s] for s in sorted(y)], key)
    else:
      np.testing.assert_allclose([y[s] for s in sorted(y)], [x[s] for s in sorted(x)],
                                 rtol=rtol, atol=atol, err_msg=key)


@absltest.skipUnless(ENABLED, SKIP_REASON)
class ToyTest(absltest.TestCase):
  """The two-role toy recipe on 2 processes x 4 devices against 1 x 8: layouts agree,
  each layout resumes the other's checkpoint, memory is flat."""

  def test_two_processes_match_one_and_each_resumes_the_other(self):
    root = tempfile.mkdtemp()
    one, two = os.path.join(root, "one"), os.path.join(root, "two")
    _launch("tests/multihost_recipes.py:toy", one, 1, devices=8)
    _launch("tests/multihost_recipes.py:toy", two, 2, devices=4)
    a, b = _records(one), _records(two)
    keys = ("writer/reward/mean", "reader/reward/mean", "writer/adv/reward_std",
            "writer/train/loss", "writer/train/kl", "reader/train/loss", "reader/train/kl",
            "writer/frozen_reader_sum")
    _assert_same_metrics(self, a, b, keys, rtol=1e-4, atol=1e-6,
                         exact=("writer/reward/mean", "reader/reward/mean"))
    _assert_host_state_alike(self, one, two)

    # Host memory: flat over the reader's steps, once their programs are compiled.
    rss = _series(b, "host/rss_mib_max")
    steps = sorted(rss)
    self.assertLess(rss[steps[-1]] - rss[steps[len(steps) // 2]], 100.0, rss)

    # Each run's checkpoint after the writer's stage, resumed on the other layout.
    for source, records, processes, devices in ((two, b, 1, 8), (one, a, 2, 4)):
      cross = os.path.join(root, f"cross_to_{processes}")
      os.makedirs(os.path.join(cross, "checkpoints"))
      cut = max(int(n) for n in os.listdir(os.path.join(source, "checkpoints"))
                if n.isdigit() and int(n) <= 5)
      shutil.copytree(os.path.join(source, "checkpoints", str(cut)),
                      os.path.join(cross, "checkpoints", str(cut)))
      shutil.copy(os.path.join(source, "metrics.jsonl"), cross)
      _launch("tests/multihost_recipes.py:toy", cross, processes, devices=devices)
      _assert_same_metrics(self, records, _records(cross),
                           ("reader/train/loss", "reader/train/kl", "reader/reward/mean"),
                           rtol=1e-4, atol=1e-6, exact=("reader/reward/mean",))


@absltest.skipUnless(ENABLED, SKIP_REASON)
class EveTest(absltest.TestCase):
  """EVE, shortened: 2 processes killed mid-phase and resumed, against 1 uninterrupted."""

  def test_killed_two_process_run_resumes_to_the_one_process_run(self):
    root = tempfile.mkdtemp()
    one, two = os.path.join(root, "one"), os.path.join(root, "two")
    _launch("tests/multihost_recipes.py:eve", one, 1)
    a = _records(one)

    # Kill both processes once the second Challenger step is logged (the third is in flight).
    def mid_challenger_phase(records):
      return len(_series(records, "challenger/reward/mean")) >= 2
    _launch("tests/multihost_recipes.py:eve", two, 2, kill_when=mid_challenger_phase)
    self.assertFalse(os.path.exists(os.path.join(two, "summary.json")))
    _launch("tests/multihost_recipes.py:eve", two, 2)
    b = _records(two)

    _assert_same_metrics(
        self, a, b,
        ("challenger/reward/mean", "challenger/valid_rate", "challenger/solver_pass_rate",
         "challenger/reward/diversity_penalty", "challenger/admitted", "challenger/queue/size",
         "challenger/adv/reward_std", "challenger/train/loss", "solver_data/selected",
         "solver/reward/mean", "solver/train/loss", "eval/heldout_accuracy",
         "warmstart/challenger/loss", "warmstart/solver/loss"),
        rtol=1e-4, atol=1e-6,
        exact=("challenger/reward/mean", "challenger/valid_rate", "challenger/admitted",
               "challenger/queue/size", "solver_data/selected", "solver/reward/mean",
               "eval/heldout_accuracy"))
    for key in ("challenger/train/loss", "solver/train/loss"):   # each step once
      steps = [r["step"] for r in b if key in r]
      self.assertEqual(steps, sorted(set(steps)), key)
    # The queue, the Solver's data and the cursor, as the one-process run left them.
    _assert_host_state_alike(self, one, two)


def _two_processes_match_one(test, config, keys, exact):
  """Runs `config` on 1 and 2 processes: the same metrics, host state everywhere alike."""
  root = tempfile.mkdtemp()
  one, two = os.path.join(root, "one"), os.path.join(root, "two")
  _launch(config, one, 1)
  _launch(config, two, 2)
  _assert_same_metrics(test, _records(one), _records(two), keys, rtol=1e-4, atol=1e-6,
                       exact=exact)
  _assert_host_state_alike(test, one, two)


@absltest.skipUnless(ENABLED, SKIP_REASON)
class MmZeroTest(absltest.TestCase):
  """MM-Zero, shortened, scripted: rewards, Coder and Solver data, curves alike."""

  def test_two_processes_match_one(self):
    _two_processes_match_one(
        self, "tests/multihost_recipes.py:mmzero",
        ("proposer/reward/mean", "proposer/parse_rate", "proposer/render_success",
         "proposer/reward/diversity_penalty", "proposer/adv/reward_std", "proposer/train/loss",
         "coder_data/kept", "coder/reward/mean", "coder/reward/rendered", "coder/train/loss",
         "solver_data/kept", "solver/reward/mean", "solver/train/loss",
         "eval/coder_render_success", "eval/solver_accuracy", "coevolution/render_success",
         "warmstart/proposer/loss", "warmstart/coder/loss", "warmstart/solver/loss"),
        exact=("proposer/reward/mean", "proposer/parse_rate", "proposer/render_success",
               "coder_data/kept", "coder/reward/mean", "solver_data/kept",
               "solver/reward/mean", "eval/coder_render_success"))


@absltest.skipUnless(ENABLED, SKIP_REASON)
class EvoLmmTest(absltest.TestCase):
  """EvoLMM, shortened, scripted: both updates, on either layout alike."""

  KEYS = ("evolmm/solver/reward/mean", "evolmm/proposer/reward/mean", "evolmm/consistency",
          "evolmm/solver/train/loss", "evolmm/proposer/train/loss", "eval/heldout_accuracy",
          "warmstart/base/loss")
  EXACT = ("evolmm/solver/reward/mean", "evolmm/proposer/reward/mean", "evolmm/consistency",
           "eval/heldout_accuracy")

  def test_grpo_update_two_processes_match_one(self):
    _two_processes_match_one(self, "tests/multihost_recipes.py:evolmm", self.KEYS, self.EXACT)

  def test_sequential_update_two_processes_match_one(self):
    _two_processes_match_one(self, "tests/multihost_recipes.py:evolmm_sequential",
                             self.KEYS, self.EXACT)


if __name__ == "__main__":
  absltest.main()


@absltest.skipUnless(ENABLED, SKIP_REASON)
class SlotSamplingTest(absltest.TestCase):
  """Slot decoding on 2 processes: each refills its own slots, in lockstep, with the
  static path's rows (tests/multihost_sampling.py)."""

  def test_two_processes_sample_the_static_rows(self):
    with socket.socket() as sock:   # a free port for the coordinator
      sock.bind(("127.0.0.1", 0))
      port = str(sock.getsockname()[1])
    env = resume_util.subprocess_env(1)
    script = os.path.join(ROOT, "tests", "multihost_sampling.py")
    procs = [subprocess.Popen([sys.executable, script, str(i), port], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    for i, (p, out) in enumerate(zip(procs, outs)):
      self.assertEqual(p.returncode, 0, out[-3000:])
      self.assertIn(f"OK {i}", out)
