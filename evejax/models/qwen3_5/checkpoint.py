"""Qwen3.5's Hugging Face checkpoints: config.json conversion and tensor names.

The hub's safetensors use transformers' in-memory names
(`model.language_model.*`, `model.visual.*`, `lm_head.weight`), plus a
multi-token-prediction head (`mtp.*`) that transformers ignores and evejax
skips (`hf.load_params` logs what it skips). `A_log` and the gated norms'
weights are F32 on the hub and stay fp32 here whatever the param dtype.

config.json, as transformers 5.25 reads it (each rule changes logits if
missed):
  * `tie_word_embeddings` at the top level only (9B/27B untied, 0.8B-4B tied);
  * `layer_types` when given, else layer i is full attention iff
    (i + 1) % full_attention_interval (default 4) == 0;
  * text rope: `rope_parameters` (or `rope_scaling` + a flat `rope_theta`):
    theta defaults to 1e4 (the hub says 1e7), `partial_rotary_factor` to
    0.25, `mrope_section` to (11, 11, 10); always interleaved;
  * `head_dim` 256, `linear_*` 16 key / 32 value heads of 128, conv 4 by
    default; the attention output gate is always sigmoid and the gated
    norm's always SiLU (`attn_output_gate`, `output_gate_type` unread);
  * the vision tower is Qwen3-VL's without DeepStack.

Layout differences from the checkpoint (`tensor_table` converts):
  * stacked leaves hold one kind of layer of one position in a period
    (`text/layers/linear_1/...` = layers 1, 5, 9, ... for L L L F): each
    entry names its checkpoint layers (`TensorEntry.layer_ids`);
  * in_proj_qkv's rows and conv1d's channels are regrouped by key head
    ([q_h | k_h | value heads of h] for each h; the checkpoint has [all q |
    all k | all v]): `TensorEntry.out_order`;
  * norms keep the zero-centred weight as stored (`centered_scale`).
"""
from __future__ import annotations

import numpy as np

from evejax.models.presets import (ModelConfig, Qwen3_5TextConfig,
                                   Qwen3_5VisionConfig)
from evejax.models.qwen3_5.text import member_names
from evejax.models.qwen3_vl import checkpoint as qwen3_vl_checkpoint
from evejax.models.tensors import TensorEntry

HF_MODEL_TYPE = "qwen3_5"
HF_ARCHITECTURE = "Qwen3_5ForConditionalGeneration"
# Special-token ids of the Qwen3.5 vocabulary (also transformers' defaults).
IMAGE_TOKEN_ID, VIDEO_TOKEN_ID = 248056, 248057
VISION_START_TOKEN_ID, VISION_END_TOKEN_ID = 248053, 248054


def _check(where: str, what: str, value, allowed) -> None:
  if value not in allowed:
    raise ValueError(f"{where}: {what} {value!r} is not supported; evejax's "
                     f"Qwen3.5 implements {list(allowed)}.")


