"""The sandbox pool: pre-warmed isolated workers behind a futures API.

    with SandboxPool(SandboxConfig(workers=4)) as pool:
      results = pool.map([EveJob(source, image) for source in programs])

`submit(job)` returns a `concurrent.futures.Future[JobResult]`; it blocks
while `queue_size` jobs are already waiting (back-pressure instead of
unbounded memory). `map(jobs)` returns results in order. Each worker slot is
one `worker.py` process tree driven by one parent thread, plus a thread that
judges finished results while the worker runs the next job; a job never
raises in the caller: whatever the program does comes back as a `JobResult`.

The parent reads each job's result stream straight from the job's pipe into
one buffer, bounded by `result_mb`, and judges it with `programs.assemble`
(the host trusts only pixels and exit statuses, never a job's own claims).

Workers that die from outside (the OOM killer, a SIGKILL) while a job runs:
the slot replaces its worker and runs the job once more on the new one (jobs
are pure functions of their inputs, so the retry gives the answer the first
try would have); a second death classifies the job `crashed`. Every death is
counted (`worker_deaths`, and `stats["worker_deaths"]` on the job's result).
A worker that cannot be replaced (fork fails, process or memory limits)
breaks the pool: every job then raises `SandboxBroken`, one message saying
what failed and what to change, instead of each job failing quietly.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import fcntl
import itertools
import json
import logging
import os
import queue
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Iterable, Mapping
import weakref

from evejax.sandbox import checks as checks_lib
from evejax.sandbox import jail
from evejax.sandbox import programs
from evejax.sandbox import wire
from evejax.sandbox.jobs import Job, JobResult, Reason, failure

log = logging.getLogger(__name__)

LAYER_NAMES = ("namespaces", "private_root", "uid_drop", "seccomp", "rlimits")
_UID_BASE = 1 << 30
F_SETPIPE_SZ = 1031
_pool_seq = itertools.count()


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
  """Limits and layers of the sandbox. Every field is a plain value.

  Attributes:
    workers: parallel worker processes (each runs one job at a time).
    queue_size: jobs that may wait before `submit` blocks.
    timeout_s: wall-clock limit of an EVE or plot job.
    svg_timeout_s: wall-clock limit of an SVG render (MM-Zero uses 30 s).
    cpu_s: CPU-time limit per job (all threads); default: the wall limit.
    memory_mb: address-space limit per job.
    file_size_mb: largest file a job may write.
    disk_mb: size of a worker's private /tmp (all files of a job).
    open_files: file descriptors per job.
    processes: processes+threads of the job's uid (fork is also forbidden
      by seccomp; this is the layer beneath).
    output_bytes: stdout and stderr kept per job (the rest is counted).
    result_mb: cap on the raw result stream of one job.
    namespaces, private_root, drop_uid, seccomp: isolation layers to try;
      a layer the machine cannot provide is skipped with a warning.
    require: layer names that must be active, else the pool refuses to
      start (see LAYER_NAMES).
    uid: base of the dedicated job uids, two per worker, taken in turn by
      consecutive jobs (default: derived from the pid).
    ro_paths: extra host paths made readable (read-only) inside the jail.
    preload: modules each worker imports before serving (besides numpy/PIL).
    grace_s: extra time the parent waits for a worker beyond a job's limit
      before declaring the worker dead and restarting it.
    checks: output validity thresholds.
  """
  workers: int = 2
  queue_size: int = 64
  timeout_s: float = 20.0
  svg_timeout_s: float = 30.0
  cpu_s: float | None = None
  memory_mb: int = 1024
  file_size_mb: int = 16
  disk_mb: int = 64
  open_files: int = 64
  processes: int = 32
  output_bytes: int = 16384
  result_mb: int = 96
  namespaces: bool = True
  private_root: bool = True
  drop_uid: bool = True
  seccomp: bool = True
  require: tuple[str, ...] = ()
  uid: int | None = None
  ro_paths: tuple[str, ...] = ()
  preload: tuple[str, ...] = (
      "PIL.ImageOps", "PIL.ImageFilter", "PIL.ImageEnhance", "PIL.ImageChops",
      "PIL.ImageStat", "PIL.ImageColor", "PIL.ImageMath", "PIL.ImageFont",
      "colorsys", "cairosvg", "matplotlib.pyplot")
  grace_s: float = 10.0
  start_timeout_s: float = 120.0
  checks: checks_lib.CheckConfig = checks_lib.CheckConfig()

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any] | Any | None) -> "SandboxConfig":
    """From a dict / ml_collections.ConfigDict (with an optional `checks`)."""
    if cfg is None:
      return cls()
    items = dict(cfg.items()) if hasattr(cfg, "items") else dict(cfg)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(items) - names)
    if unknown:
      raise ValueError(f"SandboxConfig: unknown keys {unknown}; valid keys "
                       f"are {sorted(names)}")
    if "checks" in items:
      items["checks"] = checks_lib.CheckConfig.from_config(items["checks"])
    for key in ("require", "ro_paths", "preload"):
      if key in items:
        items[key] = tuple(items[key])
    return cls(**items)

  def __post_init__(self):
    if self.workers < 1:
      raise ValueError(f"SandboxConfig.workers must be >= 1, got {self.workers}")
    bad = [r for r in self.require if r not in LAYER_NAMES]
    if bad:
      raise ValueError(f"SandboxConfig.require: unknown layers {bad}; choose "
                       f"from {LAYER_NAMES}")


class SandboxUnavailable(RuntimeError):
  """A required isolation layer cannot be provided on this machine."""


class SandboxBroken(RuntimeError):
  """The pool cannot start or replace its workers; no job can run any more."""


# Attempts (and the pause before each retry) to replace a dead worker.
_RESTART_BACKOFF_S = (0.0, 0.5, 2.0)


def _worker_env() -> dict[str, str]:
  # Nothing of the trainer's environment (tokens, keys) reaches the worker.
  # Absolute paths: the worker runs from "/", so "" (the current directory, as
  # in a notebook started in an uninstalled checkout) must become explicit.
  path = [os.path.abspath(p or os.getcwd()) for p in sys.path]
  return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
          "PYTHONPATH": os.pathsep.join(path), "PYTHONHASHSEED": "0",
          "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
          "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg",
          "PYTHONDONTWRITEBYTECODE": "1",
          # A fresh process per job pays a page fault for every page it
          # touches; image buffers from a huge-page-backed heap need far
          # fewer (glibc >= 2.35; ignored elsewhere).
          "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1:"
                            "glibc.malloc.mmap_threshold=67108864"}


class _Slot:
  """One worker process tree and the protocol to drive it."""

  def __init__(self, index: int, config: SandboxConfig, uid: int):
    self.index, self.config, self.uid = index, config, uid
    self.proc: subprocess.Popen | None = None
    self.sock: socket.socket | None = None
    self.host_tmp: str | None = None
    self.layers: dict = {}
    self.zygote_pid: int | None = None
    self.jobs = 0
    self.restarts = 0
    self.busy = threading.Lock()  # held while a job or a stats call runs

  def settings(self) -> dict:
    c = self.config
    cpu = c.cpu_s or max(c.timeout_s, c.svg_timeout_s)
    return {
        "namespaces": c.namespaces, "private_root": c.private_root,
        "drop_uid": c.drop_uid, "seccomp": c.seccomp, "uid": self.uid,
        "uid_alt": self.uid + 1,
        "host_tmp": self.host_tmp, "ro_paths": list(c.ro_paths),
        "preload": list(c.preload), "stdout_bytes": c.output_bytes,
        "disk_bytes": c.disk_mb << 20, "disk_inodes": 16384,
        "limits": {"cpu_s": cpu, "memory_bytes": c.memory_mb << 20,
                   "file_bytes": c.file_size_mb << 20,
                   "open_files": c.open_files, "processes": c.processes},
    }

  def launch(self) -> None:
    self.host_tmp = tempfile.mkdtemp(prefix=f"evejax-sandbox-{self.index}-")
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    cmd = [sys.executable, "-m", "evejax.sandbox.worker",
           "--fd", str(child.fileno()), "--settings",
           json.dumps(self.settings())]
    try:
      self.proc = subprocess.Popen(
          cmd, pass_fds=[child.fileno()], env=_worker_env(), cwd="/",
          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
          start_new_session=True)
    finally:
      child.close()
    self.sock = parent

  def await_ready(self, timeout: float) -> None:
    self.sock.settimeout(timeout)
    try:
      msg, _, _ = wire.recv_frame(self.sock, 0)
    except (EOFError, OSError, wire.ProtocolError) as e:
      raise SandboxBroken(f"sandbox worker {self.index} failed to start: "
                          f"{type(e).__name__}: {e}") from None
    if msg.get("op") != "ready":
      raise SandboxBroken(f"sandbox worker {self.index} failed to start: "
                          f"{msg.get('error', msg)}")
    self.layers = msg["layers"]
    self.zygote_pid = msg["pid"]

  def stop(self) -> None:
    if self.sock is not None:
      try:
        self.sock.settimeout(2.0)
        wire.send_frame(self.sock, {"op": "exit"})
      except OSError:
        pass
      self.sock.close()
      self.sock = None
    if self.proc is not None:
      try:
        self.proc.wait(timeout=5.0)
      except subprocess.TimeoutExpired:
        _kill_tree(self.proc)
      self.proc = None
    if self.host_tmp:
      shutil.rmtree(self.host_tmp, ignore_errors=True)
      self.host_tmp = None

  def restart(self, timeout: float) -> None:
    """Replaces the worker, trying a few times; raises SandboxBroken if it cannot."""
    self.restarts += 1
    if self.proc is not None:
      _kill_tree(self.proc)
    self.proc = None
    if self.sock is not None:
      self.sock.close()
      self.sock = None
    self.stop()
    errors = []
    for pause in _RESTART_BACKOFF_S:
      time.sleep(pause)
      try:
        self.launch()
        self.await_ready(timeout)
        return
      except (OSError, RuntimeError) as e:  # fork/exec failures, a worker dying at start
        errors.append(f"{type(e).__name__}: {e}")
        self.stop()
    raise SandboxBroken(
        f"sandbox worker {self.index} died and could not be replaced after "
        f"{len(errors)} attempts ({errors[-1]}). The machine is out of something a "
        "worker needs: processes (ulimit -u, the cgroup's pids.max), memory, or space "
        "in /tmp. Lower config.sandbox.workers or free those, then run the same "
        "command again to resume from the last checkpoint.")

  def stats(self) -> dict:
    self.sock.settimeout(self.config.grace_s)
    wire.send_frame(self.sock, {"op": "stats"})
    msg, _, _ = wire.recv_frame(self.sock, 0)
    msg.pop("op", None)
    msg.pop("n", None)
    msg.update(launcher_pid=self.proc.pid, restarts=self.restarts,
               host_tmp=self.host_tmp)
    return msg

  # ---------------------------------------------------------------- one job

  def run(self, prep: programs.Prepared
          ) -> tuple[memoryview, programs.ProcessStatus]:
    """Runs one prepared job; returns its raw result stream and how it ended.

    Raises only when the worker itself fails. The caller judges the result
    (`programs.assemble`), meanwhile this slot can run the next job.
    """
    c = self.config
    timeout = c.svg_timeout_s if prep.kind == "svg" else c.timeout_s
    cpu = min(c.cpu_s or timeout, timeout)
    # No valid result is larger than its images at the pixel limit, RGBA.
    limit = (c.checks.max_pixels if prep.kind == "eve"
             else c.checks.max_render_pixels)
    cap = min(c.result_mb << 20, prep.expect_images * limit * 4 + (1 << 20))
    t0 = time.monotonic()
    self.sock.settimeout(c.grace_s)
    # The job writes its result straight into this pipe; we hold the only
    # read end, the write end goes (via the zygote) to the job alone.
    rfd, wfd = os.pipe()
    try:
      fcntl.fcntl(wfd, F_SETPIPE_SZ, 1 << 20)
    except OSError:
      pass
    fds = [wfd]
    try:
      if prep.payload:
        fds.append(sealed_memfd(prep.payload))
      wire.send_frame(self.sock, {"op": "run", "timeout": timeout,
                                  "cpu_s": cpu, "req": prep.request},
                      fds=fds)
    except BaseException:
      os.close(rfd)
      raise
    finally:
      for fd in fds:
        os.close(fd)
    # EVE outputs are usually the input's size, RGB: expect that much.
    req = prep.request
    expect = (prep.expect_images * (req["h"] * req["w"] * 3 + 256) + 4096
              if prep.kind == "eve" else 1 << 20)
    stream = wire.StreamBuffer(expect, cap)
    finished = None
    deadline = t0 + timeout + c.grace_s
    poller = select.poll()
    poller.register(rfd, select.POLLIN)
    poller.register(self.sock.fileno(), select.POLLIN)
    try:
      while rfd >= 0 or finished is None:
        left = deadline - time.monotonic()
        if left <= 0:
          raise TimeoutError("worker did not report within the job limit "
                             f"plus {c.grace_s} s")
        for fd, _ in poller.poll(left * 1000):
          if fd == rfd:
            got = stream.read_from(rfd)
            if stream.overflow:
              wire.send_frame(self.sock, {"op": "kill", "why": "overflow"})
            if not got or stream.overflow:
              poller.unregister(rfd)
              os.close(rfd)
              rfd = -1
          elif finished is None:
            finished, _, _ = wire.recv_frame(self.sock, 0)
            poller.unregister(self.sock.fileno())
    finally:
      if rfd >= 0:
        os.close(rfd)
    if finished.get("op") != "finished":
      raise RuntimeError(f"worker protocol: expected 'finished', got "
                         f"{finished.get('op')}")
    self.jobs += 1
    status = programs.ProcessStatus(
        exit_code=finished["exit_code"], signal=finished["signal"],
        timed_out=finished["timed_out"], cpu_limited=finished["cpu_limited"],
        stream_overflow=stream.overflow, stdout=finished["stdout"],
        stderr=finished["stderr"], wall_s=time.monotonic() - t0,
        cpu_s=finished["cpu_s"], max_rss_kb=finished["max_rss_kb"],
        note=(f"wall-clock limit of {timeout:g} s reached; the process group "
              "was killed") if finished["timed_out"] else
        (f"the result stream exceeded {cap} bytes (no valid result is that "
         "large); the job was killed") if stream.overflow else "")
    return stream.data(), status


def sealed_memfd(data: bytes) -> int:
  """A read-only in-memory file holding `data` (the job's input pixels).

  Passed to the job as a descriptor instead of being copied through the
  zygote and a socket: the job maps it (one system call, no copy). Sealed
  against writing, resizing and unsealing, so the job cannot change it (and
  nothing else ever holds it: the host and the zygote close theirs).
  """
  fd = os.memfd_create("evejax-input", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
  try:
    view = memoryview(data).cast("B")
    while view:
      view = view[os.write(fd, view):]
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                | fcntl.F_SEAL_WRITE)
  except BaseException:
    os.close(fd)
    raise
  return fd


def _kill_tree(proc: subprocess.Popen) -> None:
  # The launcher leads its own session; the zygote dies with it
  # (PDEATHSIG) and takes its PID namespace, i.e. every job, along.
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass
  try:
    proc.wait(timeout=10)
  except subprocess.TimeoutExpired:
    pass


def _emergency_stop(slots: list[_Slot]) -> None:
  for slot in slots:
    if slot.proc is not None:
      _kill_tree(slot.proc)
    if slot.host_tmp:
      shutil.rmtree(slot.host_tmp, ignore_errors=True)


class SandboxPool:
  """Pre-warmed, isolated workers running untrusted image programs."""

  def __init__(self, config: SandboxConfig | Mapping[str, Any] | None = None):
    if not isinstance(config, SandboxConfig):
      config = SandboxConfig.from_config(config)
    self.config = config
    seq = next(_pool_seq)
    base = config.uid if config.uid is not None else (
        _UID_BASE + ((os.getpid() % (1 << 20)) << 10) + ((seq % 4) << 8))
    self._slots = [_Slot(i, config, base + 2 * i)
                   for i in range(config.workers)]
    self._queue: queue.Queue = queue.Queue(maxsize=config.queue_size)
    self._closed = False
    self._broken: SandboxBroken | None = None
    self.worker_deaths = 0   # workers that died from outside while running a job
    self._lock = threading.Lock()
    self._finalizer = weakref.finalize(self, _emergency_stop, self._slots)
    try:
      for slot in self._slots:
        try:
          slot.launch()
        except OSError as e:   # fork or exec refused: process or memory limits
          raise SandboxBroken(
              f"cannot start sandbox worker {slot.index}: {e}. Lower config.sandbox.workers "
              "or raise the process limit (ulimit -u) and free memory.") from None
      for slot in self._slots:
        slot.await_ready(config.start_timeout_s)
    except BaseException:
      self._finalizer()
      raise
    self.layers = jail.Layers(**self._slots[0].layers)
    missing = [r for r in config.require if not getattr(self.layers, r)]
    if missing:
      self._finalizer()
      raise SandboxUnavailable(
          f"sandbox layers {missing} are unavailable on this machine "
          f"({'; '.join(self.layers.warnings)}). Remove them from "
          "SandboxConfig.require to run with a weaker sandbox.")
    for w in self.layers.warnings:
      log.warning("evejax sandbox: %s", w)
    self._threads = [threading.Thread(target=self._serve, args=(slot,),
                                      name=f"sandbox-slot-{slot.index}",
                                      daemon=True) for slot in self._slots]
    for t in self._threads:
      t.start()

  # ---------------------------------------------------------------- API

  def submit(self, job: Job) -> concurrent.futures.Future:
    """Queues one job; blocks while the queue is full.

    Static failures (no code, syntax, contract, policy) resolve at once
    without using a worker. Raises ValueError for a bad input image and
    TypeError for something that is not a job.
    """
    if self._closed:
      raise RuntimeError("SandboxPool is closed")
    if self._broken is not None:
      raise self._broken
    fut: concurrent.futures.Future = concurrent.futures.Future()
    prep = programs.prepare(job, self.config.checks)
    if isinstance(prep, JobResult):
      fut.set_running_or_notify_cancel()
      fut.set_result(prep)
      return fut
    self._queue.put((fut, prep))
    return fut

  def submit_batch(self, jobs: Iterable[Job]) -> list[concurrent.futures.Future]:
    return [self.submit(j) for j in jobs]

  def map(self, jobs: Iterable[Job]) -> list[JobResult]:
    """Runs jobs and returns their results in order."""
    return [f.result() for f in self.submit_batch(jobs)]

  def stats(self) -> list[dict]:
    """Per worker: fds, children and job dirs of the zygote, pids (tests)."""
    with self._lock:
      out = []
      for slot in self._slots:
        with slot.busy:
          out.append(slot.stats())
      return out

  def close(self, cancel_pending: bool = False) -> None:
    """Stops the workers and removes their files.

    Args:
      cancel_pending: cancel queued jobs that have not started (their futures
        raise CancelledError) instead of running them first.
    """
    if self._closed:
      return
    self._closed = True
    if cancel_pending:
      while True:
        try:
          item = self._queue.get_nowait()
        except queue.Empty:
          break
        if item is not None:
          item[0].cancel()
    for _ in self._threads:
      self._queue.put(None)
    for t in self._threads:
      t.join()
    for slot in self._slots:
      slot.stop()
    self._finalizer.detach()

  def __enter__(self) -> "SandboxPool":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # ---------------------------------------------------------------- slots

  def _serve(self, slot: _Slot) -> None:
    # Results are judged on a second thread, so that the worker runs the next
    # job while the host checks the last one (at most one waits).
    judged: queue.Queue = queue.Queue(maxsize=1)
    judge = threading.Thread(target=self._judge, args=(judged,),
                             name=f"sandbox-judge-{slot.index}", daemon=True)
    judge.start()
    try:
      while True:
        item = self._queue.get()
        if item is None:
          return
        fut, prep = item
        if not fut.set_running_or_notify_cancel():
          continue
        if self._broken is not None:
          fut.set_exception(self._broken)
          continue
        with slot.busy:
          try:
            outcome, deaths = self._run(slot, prep)
          except SandboxBroken as e:
            self._broken = e
            log.error("evejax sandbox: %s", e)
            fut.set_exception(e)
            continue
        if isinstance(outcome, JobResult):
          if deaths:
            outcome.stats["worker_deaths"] = deaths
          fut.set_result(outcome)
          continue
        judged.put((fut, prep, *outcome, deaths))
    finally:
      judged.put(None)
      judge.join()

  def _judge(self, judged: queue.Queue) -> None:
    while True:
      item = judged.get()
      if item is None:
        return
      fut, prep, stream, status, deaths = item
      try:
        result = programs.assemble(prep, stream, status, self.config.checks)
        if deaths:
          result.stats["worker_deaths"] = deaths
      except Exception as e:  # pylint: disable=broad-except
        log.exception("evejax sandbox: judging a result failed")
        result = failure(Reason.SANDBOX_ERROR, "judging the result failed: "
                         f"{type(e).__name__}: {e}", prep.kind, args=prep.args,
                         function_source=prep.function_source)
      fut.set_result(result)

  def _run(self, slot: _Slot, prep: programs.Prepared):
    """Runs a job on `slot`, replacing a worker that dies under it and retrying once.

    Returns ((stream, status) or a JobResult, worker deaths) and raises
    SandboxBroken when a dead worker cannot be replaced.
    """
    deaths, last = 0, ""
    for _ in range(2):
      try:
        if slot.sock is None:
          raise EOFError("no worker (an earlier restart failed)")
        return slot.run(prep), deaths
      except Exception as e:  # pylint: disable=broad-except
        hung = isinstance(e, TimeoutError)
        last = f"{type(e).__name__}: {e}"
        log.warning("evejax sandbox: worker %d %s (%s); replacing it", slot.index,
                    "stopped answering" if hung else "died", last)
        if not hung:
          deaths += 1
          self.worker_deaths += 1
        slot.restart(self.config.start_timeout_s)
        if hung:   # the job itself may be what wedged it: no retry
          return failure(Reason.TIMEOUT, f"worker failed: {last}", prep.kind, args=prep.args,
                         function_source=prep.function_source), deaths
    return failure(Reason.CRASHED,
                   "the sandbox worker died twice while running this job (killed from "
                   f"outside, e.g. by the OOM killer; {last})", prep.kind, args=prep.args,
                   function_source=prep.function_source), deaths
