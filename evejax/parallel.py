"""Device mesh, logical-axis rules and the shardings derived from them.

Arrays name their dimensions with *logical* axes ('embed', 'heads', 'batch',
...). One rule table maps each logical axis to zero or more *mesh* axes out of
('data', 'fsdp', 'tensor'); every sharding in evejax (params, optimizer state,
batches, KV caches) comes from that table, so changing a parallelism strategy is
a config change (`config.mesh.rules`), never a code change.

Two properties let one table serve every model size:
  * a dimension that its mesh axes do not divide is replicated instead (the
    tiny test model has 2 KV heads; a 4-way tensor axis must not fail on it);
  * a mesh axis is used at most once per array (an activation [batch, length,
    embed] shards batch over fsdp, so embed is left whole).
"""
from __future__ import annotations

from collections.abc import Sequence
import contextlib
import math
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor")

# A rule maps a logical axis to a mesh axis, a tuple of mesh axes (sharded over
# their product, major to minor) or None (replicated).
MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

LOGICAL_RULES: Rules = (
    # Activations / batches. The batch is split over every data-parallel axis.
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("cache_length", None),
    # Text decoder params: FSDP shards the model dimension, tensor parallelism
    # (Megatron style) shards MLP width, attention heads and the vocabulary.
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    # Gated DeltaNet (Qwen3.5) key and value heads, like attention heads.
    ("linear_heads", "tensor"),
    ("vocab", "tensor"),
    ("head_dim", None),
    ("qkv", None),
    ("layers", None),
    ("norm", None),
    # Vision tower params.
    ("vision_embed", "fsdp"),
    ("vision_mlp", "tensor"),
    ("vision_heads", "tensor"),
    ("patch", None),
    ("patches", None),
    # LoRA ranks are tiny: never worth sharding.
    ("lora_rank", None),
)


def _canon(mesh_axes: Any) -> MeshAxes:
  """Normalises a rule value read from a config (lists, '', 'none')."""
  if mesh_axes is None or mesh_axes == "" or mesh_axes == ():
    return None
  if isinstance(mesh_axes, str):
    return None if mesh_axes.lower() == "none" else mesh_axes
  axes = tuple(mesh_axes)
  return axes[0] if len(axes) == 1 else axes


def make_rules(overrides: Any = (), base: Rules = LOGICAL_RULES) -> Rules:
  """Returns `base` with entries replaced or added by `overrides`.

  Args:
    overrides: ((logical, mesh_axes), ...) pairs, or a mapping logical ->
      mesh_axes (e.g. a ConfigDict, or `config.mesh.rules`). Lists count as
      tuples; None, '' and 'none' mean replicated.
    base: the table to start from.
  """
  if overrides is None:
    return tuple(base)
  if hasattr(overrides, "items"):
    pairs = list(overrides.items())
  else:
    pairs = list(overrides)
  table = dict(base)
  for pair in pairs:
    if len(pair) != 2 or not isinstance(pair[0], str):
      raise ValueError(
          f"Bad logical-axis rule {pair!r}: each rule is (logical_name, mesh_axes), "
          f"e.g. ('mlp', 'tensor') or ('batch', ('data', 'fsdp')).")
    name, axes = pair[0], _canon(pair[1])
    for a in (axes,) if isinstance(axes, str) else (axes or ()):
      if a not in MESH_AXES:
        raise ValueError(
            f"Logical-axis rule {name!r} -> {pair[1]!r} names unknown mesh axis {a!r}; "
            f"mesh axes are {MESH_AXES}.")
    table[name] = axes
  return tuple(table.items())


def rules_from_config(mesh_config: Any) -> Rules:
  """The rule table for a `config.mesh` block (its optional `rules` overrides)."""
  overrides = mesh_config.get("rules", ()) if hasattr(mesh_config, "get") else ()
  return make_rules(overrides or ())


