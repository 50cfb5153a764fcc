"""Defence in depth: each layer still contains attacks when another is off.

Layers are switched off through SandboxConfig (as if the machine could not
provide them) and the same attacks are run: the remaining layers must hold,
the pool must say which layers are missing, and nothing may be left behind.
"""

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl.testing import absltest
import numpy as np
import psutil

from evejax.sandbox import EveJob, SandboxConfig, SandboxPool

TAIL = """

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
"""
IMAGE = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)

LEFTOVER = """import os
import time
if os.fork() == 0:
    os.setsid()  # leaves the job's process group on purpose
    if os.fork() == 0:
        time.sleep(1000)
    os._exit(0)
""" + TAIL


def run(pool, source):
  return pool.map([EveJob(source + TAIL if "edit_image" not in source
                          else source, IMAGE)])[0]


def descendants(pool):
  return [len(psutil.Process(s["launcher_pid"]).children(recursive=True))
          for s in pool.stats()]


class _Listener:

  def __init__(self):
    self.sock = socket.socket()
    self.sock.bind(("127.0.0.1", 0))
    self.sock.listen(4)
    self.sock.settimeout(0.2)
    self.port = self.sock.getsockname()[1]
    self.hits = 0
    self.stop = threading.Event()
    self.thread = threading.Thread(target=self._run, daemon=True)
    self.thread.start()

  def _run(self):
    while not self.stop.is_set():
      try:
        self.sock.accept()[0].close()
        self.hits += 1
      except OSError:
        pass

  def close(self):
    self.stop.set()
    self.thread.join()
    self.sock.close()


class WithoutSeccompTest(absltest.TestCase):
  """Namespaces, private root, uid and rlimits alone."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.pool = SandboxPool(SandboxConfig(workers=1, seccomp=False,
                                         timeout_s=4, memory_mb=384))
    cls.listener = _Listener()

  @classmethod
  def tearDownClass(cls):
    cls.pool.close()
    cls.listener.close()
    super().tearDownClass()

  def test_layers_reported(self):
    self.assertFalse(self.pool.layers.seccomp)
    self.assertTrue(self.pool.layers.namespaces)

  def test_network_namespace_has_no_route(self):
    res = run(self.pool, "import socket\nsocket.create_connection(("
              f"'127.0.0.1', {self.listener.port}), timeout=1)")
    self.assertEqual(res.reason, "exception")
    self.assertRegex(res.detail, "(unreachable|refused)")
    self.assertEqual(self.listener.hits, 0)

  def test_fork_bomb_hits_the_process_limit_and_is_cleaned_up(self):
    res = run(self.pool, "import os\nwhile True:\n    os.fork()")
    self.assertFalse(res.ok)
    self.assertEqual(descendants(self.pool), [2])
    self.assertTrue(run(self.pool, "x = 1").ok)

  def test_escaped_grandchild_is_killed(self):
    res = run(self.pool, LEFTOVER)
    self.assertTrue(res.ok, res.detail)
    self.assertEqual(descendants(self.pool), [2])
    self.assertEqual(self.pool.stats()[0]["children"], 1)


class WithoutNamespacesTest(absltest.TestCase):
  """Dedicated uid, seccomp and rlimits on the host filesystem."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.token = secrets.token_hex(8)
    cls.secret = f"/tmp/evejax_layers_secret_{os.getpid()}"
    fd = os.open(cls.secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, cls.token.encode())
    os.close(fd)
    cls.pool = SandboxPool(SandboxConfig(workers=1, namespaces=False,
                                         timeout_s=4, memory_mb=384))

  @classmethod
  def tearDownClass(cls):
    cls.pool.close()
    os.remove(cls.secret)
    super().tearDownClass()

  def test_missing_layers_are_warned_about(self):
    layers = self.pool.layers
    self.assertFalse(layers.namespaces)
    self.assertFalse(layers.private_root)
    self.assertTrue(layers.uid_drop and layers.seccomp)
    self.assertTrue(any("mount namespace" in w for w in layers.warnings))

  def test_file_permissions_protect_secrets(self):
    res = run(self.pool, f"print(open({self.secret!r}).read())")
    self.assertEqual(res.reason, "exception")
    self.assertIn("PermissionError", res.detail)
    self.assertNotIn(self.token, res.stdout + res.detail)

  def test_seccomp_still_blocks_network_and_processes(self):
    for attack in ("import socket\nsocket.socket()", "import os\nos.fork()"):
      self.assertEqual(run(self.pool, attack).reason, "forbidden")

  def test_cannot_write_into_the_project(self):
    target = os.path.join(os.path.dirname(__file__), "evejax_layers_canary")
    res = run(self.pool, f"import os\nos.open({target!r}, os.O_CREAT | "
              "os.O_WRONLY)")
    self.assertEqual(res.reason, "exception")
    self.assertFalse(os.path.exists(target))


class RlimitsOnlyTest(absltest.TestCase):
  """Every optional layer off: limits, timeouts and the sweep still hold."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.pool = SandboxPool(SandboxConfig(
        workers=1, namespaces=False, private_root=False, drop_uid=False,
        seccomp=False, timeout_s=2, memory_mb=384))

  @classmethod
  def tearDownClass(cls):
    cls.pool.close()
    super().tearDownClass()

  def test_only_rlimits_active(self):
    self.assertEqual(self.pool.layers.active(), ["rlimits"])
    self.assertGreaterEqual(len(self.pool.layers.warnings), 2)

  def test_limits_hold(self):
    self.assertEqual(run(self.pool, "while True:\n    pass").reason, "timeout")
    self.assertEqual(run(self.pool, "x = bytearray(8 * 2**30)").reason,
                     "memory")

  def test_leftovers_are_reaped_through_the_subreaper(self):
    res = run(self.pool, LEFTOVER)
    self.assertTrue(res.ok, res.detail)
    self.assertEqual(descendants(self.pool), [2])  # zygote and its spare


class FailedPrivateRootTest(absltest.TestCase):
  """A private root that cannot be built leaves its directory as it was."""

  def test_mounts_are_detached(self):
    root = tempfile.mkdtemp()
    self.addCleanup(os.rmdir, root)
    script = f"""
import os
from evejax.sandbox import jail
jail.unshare(jail.CLONE_NEWNS)
jail.mount(None, "/", None, jail.MS_REC | jail.MS_PRIVATE)
jail.mount("tmpfs", {root!r}, "tmpfs", 0, "size=1m")
open(os.path.join({root!r}, "half-built"), "w").close()
jail.detach_mounts({root!r})
print(sorted(os.listdir({root!r})))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, check=False)
    if "Operation not permitted" in proc.stderr:
      self.skipTest("no mount namespace here")
    self.assertEqual(proc.returncode, 0, proc.stderr)
    self.assertEqual(proc.stdout.strip(), "[]")

if __name__ == "__main__":
  absltest.main()
