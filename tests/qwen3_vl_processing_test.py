"""Qwen3-VL host processing against transformers: images, chat, prompts, positions.

The references are transformers' own pieces with Qwen3-VL's settings: the
PIL image processor (`Qwen2VLImageProcessorPil`, the class Qwen3-VL uses,
with the hub's patch 16, mean = std = 0.5 and pixel bounds), the released
Qwen3-VL-Instruct chat template, `Qwen3VLProcessor` for placeholder
expansion and `Qwen3VLModel.get_rope_index` for positions.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import tempfile  # noqa: E402
from unittest import mock  # noqa: E402

from absl.testing import absltest  # noqa: E402
import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as hf_ip  # noqa: E402

from evejax.models import presets  # noqa: E402
from evejax.processing import batching  # noqa: E402
from evejax.processing import chat  # noqa: E402
from evejax.processing import images  # noqa: E402
from evejax.processing import prompts  # noqa: E402
from evejax.processing import tokenizer as tokenizer_lib  # noqa: E402

# The chat template of the released Qwen3-VL-*-Instruct checkpoints, its tool
# branches (tools, tool_calls, the tool role) left out.
QWEN3_VL_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0].content is string %}\n"
    "        {{- messages[0].content }}\n"
    "    {%- else %}\n"
    "        {%- for content in messages[0].content %}\n"
    "            {%- if 'text' in content %}\n"
    "                {{- content.text }}\n"
    "            {%- endif %}\n"
    "        {%- endfor %}\n"
    "    {%- endif %}\n"
    "    {{- '<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- set image_count = namespace(value=0) %}\n"
    "{%- set video_count = namespace(value=0) %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message.role == \"user\" %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' }}\n"
    "        {%- if message.content is string %}\n"
    "            {{- message.content }}\n"
    "        {%- else %}\n"
    "            {%- for content in message.content %}\n"
    "                {%- if content.type == 'image' or 'image' in content or "
    "'image_url' in content %}\n"
    "                    {%- set image_count.value = image_count.value + 1 %}\n"
    "                    {%- if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif -%}\n"
    "                    <|vision_start|><|image_pad|><|vision_end|>\n"
    "                {%- elif content.type == 'video' or 'video' in content %}\n"
    "                    {%- set video_count.value = video_count.value + 1 %}\n"
    "                    {%- if add_vision_id %}Video {{ video_count.value }}: "
    "{% endif -%}\n"
    "                    <|vision_start|><|video_pad|><|vision_end|>\n"
    "                {%- elif 'text' in content %}\n"
    "                    {{- content.text }}\n"
    "                {%- endif %}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' }}\n"
    "        {%- if message.content is string %}\n"
    "            {{- message.content }}\n"
    "        {%- else %}\n"
    "            {%- for content_item in message.content %}\n"
    "                {%- if 'text' in content_item %}\n"
    "                    {{- content_item.text }}\n"
    "                {%- endif %}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n")

# Bounds small enough for test images (the hub's are 256^2 .. 4096^2).
LO, HI = 32 * 32 * 4, 32 * 32 * 64


def _rand_image(rng, h, w, mode="RGB"):
  im = PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
  return im if mode == "RGB" else im.convert(mode)


def _hf_image_processor(lo=LO, hi=HI):
  return hf_ip.Qwen2VLImageProcessorPil(
      patch_size=16, temporal_patch_size=2, merge_size=2,
      image_mean=[0.5] * 3, image_std=[0.5] * 3,
      size={"shortest_edge": lo, "longest_edge": hi})


def _hf_processor(tok):
  hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.backend)
  # Its class check looks up the video processor, which needs torchvision
  # (not installed); images and text never touch it.
  with mock.patch.object(transformers.ProcessorMixin,
                         "check_argument_for_proper_class",
                         lambda self, name, arg: None):
    return transformers.Qwen3VLProcessor(
        image_processor=_hf_image_processor(), tokenizer=hf_tok,
        video_processor=None, chat_template=QWEN3_VL_TEMPLATE)


class ImageSettingsTest(absltest.TestCase):

  def test_family_defaults_are_the_hub_preprocessor_config(self):
    s = images.image_settings(presets.get_preset("qwen3_vl_8b"))
    self.assertEqual((s.patch_size, s.temporal_patch_size, s.merge_size),
                     (16, 2, 2))
    self.assertEqual((s.mean, s.std), ((0.5,) * 3, (0.5,) * 3))
    self.assertEqual((s.min_pixels, s.max_pixels), (256 * 256, 4096 * 4096))
    old = images.image_settings(presets.get_preset("qwen2_5_vl_7b"))
    self.assertEqual((old.patch_size, old.mean), (14, images.CLIP_MEAN))

  def test_smart_resize_factor_32_matches_transformers(self):
    rng = np.random.default_rng(0)
    cases = [tuple(int(v) for v in rng.integers(1, 3000, 2)) for _ in range(200)]
    cases += [(16, 16), (31, 33), (32, 32), (48, 80), (4000, 30)]
    for h, w in cases:
      if max(h, w) / min(h, w) > 200:
        continue
      for lo, hi in ((256 * 256, 4096 * 4096), (LO, HI), (32 * 32 * 4,
                                                           32 * 32 * 1024)):
        self.assertEqual(images.smart_resize(h, w, 32, lo, hi),
                         hf_ip.smart_resize(h, w, 32, lo, hi), (h, w, lo, hi))

  def test_preprocess_matches_transformers(self):
    rng = np.random.default_rng(1)
    settings = images.image_settings(presets.qwen3_vl_tiny(), min_pixels=LO,
                                     max_pixels=HI)
    hf = _hf_image_processor()
    for (h, w), mode in zip([(50, 70), (123, 45), (300, 410), (64, 96),
                             (33, 200)], ["RGB", "L", "RGB", "P", "RGB"]):
      im = _rand_image(rng, h, w, mode)
      want = hf(images=[im], return_tensors="np")
      patches, grid = settings.preprocess(im)
      self.assertEqual(patches.shape[1], 1536)
      self.assertEqual(grid, tuple(want["image_grid_thw"][0]))
      np.testing.assert_allclose(patches, want["pixel_values"], atol=1e-5,
                                 rtol=0, err_msg=f"{mode} {h}x{w}")

  def test_checkpoint_preprocessor_config_overrides_and_is_checked(self):
    config = presets.qwen3_vl_tiny()
    with tempfile.TemporaryDirectory() as d:
      self.assertEqual(images.image_settings(config, d),
                       images.image_settings(config))  # no file: defaults
      _hf_image_processor(lo=1024, hi=32 * 32 * 9).save_pretrained(d)
      s = images.image_settings(config, d)
      self.assertEqual((s.min_pixels, s.max_pixels), (1024, 32 * 32 * 9))
      self.assertEqual(images.image_settings(config, d, max_pixels=HI).max_pixels,
                       HI)
      path = os.path.join(d, images.PREPROCESSOR_FILE)
      with open(path) as f:
        cfg = json.load(f)
      cfg["patch_size"] = 14
      with open(path, "w") as f:
        json.dump(cfg, f)
      images._read_preprocessor_config.cache_clear()  # pylint: disable=protected-access
      with self.assertRaisesRegex(images.ImageError,
                                  "patch_size=14 but the model.*takes 16"):
        images.image_settings(config, d)


class ChatTemplateTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tok = tokenizer_lib.builtin_tokenizer()
    cls.hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=cls.tok.backend, chat_template=QWEN3_VL_TEMPLATE)

  def test_matches_the_released_template_without_default_system(self):
    grids = [(1, 4, 6), (1, 8, 2)]
    conversations = [
        ([{"role": "user", "content": "Hello there"}], []),
        ([{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": "What is here?"},
            {"type": "image"}]}], grids),
        ([{"role": "system", "content": "Be brief."},
          {"role": "user", "content": [{"type": "text", "text": "Describe "},
                                       {"type": "image"}]},
          {"role": "assistant", "content": "<think>hm</think> A red car."},
          {"role": "user", "content": [{"type": "image_url", "image_url": "x"},
                                       {"type": "text", "text": "And this?"}]}],
         grids),
    ]
    for msgs, gs in conversations:
      for gen in (True, False):
        text = self.hf_tok.apply_chat_template(msgs, tokenize=False,
                                               add_generation_prompt=gen)
        parts = text.split("<|image_pad|>")
        want = parts[0] + "".join("<|image_pad|>" * (int(np.prod(g)) // 4) + p
                                  for g, p in zip(gs, parts[1:]))
        self.assertEqual(chat.render_chat(msgs, gs, add_generation_prompt=gen,
                                          default_system=None), want)
        got = chat.encode_chat(self.tok, msgs, gs, add_generation_prompt=gen,
                               default_system=None)
        self.assertEqual(got.tolist(),
                         self.hf_tok(want, add_special_tokens=False)["input_ids"])


def _tiny_hf_model():
  cfg = transformers.Qwen3VLConfig(
      text_config=dict(vocab_size=2048, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=16,
                       rope_parameters=dict(rope_type="default", rope_theta=5e6,
                                            mrope_section=[4, 2, 2])),
      vision_config=dict(depth=1, hidden_size=32, intermediate_size=64,
                         num_heads=2, out_hidden_size=32,
                         num_position_embeddings=16,
                         deepstack_visual_indexes=[0]),
      image_token_id=5, video_token_id=6, vision_start_token_id=3,
      vision_end_token_id=4)
  torch.manual_seed(0)
  return transformers.Qwen3VLModel(cfg).eval()


class PromptsTest(absltest.TestCase):
  """user_prompt + collate equal Qwen3VLProcessor + get_rope_index."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tok = tokenizer_lib.builtin_tokenizer()
    cls.config = presets.qwen3_vl_tiny()
    cls.processor = _hf_processor(cls.tok)

  def test_tiny_preset_ids_are_the_builtin_tokenizer_ids(self):
    c = self.config
    self.assertEqual((c.image_token_id, c.video_token_id,
                      c.vision_start_token_id, c.vision_end_token_id),
                     (self.tok.image_pad_id, self.tok.video_pad_id,
                      self.tok.vision_start_id, self.tok.vision_end_id))
    self.assertEqual(c.text.vocab_size, self.tok.vocab_size)

  def test_user_prompts_and_positions_match_transformers(self):
    rng = np.random.default_rng(2)
    cases = [("What is shown? Answer in \\boxed{}.",
              [_rand_image(rng, 70, 90), _rand_image(rng, 130, 40)], True),
             ("No image here.", [], True),
             ("Which one is larger?", [_rand_image(rng, 200, 64)], False)]
    examples, hf_rows = [], []
    for text, ims, first in cases:
      ex = prompts.user_prompt(self.config, self.tok, text, ims,
                               min_pixels=LO, max_pixels=HI, image_first=first)
      parts = [{"type": "image"} for _ in ims]
      content = (parts + [{"type": "text", "text": text}] if first
                 else [{"type": "text", "text": text}] + parts)
      rendered = self.processor.apply_chat_template(
          [{"role": "user", "content": content}], tokenize=False,
          add_generation_prompt=True)
      self.assertNotIn("system", rendered)
      want = self.processor(text=[rendered], images=ims or None,
                            return_tensors="np")
      np.testing.assert_array_equal(ex.tokens, want["input_ids"][0])
      if ims:
        np.testing.assert_allclose(np.concatenate([p for p, _ in ex.images]),
                                   want["pixel_values"], atol=1e-5, rtol=0)
        np.testing.assert_array_equal([g for _, g in ex.images],
                                      want["image_grid_thw"])
      examples.append(ex)
      hf_rows.append(want)
    # Left-padded batch: positions and rope deltas as transformers computes
    # them from ids + mm_token_type_ids + grids + attention mask.
    c = self.config
    batch = batching.collate(
        examples, vision=c.vision, image_token_id=c.image_token_id,
        vision_start_id=c.vision_start_token_id, pad_id=self.tok.pad_id,
        length_buckets=(64,), patch_buckets=(128,), padding="left")
    x = batch.inputs
    self.assertEqual(x.patches.shape, (3, 128, 1536))
    types = np.zeros_like(x.tokens)
    for i, want in enumerate(hf_rows):
      n = want["input_ids"].shape[1]
      types[i, -n:] = want["mm_token_type_ids"][0]
    grids = np.concatenate([w["image_grid_thw"] for w in hf_rows
                            if "image_grid_thw" in w])
    pos, delta = _tiny_hf_model().get_rope_index(
        torch.tensor(x.tokens, dtype=torch.long),
        mm_token_type_ids=torch.tensor(types),
        image_grid_thw=torch.tensor(grids),
        attention_mask=torch.tensor(x.mask))
    np.testing.assert_array_equal(x.positions, pos.numpy())
    np.testing.assert_array_equal(batch.rope_deltas, delta[:, 0].numpy())
    self.assertLess(int(batch.rope_deltas[0]), 0)  # images shorten positions
    # One window per image (no window attention).
    np.testing.assert_array_equal(x.patch_window[0], x.patch_image[0])


if __name__ == "__main__":
  absltest.main()
