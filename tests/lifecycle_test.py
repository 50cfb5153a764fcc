"""Preemption, hangs, dying sandbox workers and a full disk, injected into a real run.

The unit tests drive `lifecycle.Preemption` and `lifecycle.Watchdog` alone.
The run tests (slow) drive `tests/lifecycle_recipes.py`'s shortened recipe,
which has every stage kind (warm start, evaluation, GRPO, sandbox), against
one uninterrupted reference run:

  * SIGTERM at a random moment of a random step of each stage kind, then a
    simulated jax preemption notice, each followed by a resume in the same
    workdir; a sandbox worker is SIGKILLed mid-job on the way. Each stop
    saves a checkpoint at its unit boundary; the finished run's metrics equal
    the reference's step for step.
  * the workdir's file system fills up mid-run: one message, the previous
    checkpoint intact; with room again the run resumes and matches.
  * as a job (`python -m evejax.main`, a subprocess): SIGTERM exits 0 with
    the command that resumes, and the resumed job matches; a stalled step
    and a step that holds the GIL are ended by the watchdog with every
    thread's stack, within its timeout.
"""
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from unittest import mock

import pytest
from absl.testing import absltest
from jax.experimental import multihost_utils

from evejax import lifecycle
from evejax.recipes import runner

import faults
import lifecycle_recipes
import recipe_testing as rt
import resume_util

STAGE_KINDS = ("copy", "eval", "learn", "render")
XLA_CACHE = os.environ.get("JAX_COMPILATION_CACHE_DIR", "")


class PreemptionTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    previous = signal.signal(signal.SIGTERM, lambda *_: None)   # a stray signal must not kill pytest
    self.addCleanup(signal.signal, signal.SIGTERM, previous)

  def test_a_signal_asks_to_stop_at_the_next_boundary_and_a_second_ctrl_c_stops_now(self):
    # What was there before (a background job starts with SIGINT ignored).
    before = signal.getsignal(signal.SIGINT)
    for sig in (signal.SIGTERM, signal.SIGINT):
      with self.subTest(sig.name):
        preemption = lifecycle.Preemption()
        preemption.install()
        try:
          self.assertIsNone(preemption.due(3))
          with self.assertLogs(level="WARNING") as logs:
            os.kill(os.getpid(), sig)
          self.assertIn("finishing the unit in flight", logs.output[0])
          self.assertEqual(preemption.due(4), sig.name)
          with self.assertRaises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        finally:
          preemption.uninstall()
    self.assertEqual(signal.getsignal(signal.SIGINT), before)

  def test_a_preemption_notice_from_jax_and_the_switch_that_turns_it_off(self):
    with mock.patch.object(multihost_utils, "reached_preemption_sync_point",
                           side_effect=lambda unit: unit == 7) as sync_point:
      preemption = lifecycle.Preemption()
      self.assertEqual([preemption.due(u) for u in (5, 6, 7)],
                       [None, None, "a preemption notice"])
      self.assertEqual([c.args[0] for c in sync_point.call_args_list], [5, 6, 7])
      off = lifecycle.Preemption(enabled=False)
      off.install()
      self.assertIsNone(off.due(7))
    self.assertEqual(lifecycle.from_config(None).watchdog.timeout_s, 3600.0)

  def test_every_process_stops_at_the_same_unit_and_jax_keeps_sigterm_where_it_runs(self):
    preemption = lifecycle.Preemption()
    with mock.patch.object(lifecycle.distributed, "is_multiprocess", return_value=True), \
         mock.patch.object(lifecycle.distributed, "allgather",
                           side_effect=lambda x: [None, x, "SIGTERM"]) as gather:
      self.assertEqual(preemption.due(4), "SIGTERM")   # another process was signalled
      self.assertEqual(gather.call_args.args, (None,))
    with mock.patch.object(lifecycle, "_jax_preemption_service", return_value=True):
      preemption.install()
      try:
        self.assertIsNot(signal.getsignal(signal.SIGTERM), preemption._on_signal)   # pylint: disable=protected-access
        self.assertEqual(signal.getsignal(signal.SIGINT), preemption._on_signal)   # pylint: disable=protected-access
      finally:
        preemption.uninstall()


