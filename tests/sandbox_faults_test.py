"""Sandbox workers that die from outside: retried, counted, or one clear stop.

A worker is SIGKILLed from outside the pool while its job runs (as the OOM
killer or an operator would): the pool replaces it and runs the job again
(the answer is the one the first try would have given); a second death
classifies the job `crashed`; a pool that cannot replace its worker (fork
refused) raises `SandboxBroken` for that job and every later one. Through the
recipe runner, the step completes and the death is counted; a broken pool
stops the run with one message.
"""
import errno
import os
import threading
import time
from unittest import mock

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402
from absl.testing import absltest  # noqa: E402
import psutil  # noqa: E402

from evejax.sandbox import EveJob, SandboxConfig, SandboxPool  # noqa: E402
from evejax.sandbox import pool as pool_lib  # noqa: E402

from sandbox_pool_test import colored, source_image  # noqa: E402

# No preloads: workers start in about a second, so replacements are quick.
FAST = dict(workers=1, grace_s=2.0, preload=())


def zygote_of(pool, old: int | None = None, timeout: float = 60.0) -> psutil.Process:
  """The pool's (first) worker zygote, once it differs from `old` and has forked its spare."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    proc = pool._slots[0].proc   # pylint: disable=protected-access
    try:
      kids = psutil.Process(proc.pid).children() if proc is not None else []
      if kids and kids[0].pid != old and kids[0].children():
        return kids[0]
    except psutil.NoSuchProcess:
      pass
    time.sleep(0.05)
  raise AssertionError("no worker came up")


def kill_during_jobs(pool, times: int, into_job_s: float = 0.7) -> threading.Thread:
  """Kills the worker `times` times, each `into_job_s` seconds into a job."""
  def killer():
    old = None
    for _ in range(times):
      zygote = zygote_of(pool, old)
      time.sleep(into_job_s)
      old = zygote.pid
      zygote.kill()
  thread = threading.Thread(target=killer, daemon=True)
  thread.start()
  return thread


class WorkerKilledFromOutsideTest(absltest.TestCase):

  @pytest.mark.slow   # about 6 s
  def test_the_job_is_retried_on_a_new_worker_and_the_death_counted(self):
    src = source_image()
    with SandboxPool(SandboxConfig(**FAST)) as pool:
      job = EveJob(colored(1, delay=0.5), src)   # 2 s
      expected = pool.map([job])[0]
      killer = kill_during_jobs(pool, 1)
      result = pool.submit(job).result(timeout=120)
      killer.join()
      self.assertTrue(result.ok, result.detail)
      self.assertEqual(result.stats["worker_deaths"], 1)
      self.assertEqual([im.tolist() for im in result.images],
                       [im.tolist() for im in expected.images])
      self.assertEqual(pool.worker_deaths, 1)
      self.assertTrue(pool.map([EveJob(colored(2), src)])[0].ok)   # the pool goes on

  def test_a_second_death_classifies_the_job_crashed(self):
    with SandboxPool(SandboxConfig(**FAST)) as pool:
      killer = kill_during_jobs(pool, 2)
      result = pool.submit(EveJob(colored(1, delay=0.5), source_image())).result(timeout=120)
      killer.join()
      self.assertEqual(result.reason, "crashed")
      self.assertIn("died twice", result.detail)
      self.assertEqual(result.stats["worker_deaths"], 2)
      self.assertTrue(pool.map([EveJob(colored(2), source_image())])[0].ok)

  def test_a_worker_that_cannot_be_replaced_breaks_the_pool_with_one_message(self):
    refused = OSError(errno.EAGAIN, "Resource temporarily unavailable")
    with SandboxPool(SandboxConfig(**FAST)) as pool, \
         mock.patch.object(pool_lib, "_RESTART_BACKOFF_S", (0.0, 0.0)):
      killer = kill_during_jobs(pool, 1)
      future = pool.submit(EveJob(colored(1, delay=0.5), source_image()))
      with mock.patch.object(pool_lib._Slot, "launch", side_effect=refused):   # fork fails
        with self.assertRaises(pool_lib.SandboxBroken) as caught:
          future.result(timeout=120)
      killer.join()
      message = str(caught.exception)
      self.assertIn("could not be replaced after 2 attempts", message)
      self.assertIn("Resource temporarily unavailable", message)
      self.assertIn("config.sandbox.workers", message)
      with self.assertRaises(pool_lib.SandboxBroken):
        pool.submit(EveJob(colored(2), source_image()))

  def test_a_pool_that_cannot_start_says_so(self):
    refused = OSError(errno.EAGAIN, "Resource temporarily unavailable")
    with mock.patch.object(pool_lib._Slot, "launch", side_effect=refused):
      with self.assertRaisesRegex(pool_lib.SandboxBroken, "cannot start sandbox worker 0"):
        SandboxPool(SandboxConfig(**FAST))


if __name__ == "__main__":
  absltest.main()
