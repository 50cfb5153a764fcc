"""Framing for everything that crosses a process boundary in the sandbox.

A frame is a 4-byte big-endian header length, a UTF-8 JSON object, then as
many raw payload bytes as the header's "n" field says. JSON and raw bytes only:
the host never unpickles anything a job wrote (unpickling is code execution).
Lengths are checked against limits before anything is allocated or decoded.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any

import numpy as np

_LEN = struct.Struct(">I")
MAX_HEADER = 8 << 20  # headers carry source code, tracebacks, captured text


class ProtocolError(ValueError):
  """A frame broke the format or its limits."""


def encode(header: dict[str, Any], payload: bytes | memoryview = b"") -> list:
  """Returns the buffers of one frame (pass to os.writev / sendmsg)."""
  header = dict(header, n=len(payload))
  body = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
  if len(body) > MAX_HEADER:
    raise ProtocolError(f"frame header of {len(body)} bytes exceeds {MAX_HEADER}")
  bufs = [_LEN.pack(len(body)), body]
  if len(payload):
    bufs.append(payload)
  return bufs


def write_frame(fd: int, header: dict[str, Any],
                payload: bytes | memoryview = b"") -> None:
  """Writes one frame to a file descriptor, retrying short writes."""
  for buf in encode(header, payload):
    view = memoryview(buf).cast("B")
    while view:
      n = os.write(fd, view)
      view = view[n:]


def send_frame(sock: socket.socket, header: dict[str, Any],
               payload: bytes | memoryview = b"",
               fds: list[int] | None = None) -> None:
  """Sends one frame on a stream socket, optionally with file descriptors."""
  bufs = encode(header, payload)
  if fds:
    head = b"".join(bytes(b) for b in bufs[:2])
    sent = socket.send_fds(sock, [head], fds)
    bufs = [head[sent:]] + bufs[2:]
  for buf in bufs:
    sock.sendall(buf)


def recv_frame(sock: socket.socket, max_payload: int,
               max_fds: int = 0) -> tuple[dict[str, Any], bytes, list[int]]:
  """Reads one frame from a stream socket; returns (header, payload, fds)."""
  fds: list[int] = []
  if max_fds:
    data, fds, _, _ = socket.recv_fds(sock, 4, max_fds)
    if not data:
      raise EOFError("socket closed")
    head = data + _recv_exact(sock, 4 - len(data))
  else:
    head = _recv_exact(sock, 4)
  (hlen,) = _LEN.unpack(head)
  if hlen > MAX_HEADER:
    raise ProtocolError(f"frame header length {hlen} exceeds {MAX_HEADER}")
  header = _parse_header(_recv_exact(sock, hlen))
  n = header["n"]
  if n > max_payload:
    raise ProtocolError(f"frame payload of {n} bytes exceeds {max_payload}")
  return header, _recv_exact(sock, n) if n else b"", fds


def _recv_exact(sock: socket.socket, n: int) -> bytes:
  buf = bytearray(n)
  view, got = memoryview(buf), 0
  while got < n:
    k = sock.recv_into(view[got:])
    if not k:
      raise EOFError(f"socket closed after {got} of {n} bytes")
    got += k
  return bytes(buf)


def _parse_header(raw: bytes) -> dict[str, Any]:
  try:
    header = json.loads(raw.decode("utf-8"))
  except (UnicodeDecodeError, ValueError, RecursionError, MemoryError) as e:
    raise ProtocolError(f"frame header is not JSON: {e}") from None
  if not isinstance(header, dict):
    raise ProtocolError("frame header is not a JSON object")
  n = header.get("n")
  if not isinstance(n, int) or isinstance(n, bool) or n < 0:
    raise ProtocolError(f"frame header has a bad payload length {n!r}")
  return header


class StreamBuffer:
  """A job's result stream, read straight into one buffer.

  One copy (kernel to buffer) per byte instead of a fresh bytes object per
  read plus an append. Sized from the expected result up front, so it rarely
  grows, and never past `cap` + 1 bytes: one byte over means overflow.
  """

  def __init__(self, expect: int, cap: int):
    self.cap = cap
    self.buf = np.empty(max(1, min(expect, cap + 1)), np.uint8)  # untouched
    self.size = 0

  def read_from(self, fd: int) -> int:
    """Reads what `fd` has (one read); returns how much, 0 at end of stream."""
    if self.size == len(self.buf):
      grown = np.empty(min(2 * len(self.buf), self.cap + 1), np.uint8)
      grown[:self.size] = self.buf[:self.size]
      self.buf = grown
    n = os.readv(fd, [memoryview(self.buf)[self.size:]])
    self.size += n
    return n

  @property
  def overflow(self) -> bool:
    return self.size > self.cap

  def data(self) -> memoryview:
    return memoryview(self.buf)[:self.size]


def split_frames(data: bytes | bytearray | memoryview, max_frames: int,
                 max_header: int = 64 << 10
                 ) -> list[tuple[dict[str, Any], memoryview]]:
  """Parses a complete byte stream into frames (for data a job wrote).

  Raises ProtocolError on any malformed or truncated frame. Payloads are
  returned as views into `data` (no copies). A job's headers are small (an
  image shape, or an error with a capped traceback), hence `max_header`.
  """
  view = memoryview(data).cast("B")
  out, pos = [], 0
  while pos < len(view):
    if len(out) >= max_frames:
      raise ProtocolError(f"more than {max_frames} frames")
    if len(view) - pos < 4:
      raise ProtocolError("truncated frame length")
    (hlen,) = _LEN.unpack(view[pos:pos + 4])
    pos += 4
    if hlen > max_header or hlen > len(view) - pos:
      raise ProtocolError(f"bad frame header length {hlen}")
    header = _parse_header(bytes(view[pos:pos + hlen]))
    pos += hlen
    n = header["n"]
    if n > len(view) - pos:
      raise ProtocolError(
          f"frame declares {n} payload bytes but only {len(view) - pos} follow")
    out.append((header, view[pos:pos + n]))
    pos += n
  return out
