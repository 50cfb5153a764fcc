"""Helpers shared by the recipe tests: short configs, recording scripted roles,
and resuming a run from a copy of its checkpoints up to a schedule position."""
from __future__ import annotations

import os
import shutil

import numpy as np

from evejax import config_utils
from evejax import observe
from evejax.recipes import role as role_lib


def short_config(spec: str, **overrides):
  """A preset on one device without progress bars, with `overrides` ("a.b": value)."""
  c = config_utils.load_config(spec)
  c.mesh.devices = 1
  c.log.progress = False
  for k, v in overrides.items():
    config_utils.set_value(c, k, v)
  return c


class Recording(role_lib.Role):
  """A role that records every update it makes: (name, one reward per row)."""

  log: list | None = None

  def update(self, samples, rewards):
    self.log.append((self.name, [float(getattr(r, "value", r)) for r in rewards]))
    return super().update(samples, rewards)


def recording(log: list, reply):
  """A role wrapper: the role replying from `reply` and recording its updates in `log`."""
  def wrap(role: role_lib.Role) -> Recording:
    out = Recording(role.name, role.policy, role.sampling,
                    replies=role_lib.ScriptedReplies(reply), snapshot=role.snapshot)
    out.log = log
    return out
  return wrap


def records(workdir: str) -> list[dict]:
  return observe.read_jsonl(os.path.join(workdir, "metrics.jsonl"))


def by_step(recs: list[dict], key: str) -> dict[int, float]:
  return {r["step"]: r[key] for r in recs if key in r}


def copy_checkpoints(source: str, target: str, up_to: int) -> None:
  """A workdir `target` holding `source`'s checkpoints up to position `up_to`: a run
  killed right after that position, as the resumed run sees it."""
  os.makedirs(os.path.join(target, "checkpoints"))
  for name in os.listdir(os.path.join(source, "checkpoints")):
    if name.isdigit() and int(name) <= up_to:
      shutil.copytree(os.path.join(source, "checkpoints", name),
                      os.path.join(target, "checkpoints", name))


def assert_same_by_step(test, full: list[dict], resumed: list[dict], keys) -> None:
  """Every key the resumed run logged equals the uninterrupted run's at each step."""
  for key in keys:
    b = by_step(resumed, key)
    a = {s: v for s, v in by_step(full, key).items() if s in b}
    test.assertNotEmpty(b, key)
    test.assertEqual(sorted(a), sorted(b), key)
    np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)],
                               rtol=1e-5, atol=1e-6, err_msg=key)
