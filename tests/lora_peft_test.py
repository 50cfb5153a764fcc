"""LoRA interchange with peft on transformers' Qwen2_5_VLForConditionalGeneration.

One tiny random HF checkpoint (untied lm head, so every kind of Linear is
there); logits compared in fp32 over every real token of a batch with two
images and a text-only row:
  * an evejax adapter exported as a PEFT dir, loaded by `PeftModel`;
  * an adapter made and saved by peft (nonzero B), imported by evejax;
  * the merged full checkpoint, loaded by transformers alone;
  * dropout: PEFT's training-mode forward with each lora_dropout replaced by
    the mask evejax drew for that module and layer.
Qwen3-VL (module names = hub names, DeepStack mergers, a patch embedding
with bias) checks both directions once.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import functools
import shutil
import tempfile

from absl.testing import absltest
import pytest
import jax
import jax.numpy as jnp
import numpy as np
import peft
import torch

from evejax.models import hf
from evejax.models import lora
from evejax.models import vlm
import testing_hf

pytestmark = pytest.mark.slow   # a torch/peft parity suite

FAST_COMPILE = {"xla_backend_optimization_level": 0}
_jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)
ATOL = 1e-4


@functools.partial(_jit, static_argnums=(2, 3))
def _adapted(params, adapter, cfg, config, inputs, rng=None):
  return lora.apply(vlm.forward, params, adapter, cfg, config, inputs,
                    dropout_rng=rng)


@functools.partial(_jit, static_argnums=1)
def _forward(params, config, inputs):
  return vlm.forward(params, config, inputs)


def _random_b(adapter, seed, std=0.3):
  out = jax.tree.map(lambda x: x, adapter)
  for j, (_, node) in enumerate(lora.modules(out)):
    node["lora_b"] = std * jax.random.normal(
        jax.random.key(seed * 1000 + j), node["lora_b"].shape)
  return out


class _FixedMask(torch.nn.Module):
  """Stands in for a LoRA layer's dropout: multiplies by a given mask."""

  def __init__(self, mask: np.ndarray):
    super().__init__()
    self.mask = torch.from_numpy(np.array(mask, np.float32))

  def forward(self, x):
    return x * self.mask.reshape(x.shape)


class PeftInterchangeTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.ckpt = os.path.join(cls.tmp, "ckpt")
    testing_hf.make_tiny_hf_checkpoint(cls.ckpt, seed=3, tie=False)
    cls.config = hf.config_from_hf(cls.ckpt)
    cls.params = hf.load_params(cls.ckpt, cls.config)
    model = testing_hf.load_hf_model(cls.ckpt)
    cls.examples = testing_hf.build_examples(
        cls.config, [[3, (56, 84), 2, (56, 56), 1], [5]], seed=1)
    positions = [testing_hf.hf_positions(model, e) for e in cls.examples]
    cls.np_inputs = testing_hf.to_model_inputs(cls.config, cls.examples,
                                               positions)
    cls.inputs = jax.tree.map(jnp.asarray, cls.np_inputs)
    cls.base = [testing_hf.hf_logits(model, e) for e in cls.examples]

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp)
    super().tearDownClass()

  def _ours(self, logits):
    return testing_hf.real_logits(logits, self.np_inputs)

  def _assert_close(self, ours, theirs, *, adapted=True):
    for o, t, b in zip(ours, theirs, self.base):
      self.assertLessEqual(testing_hf.max_diff(o, t), ATOL)
      if adapted:  # the adapter moved the logits: not a trivial comparison
        self.assertGreater(testing_hf.max_diff(t, b), 0.5)

  def _peft_logits(self, model):
    return [testing_hf.hf_logits(model, e) for e in self.examples]

  def test_exported_adapter_loads_in_peft_with_equal_logits(self):
    # Every Linear kernel (patch embedding = a Conv3d in transformers, the
    # untied lm head), rank-stabilised scale.
    cfg = lora.LoraConfig(4, 8.0, targets=(r"kernel$",), use_rslora=True)
    # B of std 0.1 moves the logits by ~5; at 0.3 the vision tower's
    # activations grow enough that fp32 rounding alone reaches 1.6e-4.
    adapter = _random_b(lora.init_adapter(cfg, self.config, jax.random.key(0)),
                        1, std=0.1)
    out = os.path.join(self.tmp, "exported")
    lora.export_peft(adapter, cfg, self.config, out,
                     base_model_name_or_path=self.ckpt)
    model = peft.PeftModel.from_pretrained(
        testing_hf.load_hf_model(self.ckpt), out).eval()
    adapted = [n for n, m in model.named_modules()
               if isinstance(m, peft.tuners.lora.LoraLayer)]
    want = sum(t.entry.layers or 1 for t in lora.select_targets(cfg, self.config))
    self.assertLen(adapted, want)
    self.assertIn("base_model.model.model.visual.patch_embed.proj", adapted)
    self.assertIn("base_model.model.lm_head", adapted)
    theirs = self._peft_logits(model)
    self._assert_close(self._ours(_adapted(self.params, adapter, cfg,
                                           self.config, self.inputs)), theirs)
    merged = lora.merge(self.params, adapter, cfg)
    self._assert_close(self._ours(_forward(merged, self.config, self.inputs)),
                       theirs)

    # The merged full checkpoint: transformers alone gives the same logits.
    full = os.path.join(self.tmp, "merged")
    lora.export_merged(self.params, adapter, cfg, self.config, full,
                       tokenizer_dir=self.ckpt)
    self._assert_close(self._peft_logits(testing_hf.load_hf_model(full)), theirs)

  def test_peft_saved_adapter_imports_with_equal_logits(self):
    torch.manual_seed(0)
    pc = peft.LoraConfig(
        r=4, lora_alpha=16, lora_dropout=0.05, init_lora_weights=False,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                        "up_proj", "down_proj", "mlp.0", "mlp.2"])
    model = peft.get_peft_model(testing_hf.load_hf_model(self.ckpt), pc).eval()
    saved = os.path.join(self.tmp, "from_peft")
    model.save_pretrained(saved)
    adapter, cfg = lora.import_peft(saved, self.config)
    self.assertEqual((cfg.rank, cfg.alpha, cfg.dropout), (4, 16.0, 0.05))
    paths = {t.path for t in lora.select_targets(cfg, self.config)}
    # PEFT's suffix match also takes the vision blocks' gate/up/down.
    self.assertIn("vision/blocks/mlp/gate/kernel", paths)
    self.assertIn("vision/merger/fc2/kernel", paths)
    self.assertNotIn("vision/blocks/qkv/kernel", paths)
    ours = self._ours(_adapted(self.params, adapter, cfg, self.config,
                               self.inputs))
    self._assert_close(ours, self._peft_logits(model))

  def test_dropout_matches_peft_training_forward_with_the_same_masks(self):
    cfg = lora.LoraConfig(4, 8.0, dropout=0.5, targets=(lora.TEXT_PROJECTIONS,))
    adapter = _random_b(lora.init_adapter(cfg, self.config, jax.random.key(0)), 2)
    out = os.path.join(self.tmp, "dropout")
    lora.export_peft(adapter, cfg, self.config, out)
    model = peft.PeftModel.from_pretrained(
        testing_hf.load_hf_model(self.ckpt), out, is_trainable=True)
    model.train()
    example = self.examples[1]  # text only: the batch of one, unpadded
    t = len(example["input_ids"])
    inputs = testing_hf.to_model_inputs(
        self.config, [example], [np.broadcast_to(np.arange(t), (3, t))])
    rng = jax.random.key(7)
    where = {}
    for target in lora.select_targets(cfg, self.config):
      for i, name in enumerate(target.entry.names()):
        where[lora.module_name(name, self.config)] = (target, i)
    replaced = 0
    for name, module in model.named_modules():
      if not isinstance(module, peft.tuners.lora.LoraLayer):
        continue
      target, i = where[name[len("base_model.model."):]]
      key = lora.dropout_key(rng, adapter, target.module, i)
      mask = lora.dropout_mask(key, (1, t) + target.in_shape, cfg.dropout)
      module.lora_dropout["default"] = _FixedMask(np.asarray(mask))
      replaced += 1
    self.assertLen(where, replaced)
    theirs = testing_hf.hf_logits(model, example)
    ours = testing_hf.real_logits(
        _adapted(self.params, adapter, cfg, self.config,
                 jax.tree.map(jnp.asarray, inputs), rng), inputs)[0]
    self.assertLessEqual(testing_hf.max_diff(ours, theirs), ATOL)
    no_dropout = testing_hf.real_logits(
        _adapted(self.params, adapter, cfg, self.config,
                 jax.tree.map(jnp.asarray, inputs)), inputs)[0]
    self.assertGreater(testing_hf.max_diff(no_dropout, theirs), 0.1)


class Qwen3VLInterchangeTest(absltest.TestCase):

  def test_both_directions(self):
    tiny = testing_hf.TinyCheckpoint(seed=0, family="qwen3_vl")
    self.addCleanup(tiny.cleanup)
    config = tiny.config
    params = hf.load_params(tiny.dir, config)
    examples, positions, base = tiny.examples([[3, (64, 96), 2], [5]], seed=1)
    np_inputs = testing_hf.to_model_inputs(config, examples, positions)
    inputs = jax.tree.map(jnp.asarray, np_inputs)

    def check(adapter, cfg, model):
      ours = testing_hf.real_logits(
          _adapted(params, adapter, cfg, config, inputs), np_inputs)
      for e, o, b in zip(examples, ours, base):
        theirs = testing_hf.hf_logits(model, e)
        self.assertLessEqual(testing_hf.max_diff(o, theirs), ATOL)
        self.assertGreater(testing_hf.max_diff(theirs, b), 0.5)

    cfg = lora.LoraConfig(4, 8.0, targets=(r"kernel$",))
    self.assertIn("vision/deepstack_merger/fc1/kernel",
                  [t.path for t in lora.select_targets(cfg, config)])
    adapter = _random_b(lora.init_adapter(cfg, config, jax.random.key(0)), 3,
                        std=0.1)
    out = os.path.join(tiny.dir, "..", "exported")
    lora.export_peft(adapter, cfg, config, out)
    check(adapter, cfg, peft.PeftModel.from_pretrained(
        testing_hf.load_hf_model(tiny.dir), out).eval())

    torch.manual_seed(0)
    model = peft.get_peft_model(testing_hf.load_hf_model(tiny.dir), peft.LoraConfig(
        r=4, lora_alpha=16, init_lora_weights=False,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                        "up_proj", "down_proj", "linear_fc1", "linear_fc2"])).eval()
    saved = os.path.join(tiny.dir, "..", "from_peft")
    model.save_pretrained(saved)
    adapter, cfg = lora.import_peft(saved, config)
    check(adapter, cfg, model)


if __name__ == "__main__":
  absltest.main()
