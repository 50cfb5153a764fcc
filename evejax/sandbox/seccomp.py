"""A small seccomp-BPF deny-list installed by each sandboxed job on itself.

This is the second layer under the namespaces: even where the job can reach a
network device or another process, the kernel kills it (SIGSYS) the moment it
asks for an Internet socket, a new process, a debugger attachment, a mount or a
namespace. The filter is built by hand (the BPF instruction set is tiny) so
there is no dependency on libseccomp; syscall numbers were taken from the
kernel headers (asm/unistd_64.h for x86_64, asm-generic/unistd.h for aarch64).

Also denied: SysV IPC objects (they would outlive the job). Denied calls
kill the whole process (SECCOMP_RET_KILL_PROCESS): the failure is
unambiguous for the parent (death by SIGSYS means "forbidden operation") and
the program cannot catch it. Threads stay allowed (clone with CLONE_THREAD);
clone3 answers ENOSYS so that glibc falls back to clone, whose flags we can see.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import os
import struct

# seccomp / prctl constants (linux/seccomp.h, linux/prctl.h, linux/audit.h).
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000

# Classic BPF opcodes.
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
_JA = 0x05

# Offsets inside struct seccomp_data.
_NR = 0
_ARCH = 4
_ARG0_LO = 16  # little-endian low word of args[0]

AF_UNIX = 1
CLONE_THREAD = 0x00010000
_X32_SYSCALL_BIT = 0x40000000

# name -> (x86_64 number, aarch64 number or None where the call does not exist)
_SYSCALLS = {
    "socket": (41, 198), "socketpair": (53, 199), "clone": (56, 220),
    "clone3": (435, 435), "fork": (57, None), "vfork": (58, None),
    "execve": (59, 221), "execveat": (322, 281), "ptrace": (101, 117),
    "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "kcmp": (312, 272), "mount": (165, 40), "umount2": (166, 39),
    "pivot_root": (155, 41), "chroot": (161, 51), "unshare": (272, 97),
    "setns": (308, 268), "bpf": (321, 280), "perf_event_open": (298, 241),
    "userfaultfd": (323, 282), "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218),
    "init_module": (175, 105), "finit_module": (313, 273),
    "delete_module": (176, 106), "kexec_load": (246, 104),
    "kexec_file_load": (320, 294), "reboot": (169, 142), "swapon": (167, 224),
    "swapoff": (168, 225), "acct": (163, 89), "syslog": (103, 116),
    "quotactl": (179, 60), "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264), "settimeofday": (164, 170),
    "clock_settime": (227, 112), "adjtimex": (159, 171),
    "clock_adjtime": (305, 266), "sethostname": (170, 161),
    "setdomainname": (171, 162), "vhangup": (153, 58),
    "fanotify_init": (300, 262), "lookup_dcookie": (212, 18),
    "pidfd_getfd": (438, 438), "mount_setattr": (442, 442),
    "move_mount": (429, 429), "open_tree": (428, 428), "fsopen": (430, 430),
    "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "iopl": (172, None), "ioperm": (173, None), "uselib": (134, None),
    # SysV IPC objects outlive the process that made them: a job could leave
    # memory behind or pass data to the next job of the same worker.
    "shmget": (29, 194), "semget": (64, 190), "msgget": (68, 186),
}

# Everything here kills the process; socket/socketpair/clone/clone3 are
# handled separately because their verdict depends on an argument.
DENIED = tuple(n for n in _SYSCALLS
               if n not in ("socket", "socketpair", "clone", "clone3"))

_ARCHES = {
    # machine name -> (AUDIT_ARCH value, column in _SYSCALLS)
    "x86_64": (0xC000003E, 0),
    "amd64": (0xC000003E, 0),
    "aarch64": (0xC00000B7, 1),
    "arm64": (0xC00000B7, 1),
}


class SeccompUnavailable(RuntimeError):
  """The filter cannot be built or installed on this machine."""


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
  return struct.pack("=HBBI", code, jt, jf, k)


def build_filter(machine: str | None = None) -> bytes:
  """Returns the BPF program (packed struct sock_filter array) for `machine`."""
  machine = (machine or platform.machine()).lower()
  if machine not in _ARCHES:
    raise SeccompUnavailable(
        f"no seccomp syscall table for architecture {machine!r}")
  audit_arch, col = _ARCHES[machine]
  nr = lambda name: _SYSCALLS[name][col]  # noqa: E731
  denied = [nr(n) for n in DENIED if nr(n) is not None]
  forks = [nr(n) for n in ("fork", "vfork") if nr(n) is not None]

  # Program layout (jump offsets are relative to the next instruction):
  #   0: A = arch;  1: arch ok? else kill
  #   2: A = nr;    3: x32 ABI numbers -> kill (x86_64 only; harmless elsewhere)
  #   then one JEQ per denied nr -> KILL, and dispatch for socket/clone.
  prog: list[bytes] = []
  kill_label, allow_label = "KILL", "ALLOW"
  pending: list[tuple[int, str | None, str | None]] = []

  def emit(code, jt=0, jf=0, k=0, jt_label=None, jf_label=None):
    prog.append((code, jt, jf, k))
    if jt_label or jf_label:
      pending.append((len(prog) - 1, jt_label, jf_label))

  emit(_LD_W_ABS, k=_ARCH)
  emit(_JEQ_K, k=audit_arch, jt=0, jf_label=kill_label)
  emit(_LD_W_ABS, k=_NR)
  if col == 0:
    emit(_JGE_K, k=_X32_SYSCALL_BIT, jt_label=kill_label, jf=0)
  for n in denied + forks:
    emit(_JEQ_K, k=n, jt_label=kill_label, jf=0)
  emit(_JEQ_K, k=nr("socket"), jt_label="SOCK", jf=0)
  emit(_JEQ_K, k=nr("socketpair"), jt_label="SOCK", jf=0)
  emit(_JEQ_K, k=nr("clone"), jt_label="CLONE", jf=0)
  emit(_JEQ_K, k=nr("clone3"), jt_label="ENOSYS", jf=0)
  # BPF jumps only go forward, so the argument checks come before the
  # shared return instructions.
  labels = {}
  emit(_JA, k=0, jt_label=None)  # placeholder, patched below to jump to ALLOW
  ja_idx = len(prog) - 1
  # socket(domain, ...): only AF_UNIX (pipes between threads, multiprocessing
  # style socketpairs) is allowed; anything that could reach a network dies.
  labels["SOCK"] = len(prog)
  emit(_LD_W_ABS, k=_ARG0_LO)
  emit(_JEQ_K, k=AF_UNIX, jt_label=allow_label, jf_label=kill_label)
  # clone(flags, ...): threads yes, new processes no.
  labels["CLONE"] = len(prog)
  emit(_LD_W_ABS, k=_ARG0_LO)
  emit(_JSET_K, k=CLONE_THREAD, jt_label=allow_label, jf_label=kill_label)
  labels[allow_label] = len(prog)
  emit(_RET_K, k=RET_ALLOW)
  labels[kill_label] = len(prog)
  emit(_RET_K, k=RET_KILL_PROCESS)
  labels["ENOSYS"] = len(prog)
  emit(_RET_K, k=RET_ERRNO | errno.ENOSYS)
  prog[ja_idx] = (_JA, 0, 0, labels[allow_label] - ja_idx - 1)

  for idx, jt_label, jf_label in pending:
    code, jt, jf, k = prog[idx]
    if jt_label:
      jt = labels[jt_label] - idx - 1
    if jf_label:
      jf = labels[jf_label] - idx - 1
    if not (0 <= jt < 256 and 0 <= jf < 256):
      raise SeccompUnavailable("seccomp program too long for BPF jumps")
    prog[idx] = (code, jt, jf, k)
  return b"".join(_insn(*p) for p in prog)


class _SockFprog(ctypes.Structure):
  _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class Installer:
  """Holds a built filter and installs it with prctl (no allocation later).

  Built once in the worker before forking so that the child only makes two
  prctl calls; the buffers live as long as this object.
  """

  def __init__(self, machine: str | None = None):
    self._code = build_filter(machine)
    self._buf = ctypes.create_string_buffer(self._code, len(self._code))
    self._prog = _SockFprog(len(self._code) // 8,
                            ctypes.cast(self._buf, ctypes.c_void_p))
    self._libc = ctypes.CDLL(None, use_errno=True)
    self._libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong,
                                 ctypes.c_ulong, ctypes.c_ulong]

  @property
  def num_instructions(self) -> int:
    return len(self._code) // 8

  def install(self) -> None:
    """Installs the filter on the calling thread (call when single-threaded)."""
    libc = self._libc
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
      e = ctypes.get_errno()
      raise SeccompUnavailable(f"PR_SET_NO_NEW_PRIVS failed: {os_strerror(e)}")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER,
                  ctypes.addressof(self._prog), 0, 0) != 0:
      e = ctypes.get_errno()
      raise SeccompUnavailable(f"PR_SET_SECCOMP failed: {os_strerror(e)}")


def os_strerror(e: int) -> str:
  return f"[errno {e}] {os.strerror(e)}"
