r"""Compares evejax and transformers logits on one checkpoint of any family.

    python -m evejax.tools.hf_parity --hf_dir /tmp/tiny_qwen --make_tiny
    python -m evejax.tools.hf_parity --hf_dir /tmp/tiny_qwen3 --make_tiny --family qwen3_vl
    python -m evejax.tools.hf_parity --hf_dir /tmp/tiny_qwen35 --make_tiny --family qwen3_5
    python -m evejax.tools.hf_parity --hf_dir ~/ckpt/Qwen2.5-VL-3B-Instruct
    python -m evejax.tools.hf_parity --hf_dir ~/ckpt/Qwen3-VL-8B-Instruct

The family comes from the checkpoint's config.json. Builds a batch (text,
several non-square images of different sizes, a text-only example), runs
transformers (torch CPU, fp32) and evejax on the same weights, prints ONE line
of JSON {"max_abs_diff": .., "pass": .., ...} and exits non-zero when
max |logits_evejax - logits_hf| over real tokens > --threshold.

Unlike library code this tool imports torch and transformers; its helpers
(tiny checkpoints, HF forward, batch building) are shared with the tests.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Sequence

import numpy as np

from evejax.models import families
from evejax.models import hf as hf_lib
from evejax.models.inputs import ModelInputs
from evejax.models.presets import ModelConfig
from evejax.processing.patch_layout import patch_layout

# A segment of a prompt: an int is that many random text tokens, a (h, w)
# tuple an image of that many pixels (multiples of the resize factor, 28 or
# 32, keep smart_resize exact).
Segment = int | tuple[int, int]


def _randomize(model, seed: int, gains: dict[str, float] | None = None,
               centered=lambda name: False) -> None:
  """Every weight (norm scales and biases included) random with O(1)
  activations, so attention patterns and rotary phases matter to the logits.

  `gains` multiplies the weights whose name contains a key (after the
  unit-variance draw), e.g. to push GELU inputs to where exact and tanh GELU
  differ. Norms whose name `centered` accepts store w of a (1 + w) scale.
  """
  import torch
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if centered(name):
        p.copy_(0.2 * noise)
      elif "norm" in name or "ln_q" in name:
        p.copy_(1.0 + 0.2 * noise)
      elif name.endswith("bias"):
        p.copy_(0.2 * noise)
      elif "embed_tokens" in name or "pos_embed" in name:
        p.copy_(noise)
      else:  # [out, in...]: unit-variance outputs
        p.copy_(noise * (p[0].numel() ** -0.5))
      for key, gain in (gains or {}).items():
        if key in name:
          p.mul_(gain)


def make_tiny_hf_checkpoint(
    out_dir: str, *, seed: int = 0, tie: bool = True, vocab: int = 128,
    hidden: int = 48, num_layers: int = 2, heads: int = 3, kv_heads: int = 1,
    intermediate: int = 64, mrope_section: Sequence[int] = (2, 3, 3),
    vision_depth: int = 3, vision_hidden: int = 48, vision_heads: int = 3,
    vision_intermediate: int = 64, window_size: int = 56,
    fullatt: Sequence[int] = (0, 2), rope_theta: float = 10000.0,
    max_shard_size: str | None = None) -> str:
  """Writes a random tiny Qwen2_5_VLForConditionalGeneration (fp32) to out_dir.

  Special token ids are the top of the small vocab. Every weight (norm scales
  and biases included) is random with O(1) activations, so attention patterns
  and rotary phases matter to the logits. Returns out_dir.
  """
  import torch
  import transformers
  special = {"image_token_id": vocab - 4, "video_token_id": vocab - 3,
             "vision_start_token_id": vocab - 2,
             "vision_end_token_id": vocab - 1}
  cfg = transformers.Qwen2_5_VLConfig(
      text_config=dict(
          vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
          num_hidden_layers=num_layers, num_attention_heads=heads,
          num_key_value_heads=kv_heads, rms_norm_eps=1e-6,
          bos_token_id=0, eos_token_id=1, pad_token_id=2,
          rope_parameters=dict(rope_type="default", rope_theta=rope_theta,
                               mrope_section=list(mrope_section))),
      vision_config=dict(
          depth=vision_depth, hidden_size=vision_hidden,
          intermediate_size=vision_intermediate, num_heads=vision_heads,
          out_hidden_size=hidden, window_size=window_size,
          fullatt_block_indexes=list(fullatt)),
      tie_word_embeddings=tie, **special)
  torch.manual_seed(seed)
  model = transformers.Qwen2_5_VLForConditionalGeneration(cfg).eval()
  _randomize(model, seed)
  kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
  model.save_pretrained(out_dir, **kw)
  return out_dir


# Weight gains of the tiny Qwen3-VL checkpoints: every fc1 (vision MLP, main
# and DeepStack mergers) gets inputs of std ~2, where tanh and exact GELU
# differ most (up to 3e-4; ~1e-7 near 0, where default-init activations sit),
# and an untied lm head logits of std ~4 like the tied one's. Swapping either
# GELU then moves the logits by 8e-4 to 2e-3, 8x+ the parity tolerance.
QWEN3_VL_GAINS = {"linear_fc1.weight": 2.0, "lm_head": 4.0}


def make_tiny_qwen3_vl_checkpoint(
    out_dir: str, *, seed: int = 0, tie: bool = False, vocab: int = 128,
    hidden: int = 40, num_layers: int = 3, heads: int = 3, kv_heads: int = 1,
    head_dim: int = 16, intermediate: int = 64,
    mrope_section: Sequence[int] = (4, 2, 2), vision_depth: int = 4,
    vision_hidden: int = 32, vision_heads: int = 2,
    vision_intermediate: int = 48, num_position_embeddings: int = 16,
    deepstack: Sequence[int] = (0, 2), rope_theta: float = 5e6,
    gains: dict[str, float] | None = None,
    max_shard_size: str | None = None) -> str:
  """Writes a random tiny Qwen3VLForConditionalGeneration (fp32) to out_dir.

  The defaults are the reference's tiny config: 3 query heads on 1 KV head,
  head_dim 16 != 40 / 3, two DeepStack mergers, a 4x4 position table (so a
  grid of more than 4 patches a side resamples it up, one of fewer down).
  Special token ids are the top of the small vocab; weights as `_randomize`
  draws them with `gains` (default QWEN3_VL_GAINS). Returns out_dir.
  """
  import torch
  import transformers
  special = {"image_token_id": vocab - 4, "video_token_id": vocab - 3,
             "vision_start_token_id": vocab - 2,
             "vision_end_token_id": vocab - 1}
  cfg = transformers.Qwen3VLConfig(
      text_config=dict(
          vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
          num_hidden_layers=num_layers, num_attention_heads=heads,
          num_key_value_heads=kv_heads, head_dim=head_dim, rms_norm_eps=1e-6,
          max_position_embeddings=4096, hidden_act="silu",
          attention_bias=False, bos_token_id=0, eos_token_id=1, pad_token_id=2,
          rope_parameters=dict(rope_type="default", rope_theta=rope_theta,
                               mrope_section=list(mrope_section),
                               mrope_interleaved=True)),
      vision_config=dict(
          depth=vision_depth, hidden_size=vision_hidden,
          intermediate_size=vision_intermediate, num_heads=vision_heads,
          patch_size=16, temporal_patch_size=2, spatial_merge_size=2,
          in_channels=3, out_hidden_size=hidden,
          num_position_embeddings=num_position_embeddings,
          deepstack_visual_indexes=list(deepstack),
          hidden_act="gelu_pytorch_tanh"),
      tie_word_embeddings=tie, **special)
  torch.manual_seed(seed)
  model = transformers.Qwen3VLForConditionalGeneration(cfg).eval()
  _randomize(model, seed, QWEN3_VL_GAINS if gains is None else gains)
  kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
  model.save_pretrained(out_dir, **kw)
  return out_dir


# Weight gains of the tiny Qwen3.5 checkpoints: `_randomize` already gives
# unit-variance activations, where every pitfall of the reference's table
# moves some logit by 1e-3 or more (tests/qwen3_5_parity_test.py); the
# vision fc1 gains are Qwen3-VL's (exact vs tanh GELU). Halving what each
# layer adds to the residual stream keeps the 8-layer network from being
# chaotic: at gain 1, transformers' own fp32 and fp64 logits differed by
# 1e-4 (the parity tolerance; logits ~4), at 0.5 by ~1e-5.
QWEN3_5_GAINS = {"linear_fc1.weight": 2.0, "o_proj": 0.5, "out_proj": 0.5,
                 "down_proj": 0.5}


def make_tiny_qwen3_5_checkpoint(
    out_dir: str, *, seed: int = 0, tie: bool = False, vocab: int = 128,
    hidden: int = 48, num_layers: int = 5,
    layer_types: Sequence[str] | None = None, full_attention_interval: int = 4,
    heads: int = 4, kv_heads: int = 2, head_dim: int = 32,
    intermediate: int = 96, linear_key_heads: int = 2,
    linear_value_heads: int = 6, linear_key_dim: int = 16,
    linear_value_dim: int = 24, mrope_section: Sequence[int] = (2, 1, 1),
    rope_theta: float = 1e7, vision_depth: int = 2, vision_hidden: int = 32,
    vision_heads: int = 2, vision_intermediate: int = 48,
    num_position_embeddings: int = 16, gains: dict[str, float] | None = None,
    max_shard_size: str | None = None) -> str:
  """Writes a random tiny Qwen3_5ForConditionalGeneration (fp32) to out_dir.

  The defaults are the reference's tiny config with 3 value heads per key
  head: 5 layers L L L F L (or `layer_types`), rotary on 8 of 32 head
  channels (4 frequencies, sections 2/1/1), dk 16 != dv 24, a 4x4 vision
  position table. Special token ids are the top of the small vocab; weights
  as `_randomize` draws them with `gains` (default QWEN3_5_GAINS).
  """
  import torch
  import transformers
  special = {"image_token_id": vocab - 4, "video_token_id": vocab - 3,
             "vision_start_token_id": vocab - 2,
             "vision_end_token_id": vocab - 1}
  types = {"layer_types": list(layer_types)} if layer_types else {
      "full_attention_interval": full_attention_interval}
  cfg = transformers.Qwen3_5Config(
      text_config=dict(
          vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
          num_hidden_layers=num_layers, num_attention_heads=heads,
          num_key_value_heads=kv_heads, head_dim=head_dim,
          linear_num_key_heads=linear_key_heads,
          linear_num_value_heads=linear_value_heads,
          linear_key_head_dim=linear_key_dim,
          linear_value_head_dim=linear_value_dim, linear_conv_kernel_dim=4,
          rms_norm_eps=1e-6, hidden_act="silu", max_position_embeddings=4096,
          bos_token_id=0, eos_token_id=1, pad_token_id=2, **types,
          rope_parameters=dict(rope_type="default", rope_theta=rope_theta,
                               partial_rotary_factor=0.25,
                               mrope_section=list(mrope_section),
                               mrope_interleaved=True)),
      vision_config=dict(
          depth=vision_depth, hidden_size=vision_hidden,
          intermediate_size=vision_intermediate, num_heads=vision_heads,
          patch_size=16, temporal_patch_size=2, spatial_merge_size=2,
          in_channels=3, out_hidden_size=hidden,
          num_position_embeddings=num_position_embeddings,
          hidden_act="gelu_pytorch_tanh"),
      tie_word_embeddings=tie, **special)
  torch.manual_seed(seed)
  model = transformers.Qwen3_5ForConditionalGeneration(cfg).eval()
  # Every text norm but DeltaNet's gated one (linear_attn.norm) is (1 + w).
  centered = lambda name: ("language_model" in name and "norm" in name
                           and "linear_attn.norm" not in name)
  _randomize(model, seed, QWEN3_5_GAINS if gains is None else gains, centered)
  kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
  model.save_pretrained(out_dir, **kw)
  return out_dir


TINY_CHECKPOINTS = {"qwen2_5_vl": make_tiny_hf_checkpoint,
                    "qwen3_vl": make_tiny_qwen3_vl_checkpoint,
                    "qwen3_5": make_tiny_qwen3_5_checkpoint}


def load_hf_model(hf_dir: str):
  """The transformers model of the checkpoint's family, fp32, eval mode."""
  import transformers
  with open(os.path.join(hf_dir, hf_lib.CONFIG_FILE)) as f:
    family = families.from_hf_config(json.load(f), hf_dir)
  cls = getattr(transformers, family.hf_architecture)
  return cls.from_pretrained(hf_dir, dtype="float32").eval()


