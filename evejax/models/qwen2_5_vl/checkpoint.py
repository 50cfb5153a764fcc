"""Qwen2.5-VL's Hugging Face checkpoints: config.json conversion and tensor names.

Both key styles load: the hub's (`model.layers.N...`, `visual...`) and
transformers>=5's in-memory names (`model.language_model...`,
`model.visual...`); `tensor_table` gives the hub names, which saving writes
and transformers loads. config.json comes in the nested v5 form (text_config
with rope_parameters) or the older flat hub form (text keys at the root,
rope_scaling with type 'mrope'); both convert.
"""
from __future__ import annotations

from evejax.models.presets import ModelConfig, TextConfig, VisionConfig
from evejax.models.tensors import TensorEntry

HF_MODEL_TYPE = "qwen2_5_vl"
HF_ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"


def config_from_hf(cfg: dict, where: str) -> ModelConfig:
  """ModelConfig from a parsed config.json (`where` names it in errors)."""
  nested = cfg.get("text_config")
  tc = nested if isinstance(nested, dict) and "hidden_size" in nested else cfg
  rope = (tc.get("rope_parameters") or tc.get("rope_scaling")
          or cfg.get("rope_scaling") or {})
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type not in ("default", "mrope"):
    raise ValueError(f"{where}: rope type {rope_type!r} is not supported; "
                     "evejax implements Qwen2.5-VL's sectioned M-RoPE.")
  if tc.get("use_sliding_window"):
    raise ValueError(f"{where} sets use_sliding_window=true, which evejax "
                     "does not implement; set it to false.")
  for part, c in (("text", tc), ("vision", cfg.get("vision_config", {}))):
    if c.get("hidden_act", "silu") != "silu":
      raise ValueError(f"{where}: {part} hidden_act {c['hidden_act']!r} is "
                       "not supported (only 'silu').")
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
      family="qwen2_5_vl", vision=vision, text=text,
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
      "architectures": [HF_ARCHITECTURE],
      "model_type": HF_MODEL_TYPE,
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
    e.append(TensorEntry(lay + (proj, "kernel"), name + "weight",
                         (heads * hd, d), "linear", L))
    e.append(TensorEntry(lay + (proj, "bias"), name + "bias", (heads * hd,),
                         "same", L))
  e.append(TensorEntry(lay + ("o", "kernel"), pre + "self_attn.o_proj.weight",
                       (d, t.num_heads * hd), "linear", L))
  for proj, shape in (("gate", (f, d)), ("up", (f, d)), ("down", (d, f))):
    e.append(TensorEntry(lay + ("mlp", proj, "kernel"),
                         pre + f"mlp.{proj}_proj.weight", shape, "linear", L))
  e.append(TensorEntry(text + ("norm", "scale"), "model.norm.weight", (d,),
                       "same"))
  if not t.tie_word_embeddings:
    e.append(TensorEntry(text + ("lm_head", "kernel"), "lm_head.weight",
                         (t.vocab_size, d), "linear"))

  vis = ("vision",)
  e.append(TensorEntry(vis + ("patch_embed", "kernel"),
                       "visual.patch_embed.proj.weight",
                       (dv, v.in_channels, v.temporal_patch_size, v.patch_size,
                        v.patch_size), "linear"))
  pre = "visual.blocks.{i}."
  blk = vis + ("blocks",)
  for n in ("norm1", "norm2"):
    e.append(TensorEntry(blk + (n, "scale"), pre + n + ".weight", (dv,), "same",
                         LV))
  e.append(TensorEntry(blk + ("qkv", "kernel"), pre + "attn.qkv.weight",
                       (3 * dv, dv), "linear", LV))
  e.append(TensorEntry(blk + ("qkv", "bias"), pre + "attn.qkv.bias", (3 * dv,),
                       "same", LV))
  e.append(TensorEntry(blk + ("proj", "kernel"), pre + "attn.proj.weight",
                       (dv, dv), "linear", LV))
  e.append(TensorEntry(blk + ("proj", "bias"), pre + "attn.proj.bias", (dv,),
                       "same", LV))
  for proj, shape, out in (("gate", (iv, dv), iv), ("up", (iv, dv), iv),
                           ("down", (dv, iv), dv)):
    e.append(TensorEntry(blk + ("mlp", proj, "kernel"),
                         pre + f"mlp.{proj}_proj.weight", shape, "linear", LV))
    e.append(TensorEntry(blk + ("mlp", proj, "bias"),
                         pre + f"mlp.{proj}_proj.bias", (out,), "same", LV))
  w = dv * v.merge_unit
  mer = vis + ("merger",)
  e.append(TensorEntry(mer + ("ln_q", "scale"), "visual.merger.ln_q.weight",
                       (dv,), "same"))
  for ours, theirs, shape in (("fc1", "mlp.0", (w, w)),
                              ("fc2", "mlp.2", (v.out_hidden_size, w))):
    e.append(TensorEntry(mer + (ours, "kernel"), f"visual.merger.{theirs}.weight",
                         shape, "linear"))
    e.append(TensorEntry(mer + (ours, "bias"), f"visual.merger.{theirs}.bias",
                         shape[:1], "same"))
  return e


def alt_names(name: str) -> list[str]:
  """Hub name first, then the transformers>=5 module name."""
  if name.startswith("model."):
    return [name, "model.language_model." + name[len("model."):]]
  if name.startswith("visual."):
    return [name, "model." + name]
  return [name]
