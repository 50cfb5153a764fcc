"""Hugging Face checkpoints <-> evejax params, for every family (numpy + safetensors).

    config = config_from_hf(hf_dir)
    params = load_params(hf_dir, config, shardings=None, dtype=jnp.bfloat16)
    save_params(params, config, out_dir, tokenizer_dir=hf_dir)

config.json's `model_type` says the family (`evejax.models.families`); the
family's checkpoint module converts the config and lists its tensors
(`tensor_table`). A config.json of an architecture evejax does not implement
is one error naming the ones it does.

Loading reads tensor by tensor with `safetensors.safe_open` and builds one
evejax leaf at a time (stacked layer leaves from their per-layer tensors), so
host memory peaks at about one leaf. With `shardings`, each leaf goes straight
to its devices through `jax.make_array_from_callback`. Single files, or
shards listed in model.safetensors.index.json, load the same; a tensor may be
stored under any of the family's names for it (Qwen2.5-VL: the hub's and
transformers>=5's). Saving writes the hub names, which transformers loads.
No torch or transformers import here.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Iterator

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

from evejax.models import families
from evejax.models.presets import ModelConfig
from evejax.models.tensors import TensorEntry

__all__ = ["TensorEntry", "config_from_hf", "config_to_hf", "tensor_table",
           "load_params", "save_params"]

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
    "special_tokens_map.json", "added_tokens.json", "chat_template.json",
    "chat_template.jinja", "preprocessor_config.json", "generation_config.json",
)


# ----------------------------------------------------------------- config ---

def _read_json(path: str) -> dict:
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} not found; point hf_dir at a Hugging Face checkpoint "
        f"directory (config.json + *.safetensors) of {families.implemented()}.")
  with open(path) as f:
    return json.load(f)


def config_from_hf(hf_dir: str) -> ModelConfig:
  """ModelConfig from a checkpoint's config.json (its family's forms)."""
  path = os.path.join(hf_dir, CONFIG_FILE)
  cfg = _read_json(path)
  return families.from_hf_config(cfg, path).config_from_hf(cfg, path)


def config_to_hf(config: ModelConfig, torch_dtype: str = "float32") -> dict:
  """config.json (transformers>=5 nested form) for a ModelConfig."""
  return families.of(config).config_to_hf(config, torch_dtype)


# ---------------------------------------------------------- tensor table ---

def tensor_table(config: ModelConfig) -> list[TensorEntry]:
  """Every evejax leaf and the checkpoint tensors it is made of (hub names)."""
  return families.of(config).tensor_table(config)


def _to_ours(x: np.ndarray, entry: TensorEntry, shape: tuple[int, ...]
             ) -> np.ndarray:
  if entry.kind == "linear":
    x = entry.rows_to_ours(x.reshape(x.shape[0], -1)).T
  return x.reshape(shape)


def _to_theirs(x: np.ndarray, entry: TensorEntry) -> np.ndarray:
  hf_shape = entry.hf_shape
  if entry.kind == "linear":
    x = entry.rows_to_theirs(x.reshape(-1, hf_shape[0]).T)
  return np.ascontiguousarray(x.reshape(hf_shape))


# ---------------------------------------------------------------- reading ---

class _Reader:
  """Finds tensors across the checkpoint's safetensors files."""

  def __init__(self, hf_dir: str, alt_names):
    self.hf_dir = hf_dir
    self.alt_names = alt_names
    index = os.path.join(hf_dir, INDEX_FILE)
    if os.path.exists(index):
      self.where = dict(_read_json(index)["weight_map"])
    else:
      files = sorted(f for f in os.listdir(hf_dir) if f.endswith(".safetensors"))
      if not files:
        raise FileNotFoundError(
            f"No *.safetensors files in {hf_dir}; expected {SINGLE_FILE} or "
            f"{INDEX_FILE} with shards (convert .bin checkpoints first).")
      self.where = {}
      for fname in files:
        with safetensors.safe_open(os.path.join(hf_dir, fname), "np") as f:
          self.where.update({k: fname for k in f.keys()})
    self._open: dict[str, Any] = {}

  def _file(self, fname: str):
    if fname not in self._open:
      path = os.path.join(self.hf_dir, fname)
      if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} is listed in {INDEX_FILE} but missing; re-download it.")
      self._open[fname] = safetensors.safe_open(path, "np")
    return self._open[fname]

  def resolve(self, name: str) -> str | None:
    for n in self.alt_names(name):
      if n in self.where:
        return n
    return None

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(self._file(self.where[key]).get_slice(key).get_shape())

  def get(self, key: str) -> np.ndarray:
    return self._file(self.where[key]).get_tensor(key)


def _check(reader: _Reader, entries: list[TensorEntry], hf_dir: str
           ) -> dict[str, str]:
  """Maps every needed hub name to its key in the checkpoint, or raises."""
  keys = {}
  for entry in entries:
    for name in entry.names():
      key = reader.resolve(name)
      if key is None:
        others = reader.alt_names(name)[1:]
        also = f" (also looked for {others})" if others else ""
        raise ValueError(
            f"Checkpoint {hf_dir} has no tensor {name!r}{also}; expected shape "
            f"{entry.hf_shape}. Does config.json match the weights?")
      got = reader.shape(key)
      if got != entry.hf_shape:
        raise ValueError(
            f"Checkpoint tensor {key!r} in {hf_dir} has shape {got} but the "
            f"config expects {entry.hf_shape}; config.json and weights disagree.")
      keys[name] = key
  return keys


