"""Test-session setup that must run before anything imports jax.

Every test process sees 8 CPU devices so sharding tests can build meshes;
unsharded computations still run on one device.
"""
import os
import shutil
import tempfile

os.environ["JAX_PLATFORMS"] = "cpu"
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

# Compiled programs are cached on disk across tests and runs: many tests build
# the same tiny model, and XLA compiles dominate their time on a 2-core CPU.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.expanduser("~"), ".cache", "evejax", "xla-tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")

# Every temporary file of the session (tests' workdirs and checkpoints, sandbox
# scratch, the subprocesses' too, through TMPDIR) goes under one directory that is
# removed when the session ends: a full run writes several GB of checkpoints. Sticky
# and world-writable like /tmp, because sandbox workers may run as another user.
_SESSION_TMP = tempfile.mkdtemp(prefix="evejax-tests-")
os.chmod(_SESSION_TMP, 0o1777)
os.environ["TMPDIR"] = tempfile.tempdir = _SESSION_TMP


def pytest_configure(config):
  # `pytest -m "not slow" -n 2 --dist loadscope` is the fast tier (under 10 minutes
  # on 2 cores; loadscope keeps a class's tests, and its setUpClass, on one worker): every
  # module's behaviour and every recipe's wiring and exact resume through scripted
  # roles. The slow tier adds the learning claims of end-to-end runs, the sandbox
  # soak, the notebooks and the torch parity suites.
  config.addinivalue_line("markers", "slow: long runs; deselect with -m 'not slow'")


def pytest_unconfigure(config):
  del config
  shutil.rmtree(_SESSION_TMP, ignore_errors=True)
