"""Hugging Face Qwen2.5-VL checkpoints <-> evejax params (numpy + safetensors).

    config = config_from_hf(hf_dir)
    params = load_params(hf_dir, config, shardings=None, dtype=jnp.bfloat16)
    save_params(params, config, out_dir, tokenizer_dir=hf_dir)

Loading reads tensor by tensor with `safetensors.safe_open` and builds one
evejax leaf at a time (stacked layer leaves from their per-layer tensors), so
host memory peaks at about one leaf. With `shardings`, each leaf goes straight
to its devices through `jax.make_array_from_callback`.

Both checkpoint key styles load: the hub's (`model.layers.N...`, `visual...`)
and transformers>=5's in-memory names (`model.language_model...`,
`model.visual...`). Saving writes the hub style, which transformers loads.
No torch or transformers import here.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

from evejax.models.presets import ModelConfig, TextConfig, VisionConfig

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
        f"{path} not found; point hf_dir at a Hugging Face Qwen2.5-VL "
        f"checkpoint directory (config.json + *.safetensors).")
  with open(path) as f:
    return json.load(f)


def config_from_hf(hf_dir: str) -> ModelConfig:
  """ModelConfig from a checkpoint's config.json (nested v5 or flat hub form)."""
  cfg = _read_json(os.path.join(hf_dir, CONFIG_FILE))
  nested = cfg.get("text_config")
  tc = nested if isinstance(nested, dict) and "hidden_size" in nested else cfg
  rope = (tc.get("rope_parameters") or tc.get("rope_scaling")
          or cfg.get("rope_scaling") or {})
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type not in ("default", "mrope"):
    raise ValueError(f"{hf_dir}/config.json: rope type {rope_type!r} is not "
                     "supported; evejax implements Qwen2.5-VL's sectioned M-RoPE.")
  if tc.get("use_sliding_window"):
    raise ValueError(f"{hf_dir}/config.json sets use_sliding_window=true, "
                     "which evejax does not implement; set it to false.")
  for where, c in (("text", tc), ("vision", cfg.get("vision_config", {}))):
    if c.get("hidden_act", "silu") != "silu":
      raise ValueError(f"{hf_dir}/config.json: {where} hidden_act "
                       f"{c['hidden_act']!r} is not supported (only 'silu').")
  heads = tc["num_attention_heads"]
  text = TextConfig(
      vocab_size=tc["vocab_size"],
      hidden_size=tc["hidden_size"],
      intermediate_size=tc["intermediate_size"],
      num_layers=tc["num_hidden_layers"],
      num_heads=heads,
      num_kv_heads=tc.get("num_key_value_heads") or heads,
      rope_theta=float(rope.get("rope_theta",
                                tc.get("rope_theta", cfg.get("rope_theta",
                                                             1_000_000.0)))),
      rms_norm_eps=float(tc.get("rms_norm_eps", 1e-6)),
      mrope_section=tuple(rope.get("mrope_section", (16, 24, 24))),
      # transformers>=5 keeps it at the root; older saves in text_config.
      tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)
                               or tc.get("tie_word_embeddings", False)),
  )
  vc = cfg.get("vision_config", {})
  vd = VisionConfig()
  vision = VisionConfig(
      depth=vc.get("depth", vd.depth),
      hidden_size=vc.get("hidden_size", vd.hidden_size),
      intermediate_size=vc.get("intermediate_size", vd.intermediate_size),
      num_heads=vc.get("num_heads", vd.num_heads),
      out_hidden_size=vc.get("out_hidden_size", text.hidden_size),
      in_channels=vc.get("in_channels", vc.get("in_chans", vd.in_channels)),
      patch_size=vc.get("patch_size", vd.patch_size),
      temporal_patch_size=vc.get("temporal_patch_size",
                                 vd.temporal_patch_size),
      spatial_merge_size=vc.get("spatial_merge_size", vd.spatial_merge_size),
      window_size=vc.get("window_size", vd.window_size),
      fullatt_block_indexes=tuple(vc.get("fullatt_block_indexes",
                                         vd.fullatt_block_indexes)),
      rope_theta=float((vc.get("rope_parameters") or {}).get(
          "rope_theta", vd.rope_theta)),
  )
  md = ModelConfig()
  return ModelConfig(
      vision=vision, text=text,
      image_token_id=cfg.get("image_token_id", md.image_token_id),
      video_token_id=cfg.get("video_token_id", md.video_token_id),
      vision_start_token_id=cfg.get("vision_start_token_id",
                                    md.vision_start_token_id),
      vision_end_token_id=cfg.get("vision_end_token_id",
                                  md.vision_end_token_id))