class WatchdogTest(absltest.TestCase):

  def test_fires_naming_where_with_every_stack_and_the_exit_code(self):
    exits = []
    watchdog = lifecycle.Watchdog(0.3, exit_fn=exits.append)
    marker = threading.Thread(target=threading.Event().wait, name="a-busy-helper", daemon=True)
    marker.start()
    with self.assertLogs(level="ERROR") as logs:
      watchdog.start()
      watchdog.beat("learn/writer/iter1 step 2", units_done=7)
      deadline = time.monotonic() + 10
      while not exits and time.monotonic() < deadline:
        time.sleep(0.05)
    watchdog.stop()
    self.assertEqual(exits, [lifecycle.HANG_EXIT_CODE])
    report = logs.output[0]
    self.assertIn("no progress for 0.3 s in learn/writer/iter1 step 2", report)
    self.assertIn("last completed schedule unit: 7", report)
    self.assertIn("--- thread a-busy-helper", report)
    self.assertIn("--- thread MainThread", report)
    self.assertIn("test_fires_naming_where_with_every_stack_and_the_exit_code", report)

  def test_beats_keep_it_quiet_and_zero_turns_it_off(self):
    exits = []
    watchdog = lifecycle.Watchdog(0.5, exit_fn=exits.append).start()
    for i in range(8):
      time.sleep(0.15)
      watchdog.beat(f"step {i}", i)
    watchdog.stop()
    self.assertEqual(exits, [])
    self.assertFalse(lifecycle.Watchdog(0).start().enabled)


def _comparable(records):
  """The keys a resumed run must reproduce (not timings, memory or counts)."""
  return sorted({k for r in records for k in r
                 if k not in ("step", "time", "position")
                 and not k.startswith(("host/", "counts/")) and "time/" not in k})


