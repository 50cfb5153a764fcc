"""A sandbox worker: a pre-warmed zygote that forks one jailed child per job.

Started by the pool as `python -m evejax.sandbox.worker --fd N --settings
JSON` with an empty environment. Process layout, host view:

  trainer ── launcher ── zygote (PID 1 of its own namespaces) ── job child

The launcher only creates the namespaces and waits. The zygote imports numpy,
PIL and cairosvg once, builds the private root, chroots into it and then
serves jobs one at a time over the control socket. It keeps one *spare*
child forked and fully jailed in advance (limits, uid, seccomp all applied),
blocked on a socket; a job is just written into that socket. The spare for
the next job is forked as soon as a job starts, under the worker's other job
uid (consecutive jobs alternate between two uids, so a running job cannot
signal, trace or read the waiting spare), so neither the fork nor the jail is
on the critical path. Without the uid layer the next spare is only forked
once the job has ended and been swept.

Per job the host sends the request with the write end of a fresh result pipe
and, for EVE, a sealed read-only memfd holding the input pixels (SCM_RIGHTS);
the zygote passes them on to the spare without reading any pixel, so pixels
go straight from the host to the job and from the job to the host. The
zygote reads the job's stdout/stderr up to a cap, enforces the wall-clock
deadline by killing the process group, kills and reaps anything left behind,
reports how the process ended and removes the job directory. Only the zygote
(trusted code) ever talks to the host on the control socket.
"""

from __future__ import annotations

import argparse
import fcntl
import gc
import json
import mmap
import os
import resource
import select
import shutil
import signal
import socket
import stat
import sys
import time
import traceback

from evejax.sandbox import jail
from evejax.sandbox import seccomp
from evejax.sandbox import wire


def _warm_up_matplotlib() -> None:
  """Builds matplotlib's font list and draws once, outside the jail.

  Without a font cache matplotlib lists the system fonts by running
  `fc-list` (fork + exec), which the syscall filter kills; every job has a
  fresh MPLCONFIGDIR, so the list must already be in the zygote's memory.
  Drawing text, a legend and saving a PNG loads the fonts and the PNG writer.
  """
  import io  # pylint: disable=g-import-not-at-top
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (bars, pie, line) = plt.subplots(1, 3, figsize=(3, 1), dpi=40)
  bars.bar([0, 1], [3, 5])
  bars.set_title("warm")
  pie.pie([1, 2], labels=["a", "b"], autopct="%1.0f%%")
  line.plot([0, 1], [1, 0], label="x")
  line.legend()
  fig.savefig(io.BytesIO(), format="png")
  plt.close(fig)


class Spare:
  """A forked, jailed child waiting for its job."""

  def __init__(self, pid, job_sock, out_r, err_r, jobdir, uid):
    self.pid, self.job_sock = pid, job_sock
    self.out_r, self.err_r, self.jobdir = out_r, err_r, jobdir
    self.uid = uid
    self.pidfd = os.pidfd_open(pid)


