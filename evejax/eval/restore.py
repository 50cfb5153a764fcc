"""The params of one role from an evejax run directory (`--config.init.workdir=RUN_DIR`).

A recipe run writes `RUN_DIR/config.json` (its config), `RUN_DIR/roles.json`
({role: policy}: roles that share weights share a policy) and orbax steps
`RUN_DIR/checkpoints/<step>/state` holding {"policy/<name>": {"train":
TrainState, ...}, ...}. Only the policy's
`train.params` is read, straight onto the mesh's shardings, with orbax's
partial restore: the optimizer state (twice the params for Adam) is never
materialised. With LoRA those params are the adapter, merged onto the
backbone: the run's warm-started `base` policy when it has one, else the
model the run started from.
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


def saved_policies(state_dir: str) -> list[str]:
  """Names of the policies a saved state holds (its 'policy/<name>' entries)."""
  meta = _ocp().PyTreeCheckpointer().metadata(state_dir)
  tree = getattr(getattr(meta, "item_metadata", meta), "tree", None) or meta
  keys = tree.keys() if hasattr(tree, "keys") else []
  return sorted(k[len("policy/"):] for k in keys if k.startswith("policy/"))


ROLES_FILE = "roles.json"   # a run's {role: the policy holding its weights}


def policy_of(role: str, run_dir: str, policies: list[str]) -> str:
  """The policy that holds `role`'s weights: its own, or the one it shares.

  The run directory says which (its roles.json, written by the recipe runner),
  so evaluating a run never imports its recipe.
  """
  path = os.path.join(run_dir, ROLES_FILE)
  if os.path.isfile(path):
    with open(path) as f:
      roles = json.load(f)
  elif role in policies:
    return role
  else:
    raise RestoreError(
        f"{run_dir!r} has no {ROLES_FILE} (the role -> policy map a run writes beside its "
        f"config.json) and no policy {role!r}; set config.init.role to one of {policies}.")
  if roles.get(role) in policies:
    return roles[role]
  raise RestoreError(f"the run has no role {role!r}; its roles are {sorted(roles)}. Set "
                     "config.init.role to one of them.")


def latest_state_dir(run_dir: str, step: int = 0) -> tuple[str, int]:
  """(RUN_DIR/checkpoints/<step>/state, step) of the latest committed step (or `step`)."""
  steps = committed_steps(run_dir)
  if not steps:
    raise RestoreError(f"{run_dir!r} has no committed checkpoint under checkpoints/<step>/; "
                       "point config.init.workdir at an evejax run directory.")
  if step and step not in steps:
    raise RestoreError(f"{run_dir!r} has no committed step {step}; it has {steps}.")
  step = step or steps[-1]
  return os.path.join(run_dir, "checkpoints", str(step), "state"), step


def restore_trained_params(state_dir: str, policy: str, abstract_params: Any) -> Any:
  """A policy's trained params (with LoRA its adapter), nothing else of its state.

  Args:
    state_dir: a step's state directory (`latest_state_dir`).
    policy: the policy's name.
    abstract_params: ShapeDtypeStructs with shardings (the layout to restore onto).
  """
  ocp = _ocp()
  key = f"policy/{policy}"
  target = {key: {"train": {"params": abstract_params}}}
  restored = ocp.PyTreeCheckpointer().restore(state_dir, args=ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True))
  return restored[key]["train"]["params"]


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)
