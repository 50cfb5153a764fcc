"""PEFT adapter directories <-> evejax adapters, and merged HF checkpoints.

    export_peft(adapter, cfg, model_config, out_dir)
    adapter, cfg = import_peft(peft_dir, model_config)
    export_merged(params, adapter, cfg, model_config, out_dir)

A PEFT LoRA directory is `adapter_config.json` + `adapter_model.safetensors`.
For the kernel whose hub weight is `model.layers.3.self_attn.q_proj.weight`
(from `hf.tensor_table`), PEFT names the factors after transformers' in-memory
module: `base_model.model.model.language_model.layers.3.self_attn.q_proj.
lora_A.weight` [rank, in] and `....lora_B.weight` [out, rank]; for a Conv3d
(the patch embedding) lora_A is a conv of the same kernel [rank, C, T, P, P]
and lora_B a 1x1x1 conv [out, rank, 1, 1, 1]. The factors flatten like the
kernels do in `hf` (A [in..., rank] -> [rank, in]; B [rank, out...] ->
[out, rank], rows in the checkpoint's order: `TensorEntry.out_order`).
`target_modules` is written as a regex that fullmatches exactly
the adapted modules, so PEFT adapts what evejax adapted and nothing else.
Module names come from the family registry (`families.of(config).alt_names`),
so every family's adapters name their modules as transformers does; importing
accepts each of a tensor's names. No torch or peft import here.
"""
from __future__ import annotations

import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

from evejax.models import families
from evejax.models import hf
from evejax.models.lora import adapter as adapter_lib
from evejax.models.lora.config import (LoraConfig, Target, linear_kernels,
                                       select_targets)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_KEY = re.compile(r"base_model\.model\.(.+)\.lora_([AB])\.weight")


def module_name(hub_weight: str, model_config) -> str:
  """The in-memory (transformers>=5) module of a hub weight name.

  The family registry lists a tensor's names, the hub's first and the
  transformers>=5 module's last (Qwen2.5-VL: `model.layers...` is
  `model.language_model.layers...`, `visual...` is `model.visual...`;
  Qwen3-VL's hub names are the module names).
  """
  return families.of(model_config).alt_names(hub_weight)[-1][:-len(".weight")]


def _modules_of(t: Target, model_config) -> list[list[str]]:
  """Per layer, every module name PEFT may have saved the factors under."""
  alt = families.of(model_config).alt_names
  return [[n[:-len(".weight")] for n in reversed(alt(w))] for w in t.entry.names()]


def _layers(t: Target) -> list[int | None]:
  return list(range(t.entry.layers)) if t.entry.layers else [None]


