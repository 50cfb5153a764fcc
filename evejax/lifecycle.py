"""Keeping a run's work when the machine does not: preemption and hangs.

A run is a sequence of schedule units (steps and stage ends, `Schedule`);
after each one the runner may save a checkpoint. Two things end runs on
shared clusters without one:

  preemption   a SIGTERM (Slurm's `--signal`, Kubernetes, a spot VM), a
               SIGINT (Ctrl-C), or a preemption notice that jax's
               coordination service spreads to every host (Cloud TPU
               maintenance events, `multihost_utils.reached_preemption_sync_point`,
               as MaxText and orbax use it). `Preemption` notices it; the
               runner finishes the unit in flight, asks `due(unit)` at the
               unit's boundary (every process gets the same answer at the
               same unit), saves a checkpoint on every process together and
               raises `Preempted`, which `run_recipe` turns into exit 0 and a
               line saying how to resume. A second SIGINT stops at once.
               Where jax's preemption service runs (several processes) it owns
               SIGTERM, so only SIGINT gets a handler here.
  hangs        a stalled collective or a wedged host call makes no progress
               and, without a watchdog, sits silent until the job's wall
               limit. `Watchdog` is beaten at every unit boundary; after
               `timeout_s` without a beat it logs where the run is (phase,
               step, last completed unit), every thread's Python stack, and
               exits with `HANG_EXIT_CODE` on each process (each has its own
               watchdog; a stalled collective stalls them all). A thread that
               holds the GIL forever would also stop the watchdog's thread, so
               `faulthandler` is armed as a backstop a little later: it dumps
               the stacks from C and exits with code 1.

Settings: `config.checkpoint.on_preemption` and `config.checkpoint.watchdog_s`
(`from_config`).
"""
from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable

from absl import logging

from evejax import distributed

# EX_TEMPFAIL: the run can go on from its last checkpoint (e.g. a scheduler may requeue it).
HANG_EXIT_CODE = 75


class Preempted(Exception):
  """The run stopped at a unit boundary on request, with its checkpoint saved."""

  def __init__(self, reason: str, unit: int, where: str, directory: str):
    super().__init__(
        f"stopped by {reason} after {where} (schedule unit {unit}); checkpoint {unit} is "
        f"saved in {directory}. Run the same command again to resume from it.")
    self.reason, self.unit = reason, unit


def _reached_sync_point(unit: int) -> bool:
  """jax's preemption sync point (False where no coordination service runs)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  try:
    return bool(multihost_utils.reached_preemption_sync_point(unit))
  except RuntimeError:   # a multi-process run with the preemption service turned off
    return False


def _jax_preemption_service() -> bool:
  """Whether jax's preemption service runs (it then owns SIGTERM)."""
  try:
    from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  return getattr(jax_distributed.global_state, "preemption_sync_manager", None) is not None


