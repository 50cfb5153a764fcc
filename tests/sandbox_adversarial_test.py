"""The adversarial corpus: every hostile program is contained and classified.

Each file in tests/sandbox_corpus/ states the reasons it may end with
(`# expect: a|b`, `<!-- expect: ... -->` for SVG) and its contract (`# kind:
plot`; EVE otherwise). The test plants a root-only secret file, a secret
environment variable and a TCP listener on the host, runs the whole corpus
through one pool, and then checks that: each result has an expected reason;
no secret appears in anything a job returned; no canary file was written on
the host; nobody connected to the listener; the pool still runs a valid job
without having restarted a worker; and no process, descriptor or temporary
file was left behind.
"""

import glob
import os
import re
import secrets
import socket
import tempfile
import threading

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl.testing import absltest
import numpy as np
import psutil

from evejax.sandbox import EveJob, PlotJob, SandboxConfig, SandboxPool, SvgJob

CORPUS = os.path.join(os.path.dirname(__file__), "sandbox_corpus")
SECRET_PATH = "/tmp/evejax_sandbox_secret.txt"
SECRET_ENV = "EVEJAX_SANDBOX_TEST_SECRET"
CANARIES = ("/tmp/evejax_sandbox_canary_write", "/tmp/evejax_sandbox_canary_shell",
            "/tmp/evejax_sandbox_canary_system", "/tmp/evejax_sandbox_canary_host",
            "/work/main/evejax_sandbox_canary", "/etc/evejax_sandbox_canary",
            "/usr/evejax_sandbox_canary", "/evejax_sandbox_canary")

VALID = """
from PIL import ImageDraw


def edit_image(img, x):
    ImageDraw.Draw(img).rectangle([x, 4, x + 20, 30], fill=(255, 0, 0))
    return img


args_list = [{"x": 2}, {"x": 20}, {"x": 40}, {"x": 60}]
"""


def load_corpus():
  items = []
  for path in sorted(glob.glob(os.path.join(CORPUS, "*"))):
    raw = open(path, "rb").read()
    m = re.search(rb"expect: ([a-z_|]+)", raw)
    assert m, f"{path} declares no expectation"
    expect = set(m.group(1).decode().split("|"))
    kind = "svg" if path.endswith(".svg") else (
        "plot" if b"# kind: plot" in raw else "eve")
    items.append((os.path.basename(path), kind, raw, expect))
  return items


def texts(result):
  return [result.detail, result.stdout, result.stderr,
          repr(result.to_json())]


class _Listener:
  """A TCP server on the host loopback that records any connection."""

  def __init__(self):
    self.sock = socket.socket()
    self.sock.bind(("127.0.0.1", 0))
    self.sock.listen(8)
    self.sock.settimeout(0.2)
    self.port = self.sock.getsockname()[1]
    self.connections = 0
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def _run(self):
    while not self._stop.is_set():
      try:
        conn, _ = self.sock.accept()
        self.connections += 1
        conn.close()
      except OSError:
        pass

  def close(self):
    self._stop.set()
    self._thread.join()
    self.sock.close()


class AdversarialCorpusTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.token = secrets.token_hex(16)
    for path in CANARIES:
      if os.path.exists(path):
        os.remove(path)
    fd = os.open(SECRET_PATH, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, f"secret={cls.token}\n".encode())
    os.close(fd)
    os.environ[SECRET_ENV] = cls.token
    cls.listener = _Listener()
    cls.tmp_before = set(os.listdir(tempfile.gettempdir()))
    cls.fds_before = psutil.Process().num_fds()
    cls.pool = SandboxPool(SandboxConfig(
        workers=2, timeout_s=3.0, svg_timeout_s=3.0, memory_mb=384))
    rng = np.random.default_rng(0)
    cls.image = rng.integers(0, 255, (72, 96, 3), dtype=np.uint8)
    cls.corpus = load_corpus()
    jobs = []
    for _, kind, raw, _ in cls.corpus:
      if kind == "svg":
        jobs.append(SvgJob(raw.decode()))
      elif kind == "plot":
        jobs.append(PlotJob(raw))
      else:
        raw = raw.replace(b"__PORT__", str(cls.listener.port).encode())
        jobs.append(EveJob(raw, cls.image))
    cls.results = cls.pool.map(jobs)

  @classmethod
  def tearDownClass(cls):
    cls.pool.close()
    cls.listener.close()
    os.remove(SECRET_PATH)
    del os.environ[SECRET_ENV]
    super().tearDownClass()

  def test_corpus_is_large_enough(self):
    self.assertGreaterEqual(len(self.corpus), 30)

  def test_every_program_is_contained_and_classified(self):
    for (name, _, _, expect), result in zip(self.corpus, self.results):
      with self.subTest(program=name):
        self.assertIn(result.reason, expect,
                      f"{name}: {result.reason}: {result.detail[:500]}")
        self.assertEqual(result.ok, result.reason == "ok")

  def test_no_secret_leaks(self):
    for (name, _, _, _), result in zip(self.corpus, self.results):
      with self.subTest(program=name):
        for text in texts(result):
          self.assertNotIn(self.token, text)

  def test_reads_fail_where_they_should(self):
    by_name = {c[0]: r for c, r in zip(self.corpus, self.results)}
    # The job saw no inherited variable at all, not just not the secret.
    env = by_name["read_environment.py"].detail
    self.assertNotIn(SECRET_ENV, env)
    self.assertNotIn("PYTHONPATH", env)
    # Writing anywhere outside the job directory was refused.
    self.assertNotIn("WROTE", by_name["write_outside.py"].detail)

  def test_no_canary_written_on_host(self):
    for path in CANARIES:
      self.assertFalse(os.path.exists(path), path)

  def test_network_listener_untouched(self):
    self.assertEqual(self.listener.connections, 0)

  def test_output_capped(self):
    by_name = {c[0]: r for c, r in zip(self.corpus, self.results)}
    cap = self.pool.config.output_bytes
    for name, field in (("huge_stdout.py", "stdout"), ("huge_stderr.py", "stderr")):
      text = getattr(by_name[name], field)
      self.assertGreater(len(text), cap // 2)
      self.assertLess(len(text), cap + 200)
      self.assertIn("more bytes not kept", text)
    self.assertLess(len(by_name["huge_exception_message.py"].detail), 10_000)

  def test_pool_keeps_working_without_restarts(self):
    result = self.pool.map([EveJob(VALID, self.image)])[0]
    self.assertTrue(result.ok, result.detail)
    self.assertLen(result.images, 4)
    for stats in self.pool.stats():
      self.assertEqual(stats["restarts"], 0)

  def test_nothing_leaks(self):
    for stats in self.pool.stats():
      self.assertEqual(stats["children"], 1)  # the pre-forked spare only
      self.assertEqual(stats["job_dirs"], 1)  # the spare's empty directory
      launcher = psutil.Process(stats["launcher_pid"])
      # launcher -> zygote -> spare; nothing else anywhere below.
      self.assertLen(launcher.children(recursive=True), 2)
      self.assertEqual(os.listdir(stats["host_tmp"]), [])
    self.assertEqual(psutil.Process().num_fds(), self.fds_before + 2)
    # Other processes share /tmp; only names this sandbox could create count.
    new_tmp = set(os.listdir(tempfile.gettempdir())) - self.tmp_before
    self.assertEqual({n for n in new_tmp if n.startswith("evejax")
                      and not n.startswith("evejax-sandbox-")}, set())


if __name__ == "__main__":
  absltest.main()