def config_from_hf(cfg: dict, where: str) -> ModelConfig:
  """ModelConfig from a parsed config.json (`where` names it in errors)."""
  tc = cfg.get("text_config")
  if not isinstance(tc, dict) or "hidden_size" not in tc:
    raise ValueError(f"{where} has no text_config with the decoder's shape; "
                     "a Qwen3.5 config.json nests it (re-download it).")
  vc = dict(cfg.get("vision_config") or {})
  rope = dict(tc.get("rope_parameters") or tc.get("rope_scaling") or {})
  _check(where, "text rope type",
         rope.get("rope_type", rope.get("type", "default")), ("default", "mrope"))
  _check(where, "text hidden_act", tc.get("hidden_act", "silu"), ("silu",))
  _check(where, "vision hidden_act", vc.get("hidden_act", "gelu_pytorch_tanh"),
         ("gelu_pytorch_tanh",))
  _check(where, "attention_bias", bool(tc.get("attention_bias", False)), (False,))
  _check(where, "vision deepstack_visual_indexes",
         list(vc.get("deepstack_visual_indexes") or []), ([],))
  vc.pop("deepstack_visual_indexes", None)
  td = Qwen3_5TextConfig()
  heads = tc["num_attention_heads"]
  get = lambda key, default: tc.get(key, default) if tc.get(key) is not None else default
  text = Qwen3_5TextConfig(
      vocab_size=get("vocab_size", td.vocab_size),
      hidden_size=tc["hidden_size"],
      intermediate_size=tc["intermediate_size"],
      num_layers=tc["num_hidden_layers"],
      layer_types=tuple(tc.get("layer_types") or ()),
      full_attention_interval=get("full_attention_interval", 4),
      num_heads=heads,
      num_kv_heads=get("num_key_value_heads", heads),
      head_dim=get("head_dim", td.head_dim),
      rope_theta=float(rope.get("rope_theta", tc.get("rope_theta", 10_000.0))),
      partial_rotary_factor=float(rope.get(
          "partial_rotary_factor", tc.get("partial_rotary_factor", 0.25))),
      mrope_section=tuple(rope.get("mrope_section", (11, 11, 10))),
      rms_norm_eps=float(get("rms_norm_eps", 1e-6)),
      linear_num_key_heads=get("linear_num_key_heads", td.linear_num_key_heads),
      linear_num_value_heads=get("linear_num_value_heads",
                                 td.linear_num_value_heads),
      linear_key_head_dim=get("linear_key_head_dim", td.linear_key_head_dim),
      linear_value_head_dim=get("linear_value_head_dim",
                                td.linear_value_head_dim),
      linear_conv_kernel_dim=get("linear_conv_kernel_dim",
                                 td.linear_conv_kernel_dim),
      tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)))
  vision = qwen3_vl_checkpoint.vision_from_hf(vc, Qwen3_5VisionConfig)
  return ModelConfig(
      family="qwen3_5", vision=vision, text=text,
      image_token_id=cfg.get("image_token_id", IMAGE_TOKEN_ID),
      video_token_id=cfg.get("video_token_id", VIDEO_TOKEN_ID),
      vision_start_token_id=cfg.get("vision_start_token_id",
                                    VISION_START_TOKEN_ID),
      vision_end_token_id=cfg.get("vision_end_token_id", VISION_END_TOKEN_ID))


def config_to_hf(config: ModelConfig, torch_dtype: str = "float32") -> dict:
  """config.json (the hub's nested form) for a Qwen3.5 ModelConfig."""
  t, v = config.text, config.vision
  return {
      **qwen3_vl_checkpoint.hf_header(config, torch_dtype, HF_ARCHITECTURE,
                                      HF_MODEL_TYPE),
      "text_config": {
          "model_type": "qwen3_5_text",
          "vocab_size": t.vocab_size,
          "hidden_size": t.hidden_size,
          "intermediate_size": t.intermediate_size,
          "num_hidden_layers": t.num_layers,
          "layer_types": list(t.layer_types),
          "num_attention_heads": t.num_heads,
          "num_key_value_heads": t.num_kv_heads,
          "head_dim": t.head_dim,
          "linear_num_key_heads": t.linear_num_key_heads,
          "linear_num_value_heads": t.linear_num_value_heads,
          "linear_key_head_dim": t.linear_key_head_dim,
          "linear_value_head_dim": t.linear_value_head_dim,
          "linear_conv_kernel_dim": t.linear_conv_kernel_dim,
          "hidden_act": "silu",
          "attention_bias": False,
          "rms_norm_eps": t.rms_norm_eps,
          "max_position_embeddings": 262144,
          "tie_word_embeddings": t.tie_word_embeddings,
          "rope_parameters": {"rope_type": "default",
                              "rope_theta": t.rope_theta,
                              "partial_rotary_factor": t.partial_rotary_factor,
                              "mrope_section": list(t.mrope_section),
                              "mrope_interleaved": True},
      },
      "vision_config": qwen3_vl_checkpoint.vision_to_hf(
          v, "qwen3_5_vision", deepstack=False),
  }


def grouped_qkv_order(t: Qwen3_5TextConfig) -> tuple[int, ...]:
  """For each of our in_qkv channels (key head h: q_h, k_h, then its r value
  heads), the checkpoint's channel ([all q | all k | all v])."""
  hk, dk, dv = t.linear_num_key_heads, t.linear_key_head_dim, t.linear_value_head_dim
  r = t.value_heads_per_key_head
  out = []
  for h in range(hk):
    out.append(np.arange(dk) + h * dk)
    out.append(np.arange(dk) + (hk + h) * dk)
    out.append(np.arange(r * dv) + 2 * hk * dk + h * r * dv)
  return tuple(int(i) for i in np.concatenate(out))


