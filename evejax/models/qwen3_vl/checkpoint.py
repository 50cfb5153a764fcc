"""Qwen3-VL's Hugging Face checkpoints: config.json conversion and tensor names.

The hub's safetensors use the in-memory names of transformers>=5
(`model.language_model.*`, `model.visual.*`, `lm_head.weight`); only the
vision qkv is fused. Tied checkpoints (2B/4B) carry no `lm_head.weight`.

config.json, as transformers 5.24 reads it (each rule changes logits if
missed):
  * `tie_word_embeddings` is read at the top level only (the hub's 2B/4B also
    set it inside text_config, which transformers ignores);
  * text rope: `rope_parameters`, or the hub's `rope_scaling` plus a flat
    `rope_theta`, both inside text_config; theta defaults to 5e5 and
    `mrope_section` to (24, 20, 20) when absent; the sections are always
    interleaved (`mrope_interleaved` is never read);
  * `head_dim` defaults to 128; `num_key_value_heads` to 32 when absent (the
    class default) and to the head count when null;
  * the vision rope theta comes from vision_config's rope_parameters (1e4).
"""
from __future__ import annotations

from evejax.models.presets import ModelConfig, Qwen3TextConfig, Qwen3VisionConfig
from evejax.models.tensors import TensorEntry

HF_MODEL_TYPE = "qwen3_vl"
HF_ARCHITECTURE = "Qwen3VLForConditionalGeneration"


def _check(where: str, what: str, value, allowed) -> None:
  if value not in allowed:
    raise ValueError(f"{where}: {what} {value!r} is not supported; evejax's "
                     f"Qwen3-VL implements {list(allowed)}.")


def config_from_hf(cfg: dict, where: str) -> ModelConfig:
  """ModelConfig from a parsed config.json (`where` names it in errors)."""
  tc = cfg.get("text_config")
  if not isinstance(tc, dict) or "hidden_size" not in tc:
    raise ValueError(f"{where} has no text_config with the decoder's shape; "
                     "a Qwen3-VL config.json nests it (re-download it).")
  vc = cfg.get("vision_config") or {}
  rope = dict(tc.get("rope_parameters") or tc.get("rope_scaling") or {})
  _check(where, "text rope type", rope.get("rope_type", rope.get("type", "default")),
         ("default", "mrope"))
  _check(where, "text hidden_act", tc.get("hidden_act", "silu"), ("silu",))
  _check(where, "vision hidden_act", vc.get("hidden_act", "gelu_pytorch_tanh"),
         ("gelu_pytorch_tanh",))
  _check(where, "attention_bias", bool(tc.get("attention_bias", False)), (False,))
  heads = tc["num_attention_heads"]
  td = Qwen3TextConfig()
  text = Qwen3TextConfig(
      vocab_size=tc.get("vocab_size", td.vocab_size),
      hidden_size=tc["hidden_size"],
      intermediate_size=tc["intermediate_size"],
      num_layers=tc["num_hidden_layers"],
      num_heads=heads,
      num_kv_heads=tc.get("num_key_value_heads", 32) or heads,
      head_dim=tc.get("head_dim") or 128,
      rope_theta=float(rope.get("rope_theta", tc.get("rope_theta", 500_000.0))),
      rms_norm_eps=float(tc.get("rms_norm_eps", 1e-6)),
      mrope_section=tuple(rope.get("mrope_section", (24, 20, 20))),
      tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)))
  vision = vision_from_hf(vc, Qwen3VisionConfig)
  md = ModelConfig()
  return ModelConfig(
      family="qwen3_vl", vision=vision, text=text,
      image_token_id=cfg.get("image_token_id", md.image_token_id),
      video_token_id=cfg.get("video_token_id", md.video_token_id),
      vision_start_token_id=cfg.get("vision_start_token_id",
                                    md.vision_start_token_id),
      vision_end_token_id=cfg.get("vision_end_token_id",
                                  md.vision_end_token_id))


