"""HF checkpoint import/export: config forms, shards, key styles, errors, round trip."""
import os

import dataclasses
import json
import shutil
import tempfile

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from jax.sharding import NamedSharding, PartitionSpec as P

from evejax.models import hf, vlm
import testing_hf

_forward = jax.jit(vlm.forward, static_argnums=1)


def _assert_trees_equal(test, a, b):
  test.assertEqual(jax.tree.structure(a), jax.tree.structure(b))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _flat_hub_config(cfg: dict) -> dict:
  """The older hub config.json form: flat text keys, rope_scaling mrope."""
  old = {k: v for k, v in cfg.items() if k != "text_config"}
  text = dict(cfg["text_config"])
  rope = text.pop("rope_parameters")
  old.update({k: v for k, v in text.items() if k != "model_type"})
  old["rope_theta"] = rope["rope_theta"]
  old["rope_scaling"] = {"type": "mrope",
                         "mrope_section": rope["mrope_section"]}
  old["vision_config"] = dict(cfg["vision_config"])
  old["vision_config"].pop("rope_parameters", None)
  old["vision_config"]["in_chans"] = old["vision_config"].pop("in_channels")
  return old


class HfCheckpointTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.tied = os.path.join(cls.tmp, "tied")
    testing_hf.make_tiny_hf_checkpoint(cls.tied, seed=7, tie=True)
    cls.sharded = os.path.join(cls.tmp, "sharded")
    testing_hf.make_tiny_hf_checkpoint(cls.sharded, seed=7, tie=True,
                                       max_shard_size="40KB")
    cls.config = hf.config_from_hf(cls.tied)
    cls.params = hf.load_params(cls.tied, cls.config)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp)
    super().tearDownClass()

  def _copy(self, src, name):
    dst = os.path.join(self.tmp, name)
    shutil.copytree(src, dst)
    return dst

  def test_config_from_both_forms(self):
    c = self.config
    self.assertEqual(c.text.vocab_size, 128)
    self.assertEqual((c.text.num_heads, c.text.num_kv_heads), (3, 1))
    self.assertEqual(c.text.mrope_section, (2, 3, 3))
    self.assertEqual(c.text.rope_theta, 10000.0)
    self.assertTrue(c.text.tie_word_embeddings)
    self.assertEqual(c.vision.fullatt_block_indexes, (0, 2))
    self.assertEqual(c.vision.window_merged, 2)
    self.assertEqual(c.image_token_id, 124)
    old_dir = self._copy(self.tied, "old_form")
    with open(os.path.join(old_dir, "config.json")) as f:
      cfg = json.load(f)
    with open(os.path.join(old_dir, "config.json"), "w") as f:
      json.dump(_flat_hub_config(cfg), f)
    self.assertEqual(hf.config_from_hf(old_dir), c)

  def test_sharded_index_and_v5_key_names_load_the_same(self):
    self.assertTrue(os.path.exists(os.path.join(self.sharded, hf.INDEX_FILE)))
    _assert_trees_equal(self, hf.load_params(self.sharded, self.config),
                        self.params)
    # transformers>=5 module names in a single file.
    v5 = self._copy(self.tied, "v5_names")
    path = os.path.join(v5, hf.SINGLE_FILE)
    tensors = safetensors.numpy.load_file(path)
    renamed = {}
    for k, v in tensors.items():
      if k.startswith("model."):
        k = "model.language_model." + k[len("model."):]
      elif k.startswith("visual."):
        k = "model." + k
      renamed[k] = v
    self.assertIn("model.visual.merger.ln_q.weight", renamed)
    safetensors.numpy.save_file(renamed, path, metadata={"format": "pt"})
    _assert_trees_equal(self, hf.load_params(v5, self.config), self.params)

  def test_load_with_shardings_places_each_leaf(self):
    mesh = jax.make_mesh((2, 4), ("fsdp", "tensor"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)

    def sharding(x, axes):
      spec = [None] * len(x.shape)
      for i, name in enumerate(axes):
        if name in ("embed", "vision_embed") and x.shape[i] % 2 == 0:
          spec[i] = "fsdp"
      return NamedSharding(mesh, P(*spec))

    shardings = jax.tree.map(sharding, self.params, vlm.param_axes(self.config))
    loaded = hf.load_params(self.sharded, self.config, shardings=shardings,
                            dtype=jnp.bfloat16)
    for x, s, ref in zip(jax.tree.leaves(loaded), jax.tree.leaves(shardings),
                         jax.tree.leaves(self.params)):
      self.assertEqual(x.sharding, s)
      self.assertEqual(x.dtype, jnp.bfloat16)
      np.testing.assert_array_equal(
          np.asarray(x), np.asarray(ref).astype(jnp.bfloat16))
    self.assertTrue(any(not s.is_fully_replicated
                        for s in jax.tree.leaves(shardings)))

  def test_mismatch_and_missing_tensor_errors(self):
    bad = self._copy(self.tied, "bad_shape")
    with open(os.path.join(bad, "config.json")) as f:
      cfg = json.load(f)
    cfg["text_config"]["intermediate_size"] = 80
    with open(os.path.join(bad, "config.json"), "w") as f:
      json.dump(cfg, f)
    with self.assertRaisesRegex(
        ValueError,
        r"'model.layers.0.mlp.gate_proj.weight'.*\(64, 48\).*\(80, 48\)"):
      hf.load_params(bad, hf.config_from_hf(bad))

    missing = self._copy(self.tied, "missing")
    path = os.path.join(missing, hf.SINGLE_FILE)
    tensors = safetensors.numpy.load_file(path)
    del tensors["visual.blocks.1.attn.qkv.bias"]
    safetensors.numpy.save_file(tensors, path, metadata={"format": "pt"})
    with self.assertRaisesRegex(ValueError,
                                r"'visual.blocks.1.attn.qkv.bias'.*\(144,\)"):
      hf.load_params(missing, self.config)

  def _round_trip(self, config, params, name, **save_kw):
    out = os.path.join(self.tmp, name)
    hf.save_params(params, config, out, tokenizer_dir=self.tied, **save_kw)
    model = testing_hf.load_hf_model(out)
    segs = [[3, (84, 140), 2, (56, 56), 1], [4]]
    exs = testing_hf.build_examples(config, segs, seed=8)
    pos = [testing_hf.hf_positions(model, e) for e in exs]
    inputs = testing_hf.to_model_inputs(config, exs, pos)
    ours = testing_hf.real_logits(
        _forward(params, config, jax.tree.map(jnp.asarray, inputs)), inputs)
    for e, o in zip(exs, ours):
      ref = testing_hf.hf_logits(model, e)
      self.assertGreater(np.abs(ref).max(), 1.0)  # not a trivial comparison
      self.assertLessEqual(testing_hf.max_diff(o, ref), 1e-4)
    return out

  def _perturbed(self, params, seed):
    # New values in every leaf, so the export cannot pass by copying files.
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: x + 0.3 * np.std(np.asarray(x)) * rng.standard_normal(
            x.shape).astype(np.float32), params)

  def test_export_round_trip_tied(self):
    params = self._perturbed(self.params, 0)
    out = self._round_trip(self.config, params, "export_tied")
    self.assertTrue(os.path.exists(os.path.join(out, "generation_config.json")))
    names = safetensors.numpy.load_file(os.path.join(out, hf.SINGLE_FILE))
    self.assertNotIn("lm_head.weight", names)
    self.assertEqual(hf.config_from_hf(out), self.config)
    _assert_trees_equal(self, hf.load_params(out, self.config), params)

  def test_export_round_trip_untied_sharded(self):
    config = self.config.replace(text=dataclasses.replace(
        self.config.text, tie_word_embeddings=False))
    params = jax.tree.map(lambda x: x, self.params)
    rng = np.random.default_rng(1)
    params["text"]["lm_head"] = {"kernel": jnp.asarray(
        rng.standard_normal((48, 128)).astype(np.float32) * 48 ** -0.5)}
    params = self._perturbed(params, 2)
    out = self._round_trip(config, params, "export_untied",
                           max_shard_bytes=30_000)
    with open(os.path.join(out, hf.INDEX_FILE)) as f:
      index = json.load(f)
    self.assertIn("lm_head.weight", index["weight_map"])
    self.assertGreater(len(set(index["weight_map"].values())), 2)
    _assert_trees_equal(self, hf.load_params(out, config), params)


if __name__ == "__main__":
  absltest.main()