def make_mesh(axes: Any = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a ('data', 'fsdp', 'tensor') mesh with Auto axis types.

  Args:
    axes: mapping (or ConfigDict, e.g. `config.mesh`) of mesh axis -> size.
      Missing axes have size 1; one size may be -1 for "all remaining
      devices". Other keys of a ConfigDict ('rules') are ignored. Default:
      all devices on 'fsdp'.
    devices: the devices to use (default: all of `jax.devices()`).
  """
  if axes is None:
    axes = {"data": 1, "fsdp": -1, "tensor": 1}
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  keys = list(axes.keys())
  unknown = [k for k in keys if k not in MESH_AXES and k != "rules"]
  if unknown:
    raise ValueError(f"Unknown mesh axes {unknown}; mesh axes are {MESH_AXES}.")
  sizes = [int(axes[k]) if k in keys else 1 for k in MESH_AXES]
  if sum(s == -1 for s in sizes) > 1:
    raise ValueError(f"Mesh {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1.")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"Mesh {dict(zip(MESH_AXES, sizes))}: sizes must be >= 1 or -1.")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if n % known:
      raise ValueError(
          f"Mesh {dict(zip(MESH_AXES, sizes))}: {n} devices are not divisible by "
          f"the fixed axes' product {known}; change config.mesh.")
    sizes = [n // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != n:
    raise ValueError(
        f"Mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but "
        f"{n} are available; make the sizes multiply to {n} or set one to -1.")
  return jax.make_mesh(tuple(sizes), MESH_AXES,
                       axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def _lookup(name: str, rules: Rules) -> tuple[str, ...]:
  for logical, mesh_axes in rules:
    if logical == name:
      mesh_axes = _canon(mesh_axes)
      if mesh_axes is None:
        return ()
      return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
  raise ValueError(
      f"Logical axis {name!r} has no rule; add ({name!r}, mesh_axes) to "
      f"config.mesh.rules (or evejax.parallel.LOGICAL_RULES). Known: "
      f"{[r[0] for r in rules]}.")


def logical_to_spec(axes: Sequence[str | None], rules: Rules = LOGICAL_RULES,
                    mesh: Mesh | None = None,
                    shape: Sequence[int] | None = None) -> PartitionSpec:
  """Maps logical dimension names to a PartitionSpec.

  Each mesh axis is used at most once (first dimension wins). With `mesh`, mesh
  axes missing from the mesh or of size 1 are skipped; with `mesh` and `shape`, a mesh axis is
  kept for a dimension only while the dimension stays divisible by the product
  of the kept axes' sizes, so an indivisible dimension ends up replicated.
  """
  if shape is not None and len(shape) != len(axes):
    raise ValueError(f"Logical axes {tuple(axes)} do not match shape {tuple(shape)}.")
  used: set[str] = set()
  spec = []
  for i, name in enumerate(axes):
    if name is None:
      spec.append(None)
      continue
    kept, prod = [], 1
    for a in _lookup(name, rules):
      if a in used:
        continue
      if mesh is not None:
        if a not in mesh.shape:
          continue
        size = mesh.shape[a]
        if size == 1:  # sharding over one device is replication; keep specs short
          continue
        if shape is not None and shape[i] % (prod * size):
          continue
        prod *= size
      kept.append(a)
    used.update(kept)
    spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  while spec and spec[-1] is None:
    spec.pop()
  return PartitionSpec(*spec)


def is_axes(x: Any) -> bool:
  """An axes-tree leaf: a (possibly empty) tuple of logical names / None."""
  return isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x)


def _shape_of(x: Any) -> tuple[int, ...] | None:
  if x is None:
    return None
  if hasattr(x, "shape"):
    return tuple(x.shape)
  return tuple(x)


def shardings_for(axes_tree: Any, mesh: Mesh, rules: Rules = LOGICAL_RULES,
                  shapes_tree: Any = None) -> Any:
  """A pytree of NamedSharding, one per leaf of `axes_tree`.

  Args:
    axes_tree: pytree whose leaves are tuples of logical names (or None for an
      unnamed dimension), e.g. `evejax.models.vlm.param_axes(config)`.
    mesh: the device mesh.
    rules: the logical-axis rule table.
    shapes_tree: optional pytree with the same structure whose leaves have a
      `.shape` (arrays, ShapeDtypeStruct) or are shape tuples; enables the
      replicate-if-indivisible fallback.
  """
  if shapes_tree is None:
    return jax.tree.map(
        lambda ax: NamedSharding(mesh, logical_to_spec(ax, rules, mesh)),
        axes_tree, is_leaf=is_axes)
  # Flatten the shapes tree up to the axes tree's structure, so that shape
  # tuples (themselves pytree nodes) stay whole.
  treedef = jax.tree.structure(axes_tree, is_leaf=is_axes)
  axes_leaves = treedef.flatten_up_to(axes_tree)
  shape_leaves = treedef.flatten_up_to(shapes_tree)
  out = [NamedSharding(mesh, logical_to_spec(ax, rules, mesh, _shape_of(s)))
         for ax, s in zip(axes_leaves, shape_leaves)]
  return jax.tree.unflatten(treedef, out)


def batch_sharding(mesh: Mesh, ndim: int, batch_axis: int = 0,
                   rules: Rules = LOGICAL_RULES) -> NamedSharding:
  """Sharding of an `ndim`-array whose `batch_axis` is the batch (rest whole)."""
  if not 0 <= batch_axis < ndim:
    raise ValueError(f"batch_axis {batch_axis} out of range for ndim {ndim}.")
  axes = [None] * ndim
  axes[batch_axis] = "batch"
  return NamedSharding(mesh, logical_to_spec(axes, rules, mesh))


def batch_shards(mesh: Mesh, rules: Rules = LOGICAL_RULES) -> int:
  """How many ways the rules split a batch axis on `mesh` (its data-parallel degree)."""
  spec = batch_sharding(mesh, 1, 0, rules).spec
  axes = spec[0] if spec else ()
  axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
  return math.prod(mesh.shape[a] for a in axes)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


class OnMesh:
  """A jitted function that is traced (called or lowered) with `mesh` in context.

  Kernels that must run per shard find the mesh there: splash attention wraps
  its Pallas call in `jax.shard_map` over the mesh in context
  (`evejax.models.attention`), and the TPU compiler refuses a Mosaic kernel it
  would have to partition itself ("Mosaic kernels cannot be automatically
  partitioned"). With Auto axes nothing else changes: every other sharding in
  evejax is explicit.
  """

  def __init__(self, jitted: Any, mesh: Mesh | None):
    self.jitted = jitted
    self.mesh = mesh

  def __call__(self, *args, **kwargs):
    with _mesh_context(self.mesh):
      return self.jitted(*args, **kwargs)

  def lower(self, *args, **kwargs):
    with _mesh_context(self.mesh):
      return self.jitted.lower(*args, **kwargs)


def eval_shape_on(mesh: Mesh | None, fn, *args):
  """`jax.eval_shape` traced as `OnMesh` traces (splash finds the mesh in context)."""
  with _mesh_context(mesh):
    return jax.eval_shape(fn, *args)


def _mesh_context(mesh: Mesh | None):
  return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)


def shard_tree(tree: Any, shardings: Any) -> Any:
  """Places every leaf of `tree` with the matching sharding (device_put)."""
  return jax.device_put(tree, shardings)


def abstract_tree(tree: Any, shardings: Any = None) -> Any:
  """ShapeDtypeStructs (with shardings) describing `tree`.

  `shardings` defaults to each leaf's own `.sharding`; this is what
  `evejax.checkpoint.Checkpointer.restore_latest` restores onto.
  """
  if shardings is None:
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                       sharding=getattr(x, "sharding", None)), tree)
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def with_logical_constraint(x: jax.Array, axes: Sequence[str | None],
                            rules: Rules = LOGICAL_RULES,
                            mesh: Mesh | None = None) -> jax.Array:
  """`with_sharding_constraint` by logical names.

  Uses `mesh` or else the mesh in context (`jax.set_mesh`); with neither it is
  a no-op, so model code runs unchanged on one device.
  """
  if mesh is None:
    ctx = jax.sharding.get_abstract_mesh()
    if ctx.empty:
      return x
    # A bare PartitionSpec resolves against the context mesh.
    return jax.lax.with_sharding_constraint(
        x, logical_to_spec(axes, rules, ctx, x.shape))
  spec = logical_to_spec(axes, rules, mesh, x.shape)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def _leaf_bytes(shape: Sequence[int], dtype: Any, sharding: Any) -> tuple[int, int]:
  """(global bytes, bytes on the most loaded device)."""
  # Typed PRNG key dtypes report their key-data size (8 for threefry).
  itemsize = dtype.itemsize if hasattr(dtype, "itemsize") else np.dtype(dtype).itemsize
  total = math.prod(shape) * itemsize
  if sharding is None:
    return total, total
  shard = sharding.shard_shape(tuple(shape))
  return total, math.prod(shard) * itemsize


def per_device_bytes(tree: Any, shardings: Any = None) -> int:
  """Bytes one device holds for `tree` (leaves with shape/dtype)."""
  if shardings is None:
    leaves = [(x.shape, x.dtype, getattr(x, "sharding", None))
              for x in jax.tree.leaves(tree)]
  else:
    treedef = jax.tree.structure(shardings)
    leaves = [(x.shape, x.dtype, s) for x, s in zip(
        treedef.flatten_up_to(tree), jax.tree.leaves(shardings))]
  return sum(_leaf_bytes(*leaf)[1] for leaf in leaves)


def _fmt_bytes(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if abs(n) < 1024 or unit == "TiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
    n /= 1024
  return f"{n}"


def describe(mesh: Mesh, shardings_tree: Any, shapes_tree: Any = None, *,
             max_rows: int = 50) -> str:
  """Human-readable table: per-leaf spec, global and per-device bytes, totals.

  Args:
    mesh: the mesh.
    shardings_tree: pytree of shardings, or of arrays / ShapeDtypeStructs that
      carry `.sharding` (then `shapes_tree` may be omitted).
    shapes_tree: pytree of arrays / ShapeDtypeStructs giving shapes and dtypes.
    max_rows: leaves listed individually (largest first); totals cover all.
  """
  if shapes_tree is None:
    shapes_tree = shardings_tree
    pairs = [(p, x, getattr(x, "sharding", None))
             for p, x in jax.tree_util.tree_leaves_with_path(shapes_tree)]
  else:
    paths_leaves = jax.tree_util.tree_flatten_with_path(shapes_tree)[0]
    shardings = jax.tree.leaves(shardings_tree)
    if len(paths_leaves) != len(shardings):
      raise ValueError(f"describe: {len(paths_leaves)} arrays but {len(shardings)} shardings.")
    pairs = [(p, x, s) for (p, x), s in zip(paths_leaves, shardings)]
  rows, total, dev = [], 0, 0
  for path, x, s in pairs:
    g, d = _leaf_bytes(x.shape, x.dtype, s)
    total += g
    dev += d
    spec = s.spec if isinstance(s, NamedSharding) else s
    rows.append((d, jax.tree_util.keystr(path), tuple(x.shape), str(x.dtype), spec, g))
  rows.sort(key=lambda r: -r[0])
  mesh_desc = ", ".join(f"{k}={v}" for k, v in mesh.shape.items())
  lines = [f"mesh ({mesh_desc}) on {mesh.devices.size} devices; {len(rows)} arrays; "
           f"total {_fmt_bytes(total)}, per device {_fmt_bytes(dev)}"]
  for d, name, shape, dtype, spec, g in rows[:max_rows]:
    lines.append(f"  {name:50s} {str(shape):20s} {dtype:8s} {str(spec):32s} "
                 f"{_fmt_bytes(g):>11s} -> {_fmt_bytes(d):>11s}/dev")
  if len(rows) > max_rows:
    lines.append(f"  ... {len(rows) - max_rows} smaller arrays")
  return "\n".join(lines)
