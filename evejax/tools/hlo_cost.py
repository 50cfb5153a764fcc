"""FLOPs and bytes of a compiled program with every loop counted by its trip count.

XLA's cost analysis (`Compiled.cost_analysis()`) walks the optimized HLO once:
a `while` body counts once, however many times it runs. evejax's programs are
mostly loops (scanned decoder and vision layers, micro-batches, log-softmax
chunks, the decode loop), so the raw number of a train step is about one
layer's worth. Measured on the TPU compiler: a 10-step `lax.scan` of a matmul
reports the FLOPs of one matmul.

`loop_aware_cost` re-runs XLA's own cost model (`hlo_module_cost_analysis`,
the host client's, on the target compiler's optimized HLO text: it gives the
TPU compiler's FLOPs exactly on loop-free programs) once per loop body, with
that body as the entry computation, and combines them:

    F(C) = once(C) + sum over loops w directly in C of trip(w) * F(body(w)) - once(body(w))

Trip counts come from each loop's condition (`counters + offset < constant`
terms, in the condition or a fusion it calls: `lax.scan` lowers to `i < n`)
the counters' initial values (constants, or where the loop it continues
left its counter: the decode stages) and their steps (XLA's unrolled loops,
such as the windowed einsums that overlap an FSDP all-gather with its
matmul, step their counter by 2). A data-dependent exit (the decode loop
stops when every row has finished) counts its bound: the worst case. A loop
whose bound cannot be read counts once and is reported.

Bytes: XLA's host cost model counts bytes differently from the TPU's (tiled
layouts, memory spaces), so the TPU compiler's own number is scaled by the
host model's loop-aware / once ratio; FLOPs need no scaling.
"""
from __future__ import annotations

import dataclasses
import re

import jax

_COMP = re.compile(r"^(ENTRY )?%([\w.\-]+) ")
_WHILE = re.compile(r"%([\w.\-]+) = .*? while\(%([\w.\-]+)\), condition=%([\w.\-]+), "
                    r"body=%([\w.\-]+)")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition|branch_computations|async_execution_thread"
                    r"|called_computations)=\{?(%[\w.\-]+(?:, %[\w.\-]+)*)\}?")
_NAME = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = ")
_METADATA = re.compile(r", metadata=\{[^{}]*\}")


@dataclasses.dataclass
class Cost:
  flops: float
  bytes_accessed: float
  flops_once: float             # XLA's cost analysis as it reports them
  bytes_once: float
  loops: list[tuple[str, int]]  # (loop, trip count) of every while loop
  unknown_loops: list[str]      # loops counted once: their bound could not be read


def _computations(text: str) -> tuple[str, list[str], dict[str, list[str]], str]:
  """(header, order of names, name -> lines, entry name) of an HLO module's text."""
  lines = text.splitlines()
  header = lines[0]
  comps: dict[str, list[str]] = {}
  order, entry, current = [], "", None
  for line in lines[1:]:
    m = _COMP.match(line)
    if m and line.rstrip().endswith("{"):
      current = m.group(2)
      order.append(current)
      comps[current] = [line]
      if m.group(1):
        entry = current
    elif current is not None:
      comps[current].append(line)
      if line.rstrip() == "}":
        current = None
  return header, order, comps, entry


def _strip_header(header: str) -> str:
  """The module line without attributes tied to its entry (layout, aliasing, schedule)."""
  for key in ("entry_computation_layout=", "input_output_alias=", "buffer_donor="):
    while key in header:
      start = header.index(key)
      depth, j = 0, start + len(key)
      while j < len(header):
        depth += {"{": 1, "}": -1}.get(header[j], 0)
        j += 1
        if depth == 0:
          break
      header = header[:start].rstrip(", ") + header[j:]
  return header.replace("is_scheduled=true", "").replace(", ,", ",").rstrip(", ")


def _reachable(root: str, callees: dict[str, set[str]]) -> set[str]:
  seen, stack = set(), [root]
  while stack:
    c = stack.pop()
    if c not in seen:
      seen.add(c)
      stack += list(callees.get(c, ()))
  return seen


