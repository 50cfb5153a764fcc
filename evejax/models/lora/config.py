"""`LoraConfig` and which Linear kernels it adapts.

Targets are regular expressions searched (`re.search`) over the '/'-joined
paths of the model's Linear kernels in the training layout, e.g.
`text/layers/q/kernel` or `vision/merger/fc1/kernel`. Only kernels can carry an
adapter: the candidates are the `kind == 'linear'` entries of
`evejax.models.hf.tensor_table`, which also says which leaves stack layers on
a leading axis and how each kernel flattens to the transformers [out, in]
weight. A target that matches no kernel is an error (a typo would otherwise
train nothing).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any

import jax

from evejax.models import hf

# The text decoder's attention and MLP projections: EvoLMM's published targets
# (q, k, v, o, gate, up, down) on the language model only. Qwen3.5 stacks its
# layers by kind within a block (text/layers/full_0/q/kernel): there they are
# the attention layers' q, k, v, o and every layer's MLP, as PEFT's
# target_modules of those names adapt on transformers' model.
TEXT_PROJECTIONS = (r"^text/layers/((linear|full)_\d+/)?"
                    r"(q|k|v|o|mlp/(gate|up|down))/kernel$")
# Qwen3.5's Gated DeltaNet projections (in_proj_qkv, _z, _b, _a, out_proj).
LINEAR_ATTENTION_PROJECTIONS = (r"^text/layers/linear_\d+/"
                                r"(in_qkv|in_z|in_b|in_a|out)/kernel$")
# The two Linear layers that map merged vision patches into the text space.
VISION_MERGER = r"^vision/merger/fc[12]/kernel$"


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """One adapter's shape and scale; hashable (a static argument of jit).

  The update of a kernel W is (alpha / rank) * A @ B (alpha / sqrt(rank) with
  `use_rslora`), A of shape in_shape + (rank,), B of shape (rank,) + out_shape.
  """
  rank: int
  alpha: float
  dropout: float = 0.0       # on the adapter's input, in training only
  targets: tuple[str, ...] = (TEXT_PROJECTIONS,)
  use_rslora: bool = False   # scale alpha / sqrt(rank) (rank-stabilised LoRA)

  def __post_init__(self):
    targets = self.targets
    if isinstance(targets, str):
      targets = (targets,)
    object.__setattr__(self, "targets", tuple(str(t) for t in targets))
    if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
      raise ValueError(f"LoRA rank={self.rank!r}; it must be an int >= 1 "
                       "(config.train.lora.rank = 0 turns LoRA off).")
    if not self.alpha > 0:
      raise ValueError(f"LoRA alpha={self.alpha!r}; it must be > 0.")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"LoRA dropout={self.dropout!r}; it must be in [0, 1).")
    if not self.targets:
      raise ValueError("LoRA targets is empty; give regexes over parameter "
                       f"paths, e.g. ({TEXT_PROJECTIONS!r},).")
    for t in self.targets:
      try:
        re.compile(t)
      except re.error as e:
        raise ValueError(f"LoRA target {t!r} is not a valid regex ({e}); fix "
                         "config.train.lora.targets.") from None

  @property
  def scale(self) -> float:
    if self.use_rslora:
      return self.alpha / math.sqrt(self.rank)
    return self.alpha / self.rank


def from_config(block: Any) -> LoraConfig | None:
  """The LoraConfig of a `train.lora` config block, or None when rank is 0.

  Reads rank, alpha, dropout, targets and (optionally) use_rslora; other keys
  of the block belong to the recipe (e.g. the names of its adapters).
  """
  if block is None:
    return None
  get = block.get if hasattr(block, "get") else lambda k, d=None: getattr(block, k, d)
  rank = get("rank", 0)
  if not rank:
    return None
  missing = [k for k in ("alpha", "targets") if get(k, None) is None]
  if missing:
    raise ValueError(f"config.train.lora has rank={rank} but no {missing}; set "
                     "them (e.g. alpha=32, targets=('^text/layers/.*/kernel$',)).")
  return LoraConfig(rank=int(rank), alpha=float(get("alpha")),
                    dropout=float(get("dropout", 0.0) or 0.0),
                    targets=tuple(get("targets")),
                    use_rslora=bool(get("use_rslora", False)))


@dataclasses.dataclass(frozen=True)
class Target:
  """One adapted kernel: where it lives and how its axes split."""
  entry: hf.TensorEntry        # path, hub name, HF [out, in...] shape, layers
  kernel_shape: tuple[int, ...]  # evejax shape, layers axis first if stacked
  in_ndim: int                 # kernel dims (after the layers axis) that are inputs

  @property
  def path(self) -> str:
    return "/".join(self.entry.path)

  @property
  def module(self) -> tuple[str, ...]:
    """Keys of the module holding the kernel (the path minus 'kernel')."""
    return self.entry.path[:-1]

  @property
  def lead(self) -> tuple[int, ...]:
    return self.kernel_shape[:1] if self.entry.layers else ()

  @property
  def in_shape(self) -> tuple[int, ...]:
    n = len(self.lead)
    return self.kernel_shape[n:n + self.in_ndim]

  @property
  def out_shape(self) -> tuple[int, ...]:
    return self.kernel_shape[len(self.lead) + self.in_ndim:]


@functools.lru_cache(maxsize=8)
def _kernel_shapes(model_config) -> dict[str, tuple[int, ...]]:
  from evejax.models import vlm  # Local: vlm sits above this module's users.
  shapes = jax.eval_shape(lambda: vlm.init_params(model_config, jax.random.key(0)))
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
    out["/".join(str(k.key) for k in path)] = tuple(leaf.shape)
  return out


def _in_ndim(shape: tuple[int, ...], hf_shape: tuple[int, ...], path: str) -> int:
  """How many leading dims of a kernel (layers axis removed) are its inputs.

  The HF weight is [out, in...]: the inputs are the shortest prefix of the
  evejax shape holding prod(in...) values (a trailing size-1 input dim would be
  ambiguous; no Linear here has one).
  """
  want = math.prod(hf_shape[1:])
  for k in range(1, len(shape)):
    if math.prod(shape[:k]) == want and math.prod(shape[k:]) == hf_shape[0]:
      return k
  raise ValueError(f"Kernel {path} of shape {shape} does not split into the "
                   f"HF weight's [out, in] = {hf_shape}; the tensor table and "
                   "the model disagree.")


def linear_kernels(model_config) -> list[Target]:
  """Every Linear kernel of the model that an adapter could target."""
  shapes = _kernel_shapes(model_config)
  out = []
  for entry in hf.tensor_table(model_config):
    if entry.kind != "linear" or entry.path[-1] != "kernel":
      continue
    path = "/".join(entry.path)
    shape = shapes[path]
    lead = 1 if entry.layers else 0
    out.append(Target(entry, shape, _in_ndim(shape[lead:], entry.hf_shape, path)))
  return out


def select_targets(cfg: LoraConfig, model_config) -> list[Target]:
  """The kernels `cfg.targets` select, in tensor-table order; a regex that
  selects none raises, naming it and listing the candidate paths."""
  kernels = linear_kernels(model_config)
  patterns = [re.compile(t) for t in cfg.targets]
  for pat in patterns:
    if not any(pat.search(k.path) for k in kernels):
      raise ValueError(
          f"LoRA target {pat.pattern!r} matches no Linear kernel; adapters go "
          f"on kernels, whose paths are {[k.path for k in kernels]}. Fix "
          "config.train.lora.targets.")
  return [k for k in kernels if any(p.search(k.path) for p in patterns)]