class Zygote:
  """Serves jobs on the control socket; see the module docstring."""

  def __init__(self, ctrl_fd: int, settings: dict, layers: jail.Layers):
    self.ctrl = socket.socket(fileno=ctrl_fd)
    self.s = settings
    self.layers = layers
    self.counter = 0
    self.uids: tuple[int, ...] = ()  # dedicated job uids, taken in turn
    self.spares: set[int] = set()  # forked, their job not yet run
    self.early_exits: dict[int, tuple] = {}  # spares reaped by a sweep
    self.jobs_root = settings["host_tmp"]
    self.limits = jail.JobLimits(**settings["limits"])
    self.installer = None
    self.my_pid = os.getpid()

  # ---------------------------------------------------------------- setup

  def setup(self) -> None:
    s, layers = self.s, self.layers
    try:
      jail.set_pdeathsig(signal.SIGKILL)
      if not layers.namespaces:
        jail.set_subreaper()
    except OSError as e:
      layers.warnings.append(f"prctl: {e}")
    self._warm_up()
    for name in ("seccomp", "drop_uid", "private_root"):
      if not s[name]:
        layers.warnings.append(f"{name} disabled by config")
    if s["seccomp"]:
      try:
        self.installer = seccomp.Installer()
        layers.seccomp = True
      except (seccomp.SeccompUnavailable, OSError, AttributeError) as e:
        layers.warnings.append(f"seccomp unavailable ({e}): forbidden "
                               "syscalls are not blocked")
    if s["drop_uid"]:
      if jail.can_switch_uid():
        self.uids = (s["uid"], s["uid_alt"])
        layers.uid_drop = True
      else:
        layers.warnings.append(
            "cannot switch to a dedicated uid (not root in the initial user "
            "namespace): jobs keep this user's file permissions and "
            "RLIMIT_NPROC counts all of this user's processes")
    if s["private_root"]:
      if layers.namespaces:
        try:
          # Our own empty directory, not /tmp: a tmpfs on /tmp would shadow
          # the sources of every bind below it (a venv or checkout under
          # /tmp). Mounted over in our namespace only, it stays empty on the host.
          root = self.jobs_root
          jail.build_private_root(
              root, jail.python_ro_paths() + list(jail.SYSTEM_RO_PATHS)
              + list(s["ro_paths"]), s["disk_bytes"], s["disk_inodes"])
          jail.enter_root(root)
          self.jobs_root = "/tmp"
          layers.private_root = True
        except OSError as e:
          jail.detach_mounts(root)  # jobs go to the host directory instead
          layers.warnings.append(
              f"private root unavailable ({e}): jobs see the host filesystem "
              "(read access limited only by file permissions)")
      else:
        layers.warnings.append("private root needs a mount namespace: jobs "
                               "see the host filesystem")
    if not layers.private_root:
      os.chmod(self.jobs_root, 0o711)
    if self.uids:
      closed = [p for p in jail.python_ro_paths()
                if os.stat(p).st_mode & 0o005 != 0o005]
      if closed:
        layers.warnings.append(
            f"{closed} cannot be read by other users: jobs (a dedicated "
            "uid) cannot import modules from there lazily; `chmod o+rx` them")
    # Jobs inherit this environment (nothing of the trainer's; their home
    # is set per job): done once here rather than in every job.
    jail.clean_environ(self.jobs_root)
    from evejax.sandbox import harness  # pylint: disable=g-import-not-at-top
    harness.remember_modules()
    gc.collect()
    gc.freeze()  # forked children then share these pages untouched

  def _warm_up(self) -> None:
    """Imports and first-use work done once so that every job starts hot."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    from PIL import Image, ImageDraw, ImageFont  # pylint: disable=g-import-not-at-top
    from evejax.sandbox import harness  # pylint: disable=g-import-not-at-top,unused-import
    im = Image.new("RGB", (32, 32))
    draw = ImageDraw.Draw(im)
    draw.text((1, 1), "warm", fill=(255, 255, 255),
              font=ImageFont.load_default())
    np.asarray(im.rotate(30, expand=True).convert("RGBA")).mean()
    if any(name.split(".")[0] == "matplotlib" for name in self.s["preload"]):
      # Fixed before pyplot is imported, so it never probes GUI toolkits.
      import matplotlib  # pylint: disable=g-import-not-at-top
      matplotlib.use("Agg")
    for name in self.s["preload"]:
      try:
        __import__(name)
      except Exception as e:  # pylint: disable=broad-except
        self.layers.warnings.append(f"preload {name!r} failed: {e}")
    if "cairosvg" in sys.modules:
      # Initialises cairo and fontconfig (reads its cache) before the chroot.
      noop = lambda h, p: None  # noqa: E731
      harness.run({"kind": "svg", "max_side": 64, "max_aspect": 10,
                   "max_render_pixels": 4096, "background": "white",
                   "svg": '<svg xmlns="http://www.w3.org/2000/svg" width="8" '
                          'height="8"><text y="6">a</text></svg>'}, b"", noop,
                  hide=False)
    if "matplotlib.pyplot" in sys.modules:
      _warm_up_matplotlib()

  # ---------------------------------------------------------------- spares

  def _make_jobdir(self, uid: int | None) -> str:
    self.counter += 1
    path = f"{self.jobs_root}/job{self.counter}"
    os.mkdir(path, 0o700)
    if uid is not None:
      os.chown(path, uid, uid)
    return path

  def fork_spare(self) -> Spare:
    # Consecutive jobs run as different uids: a job can then neither signal
    # nor trace nor read the spare forked for the next job while it runs.
    uid = self.uids[self.counter % len(self.uids)] if self.uids else None
    jobdir = self._make_jobdir(uid)
    job_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
      code = 121
      try:
        self._child(child_sock.fileno(), out_w, err_w, jobdir, uid)
        code = 0
      except BaseException:  # pylint: disable=broad-except
        traceback.print_exc()  # to the job's stderr: a sandbox bug, not a job's
      finally:
        os._exit(code)  # pylint: disable=protected-access
    child_sock.close()
    for fd in (out_w, err_w):
      os.close(fd)
    for fd in (out_r, err_r):
      os.set_blocking(fd, False)
    self.spares.add(pid)
    return Spare(pid, job_sock, out_r, err_r, jobdir, uid)

  def _child(self, job_fd, out_w, err_w, jobdir, uid) -> None:
    """In the forked child: jail ourselves, then wait for and run the job.

    fd 0 is the job socket, 1 and 2 the stdout/stderr pipes; fd 3, the result
    pipe, arrives with the job (passed by the host through the zygote).
    """
    os.setsid()
    jail.set_pdeathsig(signal.SIGKILL)
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
            for fd in (job_fd, out_w, err_w)]
    for target, fd in enumerate(high):
      os.dup2(fd, target)
    os.closerange(3, 1 << 20)
    os.chdir(jobdir)
    jail.apply_rlimits(self.limits)
    jail.set_home(jobdir)  # the rest of the environment: see setup()
    if uid is not None:
      jail.drop_privileges(uid, uid)
    else:
      try:
        jail.drop_capabilities()
      except OSError:
        pass
    if self.installer is not None:
      self.installer.install()
    job_sock = socket.socket(fileno=0)
    try:
      header, _, fds = wire.recv_frame(job_sock, 0, max_fds=2)
    except (EOFError, OSError, wire.ProtocolError):
      return  # the zygote is shutting down
    if not fds:
      return
    result_fd, input_fd = fds[0], (fds[1] if len(fds) > 1 else None)
    if result_fd != 3:  # usually it already is: the lowest free descriptor
      if input_fd == 3:
        input_fd = fcntl.fcntl(3, fcntl.F_DUPFD, 10)
        os.close(3)
      os.dup2(result_fd, 3)
      os.close(result_fd)
    job_sock.detach()
    os.close(0)
    os.open("/dev/null", os.O_RDONLY)  # becomes fd 0
    jail.lower_cpu_limit(header["cpu_s"])
    payload = b""
    if input_fd is not None:
      # The input pixels, mapped read-only from the host's sealed memfd and
      # populated in one call (no copy, no page fault per page).
      size = os.fstat(input_fd).st_size
      if size:
        payload = mmap.mmap(input_fd, size, mmap.MAP_SHARED | mmap.MAP_POPULATE,
                            mmap.PROT_READ)
      os.close(input_fd)
    from evejax.sandbox import harness  # pylint: disable=g-import-not-at-top
    harness.run(header["req"], payload,
                lambda h, p: wire.write_frame(3, h, p))
    try:
      sys.stdout.flush()
      sys.stderr.flush()
    except Exception:  # pylint: disable=broad-except
      pass

  # ---------------------------------------------------------------- jobs

  def run_job(self, req: dict, fds: list[int], spare: Spare) -> Spare:
    """Runs the job on `spare` and reports; returns the next spare.

    The job gets its descriptors (result pipe, input) through the spare's
    socket. With two job uids the next spare is forked and jails itself
    while this job runs (it runs as the other uid), so neither is on the
    critical path; otherwise it is forked once this job is swept.
    """
    t0 = time.monotonic()
    timeout = float(req["timeout"])
    try:
      wire.send_frame(spare.job_sock, {"req": req["req"],
                                       "cpu_s": req["cpu_s"]}, fds=fds)
    except OSError:
      pass  # the child is gone; its exit status says why
    for fd in fds:
      os.close(fd)  # now only the job holds the result pipe and the input
    spare.job_sock.close()
    following = self.fork_spare() if len(self.uids) > 1 else None

    cap = int(self.s["stdout_bytes"])
    out, err = bytearray(), bytearray()
    dropped = {spare.out_r: 0, spare.err_r: 0}
    bufs = {spare.out_r: out, spare.err_r: err}
    poller = select.poll()
    for fd in (spare.pidfd, spare.out_r, spare.err_r, self.ctrl.fileno()):
      poller.register(fd, select.POLLIN)
    deadline = t0 + timeout
    killed = None
    exited = False
    parent_gone = False
    while not exited:
      now = time.monotonic()
      if killed is None and now >= deadline:
        killed = "timeout"
        self._kill(spare.pid)
      wait_ms = 1000 if killed else max(1, int((deadline - now) * 1000) + 1)
      for fd, _ in poller.poll(wait_ms):
        if fd == spare.pidfd:
          exited = True
        elif fd in bufs:
          self._drain(fd, bufs[fd], dropped, cap, poller)
        else:
          try:
            msg, _, _ = wire.recv_frame(self.ctrl, 0)
          except (EOFError, OSError, wire.ProtocolError):
            msg = {"op": "exit"}
            poller.unregister(self.ctrl.fileno())
            parent_gone = True
          if msg.get("op") in ("kill", "exit") and killed is None:
            killed = msg.get("why", "cancelled")
            self._kill(spare.pid)
    self.spares.discard(spare.pid)
    if spare.pid in self.early_exits:
      status, ru = self.early_exits.pop(spare.pid)
    else:
      _, status, ru = os.wait4(spare.pid, 0)
    os.close(spare.pidfd)
    wall = time.monotonic() - t0
    leftovers = self._sweep(spare, following)
    for fd in (spare.out_r, spare.err_r):
      self._drain(fd, bufs[fd], dropped, cap, None, until_eof=True)
      os.close(fd)
    if parent_gone:
      self._rmtree(spare.jobdir)
      os._exit(0)  # pylint: disable=protected-access
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    cpu = ru.ru_utime + ru.ru_stime
    report = {
        "op": "finished",
        "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "signal": sig,
        "timed_out": killed == "timeout",
        "killed": killed,
        "cpu_limited": sig in (signal.SIGXCPU, signal.SIGKILL)
                       and cpu >= float(req["cpu_s"]) - 0.05,
        "cpu_s": cpu, "max_rss_kb": ru.ru_maxrss, "wall_s": wall,
        "stdout": _text(out, dropped[spare.out_r]),
        "stderr": _text(err, dropped[spare.err_r]),
        "leftovers": leftovers,
    }
    wire.send_frame(self.ctrl, report)
    # After the report, while the host judges the result; the next request
    # is only read once this is done, so no job ever sees another's files.
    self._rmtree(spare.jobdir)
    return following or self.fork_spare()

  def _drain(self, fd, buf, dropped, cap, poller, until_eof=False) -> None:
    """Reads what is there; keeps up to `cap` bytes and counts the rest."""
    while True:
      try:
        data = os.read(fd, 65536)
      except BlockingIOError:
        return
      if not data:
        if poller is not None:
          poller.unregister(fd)
        return
      room = cap - len(buf)
      if room > 0:
        buf += data[:room]
      dropped[fd] += max(0, len(data) - max(room, 0))
      if not until_eof and poller is not None:
        return  # one read per wake-up keeps the loop responsive

  def _kill(self, pid: int) -> None:
    for fn in (lambda: os.killpg(pid, signal.SIGKILL),
               lambda: os.kill(pid, signal.SIGKILL)):
      try:
        fn()
      except (ProcessLookupError, PermissionError):
        pass

  def _children(self) -> list[int]:
    kids = []
    for name in os.listdir("/proc"):
      if not name.isdigit():
        continue
      try:
        with open(f"/proc/{name}/stat", "rb") as f:
          stat_line = f.read()
      except OSError:
        continue
      fields = stat_line[stat_line.rfind(b")") + 2:].split()
      if int(fields[1]) == self.my_pid:
        kids.append(int(name))
    return kids

  def _sweep(self, job: Spare, following: Spare | None) -> int:
    """Kills and reaps whatever the job left behind; returns how many.

    `following` (the next spare, already forked) is not the job's and stays.
    """
    self._kill(job.pid)  # its process group
    if self.layers.seccomp and self.layers.namespaces:
      # No fork is possible under the filter; nothing can be left behind
      # except by a sandbox bug, which the stats op would reveal.
      self._reap()
      return 0
    keep = following.pid if following else None
    total = 0
    for _ in range(200):
      kids = [k for k in self._children() if k != keep]
      if not kids:
        break
      total += len(kids)
      if job.uid is not None:
        self._kill_uid(job.uid)
      for k in kids:
        try:
          os.kill(k, signal.SIGKILL)
        except ProcessLookupError:
          pass
      self._reap(block_for=kids)
    return total

  def _reap(self, block_for=()) -> None:
    for pid in block_for:
      try:
        os.waitpid(pid, 0)
      except ChildProcessError:
        pass
    while True:
      try:
        pid, status, ru = os.wait4(-1, os.WNOHANG)
      except ChildProcessError:
        return
      if pid == 0:
        return
      if pid in self.spares:  # died waiting: its status is for its turn
        self.early_exits[pid] = (status, ru)

  def _kill_uid(self, uid: int) -> None:
    """kill(-1) as the job's uid: every process of that uid, atomically."""
    pid = os.fork()
    if pid == 0:
      try:
        os.setresuid(uid, uid, uid)
        os.kill(-1, signal.SIGKILL)
      finally:
        os._exit(0)  # pylint: disable=protected-access
    os.waitpid(pid, 0)

  def _rmtree(self, path: str) -> None:
    def fix(func, p, _):
      try:
        os.chmod(os.path.dirname(p), stat.S_IRWXU)
        os.chmod(p, stat.S_IRWXU)
      except OSError:
        pass
      try:
        func(p)
      except OSError:
        pass
    shutil.rmtree(path, onerror=fix)
    if os.path.exists(path):
      shutil.rmtree(path, ignore_errors=True)

  # ---------------------------------------------------------------- loop

  def stats(self) -> dict:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"op": "stats", "fds": len(os.listdir("/proc/self/fd")),
            "children": len(self._children()),
            # Only job dirs: binds of paths under /tmp (a venv) add their own.
            "job_dirs": sum(n.startswith("job") for n in os.listdir(self.jobs_root)),
            "max_rss_kb": ru.ru_maxrss, "rss_kb": _rss_kb(),
            "jobs": self.counter - 1}

  def serve(self) -> None:
    wire.send_frame(self.ctrl, {"op": "ready", "layers": self.layers.to_dict(),
                                "pid": os.getpid()})
    spare = self.fork_spare()
    while True:
      try:
        msg, _, fds = wire.recv_frame(self.ctrl, 0, max_fds=2)
      except (EOFError, OSError, wire.ProtocolError):
        break
      op = msg.get("op")
      if op == "run" and fds:
        spare = self.run_job(msg, fds, spare)
        continue
      for fd in fds:
        os.close(fd)
      if op == "run":
        break  # a run without its result pipe: the host is broken
      elif op == "stats":
        wire.send_frame(self.ctrl, self.stats())
      elif op == "exit":
        break
      # a stale "kill" for a job that already ended is ignored
    self._kill(spare.pid)
    spare.job_sock.close()
    self._reap(block_for=[spare.pid])
    self._rmtree(spare.jobdir)


def _text(buf: bytearray, dropped: int) -> str:
  text = bytes(buf).decode("utf-8", errors="replace")
  if dropped:
    text += f"\n[... {dropped} more bytes not kept]"
  return text


def _rss_kb() -> int:
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
  except OSError:
    return 0


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fd", type=int, required=True)
  parser.add_argument("--settings", required=True)
  args = parser.parse_args(argv)
  settings = json.loads(args.settings)
  layers = jail.Layers()
  if settings["namespaces"]:
    jail.enter_namespaces(layers)
  else:
    layers.warnings.append("namespaces disabled by config")
  pid = os.fork()
  if pid:
    # Launcher: the parent's handle on the worker. It holds nothing else.
    os.close(args.fd)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGKILL))
    _, status = os.waitpid(pid, 0)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)  # pylint: disable=protected-access
  zygote = Zygote(args.fd, settings, layers)
  try:
    zygote.setup()
  except BaseException as e:  # pylint: disable=broad-except
    wire.send_frame(zygote.ctrl, {"op": "fatal",
                                  "error": f"{type(e).__name__}: {e}"})
    raise
  zygote.serve()


if __name__ == "__main__":
  main()
