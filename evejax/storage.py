"""Writing a run's files when the disk is full or the workdir unwritable.

A run writes four kinds of files: checkpoints (orbax, in a background thread),
metrics and text (JSONL, one line a record), galleries (HTML, whole pages)
and TensorBoard events (tensorboardX, in its own thread). On a full file
system, an exceeded quota, a read-only mount or a workdir without write
permission, each would otherwise fail in its own way: orbax logs four
tracebacks and raises a ValueError carrying a tensorstore status, a text
file keeps half a line, tensorboardX's writer thread dies and the next
`add_scalar` blocks forever on its full queue. Here every such failure
becomes one `StorageError` that names the file, what it needed, what is
free and the fix, and leaves what was there before intact:

  checkpoints   `check_free` before a save: the latest checkpoint's size on
                disk (else the state's raw bytes, an upper bound: orbax
                compresses) must be free; a save that fails all the same is
                reported by `from_error` and never committed (orbax renames
                a step's directory only when it is complete)
  JSONL         `append`: one write per record; a failed write is cut back
                to the record's start, so no torn line is left behind
                (`drop_torn_tail` cuts one left by a killed process)
  pages         `write_atomic`: a temporary file renamed over the old one,
                removed when the write fails

`from_error` recognises the errors by errno through the exception chain, and
by tensorstore's `os_error_code` inside orbax's messages.
"""
from __future__ import annotations

import errno
import os
import re

# errno -> what it means for the user.
_WHY = {
    errno.ENOSPC: "the file system is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is larger than the file system allows",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
# Room a record or page needs beyond its own bytes (file system metadata).
SLACK_BYTES = 64 << 10


class StorageError(RuntimeError):
  """A run's file could not be written: full disk, quota, read-only or no permission."""

  def __init__(self, message: str, path: str = "", needed: int | None = None):
    super().__init__(message)
    self.path, self.needed = path, needed


def human(n: int | None) -> str:
  """'12.3 MiB' (binary units), or 'unknown'."""
  if n is None:
    return "unknown"
  size = float(n)
  for unit in ("bytes", "KiB", "MiB", "GiB"):
    if size < 1024 or unit == "GiB":
      return f"{int(size)} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
    size /= 1024
  return f"{size:.1f} TiB"


def _existing(path: str) -> str:
  """`path`, or its nearest ancestor that exists (where a write would land)."""
  path = os.path.abspath(path)
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  return path


def free_bytes(path: str) -> int | None:
  """Bytes an unprivileged writer may still use on `path`'s file system (its
  nearest existing ancestor's), or None when that cannot be told."""
  try:
    st = os.statvfs(_existing(path))
  except OSError:
    return None
  return st.f_bavail * st.f_frsize


def _unwritable(path: str) -> int | None:
  """EROFS or EACCES when nothing can be written at `path`, else None."""
  existing = _existing(path)
  if os.access(existing, os.W_OK):
    return None
  try:
    read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
  except OSError:
    read_only = False
  return errno.EROFS if read_only else errno.EACCES


def tree_bytes(path: str) -> int:
  """Bytes of the files under `path` (0 when it does not exist)."""
  total = 0
  for root, _, files in os.walk(path):
    for name in files:
      try:
        total += os.lstat(os.path.join(root, name)).st_size
      except OSError:
        pass
  return total


def _errno_of(error: BaseException) -> int | None:
  """The storage errno anywhere in `error`'s chain (raised-from and context)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    code = getattr(error, "errno", None) if isinstance(error, OSError) else None
    if code is None:
      match = _OS_ERROR_CODE.search(str(error))
      code = int(match.group(1)) if match else None
    if code in _WHY:
      return code
    error = error.__cause__ or error.__context__
  return None


def _message(what: str, path: str, why: str, needed: int | None, after: str) -> str:
  free = free_bytes(path)
  need = f"needs about {human(needed)}, " if needed is not None else ""
  fix = ("free space there (or raise the quota), or point --workdir at a file system "
         "with room" if why in (_WHY[errno.ENOSPC], _WHY[errno.EDQUOT], _WHY[errno.EFBIG])
         else "make it writable, or point --workdir at a writable directory")
  return (f"cannot write {what} to {path}: {why} ({need}{human(free)} free). "
          f"{after + ' ' if after else ''}Fix: {fix}, then run the same command again "
          "to resume from the last checkpoint.")


def from_error(error: BaseException, path: str, what: str, needed: int | None = None,
               after: str = "") -> StorageError | None:
  """A StorageError for `error` when it is a full / unwritable file system, else None.

  `after`: what the user should know about the state left behind (e.g. which
  checkpoint is intact).
  """
  code = _errno_of(error)
  if code is None:
    return None
  return StorageError(_message(what, path, _WHY[code], needed, after), path, needed)


def check_free(path: str, needed: int, what: str, after: str = "") -> None:
  """Raises StorageError before writing `needed` bytes to `path` when they are not
  free, or when nothing can be written there."""
  code = _unwritable(path)
  if code is not None:
    raise StorageError(_message(what, path, _WHY[code], needed, after), path, needed)
  free = free_bytes(path)
  if free is not None and free < needed + SLACK_BYTES:
    raise StorageError(_message(what, path, _WHY[errno.ENOSPC], needed, after), path, needed)


def append(fd: int, data: bytes, path: str, what: str) -> None:
  """Appends `data` to the O_APPEND descriptor `fd` whole, or not at all.

  A write that fails midway (a full disk takes what fits, then refuses the
  rest) is cut back to where the record began, so the file never ends in a
  torn record; the failure is a StorageError naming `path`.
  """
  start = os.lseek(fd, 0, os.SEEK_END)
  view = memoryview(data)
  try:
    while view:
      view = view[os.write(fd, view):]
  except OSError as e:
    try:
      os.ftruncate(fd, start)
    except OSError:
      pass
    raise (from_error(e, path, what, len(data)) or e) from None


def write_atomic(path: str, data: str | bytes, what: str) -> None:
  """Writes `path` through a temporary file renamed over it: the old file stays
  whole until the new one is complete; a failed write removes the temporary file."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
  tmp = path + ".tmp"
  try:
    with open(tmp, "wb") as f:
      f.write(payload)
    os.replace(tmp, path)
  except OSError as e:
    try:
      os.remove(tmp)
    except OSError:
      pass
    raise (from_error(e, path, what, len(payload)) or e) from None


def drop_torn_tail(path: str) -> int:
  """Cuts a last line without its newline (a killed write), so appends start clean.

  Returns the bytes cut.
  """
  if not os.path.exists(path) or os.path.getsize(path) == 0:
    return 0
  with open(path, "rb+") as f:
    data = f.read()
    if data.endswith(b"\n"):
      return 0
    keep = data.rfind(b"\n") + 1
    f.truncate(keep)
    return len(data) - keep