def vision_from_hf(vc: dict, cls: type = Qwen3VisionConfig):
  """The vision tower's config (`cls`: Qwen3-VL's or a subclass) from a
  config.json's vision_config, its class defaults where keys are absent."""
  vd = cls()
  return cls(
      depth=vc.get("depth", vd.depth),
      hidden_size=vc.get("hidden_size", vd.hidden_size),
      intermediate_size=vc.get("intermediate_size", vd.intermediate_size),
      num_heads=vc.get("num_heads", vd.num_heads),
      out_hidden_size=vc.get("out_hidden_size", 3584),
      in_channels=vc.get("in_channels", vd.in_channels),
      patch_size=vc.get("patch_size", vd.patch_size),
      temporal_patch_size=vc.get("temporal_patch_size", vd.temporal_patch_size),
      spatial_merge_size=vc.get("spatial_merge_size", vd.spatial_merge_size),
      num_position_embeddings=vc.get("num_position_embeddings",
                                     vd.num_position_embeddings),
      deepstack_visual_indexes=tuple(vc.get("deepstack_visual_indexes",
                                            vd.deepstack_visual_indexes)),
      rope_theta=float((vc.get("rope_parameters") or {}).get(
          "rope_theta", vd.rope_theta)))


def config_to_hf(config: ModelConfig, torch_dtype: str = "float32") -> dict:
  """config.json (transformers>=5 nested form) for a Qwen3-VL ModelConfig."""
  t, v = config.text, config.vision
  return {
      **hf_header(config, torch_dtype, HF_ARCHITECTURE, HF_MODEL_TYPE),
      "text_config": {
          "model_type": "qwen3_vl_text",
          "vocab_size": t.vocab_size,
          "hidden_size": t.hidden_size,
          "intermediate_size": t.intermediate_size,
          "num_hidden_layers": t.num_layers,
          "num_attention_heads": t.num_heads,
          "num_key_value_heads": t.num_kv_heads,
          "head_dim": t.head_dim,
          "hidden_act": "silu",
          "attention_bias": False,
          "rms_norm_eps": t.rms_norm_eps,
          "max_position_embeddings": 262144,
          "tie_word_embeddings": t.tie_word_embeddings,
          "rope_parameters": {"rope_type": "default",
                              "rope_theta": t.rope_theta,
                              "mrope_section": list(t.mrope_section),
                              "mrope_interleaved": True},
      },
      "vision_config": vision_to_hf(v, "qwen3_vl_vision"),
  }


def hf_header(config: ModelConfig, torch_dtype: str, architecture: str,
              model_type: str) -> dict:
  """config.json's top-level keys of a Qwen3-family VLM (tying lives here)."""
  return {
      "architectures": [architecture],
      "model_type": model_type,
      "dtype": torch_dtype,
      "image_token_id": config.image_token_id,
      "video_token_id": config.video_token_id,
      "vision_start_token_id": config.vision_start_token_id,
      "vision_end_token_id": config.vision_end_token_id,
      "tie_word_embeddings": config.text.tie_word_embeddings,
  }


def vision_to_hf(v, model_type: str, deepstack: bool = True) -> dict:
  """config.json's vision_config for a Qwen3-VL-style tower (`deepstack`:
  write deepstack_visual_indexes, which Qwen3-VL defaults to 8/16/24)."""
  out = {
      "model_type": model_type,
      "depth": v.depth,
      "hidden_size": v.hidden_size,
      "intermediate_size": v.intermediate_size,
      "num_heads": v.num_heads,
      "out_hidden_size": v.out_hidden_size,
      "in_channels": v.in_channels,
      "patch_size": v.patch_size,
      "temporal_patch_size": v.temporal_patch_size,
      "spatial_merge_size": v.spatial_merge_size,
      "num_position_embeddings": v.num_position_embeddings,
      "hidden_act": "gelu_pytorch_tanh",
      "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
  }
  if deepstack:
    out["deepstack_visual_indexes"] = list(v.deepstack_visual_indexes)
  return out


def _merger(e: list, path: tuple[str, ...], name: str, v, postshuffle: bool,
            layers: int = 0) -> None:
  w = v.hidden_size * v.merge_unit
  norm = w if postshuffle else v.hidden_size
  for part in ("weight", "bias"):
    e.append(TensorEntry(path + ("norm", "scale" if part == "weight" else "bias"),
                         f"{name}.norm.{part}", (norm,), "same", layers))
  for ours, shape in (("fc1", (w, w)), ("fc2", (v.out_hidden_size, w))):
    e.append(TensorEntry(path + (ours, "kernel"), f"{name}.linear_{ours}.weight",
                         shape, "linear", layers))
    e.append(TensorEntry(path + (ours, "bias"), f"{name}.linear_{ours}.bias",
                         shape[:1], "same", layers))


