"""The Qwen2.5-VL module: vision tower + Qwen2 decoder (see `vlm_base`)."""
from __future__ import annotations

from evejax.models import vlm_base
from evejax.models.inputs import ModelInputs
from evejax.models.qwen2_5_vl.text import TextModel
from evejax.models.qwen2_5_vl.vision import VisionTower


class Qwen2_5_VL(vlm_base.VLMBase):  # pylint: disable=invalid-name
  """Merged image features replace the image tokens' embeddings; nothing else."""
  vision_tower = VisionTower
  text_model = TextModel

  def embed(self, inputs: ModelInputs):
    x = self.text.embed_tokens(inputs.tokens)
    if inputs.num_patches == 0:
      return x, None
    feats = self.vision(inputs.patches, inputs.patch_coords,
                        inputs.patch_image, inputs.patch_window)
    is_image, slot = vlm_base.image_slots(inputs, self.config.image_token_id,
                                          feats.shape[1])
    return vlm_base.place_features(x, feats, is_image, slot), None

  def run_decoder(self, x, visual, positions, mask, cache=None, index=None):
    del visual  # always None: the images enter through the embeddings alone
    return self.text.decode(x, positions, mask, cache, index)
