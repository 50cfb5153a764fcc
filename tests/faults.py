"""Helpers that inject faults: small file systems, full disks, read-only mounts.

The fault tests run as root on a Linux VM (as CI does); where mounting is
not permitted they are skipped, saying so.
"""
from __future__ import annotations

import os
import subprocess
import tempfile

from evejax import storage


def tmpfs(test, size_kib: int, read_only: bool = False) -> str:
  """A fresh tmpfs of `size_kib` KiB mounted for the test's duration (skips the
  test where mounting is not permitted)."""
  path = tempfile.mkdtemp(prefix="evejax_tmpfs_")
  opts = f"size={size_kib}k" + (",ro" if read_only else "")
  done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", path],
                        capture_output=True, text=True)
  if done.returncode != 0:
    os.rmdir(path)
    test.skipTest(f"cannot mount a tmpfs here ({done.stderr.strip()}): these tests need "
                  "root on Linux, as CI has")

  def unmount():
    subprocess.run(["umount", "-l", path], capture_output=True)
    os.rmdir(path)

  test.addCleanup(unmount)
  return path


def remount_read_only(path: str) -> None:
  subprocess.run(["mount", "-o", "remount,ro", path], check=True, capture_output=True)


def fill(path: str, leave_bytes: int) -> str:
  """Writes a filler file into `path`'s file system until `leave_bytes` are free."""
  filler = os.path.join(path, f"filler-{len(os.listdir(path))}")
  room = storage.free_bytes(path) - leave_bytes
  with open(filler, "wb") as f:
    while room > 0:
      n = min(room, 1 << 20)
      f.write(os.urandom(n))
      room -= n
  return filler