def tensor_table(config: ModelConfig) -> list[TensorEntry]:
  """Every evejax leaf and the checkpoint tensors it is made of (hub names)."""
  t, v = config.text, config.vision
  d, hd, f = t.hidden_size, t.head_dim, t.intermediate_size
  L = t.num_layers
  e = []
  text = ("text",)
  e.append(TensorEntry(text + ("embed", "embedding"),
                       "model.language_model.embed_tokens.weight",
                       (t.vocab_size, d), "same"))
  pre = "model.language_model.layers.{i}."
  lay = text + ("layers",)
  for ours, theirs, width in (
      ("input_norm", "input_layernorm", d),
      ("post_attn_norm", "post_attention_layernorm", d),
      ("q_norm", "self_attn.q_norm", hd), ("k_norm", "self_attn.k_norm", hd)):
    e.append(TensorEntry(lay + (ours, "scale"), pre + theirs + ".weight",
                         (width,), "same", L))
  for proj, heads in (("q", t.num_heads), ("k", t.num_kv_heads),
                      ("v", t.num_kv_heads)):
    e.append(TensorEntry(lay + (proj, "kernel"),
                         pre + f"self_attn.{proj}_proj.weight",
                         (heads * hd, d), "linear", L))
  e.append(TensorEntry(lay + ("o", "kernel"), pre + "self_attn.o_proj.weight",
                       (d, t.num_heads * hd), "linear", L))
  for proj, shape in (("gate", (f, d)), ("up", (f, d)), ("down", (d, f))):
    e.append(TensorEntry(lay + ("mlp", proj, "kernel"),
                         pre + f"mlp.{proj}_proj.weight", shape, "linear", L))
  e.append(TensorEntry(text + ("norm", "scale"), "model.language_model.norm.weight",
                       (d,), "same"))
  if not t.tie_word_embeddings:
    e.append(TensorEntry(text + ("lm_head", "kernel"), "lm_head.weight",
                         (t.vocab_size, d), "linear"))

  return e + vision_tensor_table(v)


def vision_tensor_table(v) -> list[TensorEntry]:
  """The vision tower's entries (`model.visual.*`), DeepStack mergers if any."""
  dv, iv, LV = v.hidden_size, v.intermediate_size, v.depth
  e = []
  vis = ("vision",)
  e.append(TensorEntry(vis + ("patch_embed", "kernel"),
                       "model.visual.patch_embed.proj.weight",
                       (dv, v.in_channels, v.temporal_patch_size, v.patch_size,
                        v.patch_size), "linear"))
  e.append(TensorEntry(vis + ("patch_embed", "bias"),
                       "model.visual.patch_embed.proj.bias", (dv,), "same"))
  e.append(TensorEntry(vis + ("pos_embed",), "model.visual.pos_embed.weight",
                       (v.num_position_embeddings, dv), "same"))
  pre = "model.visual.blocks.{i}."
  blk = vis + ("blocks",)
  for n in ("norm1", "norm2"):
    e.append(TensorEntry(blk + (n, "scale"), pre + n + ".weight", (dv,), "same",
                         LV))
    e.append(TensorEntry(blk + (n, "bias"), pre + n + ".bias", (dv,), "same", LV))
  for ours, theirs, shape in (("qkv", "attn.qkv", (3 * dv, dv)),
                              ("proj", "attn.proj", (dv, dv)),
                              ("mlp/fc1", "mlp.linear_fc1", (iv, dv)),
                              ("mlp/fc2", "mlp.linear_fc2", (dv, iv))):
    path = blk + tuple(ours.split("/"))
    e.append(TensorEntry(path + ("kernel",), pre + theirs + ".weight", shape,
                         "linear", LV))
    e.append(TensorEntry(path + ("bias",), pre + theirs + ".bias", shape[:1],
                         "same", LV))
  _merger(e, vis + ("merger",), "model.visual.merger", v, postshuffle=False)
  n = len(v.deepstack_visual_indexes)
  if n:
    _merger(e, vis + ("deepstack_merger",),
            "model.visual.deepstack_merger_list.{i}", v, postshuffle=True,
            layers=n)
  return e


def alt_names(name: str) -> list[str]:
  """The hub and in-memory names are the same for Qwen3-VL."""
  return [name]
