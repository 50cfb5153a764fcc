"""Runs model-written image programs behind a real security boundary.

Public API (imported lazily so that the worker process starts light):
`SandboxPool`, `SandboxConfig`, `CheckConfig`, `EveJob`, `SvgJob`, `PlotJob`,
`JobResult`, `Reason`. See pool.py for usage and SANDBOX_NOTES.md for the
isolation layers.
"""

import importlib

_EXPORTS = {
    "SandboxPool": "pool", "SandboxConfig": "pool",
    "SandboxUnavailable": "pool", "SandboxBroken": "pool", "CheckConfig": "checks",
    "EveJob": "jobs", "SvgJob": "jobs", "PlotJob": "jobs",
    "JobResult": "jobs", "Reason": "jobs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    module = importlib.import_module(f"evejax.sandbox.{_EXPORTS[name]}")
    return getattr(module, name)
  raise AttributeError(f"module 'evejax.sandbox' has no attribute {name!r}")