class Preemption:
  """Notices SIGTERM, SIGINT and jax preemption notices; `due(unit)` says when to stop."""

  def __init__(self, enabled: bool = True):
    self.enabled = enabled
    self.reason: str | None = None
    self._previous: dict[int, Any] = {}

  def install(self) -> None:
    """Handles the stop signals until `uninstall` (main thread only: Python's rule)."""
    if not self.enabled or threading.current_thread() is not threading.main_thread():
      return
    signals = [signal.SIGINT] + ([] if _jax_preemption_service() else [signal.SIGTERM])
    for sig in signals:
      self._previous[sig] = signal.signal(sig, self._on_signal)

  def uninstall(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def request(self, reason: str) -> None:
    """Asks the run to stop at the next unit boundary (what a signal does)."""
    if self.reason is None:
      self.reason = reason
      logging.warning("%s: finishing the unit in flight, then saving a checkpoint and "
                      "exiting (press Ctrl-C again to stop at once, without saving).", reason)

  def _on_signal(self, signum: int, frame) -> None:
    del frame
    if signum == signal.SIGINT and self.reason is not None:
      raise KeyboardInterrupt
    self.request(signal.Signals(signum).name)

  def due(self, unit: int) -> str | None:
    """Why the run stops after `unit` schedule units, or None to go on.

    Called at every unit boundary on every process (jax's sync point needs
    each unit); every process gets the same answer.
    """
    if not self.enabled:
      return None
    reason = self.reason
    if _reached_sync_point(unit):
      reason = reason or "a preemption notice"
    if distributed.is_multiprocess():
      reason = next((r for r in distributed.allgather(reason) if r), None)
    return reason


def thread_stacks() -> str:
  """Every Python thread's stack, named, the current thread's included."""
  names = {t.ident: t.name for t in threading.enumerate()}
  parts = []
  for ident, frame in sys._current_frames().items():  # pylint: disable=protected-access
    parts.append(f"--- thread {names.get(ident, '?')} ({ident}):\n"
                 + "".join(traceback.format_stack(frame)))
  return "\n".join(parts)


class Watchdog:
  """Ends a run that makes no progress for `timeout_s` seconds, saying where it hung.

    watchdog = Watchdog(600).start()
    watchdog.beat("solver/iter1 step 3", units_done=17)   # at every boundary
    watchdog.stop()
  """

  def __init__(self, timeout_s: float, *, exit_fn: Callable[[int], Any] = os._exit,
               clock: Callable[[], float] = time.monotonic):
    self.timeout_s = float(timeout_s)
    self._exit, self._clock = exit_fn, clock
    self.where, self.units_done = "starting", None
    self._last = clock()
    self._stopped = threading.Event()
    self._thread: threading.Thread | None = None
    # The C backstop for a thread that holds the GIL: later than the Python watchdog.
    self._backstop_s = self.timeout_s + max(5.0, 0.25 * self.timeout_s)

  @property
  def enabled(self) -> bool:
    return self.timeout_s > 0

  def start(self) -> "Watchdog":
    if self.enabled and self._thread is None:
      self._last = self._clock()
      self._thread = threading.Thread(target=self._watch, name="evejax-watchdog", daemon=True)
      self._thread.start()
      faulthandler.dump_traceback_later(self._backstop_s, exit=True)
    return self

  def beat(self, where: str, units_done: int | None = None) -> None:
    """Progress: the run is now at `where`, with `units_done` schedule units completed."""
    self.where, self.units_done = where, units_done
    self._last = self._clock()
    if self._thread is not None:
      faulthandler.dump_traceback_later(self._backstop_s, exit=True)

  def stop(self) -> None:
    if self._thread is not None:
      faulthandler.cancel_dump_traceback_later()
      self._stopped.set()
      self._thread.join()
      self._thread = None

  def message(self) -> str:
    done = "none" if self.units_done is None else str(self.units_done)
    return (f"evejax watchdog: no progress for {self.timeout_s:g} s in {self.where} (last "
            f"completed schedule unit: {done}) on process {distributed.process_index()}; "
            f"every thread's stack follows. Exiting with code {HANG_EXIT_CODE}: run the same "
            "command again to resume from the last checkpoint, or raise "
            "config.checkpoint.watchdog_s if a unit legitimately takes longer.")

  def _watch(self) -> None:
    while not self._stopped.is_set():
      left = self.timeout_s - (self._clock() - self._last)
      if left <= 0:
        self._fire()
        return
      self._stopped.wait(min(left, 1.0))

  def _fire(self) -> None:
    report = self.message() + "\n" + thread_stacks()
    # Straight to stderr first: a wedged thread may hold the logging lock.
    os.write(2, (report + "\n").encode("utf-8", "replace"))
    logging.error("%s", report)
    logging.flush()
    faulthandler.cancel_dump_traceback_later()
    self._exit(HANG_EXIT_CODE)


class Guard:
  """A run's preemption handling and watchdog, started and stopped together."""

  def __init__(self, on_preemption: bool = True, watchdog_s: float = 0.0, **watchdog_kw):
    self.preemption = Preemption(on_preemption)
    self.watchdog = Watchdog(watchdog_s, **watchdog_kw)

  def start(self) -> "Guard":
    self.preemption.install()
    self.watchdog.start()
    return self

  def beat(self, where: str, units_done: int | None = None) -> None:
    self.watchdog.beat(where, units_done)

  def stop(self) -> None:
    self.watchdog.stop()
    self.preemption.uninstall()


def from_config(block) -> Guard:
  """The guard of `config.checkpoint` (keys missing from an older config: their defaults)."""
  from evejax import config_utils  # pylint: disable=g-import-not-at-top
  defaults = config_utils.checkpoint()
  get = lambda key: block.get(key, defaults[key]) if block is not None else defaults[key]  # noqa: E731
  return Guard(on_preemption=bool(get("on_preemption")), watchdog_s=float(get("watchdog_s")))