def _layer_entries(t: Qwen3_5TextConfig, member: str, layer_ids) -> list:
  """Entries of one stacked member of the blocks (e.g. linear_1)."""
  d, f, n = t.hidden_size, t.intermediate_size, len(layer_ids)
  pre = "model.language_model.layers.{i}."
  lay = ("text", "layers", member)
  entry = lambda path, name, shape, kind="linear", **kw: TensorEntry(
      lay + path, pre + name, shape, kind, n, layer_ids=tuple(layer_ids), **kw)
  e = [entry(("input_norm", "centered_scale"), "input_layernorm.weight", (d,),
             "same"),
       entry(("post_attn_norm", "centered_scale"),
             "post_attention_layernorm.weight", (d,), "same")]
  for proj, shape in (("gate", (f, d)), ("up", (f, d)), ("down", (d, f))):
    e.append(entry(("mlp", proj, "kernel"), f"mlp.{proj}_proj.weight", shape))
  if member.startswith("full"):
    hd, nq, nkv = t.head_dim, t.num_heads, t.num_kv_heads
    e += [entry(("q", "kernel"), "self_attn.q_proj.weight", (2 * nq * hd, d)),
          entry(("k", "kernel"), "self_attn.k_proj.weight", (nkv * hd, d)),
          entry(("v", "kernel"), "self_attn.v_proj.weight", (nkv * hd, d)),
          entry(("o", "kernel"), "self_attn.o_proj.weight", (d, nq * hd)),
          entry(("q_norm", "centered_scale"), "self_attn.q_norm.weight", (hd,),
                "same"),
          entry(("k_norm", "centered_scale"), "self_attn.k_norm.weight", (hd,),
                "same")]
    return e
  hk, hv = t.linear_num_key_heads, t.linear_num_value_heads
  dk, dv = t.linear_key_head_dim, t.linear_value_head_dim
  channels = 2 * hk * dk + hv * dv
  order = grouped_qkv_order(t)
  la = "linear_attn."
  e += [entry(("in_qkv", "kernel"), la + "in_proj_qkv.weight", (channels, d),
              out_order=order),
        entry(("in_z", "kernel"), la + "in_proj_z.weight", (hv * dv, d)),
        entry(("in_b", "kernel"), la + "in_proj_b.weight", (hv, d)),
        entry(("in_a", "kernel"), la + "in_proj_a.weight", (hv, d)),
        # [C, 1, K] is [out, in] to the conversion: ours [K, Hk, W].
        entry(("conv_weight",), la + "conv1d.weight",
              (channels, 1, t.linear_conv_kernel_dim), out_order=order),
        entry(("A_log",), la + "A_log", (hv,), "same"),
        entry(("dt_bias",), la + "dt_bias", (hv,), "same"),
        entry(("norm", "scale"), la + "norm.weight", (dv,), "same"),
        entry(("out", "kernel"), la + "out_proj.weight", (d, hv * dv))]
  return e


def tensor_table(config: ModelConfig) -> list[TensorEntry]:
  """Every evejax leaf and the checkpoint tensors it is made of (hub names)."""
  t = config.text
  d, p = t.hidden_size, t.period
  e = [TensorEntry(("text", "embed", "embedding"),
                   "model.language_model.embed_tokens.weight",
                   (t.vocab_size, d), "same")]
  for pos, member in enumerate(member_names(t)):
    e += _layer_entries(t, member, range(pos, t.num_layers, p))
  e.append(TensorEntry(("text", "norm", "centered_scale"),
                       "model.language_model.norm.weight", (d,), "same"))
  if not t.tie_word_embeddings:
    e.append(TensorEntry(("text", "lm_head", "kernel"), "lm_head.weight",
                         (t.vocab_size, d), "linear"))
  return e + qwen3_vl_checkpoint.vision_tensor_table(config.vision)


def alt_names(name: str) -> list[str]:
  """The hub and in-memory names are the same for Qwen3.5."""
  return [name]