def _module_with_entry(header, order, comps, entry, new_entry, callees) -> str:
  """The module's text with `new_entry` as its entry and only what it calls."""
  keep = _reachable(new_entry, callees)
  parts = [_strip_header(header)]
  for name in order:
    if name not in keep:
      continue
    body = list(comps[name])
    first = body[0]
    if name == entry:
      first = first[len("ENTRY "):]
    if name == new_entry:
      first = "ENTRY " + first
    parts.append("\n".join([first] + body[1:]))
  return "\n\n".join(parts) + "\n"


def _cost_once(module_text: str) -> tuple[float, float]:
  from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
  from jaxlib import _hlo  # pylint: disable=g-import-not-at-top
  module = _hlo.hlo_module_from_text(module_text)
  client = jax.devices("cpu")[0].client
  cost = _jax.hlo_module_cost_analysis(client, module)
  return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))


def _closing(text: str, i: int) -> int:
  """Index just past the bracket that closes the one at text[i]."""
  depth = 0
  for j in range(i, len(text)):
    depth += {"(": 1, "{": 1, "[": 1, ")": -1, "}": -1, "]": -1}.get(text[j], 0)
    if depth == 0:
      return j + 1
  return len(text)


def _parse(line: str) -> tuple[str, str, str, str] | None:
  """(name, opcode, operands, attributes) of one instruction line."""
  m = _NAME.match(line)
  if not m:
    return None
  rest = line[m.end():]
  shape_end = _closing(rest, 0) if rest.startswith("(") else rest.find(" ")
  rest = rest[shape_end:].lstrip()
  paren = rest.find("(")
  if paren <= 0:
    return None
  end = _closing(rest, paren)
  return m.group(1), rest[:paren], rest[paren + 1:end - 1], rest[end:]


def _defs(lines: list[str]) -> dict[str, tuple[str, str, str]]:
  """name -> (opcode, operands, attributes) of a computation's instructions."""
  out = {}
  for line in lines[1:]:
    parsed = _parse(line)
    if parsed:
      out[parsed[0]] = parsed[1:]
  return out


def _operands(args: str) -> list[str]:
  return [a.strip().lstrip("%") for a in re.sub(r"/\*index=\d+\*/", "", args).split(",")]


def _in_fusion(called: str, operands: list[str], resolve, comps: dict[str, list[str]]):
  """(the fused computation's defs, a lookup of its names): its parameters resolve
  to the fusion's operands in the calling computation, through `resolve`."""
  inner = _defs(comps.get(called, []))

  def look(name):
    d = inner.get(name)
    if d and d[0] == "parameter" and d[1].strip().isdigit() and int(d[1]) < len(operands):
      return resolve(operands[int(d[1])])
    return d if d is not None else resolve(name)   # names are unique in a module
  return inner, look


def _affine(name: str, resolve, comps: dict[str, list[str]], depth: int = 0
            ) -> tuple[tuple[int, ...], int] | None:
  """(loop-tuple indices, constant) when `name` is a sum of loop counters and
  constants, through copies, converts and fusions that wrap the sum; else None."""
  d = resolve(name)
  if d is None or depth > 8:
    return None
  op, args, attrs = d
  if op in ("copy", "bitcast", "convert"):
    return _affine(_operands(args)[0], resolve, comps, depth + 1)
  if op == "get-tuple-element":
    index = re.search(r"index=(\d+)", attrs)
    return ((int(index.group(1)),), 0) if index else None
  if op == "constant":
    try:
      return (), int(args)
    except ValueError:
      return None
  if op == "add":
    parts = [_affine(a, resolve, comps, depth + 1) for a in _operands(args)[:2]]
    if all(parts):
      return parts[0][0] + parts[1][0], parts[0][1] + parts[1][1]
    return None
  called = re.search(r"calls=%([\w.\-]+)", attrs)
  if op == "fusion" and called:
    inner, look = _in_fusion(called.group(1), _operands(args), resolve, comps)
    root = next((n for n, _ in _roots(comps.get(called.group(1), []))), None)
    return _affine(root, look, comps, depth + 1) if root in inner else None
  return None


