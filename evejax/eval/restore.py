"""The params of one role from an evejax run directory (`--config.init.workdir=RUN_DIR`).

A run writes `RUN_DIR/config.json` (its config) and orbax steps
`RUN_DIR/checkpoints/<step>/state` holding {role: TrainState, ...}. Only
`state[role].params` is read, straight onto the mesh's shardings, with
orbax's partial restore: the optimizer state (twice the params for Adam) is
never materialised.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax

_COMMIT_MARKER = "commit_success.txt"


class RestoreError(ValueError):
  """A run directory without a readable checkpoint or role."""


def run_config(run_dir: str) -> dict[str, Any] | None:
  """The run's config.json as a dict, or None when the run did not write one."""
  path = os.path.join(run_dir, "config.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def committed_steps(run_dir: str) -> list[int]:
  """Steps under RUN_DIR/checkpoints whose state save committed, oldest first."""
  root = os.path.join(run_dir, "checkpoints")
  if not os.path.isdir(root):
    return []
  return sorted(int(name) for name in os.listdir(root) if name.isdigit()
                and os.path.exists(os.path.join(root, name, "state", _COMMIT_MARKER)))


def _ocp():
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return ocp


def saved_roles(state_dir: str) -> list[str]:
  """Top-level keys of a saved state (the run's roles, e.g. challenger, solver)."""
  meta = _ocp().PyTreeCheckpointer().metadata(state_dir)
  tree = getattr(getattr(meta, "item_metadata", meta), "tree", None) or meta
  return sorted(tree.keys()) if hasattr(tree, "keys") else []


def restore_params(run_dir: str, role: str, abstract_params: Any,
                   step: int = 0) -> tuple[Any, int]:
  """(params of `role`, step) from the latest committed step (or `step`).

  Args:
    run_dir: the evejax run directory.
    role: the role whose params to read ("solver").
    abstract_params: ShapeDtypeStructs with shardings (the layout to restore onto).
    step: a specific step; 0 = the latest committed one.
  """
  steps = committed_steps(run_dir)
  if not steps:
    raise RestoreError(f"{run_dir!r} has no committed checkpoint under checkpoints/<step>/; "
                       "point config.init.workdir at an evejax run directory.")
  if step and step not in steps:
    raise RestoreError(f"{run_dir!r} has no committed step {step}; it has {steps}.")
  step = step or steps[-1]
  state_dir = os.path.join(run_dir, "checkpoints", str(step), "state")
  roles = saved_roles(state_dir)
  if role not in roles:
    raise RestoreError(f"Checkpoint {state_dir} has no role {role!r}; it holds {roles}. "
                       "Set config.init.role to one of them.")
  ocp = _ocp()
  target = {role: {"params": abstract_params}}
  restored = ocp.PyTreeCheckpointer().restore(state_dir, args=ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True))
  return restored[role]["params"], step


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)