def _log_unused(reader: _Reader, used: set[str], hf_dir: str) -> None:
  """One log line for the checkpoint's tensors no leaf reads (e.g. Qwen3.5's
  multi-token-prediction head `mtp.*`, which evejax does not run)."""
  unused = sorted(set(reader.where) - used)
  if unused:
    groups: dict[str, int] = {}
    for name in unused:
      prefix = name.split(".layers.")[0].split(".")[0]
      groups[prefix] = groups.get(prefix, 0) + 1
    logging.info("%s: skipping %d tensors evejax does not use (%s)", hf_dir,
                 len(unused), ", ".join(f"{k}.*: {n}" for k, n in
                                        sorted(groups.items())))


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]):
  for k in path:
    tree = tree[k]
  return tree


def load_params(hf_dir: str, config: ModelConfig, shardings=None,
                dtype=jnp.float32) -> dict:
  """Reads a checkpoint into evejax params (see module docstring).

  Args:
    hf_dir: directory with config.json and safetensors weights.
    config: the ModelConfig (usually `config_from_hf(hf_dir)`).
    shardings: optional pytree like params of jax.sharding.Sharding; each leaf
      is then assembled on its devices from host slices of that one leaf.
    dtype: parameter dtype (e.g. jnp.bfloat16).

  Returns:
    params, a nested dict of jax arrays.
  """
  from evejax.models import vlm  # Local: vlm is the higher-level module.
  # Leaves in `dtype`, except those the model keeps fp32 (Qwen3.5's A_log).
  shapes = jax.eval_shape(
      lambda: vlm.init_params(config, jax.random.key(0), dtype))
  entries = tensor_table(config)
  reader = _Reader(hf_dir, families.of(config).alt_names)
  keys = _check(reader, entries, hf_dir)
  _log_unused(reader, set(keys.values()), hf_dir)
  params: dict = {}
  for entry in entries:
    shape = tuple(_get(shapes, entry.path).shape)
    np_dtype = np.dtype(_get(shapes, entry.path).dtype)
    if entry.layers:
      leaf = np.empty(shape, np_dtype)
      for i, name in enumerate(entry.names()):
        leaf[i] = _to_ours(reader.get(keys[name]), entry, shape[1:])
    else:
      leaf = _to_ours(reader.get(keys[entry.name]), entry,
                      shape).astype(np_dtype)
    if shardings is None:
      value = jnp.asarray(leaf)
    else:
      sharding = _get(shardings, entry.path)
      value = jax.make_array_from_callback(shape, sharding,
                                           lambda idx, leaf=leaf: leaf[idx])
    _set(params, entry.path, value)
    del leaf
  return params


# ---------------------------------------------------------------- writing ---

def _tensors(params: dict, config: ModelConfig
             ) -> Iterator[tuple[str, np.ndarray]]:
  """(hub name, numpy tensor) one at a time, one leaf on the host at a time."""
  for entry in tensor_table(config):
    try:
      leaf = np.asarray(jax.device_get(_get(params, entry.path)))
    except KeyError as e:
      raise ValueError(f"params has no leaf {'/'.join(entry.path)} that "
                       f"config needs; were params made for this config?") from e
    if entry.layers:
      for i, name in enumerate(entry.names()):
        yield name, _to_theirs(leaf[i], entry)
    else:
      yield entry.name, _to_theirs(leaf, entry)


def save_params(params: dict, config: ModelConfig, out_dir: str,
                tokenizer_dir: str | None = None,
                max_shard_bytes: int = 4 << 30) -> None:
  """Writes config.json + safetensors that transformers' from_pretrained loads.

  Tensors keep the params' dtype; shards of at most `max_shard_bytes` (plus an
  index) are written when the model is larger. Tied embeddings write no
  lm_head tensor. `tokenizer_dir`: copy tokenizer/processor files from there.
  """
  os.makedirs(out_dir, exist_ok=True)
  leaf_dtypes = {np.dtype(x.dtype) for x in jax.tree.leaves(params)}
  torch_dtype = "bfloat16" if np.dtype(jnp.bfloat16) in leaf_dtypes else "float32"
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  # Write each shard as soon as it is full so host memory stays ~one shard.
  written: list[str] = []
  weight_map: dict[str, int] = {}
  total = 0

  def flush():
    nonlocal size
    if shards[-1]:
      tmp = f"model-tmp-{len(written):05d}.safetensors"
      safetensors.numpy.save_file(shards[-1], os.path.join(out_dir, tmp),
                                  metadata={"format": "pt"})
      for name in shards[-1]:
        weight_map[name] = len(written)
      written.append(tmp)
      shards[-1] = {}
      size = 0

  for name, tensor in _tensors(params, config):
    if size and size + tensor.nbytes > max_shard_bytes:
      flush()
    shards[-1][name] = tensor
    size += tensor.nbytes
    total += tensor.nbytes
  flush()

  n = len(written)
  if n == 1:
    os.replace(os.path.join(out_dir, written[0]),
               os.path.join(out_dir, SINGLE_FILE))
  else:
    final = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    for tmp, dst in zip(written, final):
      os.replace(os.path.join(out_dir, tmp), os.path.join(out_dir, dst))
    with open(os.path.join(out_dir, INDEX_FILE), "w") as f:
      json.dump({"metadata": {"total_size": total},
                 "weight_map": {k: final[i] for k, i in weight_map.items()}},
                f, indent=2)
  with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
    json.dump(config_to_hf(config, torch_dtype), f, indent=2)
  if tokenizer_dir is not None:
    if not os.path.isdir(tokenizer_dir):
      raise FileNotFoundError(f"tokenizer_dir {tokenizer_dir} does not exist.")
    for fname in TOKENIZER_FILES:
      src = os.path.join(tokenizer_dir, fname)
      if os.path.exists(src):
        shutil.copy(src, os.path.join(out_dir, fname))