def _roots(lines: list[str]):
  """(name, (opcode, operands, attributes)) of a computation's ROOT line."""
  for line in lines:
    if line.lstrip().startswith("ROOT "):
      parsed = _parse(line)
      if parsed:
        yield parsed[0], parsed[1:]


def _bounds(cond: str, comps: dict[str, list[str]]) -> list[tuple[tuple[int, ...], int, int]]:
  """The condition's `sum of counters + offset < limit` terms, as (tuple indices, offset, limit).

  A compare may sit in the condition or in a fusion it calls; fusion
  parameters are followed back to the condition's operands. The loop runs
  while every term holds: `lax.scan` lowers to `i < n`, a decode stage to
  `step + 1 < end` (and its `any(running)`, which has no bound).
  """
  defs = _defs(comps.get(cond, []))

  def compares(lines_defs, resolve):
    out = []
    for _, (op, args, attrs) in lines_defs.items():
      if op != "compare" or "direction=LT" not in attrs:
        continue
      a, b = _operands(args)[:2]
      lhs, rhs = _affine(a, resolve, comps), _affine(b, resolve, comps)
      if lhs and rhs and lhs[0] and not rhs[0]:
        out.append((lhs[0], lhs[1], rhs[1]))
    return out

  found = compares(defs, defs.get)
  for _, (op, args, attrs) in defs.items():
    called = re.search(r"calls=%([\w.\-]+)", attrs)
    if op == "fusion" and called:
      found += compares(*_in_fusion(called.group(1), _operands(args), defs.get, comps))
  return found


def _step(body: list[str], index: int, comps: dict[str, list[str]]) -> int:
  """How much loop counter `index` grows per iteration of `body`: the constant
  in `root[index] = counter + c`; 1 where it is not that form (the trip count
  is then an upper bound).

  XLA's loop unrolling (the "wide" loops of windowed einsums and double
  buffering) steps a counter by the unroll factor, not by one.
  """
  root = next((d for _, d in _roots(body)), None)
  if not root or root[0] != "tuple" or index >= len(_operands(root[1])):
    return 1
  found = _affine(_operands(root[1])[index], _defs(body).get, comps)
  return found[1] if found and found[0] == (index,) and found[1] > 0 else 1


def _start(defs, operand: str, index: int, final) -> int:
  """Element `index` of a loop's initial tuple: a constant, or where the loop it
  continues left its counter (`final(loop, index)`); else 0 (the trip count is
  then an upper bound)."""
  op = defs.get(operand.lstrip("%"))
  if not op or op[0] != "tuple":
    return 0
  elements = _operands(op[1])
  if index >= len(elements):
    return 0
  name = elements[index]
  for _ in range(8):   # through copies and bitcasts
    d = defs.get(name)
    if d is None:
      return 0
    if d[0] == "constant":
      try:
        return int(d[1])
      except ValueError:
        return 0
    if d[0] == "get-tuple-element":
      i = re.search(r"index=(\d+)", d[2])
      return final(_operands(d[1])[0], int(i.group(1))) if i else 0
    if d[0] in ("copy", "bitcast"):
      name = _operands(d[1])[0]
      continue
    return 0
  return 0