def config_to_hf(config: ModelConfig, torch_dtype: str = "float32") -> dict:
  """config.json (transformers>=5 nested form) for a ModelConfig."""
  t, v = config.text, config.vision
  return {
      "architectures": ["Qwen2_5_VLForConditionalGeneration"],
      "model_type": "qwen2_5_vl",
      "dtype": torch_dtype,
      "image_token_id": config.image_token_id,
      "video_token_id": config.video_token_id,
      "vision_start_token_id": config.vision_start_token_id,
      "vision_end_token_id": config.vision_end_token_id,
      "tie_word_embeddings": t.tie_word_embeddings,
      "text_config": {
          "model_type": "qwen2_5_vl_text",
          "vocab_size": t.vocab_size,
          "hidden_size": t.hidden_size,
          "intermediate_size": t.intermediate_size,
          "num_hidden_layers": t.num_layers,
          "num_attention_heads": t.num_heads,
          "num_key_value_heads": t.num_kv_heads,
          "hidden_act": "silu",
          "rms_norm_eps": t.rms_norm_eps,
          "use_sliding_window": False,
          "tie_word_embeddings": t.tie_word_embeddings,
          "rope_parameters": {"rope_type": "default",
                              "rope_theta": t.rope_theta,
                              "mrope_section": list(t.mrope_section)},
      },
      "vision_config": {
          "model_type": "qwen2_5_vl_vision",
          "depth": v.depth,
          "hidden_size": v.hidden_size,
          "intermediate_size": v.intermediate_size,
          "num_heads": v.num_heads,
          "out_hidden_size": v.out_hidden_size,
          "in_channels": v.in_channels,
          "patch_size": v.patch_size,
          "temporal_patch_size": v.temporal_patch_size,
          "spatial_merge_size": v.spatial_merge_size,
          "window_size": v.window_size,
          "fullatt_block_indexes": list(v.fullatt_block_indexes),
          "hidden_act": "silu",
          "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
      },
  }


# ---------------------------------------------------------- tensor table ---

@dataclasses.dataclass(frozen=True)
class TensorEntry:
  """One evejax leaf and the checkpoint tensor(s) it is made of."""
  path: tuple[str, ...]   # keys into the params dict
  name: str               # hub-style tensor name; '{i}' = layer index
  hf_shape: tuple[int, ...]
  kind: str               # 'linear': hf [out, in...] -> [in..., out...]; 'same'
  layers: int = 0         # >0: stacked leaf built from this many tensors

  def names(self) -> list[str]:
    if not self.layers:
      return [self.name]
    return [self.name.format(i=i) for i in range(self.layers)]