@pytest.mark.slow
class StagedRunTest(absltest.TestCase):
  """Faults injected into lifecycle_recipes.Staged, against one uninterrupted run."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp(prefix="evejax_lifecycle_")
    reference = os.path.join(cls.root, "reference")
    cls.summary = runner.Runner(lifecycle_recipes.Staged, cls.config(), reference).run_schedule()
    cls.reference = rt.records(reference)
    cls.schedule = runner.Schedule(lifecycle_recipes.Staged.stages(cls.config()))

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  @staticmethod
  def config():
    return lifecycle_recipes.get_config()

  def setUp(self):
    super().setUp()
    previous = signal.signal(signal.SIGTERM, lambda *_: None)   # a late timer must not kill pytest
    self.addCleanup(signal.signal, signal.SIGTERM, previous)

  def assert_matches_reference(self, workdir):
    records = rt.records(workdir)
    keys = _comparable(self.reference)
    self.assertEqual(_comparable(records), keys)
    rt.assert_same_by_step(self, self.reference, records, keys)
    for key in keys:   # every record once: nothing the stopped runs wrote after a checkpoint
      steps = [r["step"] for r in records if key in r]
      self.assertEqual(len(steps), len([r for r in self.reference if key in r]), key)

  def _sigterm_during(self, workdir, config, point, delay):
    """Runs until SIGTERM, sent `delay` s into the step at `point` (stage index, step)."""
    r = runner.Runner(lifecycle_recipes.Staged, config, workdir)
    run_step, timers = r.recipe.step, []

    def step(stage, k):
      here = (self.schedule.stages.index(stage), k)
      if not timers and here >= point:
        timers.append(threading.Timer(delay, os.kill, (os.getpid(), signal.SIGTERM)))
        timers[0].start()
      return run_step(stage, k)

    r.recipe.step = step
    with self.assertRaises(lifecycle.Preempted) as caught:
      r.run_schedule()
    timers[0].join()
    return caught.exception

  def test_sigterm_in_every_stage_kind_and_a_preemption_notice_then_resume_matches(self):
    rng = random.Random(int(os.environ.get("EVEJAX_FAULT_SEED", "29")))
    stages = self.schedule.stages
    points = []
    for kind in STAGE_KINDS:
      index = rng.choice([i for i, st in enumerate(stages) if st.kind == kind])
      points.append((index, rng.randrange(stages[index].steps)))
    points.sort()
    workdir = os.path.join(self.root, "sigterm")
    config = self.config()
    config.toy.kill_worker_at = "render/iter1:1"   # a worker dies mid-job on the way
    stops = []
    for point in points:
      delay = rng.uniform(0.0, 0.3)
      stop = self._sigterm_during(workdir, config, point, delay)
      stops.append(stop.unit)
      self.assertEqual(stop.reason, "SIGTERM")
      self.assertGreater(stop.unit, self.schedule.units_done(point), (point, delay))
      self.assertTrue(os.path.exists(os.path.join(workdir, "checkpoints", str(stop.unit),
                                                  "commit_success.txt")))
    self.assertEqual(stops, sorted(set(stops)))
    # A preemption notice from jax's coordination service, through the same path.
    notice = stops[-1] + 1
    with mock.patch.object(multihost_utils, "reached_preemption_sync_point",
                           side_effect=lambda unit: unit == notice):
      if notice <= self.schedule.units_done((len(stages), 0)):
        with self.assertRaises(lifecycle.Preempted) as caught:
          runner.Runner(lifecycle_recipes.Staged, config, workdir).run_schedule()
        self.assertEqual((caught.exception.reason, caught.exception.unit),
                         ("a preemption notice", notice))
    summary = runner.Runner(lifecycle_recipes.Staged, config, workdir).run_schedule()
    self.assert_matches_reference(workdir)
    self.assertEqual({k: summary[k] for k in ("init", "iter1", "prompts_seen")},
                     {k: self.summary[k] for k in ("init", "iter1", "prompts_seen")})
    self.assertEqual(summary["counts"]["sandbox/worker_deaths"], 1)

  def test_a_full_disk_mid_run_is_one_message_and_the_run_resumes_with_room(self):
    mount = faults.tmpfs(self, 160 * 1024)
    workdir = os.path.join(mount, "run")
    config = self.config()
    config.checkpoint.keep = 2
    r = runner.Runner(lifecycle_recipes.Staged, config, workdir)
    run_step, filler = r.recipe.step, []

    def step(stage, k):
      if stage.name == "learn/writer/iter1" and k == 1 and not filler:
        filler.append(faults.fill(mount, 1 << 20))   # the next checkpoint cannot fit
      return run_step(stage, k)

    r.recipe.step = step
    with mock.patch.object(runner, "Runner", return_value=r):
      with self.assertRaises(SystemExit) as caught:
        runner.run_recipe(lifecycle_recipes.Staged, config, workdir)
    message = str(caught.exception)
    unit = self.schedule.units_done((2, 2))
    self.assertRegex(message, rf"^evejax: cannot write checkpoint step {unit} to "
                              rf"{os.path.join(workdir, 'checkpoints')}: the file system is full")
    self.assertIn(f"The previous checkpoint (step {unit - 1}) is intact", message)
    self.assertNotIn("Traceback", message)
    os.remove(filler[0])
    runner.Runner(lifecycle_recipes.Staged, config, workdir).run_schedule()
    self.assert_matches_reference(workdir)

  @staticmethod
  def _job(workdir, *overrides):
    """`python -m evejax.main` running the staged recipe in `workdir`."""
    return [sys.executable, "-m", "evejax.main", "--config", "tests/lifecycle_recipes.py:staged",
            "--workdir", workdir, f"--compilation_cache={XLA_CACHE}", *overrides]

  def _start(self, argv):
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=resume_util.REPO_ROOT, env=resume_util.subprocess_env())

  def _run_until(self, proc, marker, timeout=300):
    """Reads the job's stdout until `marker`; returns when it printed it."""
    deadline = threading.Timer(timeout, proc.kill)
    deadline.start()
    try:
      for line in proc.stdout:
        if line.startswith(marker):
          return time.monotonic()
    finally:
      deadline.cancel()
    raise AssertionError(f"the job ended before {marker!r}: {proc.stderr.read()[-3000:]}")

  def test_as_a_job_sigterm_exits_0_saying_how_to_resume_and_the_resumed_job_matches(self):
    workdir = os.path.join(self.root, "job")
    proc = self._start(self._job(workdir))
    self._run_until(proc, "STEP learn/reader/iter1 0")
    time.sleep(random.Random(7).uniform(0.0, 0.5))
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    self.assertEqual(proc.returncode, 0, err[-3000:])
    self.assertRegex(err, r"evejax: stopped by SIGTERM after learn/reader/iter1 step \d \(schedule "
                          r"unit \d+\); checkpoint \d+ is saved in .*checkpoints\. Run the same "
                          r"command again to resume from it\.\n  .*evejax\.main .*--workdir")
    done = subprocess.run(self._job(workdir), capture_output=True, text=True, cwd=resume_util.REPO_ROOT,
                          env=resume_util.subprocess_env(), timeout=600)
    self.assertEqual(done.returncode, 0, done.stderr[-3000:])
    self.assertIn("Resumed from checkpoint", done.stderr)
    self.assert_matches_reference(workdir)

  def test_as_a_job_the_watchdog_ends_a_stalled_step_and_one_that_holds_the_gil(self):
    for hang, code, expected in (
        ("sleep", lifecycle.HANG_EXIT_CODE, "no progress for 4 s in copy/writer/iter0 step 0"),
        ("gil", 1, "Timeout (0:00:09)!")):
      with self.subTest(hang):
        workdir = os.path.join(self.root, f"hang_{hang}")
        proc = self._start(self._job(workdir, "--config.checkpoint.watchdog_s=4",
                                     f"--config.toy.hang={hang}",
                                     "--config.toy.hang_at=copy/writer/iter0:0"))
        hung_at = self._run_until(proc, "STEP copy/writer/iter0 0")
        _, err = proc.communicate(timeout=120)
        waited = time.monotonic() - hung_at
        self.assertEqual(proc.returncode, code, err[-3000:])
        self.assertIn(expected, err)
        self.assertIn("lifecycle_recipes.py", err)   # the stack of the stalled step
        self.assertIn("in hang", err)
        self.assertLess(waited, 9 + 20)   # the timeout (and the backstop's margin), not forever
        if hang == "sleep":
          self.assertIn("last completed schedule unit: 0", err)
          self.assertIn("--- thread evejax-watchdog", err)


if __name__ == "__main__":
  absltest.main()
