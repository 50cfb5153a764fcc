"""Model FLOPs of the VLMs: the count `bench_train` (MFU) and `aot_compile` (the
roofline's MFU bound, the check against the compiler's FLOPs) share.

Matmul FLOPs only (2 per multiply-add), forward; a train step is 3 forwards
(the backward's two matmuls per forward one; 2 where the backbone is frozen,
as under LoRA: no weight gradients), recomputation (remat) not counted, as is
conventional for MFU.
"""
from __future__ import annotations

import jax

from evejax.models import presets
from evejax.models import vlm


def forward_flops(config: presets.ModelConfig, rows: int, seq: int, images: int,
                  side: int) -> float:
  """Matmul FLOPs of one forward pass over the batch (2 per multiply-add).

  The dense matmuls are counted from the model's own kernels (any family):
  every text-layer kernel and the LM head once per token, every vision-block
  kernel and the patch embedding once per patch, the mergers' once per merged
  token. Attention adds its score and value products (causal: half the square)
  in every attention layer; Qwen3.5's DeltaNet layers (`full_layers` names its
  attention ones) add no quadratic term, and their chunked recurrence (linear
  in the length) is not counted.
  """
  t, v = config.text, config.vision
  shapes = jax.eval_shape(lambda: vlm.init_params(config, jax.random.PRNGKey(0)))
  kernels = lambda tree: sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(tree)
                             if getattr(path[-1], "key", None) == "kernel")
  q = t.num_heads * t.head_dim
  tokens = rows * seq
  text = 2 * tokens * (kernels(shapes["text"]["layers"]) + t.hidden_size * t.vocab_size)
  attention_layers = len(getattr(t, "full_layers", range(t.num_layers)))
  text += 2 * 2 * rows * (seq * seq / 2) * q * attention_layers
  if not images:
    return text
  g = side // v.patch_size
  p = g * g                                    # patches per image
  n = rows * images * p                        # patches in the batch
  vision_params = shapes["vision"]
  per_patch = kernels(vision_params["blocks"]) + kernels(vision_params["patch_embed"])
  per_merged = kernels(vision_params) - per_patch
  vision = 2 * n * per_patch + 2 * (n // v.merge_unit) * per_merged
  # Keys each patch attends to: its window, or its whole image in full blocks.
  if v.window_merged is None:
    keys = v.depth * p
  else:
    full = len(v.fullatt_block_indexes)
    window = min(p, (v.window_merged * v.spatial_merge_size) ** 2)
    keys = full * p + (v.depth - full) * window
  vision += 2 * 2 * n * v.hidden_size * keys
  return text + vision
