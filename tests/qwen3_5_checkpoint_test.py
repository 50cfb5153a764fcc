"""Qwen3.5 checkpoints and adapters <-> transformers and peft.

One tiny random checkpoint (untied, L L L F L): the export loads in
`Qwen3_5ForConditionalGeneration.from_pretrained` with equal logits and the
same config; the hub's multi-token-prediction tensors are skipped with a log
line; in bf16, A_log and the gated norms' weights stay fp32 (params,
sampling layout, exported file); a LoRA adapter on every DeltaNet and
attention projection (in_proj_qkv regrouped by key head, q_proj with its
gate) is interchangeable with peft both ways. The published presets have
the parameter counts of the reference's table.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402

from absl.testing import absltest  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import peft  # noqa: E402
import pytest  # noqa: E402
import safetensors.numpy  # noqa: E402
import torch  # noqa: E402

from evejax.models import hf, lora, presets, vlm  # noqa: E402
import testing_hf  # noqa: E402

FAST_COMPILE = {"xla_backend_optimization_level": 0}
TOL = 1e-4


@functools.partial(jax.jit, static_argnums=(2, 3),
                   compiler_options=FAST_COMPILE)
def _adapted(params, adapter, cfg, config, inputs):
  return lora.apply(vlm.forward, params, adapter, cfg, config, inputs)


def _pinned(tree) -> dict:
  """'/'-joined path -> dtype of every A_log and gated-norm scale leaf."""
  out = {}
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = [str(getattr(k, "key", k)) for k in path]
    if keys[-1] == "A_log" or keys[-2:] == ["norm", "scale"] and "text" in keys:
      out["/".join(keys)] = jnp.dtype(x.dtype)
  return out


class Qwen3_5CheckpointTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tiny = testing_hf.TinyCheckpoint(family="qwen3_5", seed=7)
    cls.config = cls.tiny.config
    cls.params = hf.load_params(cls.tiny.dir, cls.config)
    cls.examples, cls.positions, cls.base = cls.tiny.examples(
        [[3, (64, 96), 2], [5]], seed=1)
    cls.np_inputs = testing_hf.to_model_inputs(cls.config, cls.examples,
                                               cls.positions)

  @classmethod
  def tearDownClass(cls):
    cls.tiny.cleanup()
    super().tearDownClass()

  def _dir(self, name: str) -> str:
    return os.path.join(self.tiny.dir, "..", name)

  def test_export_loads_in_transformers_with_equal_logits(self):
    out = self._dir("exported")
    hf.save_params(self.params, self.config, out)
    self.assertEqual(hf.config_from_hf(out), self.config)
    model = testing_hf.load_hf_model(out)
    for e, b in zip(self.examples, self.base):
      self.assertLessEqual(testing_hf.max_diff(testing_hf.hf_logits(model, e), b),
                           1e-6)

  def test_mtp_tensors_are_skipped_with_a_log_line(self):
    out = self._dir("with_mtp")
    hf.save_params(self.params, self.config, out)
    d = self.config.text.hidden_size
    safetensors.numpy.save_file(
        {"mtp.fc.weight": np.zeros((d, 2 * d), np.float32),
         "mtp.layers.0.self_attn.q_proj.weight": np.zeros((4, d), np.float32)},
        os.path.join(out, "mtp.safetensors"))
    with self.assertLogs(level="INFO") as logs:
      params = hf.load_params(out, self.config)
    self.assertTrue(any("skipping 2 tensors" in m and "mtp.*: 2" in m
                        for m in logs.output), logs.output)
    np.testing.assert_array_equal(
        params["text"]["layers"]["linear_0"]["in_qkv"]["kernel"],
        self.params["text"]["layers"]["linear_0"]["in_qkv"]["kernel"])

  def test_bf16_keeps_a_log_and_gated_norms_fp32(self):
    params = hf.load_params(self.tiny.dir, self.config, dtype=jnp.bfloat16)
    pinned = _pinned(params)
    self.assertLen(pinned, 2 * 4)  # 4 DeltaNet members of one block
    self.assertEqual(set(pinned.values()), {jnp.dtype(jnp.float32)})
    kernel = params["text"]["layers"]["linear_0"]["in_qkv"]["kernel"]
    self.assertEqual(kernel.dtype, jnp.bfloat16)
    np.testing.assert_array_equal(  # exact: never rounded
        params["text"]["layers"]["linear_0"]["A_log"],
        self.params["text"]["layers"]["linear_0"]["A_log"])
    bf16 = self.config.replace(dtype="bfloat16")
    fast = vlm.inference_params(params, bf16)
    self.assertEqual(set(_pinned(fast).values()), {jnp.dtype(jnp.float32)})
    np.testing.assert_array_equal(  # not rounded through bf16 on the way
        fast["text"]["layers_0"]["linear_0"]["A_log"],
        self.params["text"]["layers"]["linear_0"]["A_log"][0])
    fresh = jax.eval_shape(lambda: vlm.init_params(
        self.config, jax.random.key(0), jnp.bfloat16))
    self.assertEqual(set(_pinned(fresh).values()), {jnp.dtype(jnp.float32)})
    out = self._dir("bf16")
    hf.save_params(params, self.config, out)
    with open(os.path.join(out, "config.json")) as f:
      self.assertEqual(json.load(f)["dtype"], "bfloat16")
    # The stored dtypes, from the safetensors header.
    with open(os.path.join(out, "model.safetensors"), "rb") as f:
      header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    self.assertEqual(
        header["model.language_model.layers.0.linear_attn.A_log"]["dtype"], "F32")
    self.assertEqual(
        header["model.language_model.layers.0.linear_attn.norm.weight"]["dtype"],
        "F32")
    self.assertEqual(
        header["model.language_model.layers.0.linear_attn.in_proj_qkv.weight"]
        ["dtype"], "BF16")

  @pytest.mark.slow   # a peft parity test (as lora_peft_test.py)
  def test_lora_on_new_projections_is_interchangeable_with_peft(self):
    config, np_inputs = self.config, self.np_inputs
    inputs = jax.tree.map(jnp.asarray, np_inputs)

    def check(adapter, cfg, model):
      ours = testing_hf.real_logits(
          _adapted(self.params, adapter, cfg, config, inputs), np_inputs)
      for e, o, b in zip(self.examples, ours, self.base):
        theirs = testing_hf.hf_logits(model, e)
        self.assertLessEqual(testing_hf.max_diff(o, theirs), TOL)
        self.assertGreater(testing_hf.max_diff(theirs, b), 0.1)

    cfg = lora.LoraConfig(4, 8.0, targets=(lora.TEXT_PROJECTIONS,
                                           lora.LINEAR_ATTENTION_PROJECTIONS))
    paths = [t.path for t in lora.select_targets(cfg, config)]
    self.assertIn("text/layers/linear_0/in_qkv/kernel", paths)
    self.assertIn("text/layers/full_0/q/kernel", paths)
    adapter = lora.init_adapter(cfg, config, jax.random.key(0))
    for j, (_, node) in enumerate(lora.modules(adapter)):
      node["lora_b"] = 0.1 * jax.random.normal(jax.random.key(j),
                                               node["lora_b"].shape)
    out = self._dir("peft_exported")
    lora.export_peft(adapter, cfg, config, out)
    check(adapter, cfg, peft.PeftModel.from_pretrained(
        testing_hf.load_hf_model(self.tiny.dir), out).eval())

    torch.manual_seed(0)
    model = peft.get_peft_model(testing_hf.load_hf_model(self.tiny.dir),
                                peft.LoraConfig(
        r=4, lora_alpha=8, init_lora_weights=False,
        target_modules=["in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a",
                        "out_proj", "q_proj", "o_proj"])).eval()
    saved = self._dir("from_peft")
    model.save_pretrained(saved)
    imported, cfg = lora.import_peft(saved, config)
    self.assertIn("in_qkv", imported["text"]["layers"]["linear_2"])
    check(imported, cfg, model)


class Qwen3_5PresetsTest(absltest.TestCase):

  def test_published_shapes_have_the_reference_parameter_counts(self):
    # Reference section 10: HF modules without the MTP head, in billions.
    want = {"qwen3_5_0_8b": 0.853, "qwen3_5_2b": 2.213, "qwen3_5_4b": 4.539,
            "qwen3_5_9b": 9.410, "qwen3_5_27b": 27.357}
    for name, billions in want.items():
      c = presets.get_preset(name)
      count = sum(math.prod(e.hf_shape) * max(e.layers, 1)
                  for e in hf.tensor_table(c))
      self.assertAlmostEqual(count / 1e9, billions, delta=5e-4, msg=name)
      self.assertEqual(c.text.period, 4)
    nine = presets.get_preset("qwen3_5_9b").text
    self.assertEqual((nine.linear_group_width, nine.full_layers[:2]),
                     (2 * 128 + 2 * 128, (3, 7)))


if __name__ == "__main__":
  absltest.main()
