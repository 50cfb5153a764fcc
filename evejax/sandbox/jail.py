"""What the sandbox does to its own processes before untrusted code runs.

Two levels, both applied from Python through libc (ctypes):

* Per worker (once, at start): fresh network, PID, mount, IPC and UTS
  namespaces (a user namespace too where we are not root), and a private
  read-only root made of bind mounts of the system and Python directories
  with an empty size-limited /tmp, a private /proc and four device nodes;
  the worker chroots into it. Nothing of /home, /root, /work or the host /tmp
  is visible from inside.
* Per job (in the freshly forked child): new session and process group,
  resource limits (CPU time, address space, file size, open files, processes),
  a clean environment, its own empty working directory, a dedicated
  unprivileged uid (so RLIMIT_NPROC and file permissions bite), no capability,
  no_new_privs, then the seccomp filter of `seccomp.py`.

Every layer is optional and is reported: `Layers` says which ones are active
on this machine and why a missing one is missing.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import resource
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

# System locations a Python image program may legitimately read: binaries and
# shared libraries (via /usr), fonts and the font cache, the dynamic linker
# cache. Deliberately absent: /etc (passwords, keys), /home, /root, /work, /tmp.
SYSTEM_RO_PATHS = (
    "/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin",
    "/etc/fonts", "/var/cache/fontconfig", "/etc/ld.so.cache",
)
DEVICES = ("null", "zero", "full", "random", "urandom")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                        ctypes.c_ulong, ctypes.c_char_p]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong, ctypes.c_ulong]


def _check(ret: int, what: str) -> None:
  if ret != 0:
    e = ctypes.get_errno()
    raise OSError(e, f"{what}: {os.strerror(e)}")


@dataclasses.dataclass
class Layers:
  """Which isolation layers a worker achieved, and why any is missing."""
  namespaces: bool = False      # network + PID + mount + IPC + UTS
  user_namespace: bool = False  # needed because we were not root
  private_root: bool = False    # chroot into read-only binds + private /tmp
  uid_drop: bool = False        # jobs run as a dedicated unprivileged uid
  seccomp: bool = False         # syscall deny-list, kills on violation
  rlimits: bool = True          # always: CPU, memory, file size, fds, procs
  warnings: list[str] = dataclasses.field(default_factory=list)

  def active(self) -> list[str]:
    return [f.name for f in dataclasses.fields(self)
            if f.type in ("bool", bool) and getattr(self, f.name)]

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


# ---------------------------------------------------------------- namespaces

def unshare(flags: int) -> None:
  _check(_libc.unshare(flags), "unshare")


def enter_namespaces(layers: Layers) -> None:
  """Moves the calling (single-threaded) process into new namespaces.

  Children forked afterwards live in the new PID namespace; the caller must
  fork once and let the child be its init. Tries plain unshare first (root),
  then with a user namespace (unprivileged users where the kernel allows).
  """
  flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
  try:
    unshare(flags)
    layers.namespaces = True
    return
  except OSError as e:
    first = e
  uid, gid = os.getuid(), os.getgid()
  try:
    unshare(flags | CLONE_NEWUSER)
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"0 {uid} 1")
    _write("/proc/self/gid_map", f"0 {gid} 1")
    layers.namespaces = layers.user_namespace = True
  except OSError as e:
    layers.warnings.append(
        f"namespaces unavailable (unshare: {first.strerror}; with a user "
        f"namespace: {e.strerror}): jobs share the host network and process "
        "table; the seccomp filter is then the only network barrier")


def _write(path: str, text: str) -> None:
  with open(path, "w") as f:
    f.write(text)


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
  _check(_libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0), "prctl(PDEATHSIG)")


def set_subreaper() -> None:
  _check(_libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(SUBREAPER)")


# ------------------------------------------------------------- private root

def mount(src: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:
  enc = lambda s: None if s is None else s.encode()  # noqa: E731
  _check(_libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)),
         f"mount {src or fstype} on {target}")


MNT_DETACH = 2


def detach_mounts(path: str) -> None:
  """Best effort: detaches whatever a failed `build_private_root` mounted on
  `path` (in this mount namespace only), so the directory is plain again."""
  _libc.umount2(path.encode(), MNT_DETACH)


def python_ro_paths() -> list[str]:
  """Directories holding this interpreter, its stdlib and installed packages.

  Project checkouts on sys.path (e.g. the evejax source tree) are left out:
  the worker imported what it needs before entering the root.
  """
  paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
  for p in sys.path:
    if p and ("site-packages" in p or "dist-packages" in p):
      paths.add(p)
  return sorted(p for p in paths if p and os.path.exists(p))


def _statvfs_flags(path: str) -> int:
  """Mount flags that a read-only remount must keep (locked in user ns)."""
  f = os.statvfs(path).f_flag
  out = 0
  for st, ms in ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV),
                 (os.ST_NOEXEC, MS_NOEXEC)):
    if f & st:
      out |= ms
  return out


def _bind_ro(src: str, root: str) -> None:
  dst = root + src
  if os.path.islink(src):
    if not os.path.lexists(dst):
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      os.symlink(os.readlink(src), dst)
    return
  if os.path.lexists(dst) and os.path.ismount(dst):
    return
  if os.path.isdir(src):
    os.makedirs(dst, exist_ok=True)
  else:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    open(dst, "a").close()  # pylint: disable=consider-using-with
  mount(src, dst, None, MS_BIND | MS_REC)
  mount(None, dst, None,
        MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
        | _statvfs_flags(src))


def build_private_root(root: str, ro_paths: list[str], tmp_bytes: int,
                       tmp_inodes: int) -> None:
  """Builds the job-visible filesystem under `root` (a fresh empty dir).

  Must run inside our own mount namespace. `root` itself becomes a tiny
  tmpfs; the read-only binds, /dev nodes, /proc and the job /tmp are mounted
  on it.
  """
  mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing propagates to the host
  mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
  # The job /tmp goes on before the binds: mounted after them it would hide
  # every bind below /tmp (a venv or checkout under /tmp, /tmp/$TMPDIR, ...).
  os.makedirs(root + "/tmp", exist_ok=True)
  mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
        f"size={max(tmp_bytes, 1 << 20)},nr_inodes={tmp_inodes},mode=0711")
  # Shallow paths first; a path whose real location is already inside a
  # bound directory is reachable through that bind (or a copied symlink).
  bound: list[str] = []
  for p in sorted({os.path.normpath(p) for p in ro_paths if os.path.lexists(p)},
                  key=lambda s: (s.count("/"), s)):
    if os.path.islink(p):
      _bind_ro(p, root)  # copies the link itself
      continue
    real = os.path.realpath(p)
    if any(real == b or real.startswith(b + "/") for b in bound):
      continue
    _bind_ro(p, root)
    bound.append(real)
  os.makedirs(root + "/dev", exist_ok=True)
  for name in DEVICES:
    if os.path.exists("/dev/" + name):
      open(f"{root}/dev/{name}", "a").close()  # pylint: disable=consider-using-with
      mount("/dev/" + name, f"{root}/dev/{name}", None, MS_BIND)
  os.makedirs(root + "/proc", exist_ok=True)
  mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def enter_root(root: str) -> None:
  os.chroot(root)
  os.chdir("/")
  # The skeleton (mount points only) becomes read-only; /tmp stays writable.
  try:
    mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
  except OSError:
    pass  # root-owned 0755 already keeps jobs out; read-only is a bonus


# ------------------------------------------------------------------ per job

@dataclasses.dataclass(frozen=True)
class JobLimits:
  cpu_s: float
  memory_bytes: int
  file_bytes: int
  open_files: int
  processes: int


def apply_rlimits(lim: JobLimits) -> None:
  cpu = max(1, int(lim.cpu_s + 0.999))
  # Soft limit -> SIGXCPU (reported as a CPU timeout); hard limit one second
  # later -> SIGKILL in case the signal is ignored.
  resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
  resource.setrlimit(resource.RLIMIT_AS, (lim.memory_bytes, lim.memory_bytes))
  resource.setrlimit(resource.RLIMIT_FSIZE, (lim.file_bytes, lim.file_bytes))
  resource.setrlimit(resource.RLIMIT_NOFILE, (lim.open_files, lim.open_files))
  resource.setrlimit(resource.RLIMIT_NPROC, (lim.processes, lim.processes))
  resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
  resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, 0))
  resource.setrlimit(resource.RLIMIT_MSGQUEUE, (0, 0))


def lower_cpu_limit(cpu_s: float) -> None:
  """Caps the CPU still available to `cpu_s` seconds from now (never raises it)."""
  soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
  used = resource.getrusage(resource.RUSAGE_SELF)
  want = max(1, int(used.ru_utime + used.ru_stime + cpu_s + 0.999))
  if soft == resource.RLIM_INFINITY or want < soft:
    new_hard = want + 1 if hard == resource.RLIM_INFINITY else min(want + 1, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (want, new_hard))


_HOME_VARIABLES = ("HOME", "TMPDIR", "MPLCONFIGDIR")


def clean_environ(home: str) -> None:
  """Replaces the whole environment with the jobs' fixed one."""
  os.environ.clear()
  os.environ.update({
      "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "MPLBACKEND": "Agg",
      "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
      **{name: home for name in _HOME_VARIABLES},
  })


def set_home(home: str) -> None:
  """Points the home variables at `home`, after `clean_environ`.

  The zygote cleans its environment once; a job only needs its own home,
  which is much cheaper than rebuilding everything in every fresh process.
  """
  for name in _HOME_VARIABLES:
    os.environ[name] = home


class _CapHeader(ctypes.Structure):
  _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
  _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
              ("inheritable", ctypes.c_uint32)]


def drop_capabilities() -> None:
  header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
  data = (_CapData * 2)()
  _check(_libc.capset(ctypes.byref(header), data), "capset")


def drop_privileges(uid: int | None, gid: int | None) -> None:
  """Switches to `uid`/`gid` when given (needs root), then drops all caps."""
  if uid is not None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
  drop_capabilities()


def can_switch_uid() -> bool:
  """True when we are real root in the initial user namespace."""
  if os.geteuid() != 0:
    return False
  try:
    with open("/proc/self/uid_map") as f:
      first = f.read().split()
    return first[:3] == ["0", "0", "4294967295"]
  except OSError:
    return False
