"""Qwen3.5 host processing: chat template with its think switch, the built-in
tokenizer's ids, prompts and M-RoPE positions against transformers.

Qwen3.5 uses Qwen3-VL's processor (`Qwen3VLProcessor`, patch 16, mean = std
= 0.5) and its template, plus `enable_thinking` after the generation prompt:
on, the prompt opens `<think>\\n`; off, it closes an empty think block (the
family's default for evejax prompts: `families` says why). The template
below is Qwen3-VL's with that switch (the reference's section 6).
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import tempfile  # noqa: E402
from unittest import mock  # noqa: E402

from absl.testing import absltest  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from evejax.models import hf, presets  # noqa: E402
from evejax.processing import batching  # noqa: E402
from evejax.processing import chat  # noqa: E402
from evejax.processing import images  # noqa: E402
from evejax.processing import prompts  # noqa: E402
from evejax.processing import tokenizer as tokenizer_lib  # noqa: E402
from qwen3_vl_processing_test import (  # noqa: E402
    HI, LO, QWEN3_VL_TEMPLATE, _hf_image_processor, _rand_image)

_GENERATION = ("{%- if add_generation_prompt %}\n"
               "    {{- '<|im_start|>assistant\\n' }}\n"
               "{%- endif %}\n")
assert QWEN3_VL_TEMPLATE.endswith(_GENERATION)
QWEN3_5_TEMPLATE = QWEN3_VL_TEMPLATE[:-len(_GENERATION)] + (
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
    "        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<think>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n")


def _hf_processor(tok):
  hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.backend)
  with mock.patch.object(transformers.ProcessorMixin,
                         "check_argument_for_proper_class",
                         lambda self, name, arg: None):
    return transformers.Qwen3VLProcessor(
        image_processor=_hf_image_processor(), tokenizer=hf_tok,
        video_processor=None, chat_template=QWEN3_5_TEMPLATE)


class Qwen3_5ProcessingTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tok = tokenizer_lib.builtin_tokenizer()
    cls.config = presets.get_preset("qwen3_5_tiny")
    cls.processor = _hf_processor(cls.tok)

  def test_builtin_tokenizer_carries_the_template_tokens(self):
    c = self.config
    self.assertEqual((c.image_token_id, c.video_token_id,
                      c.vision_start_token_id, c.vision_end_token_id),
                     (self.tok.image_pad_id, self.tok.video_pad_id,
                      self.tok.vision_start_id, self.tok.vision_end_id))
    self.assertEqual(c.text.vocab_size, self.tok.vocab_size)
    for t in ("<|im_start|>", "<|im_end|>", "<think>", "</think>"):
      self.assertIsNotNone(self.tok.token_to_id(t), t)
    # The published presets use the Qwen3.5 vocabulary's ids.
    nine = presets.get_preset("qwen3_5_9b")
    self.assertEqual((nine.image_token_id, nine.vision_start_token_id,
                      nine.text.vocab_size), (248056, 248053, 248320))

  def test_prompts_think_switch_and_positions_match_transformers(self):
    rng = np.random.default_rng(2)
    cases = [("What is shown?", [_rand_image(rng, 70, 90),
                                 _rand_image(rng, 130, 40)], None),
             ("No image here.", [], False),
             ("Which one is larger?", [_rand_image(rng, 200, 64)], True)]
    examples, hf_rows = [], []
    for text, ims, thinking in cases:
      ex = prompts.user_prompt(self.config, self.tok, text, ims,
                               min_pixels=LO, max_pixels=HI, thinking=thinking)
      content = [{"type": "image"} for _ in ims] + [{"type": "text",
                                                     "text": text}]
      # The family's default (None) is enable_thinking=False.
      rendered = self.processor.apply_chat_template(
          [{"role": "user", "content": content}], tokenize=False,
          add_generation_prompt=True, enable_thinking=bool(thinking))
      self.assertEqual(rendered.endswith("<think>\n"), bool(thinking))
      want = self.processor(text=[rendered], images=ims or None,
                            return_tensors="np")
      np.testing.assert_array_equal(ex.tokens, want["input_ids"][0])
      examples.append(ex)
      hf_rows.append(want)
    # Qwen3-VL's template has no switch: the same call adds nothing there.
    vl = prompts.user_prompt(presets.qwen3_vl_tiny(), self.tok, "x",
                             thinking=True)
    self.assertNotIn(self.tok.token_to_id("<think>"), vl.tokens)
    self.assertIn("</think>", chat.render_chat(
        [{"role": "user", "content": "x"}], default_system=None,
        thinking=False))
    # Left-padded batch: positions as transformers' Qwen3.5 computes them.
    c = self.config
    batch = batching.collate(
        examples, vision=c.vision, image_token_id=c.image_token_id,
        vision_start_id=c.vision_start_token_id, pad_id=self.tok.pad_id,
        length_buckets=(64,), patch_buckets=(128,), padding="left")
    x = batch.inputs
    types = np.zeros_like(x.tokens)
    for i, want in enumerate(hf_rows):
      n = want["input_ids"].shape[1]
      types[i, -n:] = want["mm_token_type_ids"][0]
    grids = np.concatenate([w["image_grid_thw"] for w in hf_rows
                            if "image_grid_thw" in w])
    hf_config = transformers.Qwen3_5Config(**hf.config_to_hf(c))
    model = transformers.Qwen3_5Model(hf_config)
    pos, delta = model.get_rope_index(
        torch.tensor(x.tokens, dtype=torch.long),
        mm_token_type_ids=torch.tensor(types),
        image_grid_thw=torch.tensor(grids),
        attention_mask=torch.tensor(x.mask))
    np.testing.assert_array_equal(x.positions, pos.numpy())
    np.testing.assert_array_equal(batch.rope_deltas, delta[:, 0].numpy())

  def test_image_settings_from_a_checkpoint(self):
    s = images.image_settings(self.config)
    self.assertEqual((s.mean, s.min_pixels, s.max_pixels),
                     ((0.5,) * 3, 256 * 256, 4096 * 4096))
    with tempfile.TemporaryDirectory() as d:
      with open(os.path.join(d, images.PREPROCESSOR_FILE), "w") as f:
        json.dump({"patch_size": 16, "merge_size": 2, "temporal_patch_size": 2,
                   "size": {"shortest_edge": 65536 // 4,
                            "longest_edge": 16777216 // 4}}, f)
      s = images.image_settings(self.config, d)
    self.assertEqual((s.min_pixels, s.max_pixels), (16384, 4194304))


if __name__ == "__main__":
  absltest.main()
