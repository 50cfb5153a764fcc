"""Optimizer and freezing for the learner: optax AdamW, schedules, regex freezes.

Frozen parameters are split off before differentiation, so they get neither
gradients (a frozen vision tower costs no backward pass) nor Adam moments.
Trees with `None` where a leaf was split off are ordinary pytrees to jax and
optax, which is what makes the split cheap to carry around.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import ml_collections
import optax

PyTree = Any


def path_str(path) -> str:
  """'/'-joined names of a tree path: ('visual', 'blocks_0', 'kernel') -> 'visual/blocks_0/kernel'."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def param_paths(params: PyTree) -> list[str]:
  return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def trainable_mask(params: PyTree, freeze: Sequence[str]) -> PyTree:
  """A bool tree like `params`: False where a `freeze` regex matches the path.

  Patterns use `re.search` on '/'-joined paths, so "^visual/" freezes the
  vision tower. A pattern that matches nothing is a typo, reported with the
  top-level names that exist.
  """
  patterns = [re.compile(p) for p in freeze]
  paths = param_paths(params)
  for pat in patterns:
    if not any(pat.search(p) for p in paths):
      tops = sorted({p.split("/")[0] for p in paths})
      raise ValueError(
          f"freeze pattern {pat.pattern!r} matches no parameter; paths look like "
          f"{paths[0]!r} and start with one of {tops}. Fix config.train.freeze.")
  return jax.tree_util.tree_map_with_path(
      lambda p, _: not any(pat.search(path_str(p)) for pat in patterns), params)


def split(params: PyTree, mask: PyTree) -> tuple[PyTree, PyTree]:
  """(trainable, frozen): each keeps `params`' structure with None elsewhere."""
  trainable = jax.tree.map(lambda m, x: x if m else None, mask, params)
  frozen = jax.tree.map(lambda m, x: None if m else x, mask, params)
  return trainable, frozen


def merge(mask: PyTree, trainable: PyTree, frozen: PyTree) -> PyTree:
  return jax.tree.map(lambda m, t, f: t if m else f, mask, trainable, frozen,
                      is_leaf=lambda x: x is None)


def schedule(cfg: ml_collections.ConfigDict) -> optax.Schedule:
  """Learning-rate schedule from `cfg.optimizer`: constant | cosine | linear, with warmup."""
  o = cfg.optimizer
  warmup = int(o.get("warmup_steps", 0))
  if o.schedule == "constant":
    if warmup:
      return optax.warmup_constant_schedule(0.0, o.lr, warmup)
    return optax.constant_schedule(o.lr)
  total = int(o.get("total_steps", 0))
  if total <= warmup:
    raise ValueError(
        f"config.train.optimizer.schedule={o.schedule!r} needs total_steps > warmup_steps "
        f"(got total_steps={total}, warmup_steps={warmup}); set "
        "config.train.optimizer.total_steps.")
  end = o.lr * float(o.get("end_lr_factor", 0.0))
  if o.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, o.lr, warmup, total, end)
  if o.schedule == "linear":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, o.lr, warmup),
         optax.linear_schedule(o.lr, end, total - warmup)], [warmup])
  raise ValueError(
      f"config.train.optimizer.schedule={o.schedule!r} is unknown; use one of "
      "'constant', 'cosine', 'linear'.")


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Clip by global norm, then AdamW (or SGD) with the configured schedule."""
  o = cfg.optimizer
  lr = schedule(cfg)
  if o.name == "adamw":
    mu_dtype = o.get("mu_dtype", None) or None
    opt = optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                      mu_dtype=mu_dtype)
  elif o.name == "sgd":
    opt = optax.sgd(lr)
  else:
    raise ValueError(f"config.train.optimizer.name={o.name!r} is unknown; use 'adamw' or 'sgd'.")
  if o.grad_clip and o.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(o.grad_clip), opt)
  return opt