def tensor_table(config: ModelConfig) -> list[TensorEntry]:
  """Every evejax leaf and the checkpoint tensors it is made of (hub names)."""
  t, v = config.text, config.vision
  d, hd, f = t.hidden_size, t.head_dim, t.intermediate_size
  dv, iv = v.hidden_size, v.intermediate_size
  L, LV = t.num_layers, v.depth
  e = []
  text = ("text",)
  e.append(TensorEntry(text + ("embed", "embedding"), "model.embed_tokens.weight",
                  (t.vocab_size, d), "same"))
  pre = "model.layers.{i}."
  lay = text + ("layers",)
  for ours, theirs in (("input_norm", "input_layernorm"),
                       ("post_attn_norm", "post_attention_layernorm")):
    e.append(TensorEntry(lay + (ours, "scale"), pre + theirs + ".weight", (d,),
                    "same", L))
  for proj, heads in (("q", t.num_heads), ("k", t.num_kv_heads),
                      ("v", t.num_kv_heads)):
    name = pre + f"self_attn.{proj}_proj."
    e.append(TensorEntry(lay + (proj, "kernel"), name + "weight", (heads * hd, d),
                    "linear", L))
    e.append(TensorEntry(lay + (proj, "bias"), name + "bias", (heads * hd,), "same",
                    L))
  e.append(TensorEntry(lay + ("o", "kernel"), pre + "self_attn.o_proj.weight",
                  (d, t.num_heads * hd), "linear", L))
  for proj, shape in (("gate", (f, d)), ("up", (f, d)), ("down", (d, f))):
    e.append(TensorEntry(lay + ("mlp", proj, "kernel"),
                    pre + f"mlp.{proj}_proj.weight", shape, "linear", L))
  e.append(TensorEntry(text + ("norm", "scale"), "model.norm.weight", (d,), "same"))
  if not t.tie_word_embeddings:
    e.append(TensorEntry(text + ("lm_head", "kernel"), "lm_head.weight",
                    (t.vocab_size, d), "linear"))

  vis = ("vision",)
  e.append(TensorEntry(vis + ("patch_embed", "kernel"), "visual.patch_embed.proj.weight",
                  (dv, v.in_channels, v.temporal_patch_size, v.patch_size,
                   v.patch_size), "linear"))
  pre = "visual.blocks.{i}."
  blk = vis + ("blocks",)
  for n in ("norm1", "norm2"):
    e.append(TensorEntry(blk + (n, "scale"), pre + n + ".weight", (dv,), "same", LV))
  e.append(TensorEntry(blk + ("qkv", "kernel"), pre + "attn.qkv.weight",
                  (3 * dv, dv), "linear", LV))
  e.append(TensorEntry(blk + ("qkv", "bias"), pre + "attn.qkv.bias", (3 * dv,),
                  "same", LV))
  e.append(TensorEntry(blk + ("proj", "kernel"), pre + "attn.proj.weight", (dv, dv),
                  "linear", LV))
  e.append(TensorEntry(blk + ("proj", "bias"), pre + "attn.proj.bias", (dv,), "same",
                  LV))
  for proj, shape, out in (("gate", (iv, dv), iv), ("up", (iv, dv), iv),
                           ("down", (dv, iv), dv)):
    e.append(TensorEntry(blk + ("mlp", proj, "kernel"),
                    pre + f"mlp.{proj}_proj.weight", shape, "linear", LV))
    e.append(TensorEntry(blk + ("mlp", proj, "bias"), pre + f"mlp.{proj}_proj.bias",
                    (out,), "same", LV))
  w = dv * v.merge_unit
  mer = vis + ("merger",)
  e.append(TensorEntry(mer + ("ln_q", "scale"), "visual.merger.ln_q.weight", (dv,),
                  "same"))
  for ours, theirs, shape in (("fc1", "mlp.0", (w, w)),
                              ("fc2", "mlp.2", (v.out_hidden_size, w))):
    e.append(TensorEntry(mer + (ours, "kernel"), f"visual.merger.{theirs}.weight",
                    shape, "linear"))
    e.append(TensorEntry(mer + (ours, "bias"), f"visual.merger.{theirs}.bias",
                    shape[:1], "same"))
  return e


def _to_ours(x: np.ndarray, kind: str, shape: tuple[int, ...]) -> np.ndarray:
  if kind == "linear":
    x = x.reshape(x.shape[0], -1).T
  return x.reshape(shape)


def _to_theirs(x: np.ndarray, kind: str, hf_shape: tuple[int, ...]
               ) -> np.ndarray:
  if kind == "linear":
    x = x.reshape(-1, hf_shape[0]).T
  return np.ascontiguousarray(x.reshape(hf_shape))


def _alt_names(name: str) -> list[str]:
  """Hub name first, then the transformers>=5 module name."""
  if name.startswith("model."):
    return [name, "model.language_model." + name[len("model."):]]
  if name.startswith("visual."):
    return [name, "model." + name]
  return [name]


# ---------------------------------------------------------------- reading ---

class _Reader:
  """Finds tensors across the checkpoint's safetensors files."""

  def __init__(self, hf_dir: str):
    self.hf_dir = hf_dir
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
    for n in _alt_names(name):
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
        raise ValueError(
            f"Checkpoint {hf_dir} has no tensor {name!r} (also looked for "
            f"{_alt_names(name)[1:]}); expected shape {entry.hf_shape}. Does "
            f"config.json match the weights?")
      got = reader.shape(key)
      if got != entry.hf_shape:
        raise ValueError(
            f"Checkpoint tensor {key!r} in {hf_dir} has shape {got} but the "
            f"config expects {entry.hf_shape}; config.json and weights disagree.")
      keys[name] = key
  return keys


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
  shapes = jax.eval_shape(lambda: vlm.init_params(config, jax.random.key(0)))
  entries = tensor_table(config)
  reader = _Reader(hf_dir)
  keys = _check(reader, entries, hf_dir)
  np_dtype = np.dtype(dtype)
  params: dict = {}
  for entry in entries:
    shape = tuple(_get(shapes, entry.path).shape)
    if entry.layers:
      leaf = np.empty(shape, np_dtype)
      for i, name in enumerate(entry.names()):
        leaf[i] = _to_ours(reader.get(keys[name]), entry.kind, shape[1:])
    else:
      leaf = _to_ours(reader.get(keys[entry.name]), entry.kind,
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
        yield name, _to_theirs(leaf[i], entry.kind, entry.hf_shape)
    else:
      yield entry.name, _to_theirs(leaf, entry.kind, entry.hf_shape)


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
