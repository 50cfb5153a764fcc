"""The Qwen3-VL module: vision tower with DeepStack + Qwen3 decoder (see `vlm_base`)."""
from __future__ import annotations

from evejax.models import vlm_base
from evejax.models.inputs import ModelInputs
from evejax.models.qwen3_vl.text import DeepStack, TextModel
from evejax.models.qwen3_vl.vision import VisionTower


class Qwen3VL(vlm_base.VLMBase):
  """Main features replace the image tokens' embeddings; the DeepStack
  features go to the decoder, which adds them after its first layers."""
  vision_tower = VisionTower
  text_model = TextModel

  def embed(self, inputs: ModelInputs):
    x = self.text.embed_tokens(inputs.tokens)
    if inputs.num_patches == 0:
      return x, None
    feats, deep = self.vision(inputs.patches, inputs.patch_coords,
                              inputs.patch_image, inputs.patch_window)
    is_image, slot = vlm_base.image_slots(inputs, self.config.image_token_id,
                                          feats.shape[1])
    x = vlm_base.place_features(x, feats, is_image, slot)
    if deep is None:
      return x, None
    return x, DeepStack(features=deep, is_image=is_image, slot=slot)

  def run_decoder(self, x, visual, positions, mask, cache=None, index=None):
    return self.text.decode(x, positions, mask, cache, index, deepstack=visual)
