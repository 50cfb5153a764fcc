"""Soak: thousands of valid, failing and hostile jobs, and nothing grows.

Set EVEJAX_SANDBOX_SOAK=<jobs> for a longer run (default 2000).
"""

import itertools
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl.testing import absltest
import pytest
import numpy as np
import psutil

from evejax.sandbox import EveJob, SandboxConfig, SandboxPool

pytestmark = pytest.mark.slow   # the sandbox soak

N_JOBS = int(os.environ.get("EVEJAX_SANDBOX_SOAK", "2000"))

TAIL = """

def edit_image(img, k):
    return img.rotate(30 * k + {salt})


args_list = [{{"k": 0}}, {{"k": 1}}, {{"k": 2}}, {{"k": 3}}]
"""

# (program head, expected reason). Heads are cheap so the soak is about
# process churn, not about compute.
MIX = [
    ("", "ok"),
    ("print('hello ' * 1000)", "ok"),
    ("import threading, time\nthreading.Thread(target=time.sleep, args=(60,))"
     ".start()", "ok"),
    ("import os\nfor i in range(20):\n    os.close(os.open(f'f{i}', "
     "os.O_CREAT | os.O_WRONLY))", "ok"),
    ("raise KeyError('nope')", "exception"),
    ("x = bytearray(64 * 2**30)", "memory"),
    ("import os\nos.fork()", "forbidden"),
    ("import socket\nsocket.socket()", "forbidden"),
    ("import os\nos._exit(7)", "crashed"),
    ("import ctypes\nctypes.string_at(0)", "crashed"),
    ("import os\nos.write(3, b'\\x00\\x00\\x00\\x02{}')\nos._exit(0)",
     "invalid_output"),
    ("import sys\nsys.stdout.write('y' * 2**20)", "ok"),
]


def snapshot(pool):
  me = psutil.Process()
  stats = pool.stats()
  return {
      "parent_fds": me.num_fds(),
      "parent_threads": me.num_threads(),
      "parent_rss": me.memory_info().rss,
      "zygotes": [(s["fds"], s["children"], s["job_dirs"]) for s in stats],
      "zygote_rss_kb": [s["rss_kb"] for s in stats],
      "descendants": [len(psutil.Process(s["launcher_pid"]).children(
          recursive=True)) for s in stats],
      "host_tmp": [len(os.listdir(s["host_tmp"])) for s in stats],
      # The pool's temp root is private to this test (see test_soak), so
      # whatever other processes do in /tmp cannot show up here.
      "tmp_entries": sorted(os.listdir(tempfile.gettempdir())),
  }


class SoakTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    # Everything the pool creates through `tempfile` lands in a directory of
    # its own: concurrent pools elsewhere on the machine cannot disturb the
    # listing, and after close it must be empty again. 0711 like /tmp, so
    # that jobs can still reach their directories where there is no private
    # root.
    private = tempfile.mkdtemp(prefix="evejax-soak-")
    os.chmod(private, 0o711)
    saved = tempfile.tempdir
    tempfile.tempdir = private
    self.addCleanup(shutil.rmtree, private, ignore_errors=True)
    self.addCleanup(setattr, tempfile, "tempdir", saved)
    self.private_tmp = private

  def test_soak(self):
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
    salts = itertools.count()
    jobs = [(EveJob(head + TAIL.format(salt=next(salts) % 7), image), want)
            for head, want in itertools.islice(itertools.cycle(MIX), N_JOBS)]
    reasons = []

    def run(batch):
      # Keep only what is checked, so that memory measures the sandbox and
      # not the retained pixels of finished results.
      for res in pool.map([j for j, _ in batch]):
        reasons.append((res.reason, res.detail[:200]))

    with SandboxPool(SandboxConfig(workers=2, timeout_s=10)) as pool:
      warm = len(MIX) * 10
      run(jobs[:warm])
      before = snapshot(pool)
      for start in range(warm, len(jobs), 240):
        run(jobs[start:start + 240])
      after = snapshot(pool)

    self.assertLen(reasons, len(jobs))
    wrong = [(i, want, got, detail)
             for i, ((_, want), (got, detail)) in enumerate(zip(jobs, reasons))
             if got != want]
    self.assertEqual(wrong[:5], [])
    for _, children, job_dirs in before["zygotes"]:
      self.assertEqual((children, job_dirs), (1, 1))  # the spare only
    self.assertEqual(after["zygotes"], before["zygotes"])
    self.assertEqual(after["descendants"], [2, 2])
    self.assertEqual(after["host_tmp"], [0, 0])
    self.assertEqual(after["parent_fds"], before["parent_fds"])
    self.assertEqual(after["parent_threads"], before["parent_threads"])
    self.assertEqual(after["tmp_entries"], before["tmp_entries"])
    self.assertLen(before["tmp_entries"], 2)  # one temp root per worker
    self.assertEqual(os.listdir(self.private_tmp), [])  # all gone at close
    for b, a in zip(before["zygote_rss_kb"], after["zygote_rss_kb"]):
      self.assertLess(a - b, 2048)  # KiB
    self.assertLess(after["parent_rss"] - before["parent_rss"], 32 << 20)


if __name__ == "__main__":
  absltest.main()