def loop_aware_cost(compiled: jax.stages.Compiled) -> Cost:
  """FLOPs and bytes of one run of `compiled`, loops counted by trip count (docstring)."""
  raw = compiled.cost_analysis()
  if isinstance(raw, list):   # older jax: one dict per module
    raw = raw[0] if raw else None
  # jax's GPU compile-only executables report no cost analysis: the host's model stands in.
  target_has_cost = bool(raw)
  raw = raw or {}
  tpu_flops, tpu_bytes = float(raw.get("flops", 0.0)), float(raw.get("bytes accessed", 0.0))
  # Metadata (op names, stack frame ids into a table the text does not carry)
  # is most of a large program's text and no part of its cost.
  text = _METADATA.sub("", compiled.as_text())
  header, order, comps, entry = _computations(text)

  # Which loops sit directly in which computation (through calls, fusions and
  # branches, but not through another loop's body).
  loops: dict[str, list[tuple[str, str, str, str]]] = {}   # owner -> (while, operand, cond, body)
  for name in order:
    for line in comps[name]:
      m = _WHILE.search(line)
      if m:
        loops.setdefault(name, []).append(m.groups())
  # Calls through fusions, branches and reductions (`callees`), and the same
  # with loop bodies and conditions (`everything`: what a module needs).
  callees: dict[str, set[str]] = {}
  everything: dict[str, set[str]] = {}
  for name in order:
    found, all_found = set(), set()
    for line in comps[name]:
      for group in _CALLS.findall(line):
        called = {c.strip().lstrip("%") for c in group.split(",")}
        all_found |= called
        if " while(" not in line:
          found |= called
    callees[name], everything[name] = found, all_found

  def owned(root: str) -> list[tuple[str, str, str, str]]:
    """Loops directly under `root` (through calls, fusions and branches)."""
    reach = _reachable(root, callees)
    return [w for c in order if c in reach for w in loops.get(c, [])]

  bounds = {w: _bounds(cond, comps) for name in order for w, _, cond, _ in loops.get(name, [])}
  operands = {w: operand for name in order for w, operand, _, _ in loops.get(name, [])}
  bodies = {w: body for name in order for w, _, _, body in loops.get(name, [])}
  all_defs = {}
  for name in order:
    all_defs.update(_defs(comps[name]))
  trips_of: dict[str, int | None] = {}

  def trip_of(w: str, depth: int = 0) -> int | None:
    """Iterations of loop `w` (None: its bound could not be read)."""
    if w not in trips_of:
      trip = None
      for indices, offset, limit in bounds.get(w) or []:
        starts = sum(_start(all_defs, operands[w], i,
                            lambda v, k: final(v, k, depth + 1)) for i in indices)
        step = sum(_step(comps[bodies[w]], i, comps) for i in indices)
        n = -(-max(limit - offset - starts, 0) // step)
        trip = n if trip is None else min(trip, n)
      trips_of[w] = trip
    return trips_of[w]

  def final(w: str, index: int, depth: int) -> int:
    """The value loop `w` leaves in its counter `index` (0 when unknown)."""
    if depth > 16 or w not in bounds:
      return 0
    for indices, _, _ in bounds[w]:
      if indices == (index,):
        start = _start(all_defs, operands[w], index, lambda v, k: final(v, k, depth + 1))
        return start + (trip_of(w, depth) or 0) * _step(comps[bodies[w]], index, comps)
    return 0

  once_cache: dict[str, tuple[float, float]] = {}

  def once(c: str) -> tuple[float, float]:
    if c not in once_cache:
      once_cache[c] = _cost_once(_module_with_entry(header, order, comps, entry, c,
                                                    everything))
    return once_cache[c]

  trips: list[tuple[str, int]] = []
  unknown: list[str] = []

  def full(c: str) -> tuple[float, float]:
    f, b = once(c)
    for w, _, _, body in owned(c):
      trip = trip_of(w)
      if trip is None:
        trip = 1
        unknown.append(w)
      trips.append((w, trip))
      bf, bb = full(body)
      of, ob = once(body)
      f += trip * bf - of
      b += trip * bb - ob
    return f, b

  host_once_flops, host_once_bytes = once(entry)
  flops, host_bytes = full(entry)
  if not target_has_cost:
    return Cost(flops=flops, bytes_accessed=host_bytes, flops_once=host_once_flops,
                bytes_once=host_once_bytes, loops=trips, unknown_loops=unknown)
  # The host model matches the TPU's FLOPs; its bytes differ, so scale the TPU's.
  scale = host_bytes / host_once_bytes if host_once_bytes else 1.0
  if abs(host_once_flops - tpu_flops) > 1e-3 * max(tpu_flops, 1.0):
    # Another compiler's counting (a GPU's): scale its FLOPs the same way.
    flops = tpu_flops * (flops / host_once_flops) if host_once_flops else tpu_flops
  return Cost(flops=flops, bytes_accessed=tpu_bytes * scale, flops_once=tpu_flops,
              bytes_once=tpu_bytes, loops=trips, unknown_loops=unknown)