def _peft_shapes(t: Target, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  hf_shape = t.entry.hf_shape
  ones = (1,) * (len(hf_shape) - 2)
  return (rank,) + hf_shape[1:], (hf_shape[0], rank) + ones


def _to_peft(a: np.ndarray, b: np.ndarray, t: Target, rank: int):
  a_shape, b_shape = _peft_shapes(t, rank)
  a = a.reshape(-1, rank).T.reshape(a_shape)
  b = t.entry.rows_to_theirs(b.reshape(rank, -1).T).reshape(b_shape)
  return np.ascontiguousarray(a), np.ascontiguousarray(b)


def _from_peft(a: np.ndarray, b: np.ndarray, t: Target, rank: int):
  a = a.reshape(rank, -1).T.reshape(t.in_shape + (rank,))
  b = t.entry.rows_to_ours(b.reshape(-1, rank)).T.reshape((rank,) + t.out_shape)
  return a, b


def _targets_by_module(model_config) -> dict[tuple[str, ...], Target]:
  return {t.module: t for t in linear_kernels(model_config)}


def _module_regex(targets: list[Target], model_config) -> str:
  """A regex that fullmatches the in-memory names of exactly these modules."""
  alts = []
  for t in targets:
    name = module_name(t.entry.name, model_config)
    alts.append(r"\d+".join(re.escape(part) for part in name.split("{i}")))
  return "(?:" + "|".join(alts) + ")"


# ----------------------------------------------------------------- export

def export_peft(adapter: dict, cfg: LoraConfig, model_config, out_dir: str,
                base_model_name_or_path: str = "") -> None:
  """Writes `adapter` as a PEFT LoRA directory (fp32 factors).

  `peft.PeftModel.from_pretrained(model, out_dir)` then gives the
  transformers model evejax's adapted logits.
  """
  by_module = _targets_by_module(model_config)
  tensors, targets = {}, []
  for path, node in adapter_lib.modules(adapter):
    t = by_module.get(path)
    if t is None:
      raise ValueError(f"The adapter adapts {'/'.join(path)}, which is no "
                       "Linear kernel of this model config.")
    a = np.asarray(jax.device_get(node[adapter_lib.A]), np.float32)
    b = np.asarray(jax.device_get(node[adapter_lib.B]), np.float32)
    if a.shape[-1] != cfg.rank:
      raise ValueError(f"Adapter factor {'/'.join(path)}/lora_a has rank "
                       f"{a.shape[-1]} but cfg.rank is {cfg.rank}.")
    targets.append(t)
    for i, weight in zip(_layers(t), t.entry.names()):
      ai, bi = (a, b) if i is None else (a[i], b[i])
      ai, bi = _to_peft(ai, bi, t, cfg.rank)
      name = _PREFIX + module_name(weight, model_config)
      tensors[name + ".lora_A.weight"] = ai
      tensors[name + ".lora_B.weight"] = bi
  if not tensors:
    raise ValueError("The adapter is empty; nothing to export.")
  os.makedirs(out_dir, exist_ok=True)
  safetensors.numpy.save_file(tensors, os.path.join(out_dir, WEIGHTS_FILE),
                              metadata={"format": "pt"})
  alpha = cfg.alpha
  config = {
      "peft_type": "LORA",
      "task_type": None,
      "base_model_name_or_path": base_model_name_or_path or None,
      "revision": None,
      "r": cfg.rank,
      "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
      "lora_dropout": cfg.dropout,
      "use_rslora": cfg.use_rslora,
      "target_modules": _module_regex(targets, model_config),
      "bias": "none",
      "fan_in_fan_out": False,
      "init_lora_weights": True,
      "inference_mode": True,
      "modules_to_save": None,
      "layers_to_transform": None,
      "layers_pattern": None,
      "rank_pattern": {},
      "alpha_pattern": {},
      "use_dora": False,
  }
  with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
    json.dump(config, f, indent=2)


def export_merged(params: dict, adapter: dict, cfg: LoraConfig, model_config,
                  out_dir: str, **save_kw) -> None:
  """A full HF checkpoint of the adapted model (`hf.save_params` of the
  merged training-layout params; `save_kw` go to it, e.g. tokenizer_dir)."""
  hf.save_params(adapter_lib.merge(params, adapter, cfg), model_config,
                 out_dir, **save_kw)


# ----------------------------------------------------------------- import

_UNSUPPORTED = {
    "use_dora": "DoRA", "rank_pattern": "per-module ranks",
    "alpha_pattern": "per-module alphas", "modules_to_save": "modules_to_save",
    "layers_to_transform": "a subset of layers", "lora_bias": "LoRA biases",
}


def _read_config(peft_dir: str) -> dict:
  path = os.path.join(peft_dir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found; point at a PEFT LoRA directory "
                            f"({CONFIG_FILE} + {WEIGHTS_FILE}).")
  with open(path) as f:
    config = json.load(f)
  if config.get("peft_type") != "LORA":
    raise ValueError(f"{path} has peft_type={config.get('peft_type')!r}; only "
                     "LoRA adapters import.")
  for key, what in _UNSUPPORTED.items():
    if config.get(key):
      raise ValueError(f"{path} sets {key}={config[key]!r}: evejax adapters "
                       f"have no {what}; re-save the adapter without it.")
  if config.get("bias", "none") != "none":
    raise ValueError(f"{path} sets bias={config['bias']!r}; evejax adapters "
                     "train no biases (bias='none').")
  return config


def import_peft(peft_dir: str, model_config, *, dtype=jnp.float32,
                expect: LoraConfig | None = None) -> tuple[dict, LoraConfig]:
  """Reads a PEFT LoRA directory into (adapter, cfg) for this model.

  Every tensor must be the lora_A/lora_B of a Linear kernel of the model,
  with the rank of adapter_config.json's `r` and the kernel's shape, and an
  adapted kernel must have both factors in every layer; otherwise one error
  names the tensor. cfg.targets are the adapted kernels' exact paths. With
  `expect` (e.g. the run's config.train.lora) the directory must adapt
  exactly the kernels `expect.targets` select, with its rank, alpha and
  scaling rule, and `expect` is returned as cfg (its dropout applies).
  """
  config = _read_config(peft_dir)
  rank = int(config["r"])
  path = os.path.join(peft_dir, WEIGHTS_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found; a PEFT LoRA directory holds "
                            "its factors there.")
  kernels = linear_kernels(model_config)
  lookup = {}
  for t in kernels:
    for i, names in zip(_layers(t), _modules_of(t, model_config)):
      for name in names:
        lookup[name] = (t, i)
  found: dict[str, tuple[Target, dict]] = {}
  with safetensors.safe_open(path, "np") as f:
    for key in f.keys():
      m = _KEY.fullmatch(key)
      if m is None or m.group(1) not in lookup:
        example = (_PREFIX + module_name(kernels[0].entry.names()[0],
                                         model_config) + ".lora_A.weight")
        raise ValueError(
            f"PEFT tensor {key!r} in {path} is no lora_A/lora_B of a Linear "
            f"kernel of this model (names look like {example!r}); was the "
            "adapter made for another model?")
      t, i = lookup[m.group(1)]
      found.setdefault(t.path, (t, {}))[1][(i, m.group(2))] = key
    adapter: dict = {}
    for t in kernels:  # tensor-table order
      if t.path not in found:
        continue
      keys = found[t.path][1]
      a_shape, b_shape = _peft_shapes(t, rank)
      a_layers, b_layers = [], []
      for i, weight in zip(_layers(t), t.entry.names()):
        pair = []
        for factor, want in (("A", a_shape), ("B", b_shape)):
          key = keys.get((i, factor))
          if key is None:
            name = (_PREFIX + module_name(weight, model_config)
                    + f".lora_{factor}.weight")
            raise ValueError(
                f"{path} has no tensor {name!r}: an adapted kernel ({t.path}) "
                "needs lora_A and lora_B in every layer.")
          got = tuple(f.get_slice(key).get_shape())
          if got != want:
            rank_dim = 0 if factor == "A" else 1
            hint = (f"rank {got[rank_dim]}, but {CONFIG_FILE} says r={rank}"
                    if len(got) == len(want) and got[rank_dim] != rank
                    and got[:rank_dim] + got[rank_dim + 1:]
                    == want[:rank_dim] + want[rank_dim + 1:]
                    else f"this model's {t.path} needs {want}")
            raise ValueError(f"PEFT tensor {key!r} in {path} has shape {got}: "
                             f"{hint}.")
          pair.append(f.get_tensor(key))
        a, b = _from_peft(pair[0], pair[1], t, rank)
        a_layers.append(a)
        b_layers.append(b)
      stack = (lambda xs: np.stack(xs)) if t.entry.layers else (lambda xs: xs[0])
      adapter_lib.put(adapter, t.module, {
          adapter_lib.A: jnp.asarray(stack(a_layers), dtype),
          adapter_lib.B: jnp.asarray(stack(b_layers), dtype)})
  cfg = LoraConfig(
      rank=rank, alpha=float(config["lora_alpha"]),
      dropout=float(config.get("lora_dropout", 0.0) or 0.0),
      targets=tuple(f"^{re.escape(t.path)}$" for t in kernels
                    if t.path in found),
      use_rslora=bool(config.get("use_rslora", False)))
  if expect is not None:
    _check_expected(cfg, expect, found, model_config, peft_dir)
    cfg = expect
  return adapter, cfg


def _check_expected(got: LoraConfig, expect: LoraConfig, found: dict,
                    model_config, peft_dir: str) -> None:
  want = {t.path for t in select_targets(expect, model_config)}
  kernels = linear_kernels(model_config)
  first_tensor = lambda p: sorted(found[p][1].values())[0]
  for t in kernels:  # tensor-table order
    if t.path in want and t.path not in found:
      name = (_PREFIX + module_name(t.entry.names()[0], model_config)
              + ".lora_A.weight")
      raise ValueError(
          f"{peft_dir} has no tensor {name!r}: the config's LoRA targets "
          f"select {t.path}, which this adapter does not adapt.")
    if t.path in found and t.path not in want:
      raise ValueError(
          f"PEFT tensor {first_tensor(t.path)!r} in {peft_dir} adapts "
          f"{t.path}, which the config's LoRA targets {expect.targets} do not "
          "select.")
  if got.rank != expect.rank:
    raise ValueError(
        f"PEFT tensor {first_tensor(next(iter(found)))!r} in {peft_dir} has "
        f"rank {got.rank} but the config's LoRA rank is {expect.rank}.")
  if not math.isclose(got.alpha, expect.alpha) or got.use_rslora != expect.use_rslora:
    raise ValueError(
        f"{os.path.join(peft_dir, CONFIG_FILE)} has lora_alpha={got.alpha}, "
        f"use_rslora={got.use_rslora} but the config has alpha="
        f"{expect.alpha}, use_rslora={expect.use_rslora}: the adapter's scale "
        "would change.")