def image_processor(config: ModelConfig):
  """Qwen2VLImageProcessor (PIL backend) with the family's normalisation and
  bounds for small test images."""
  from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as ip
  v = config.vision
  family = families.of(config)
  factor = v.patch_size * v.spatial_merge_size
  return ip.Qwen2VLImageProcessorPil(
      min_pixels=factor * factor, max_pixels=factor * factor * 1024,
      patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size,
      merge_size=v.spatial_merge_size, image_mean=list(family.image_mean),
      image_std=list(family.image_std))


def build_examples(config: ModelConfig, segments: Sequence[Sequence[Segment]],
                   seed: int = 0) -> list[dict]:
  """Random prompts; each a dict of numpy input_ids, mm_token_type_ids, ...

  Image tokens follow the Qwen layout: vision_start, t*h*w/4 image pads,
  vision_end. pixel_values/image_grid_thw come from the HF image processor.
  """
  from PIL import Image
  rng = np.random.default_rng(seed)
  proc = image_processor(config)
  factor = config.vision.patch_size * config.vision.spatial_merge_size
  text_hi = min(config.text.vocab_size, config.image_token_id,
                config.vision_start_token_id, config.vision_end_token_id,
                config.video_token_id)
  out = []
  for segs in segments:
    ids, types, images = [], [], []
    for seg in segs:
      if isinstance(seg, int):
        ids += rng.integers(0, text_hi, seg).tolist()
        types += [0] * seg
      else:
        h, w = seg
        images.append(Image.fromarray(
            rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
        n = (h // factor) * (w // factor)  # merged tokens
        ids += [config.vision_start_token_id] + [config.image_token_id] * n
        ids += [config.vision_end_token_id]
        types += [0] + [1] * n + [0]
    ex = {"input_ids": np.array(ids, np.int64),
          "mm_token_type_ids": np.array(types, np.int64)}
    if images:
      pv = proc(images=images, return_tensors="np")
      ex["pixel_values"] = pv["pixel_values"].astype(np.float32)
      ex["image_grid_thw"] = pv["image_grid_thw"].astype(np.int64)
      got = int(np.sum(np.prod(ex["image_grid_thw"], -1))) // 4
      assert got == int(np.sum(ex["mm_token_type_ids"])), (
          f"image sizes must be multiples of {factor} for exact token counts")
    out.append(ex)
  return out


def hf_positions(model, ex: dict) -> np.ndarray:
  """M-RoPE positions [3, T] from transformers' own get_rope_index."""
  import torch
  t = len(ex["input_ids"])
  if "image_grid_thw" not in ex:
    return np.broadcast_to(np.arange(t), (3, t)).copy()
  pos, _ = model.model.get_rope_index(
      torch.from_numpy(ex["input_ids"])[None],
      mm_token_type_ids=torch.from_numpy(ex["mm_token_type_ids"])[None],
      image_grid_thw=torch.from_numpy(ex["image_grid_thw"]))
  return pos[:, 0].numpy()


def hf_logits(model, ex: dict) -> np.ndarray:
  """float32 logits [T, V] of one unpadded example."""
  import torch
  kw = {"input_ids": torch.from_numpy(ex["input_ids"])[None],
        "mm_token_type_ids": torch.from_numpy(ex["mm_token_type_ids"])[None]}
  if "pixel_values" in ex:
    kw["pixel_values"] = torch.from_numpy(ex["pixel_values"])
    kw["image_grid_thw"] = torch.from_numpy(ex["image_grid_thw"])
  with torch.no_grad():
    return model(**kw).logits[0].float().numpy()


def to_model_inputs(config: ModelConfig, examples: Sequence[dict],
                    positions: Sequence[np.ndarray], *, length: int | None = None,
                    num_patches: int | None = None, pad: str = "right"
                    ) -> ModelInputs:
  """Pads examples into one numpy ModelInputs batch (left or right padding).

  Padding tokens get id 0 and position 0; padding patch rows image/window -1.
  """
  b = len(examples)
  lens = [len(ex["input_ids"]) for ex in examples]
  t = length or max(lens)
  n_rows = [len(ex.get("pixel_values", ())) for ex in examples]
  p = num_patches if num_patches is not None else -(-max(n_rows) // 4) * 4
  tokens = np.zeros((b, t), np.int32)
  mask = np.zeros((b, t), np.int32)
  pos = np.zeros((3, b, t), np.int32)
  patches = np.zeros((b, p, config.vision.patch_dim), np.float32)
  coords = np.zeros((b, p, 2), np.int32)
  image = np.full((b, p), -1, np.int32)
  window = np.full((b, p), -1, np.int32)
  for i, (ex, ps) in enumerate(zip(examples, positions)):
    n = lens[i]
    sl = slice(0, n) if pad == "right" else slice(t - n, t)
    tokens[i, sl] = ex["input_ids"]
    mask[i, sl] = 1
    pos[:, i, sl] = ps
    if "pixel_values" in ex:
      lay = patch_layout([tuple(g) for g in ex["image_grid_thw"]],
                         config.vision)
      r = n_rows[i]
      patches[i, :r] = ex["pixel_values"]
      coords[i, :r] = lay["coords"]
      image[i, :r] = lay["image"]
      window[i, :r] = lay["window"]
  return ModelInputs(tokens=tokens, mask=mask, positions=pos, patches=patches,
                     patch_coords=coords, patch_image=image,
                     patch_window=window)


def real_logits(logits: np.ndarray, inputs: ModelInputs) -> list[np.ndarray]:
  """Per-example logits of real tokens only, in order."""
  m = np.asarray(inputs.mask) != 0
  return [np.asarray(logits)[i][m[i]] for i in range(m.shape[0])]


def default_segments(config: ModelConfig) -> list[list[Segment]]:
  """Two images of different non-square sizes in one prompt, text; with
  window attention, partial edge windows."""
  if config.vision.window_merged is None:
    # 6x10 and 4x6 patch grids, a 12x2 one: tables resampled both ways.
    a, b = (96, 160), (64, 96)
    return [[5, a, 4, b, 3], [3, (192, 32), 6], [9]]
  side = config.vision.window_size  # one window, in pixels
  a = (side + 28, 2 * side + 28)     # more than one window each way
  b = (56, side + 28)
  return [[5, a, 4, b, 3], [3, (b[1], b[0]), 6], [9]]


def run(hf_dir: str, seed: int = 0, threshold: float = 1e-4) -> dict:
  import jax
  from evejax.models import vlm
  model = load_hf_model(hf_dir)
  config = hf_lib.config_from_hf(hf_dir)
  params = hf_lib.load_params(hf_dir, config)
  examples = build_examples(config, default_segments(config), seed=seed)
  positions = [hf_positions(model, ex) for ex in examples]
  inputs = to_model_inputs(config, examples, positions)
  ours = real_logits(jax.jit(vlm.forward, static_argnums=1)(
      params, config, jax.tree.map(jax.numpy.asarray, inputs)), inputs)
  diffs, peak = [], 0.0
  for ex, o in zip(examples, ours):
    ref = hf_logits(model, ex)
    diffs.append(float(np.max(np.abs(o - ref))))
    peak = max(peak, float(np.max(np.abs(ref))))
  worst = max(diffs)
  return {"family": config.family, "max_abs_diff": worst,
          "pass": bool(worst <= threshold),
          "threshold": threshold, "per_example": diffs,
          "max_abs_logit": peak,
          "num_images": int(sum(len(ex.get("image_grid_thw", ()))
                                for ex in examples)),
          "seq_lens": [len(ex["input_ids"]) for ex in examples],
          "hf_dir": hf_dir}


def main(argv):
  del argv
  from absl import flags
  f = flags.FLAGS
  if f.make_tiny:
    if f.family not in TINY_CHECKPOINTS:
      raise SystemExit(f"--family {f.family!r}: choose one of "
                       f"{sorted(TINY_CHECKPOINTS)}.")
    TINY_CHECKPOINTS[f.family](f.hf_dir, seed=f.seed)
  elif not os.path.exists(os.path.join(f.hf_dir, "config.json")):
    raise SystemExit(f"{f.hf_dir} has no config.json; pass a checkpoint dir "
                     f"({families.implemented()}) or --make_tiny to write a "
                     "random one.")
  result = run(f.hf_dir, seed=f.seed, threshold=f.threshold)
  print(json.dumps(result), flush=True)
  sys.exit(0 if result["pass"] else 1)


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("hf_dir", None, "Checkpoint directory (any family).",
                      required=True)
  flags.DEFINE_string("family", "qwen2_5_vl",
                      "With --make_tiny: the family of the random checkpoint.")
  flags.DEFINE_integer("seed", 0, "Seed for prompts, images (and --make_tiny).")
  flags.DEFINE_float("threshold", 1e-4, "Max allowed |logit difference|.")
  flags.DEFINE_bool("make_tiny", False,
                    "First write a random tiny checkpoint into --hf_dir.")
  app.run(main)
