"""Qwen3-VL checkpoints: config.json forms and pitfalls, shards, errors, export."""
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
import transformers

from evejax import parallel
from evejax.models import hf, vlm
import testing_hf

_forward = jax.jit(vlm.forward, static_argnums=1)


def _read(d):
  with open(os.path.join(d, "config.json")) as f:
    return json.load(f)


def _write(d, cfg):
  with open(os.path.join(d, "config.json"), "w") as f:
    json.dump(cfg, f)


def _hub_form(cfg: dict) -> dict:
  """The hub's config.json form: rope_scaling + flat rope_theta in
  text_config, vision model_type 'qwen3_vl', tie_word_embeddings twice."""
  hub = json.loads(json.dumps(cfg))
  text = hub["text_config"]
  rope = text.pop("rope_parameters")
  text["rope_theta"] = rope.pop("rope_theta")
  text["rope_scaling"] = rope
  text["tie_word_embeddings"] = hub["tie_word_embeddings"]
  hub["vision_config"]["model_type"] = "qwen3_vl"
  hub["vision_config"].pop("rope_parameters", None)
  return hub


class Qwen3VLCheckpointTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.tied = os.path.join(cls.tmp, "tied")
    testing_hf.make_tiny_qwen3_vl_checkpoint(cls.tied, seed=7, tie=True)
    cls.sharded = os.path.join(cls.tmp, "sharded")
    testing_hf.make_tiny_qwen3_vl_checkpoint(cls.sharded, seed=7, tie=True,
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

  def _assert_trees_equal(self, a, b):
    self.assertEqual(jax.tree.structure(a), jax.tree.structure(b))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

  def test_config_from_v5_and_hub_forms(self):
    c = self.config
    self.assertEqual(c.family, "qwen3_vl")
    self.assertEqual((c.text.num_heads, c.text.num_kv_heads, c.text.head_dim),
                     (3, 1, 16))
    self.assertEqual(c.text.mrope_section, (4, 2, 2))
    self.assertEqual(c.text.rope_theta, 5e6)
    self.assertTrue(c.text.tie_word_embeddings)
    self.assertEqual(c.vision.deepstack_visual_indexes, (0, 2))
    self.assertEqual(c.vision.num_position_embeddings, 16)
    self.assertEqual(c.image_token_id, 124)
    hub = self._copy(self.tied, "hub_form")
    _write(hub, _hub_form(_read(self.tied)))
    self.assertEqual(hf.config_from_hf(hub), c)

  def test_defaults_are_transformers_defaults(self):
    # A config.json that omits head_dim, rope theta, mrope_section and the KV
    # heads: both sides must fill in the same values (128, 5e5, [24, 20, 20],
    # 32 -- not the head count).
    cfg = _read(self.tied)
    text = cfg["text_config"]
    for key in ("head_dim", "rope_parameters", "num_key_value_heads"):
      text.pop(key)
    text["num_attention_heads"] = 64
    cfg["vision_config"].pop("rope_parameters")
    ours = hf.config_from_hf(self._write_dir("defaults", cfg))
    theirs = transformers.Qwen3VLConfig(**cfg)
    t = theirs.text_config
    self.assertEqual(ours.text.head_dim, t.head_dim)
    self.assertEqual(ours.text.rope_theta, t.rope_parameters["rope_theta"])
    self.assertEqual(ours.text.num_kv_heads, t.num_key_value_heads)
    self.assertEqual(ours.text.mrope_section, (24, 20, 20))
    self.assertNotIn("mrope_section", t.rope_parameters)  # HF: [24, 20, 20]
    self.assertEqual(ours.vision.rope_theta,
                     theirs.vision_config.rope_parameters["rope_theta"])

  def _write_dir(self, name, cfg):
    d = os.path.join(self.tmp, name)
    os.makedirs(d, exist_ok=True)
    _write(d, cfg)
    return d

  def test_tie_is_read_at_the_top_level_only(self):
    cfg = _read(self.tied)
    cfg["tie_word_embeddings"] = False
    cfg["text_config"]["tie_word_embeddings"] = True
    d = self._copy(self.tied, "tie_in_text_config")
    _write(d, cfg)
    config = hf.config_from_hf(d)
    self.assertFalse(config.text.tie_word_embeddings)
    self.assertFalse(transformers.Qwen3VLConfig(**cfg).tie_word_embeddings)
    # Untied needs an lm_head the tied checkpoint does not have: an error,
    # not a random head.
    with self.assertRaisesRegex(ValueError, "no tensor 'lm_head.weight'"):
      hf.load_params(d, config)

  def test_unimplemented_architecture_names_the_implemented_ones(self):
    for model_type in ("qwen3_vl_moe", "llava", None):
      cfg = {"model_type": model_type, "architectures": ["SomethingElse"]}
      d = self._write_dir(f"arch_{model_type}", cfg)
      with self.assertRaisesRegex(
          ValueError, r"does not implement.*qwen2_5_vl "
          r"\(Qwen2_5_VLForConditionalGeneration\), qwen3_vl "
          r"\(Qwen3VLForConditionalGeneration\)"):
        hf.config_from_hf(d)

  def test_sharded_index_and_shardings_load_the_same(self):
    self.assertTrue(os.path.exists(os.path.join(self.sharded, hf.INDEX_FILE)))
    self._assert_trees_equal(hf.load_params(self.sharded, self.config),
                             self.params)
    mesh = parallel.make_mesh({"fsdp": 2, "tensor": 4})
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          self.params)
    shardings = parallel.shardings_for(vlm.param_axes(self.config), mesh,
                                       shapes_tree=shapes)
    loaded = hf.load_params(self.sharded, self.config, shardings=shardings,
                            dtype=jnp.bfloat16)
    for x, s, ref in zip(jax.tree.leaves(loaded), jax.tree.leaves(shardings),
                         jax.tree.leaves(self.params)):
      self.assertEqual(x.sharding, s)
      np.testing.assert_array_equal(
          np.asarray(x), np.asarray(ref).astype(jnp.bfloat16))
    self.assertTrue(any(not s.is_fully_replicated
                        for s in jax.tree.leaves(shardings)))

  def test_tied_checkpoint_with_an_lm_head_tensor_loads(self):
    d = self._copy(self.tied, "tied_with_head")
    path = os.path.join(d, hf.SINGLE_FILE)
    tensors = safetensors.numpy.load_file(path)
    self.assertNotIn("lm_head.weight", tensors)
    tensors["lm_head.weight"] = tensors[
        "model.language_model.embed_tokens.weight"].copy()
    safetensors.numpy.save_file(tensors, path, metadata={"format": "pt"})
    self._assert_trees_equal(hf.load_params(d, self.config), self.params)

  def test_mismatch_and_missing_tensor_errors(self):
    bad = self._copy(self.tied, "bad_shape")
    cfg = _read(bad)
    cfg["vision_config"]["num_position_embeddings"] = 36
    _write(bad, cfg)
    with self.assertRaisesRegex(
        ValueError, r"'model.visual.pos_embed.weight'.*\(16, 32\).*\(36, 32\)"):
      hf.load_params(bad, hf.config_from_hf(bad))
    missing = self._copy(self.tied, "missing")
    path = os.path.join(missing, hf.SINGLE_FILE)
    tensors = safetensors.numpy.load_file(path)
    del tensors["model.visual.deepstack_merger_list.1.norm.bias"]
    safetensors.numpy.save_file(tensors, path, metadata={"format": "pt"})
    with self.assertRaisesRegex(
        ValueError, r"'model.visual.deepstack_merger_list.1.norm.bias'.*\(128,\)"):
      hf.load_params(missing, self.config)

  def _perturbed(self, params, seed):
    # New values in every leaf, so the export cannot pass by copying files.
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: x + 0.3 * np.std(np.asarray(x)) * rng.standard_normal(
            x.shape).astype(np.float32), params)

  def _round_trip(self, config, params, name, **save_kw):
    out = os.path.join(self.tmp, name)
    hf.save_params(params, config, out, tokenizer_dir=self.tied, **save_kw)
    model = testing_hf.load_hf_model(out)
    self.assertIsInstance(model, transformers.Qwen3VLForConditionalGeneration)
    exs = testing_hf.build_examples(
        config, [[3, (96, 160), 2, (64, 64), 1], [4]], seed=8)
    pos = [testing_hf.hf_positions(model, e) for e in exs]
    inputs = testing_hf.to_model_inputs(config, exs, pos)
    ours = testing_hf.real_logits(
        _forward(params, config, jax.tree.map(jnp.asarray, inputs)), inputs)
    for e, o in zip(exs, ours):
      ref = testing_hf.hf_logits(model, e)
      self.assertGreater(np.abs(ref).max(), 1.0)  # not a trivial comparison
      self.assertLessEqual(testing_hf.max_diff(o, ref), 1e-4)
    return out

  def test_export_round_trip_tied(self):
    params = self._perturbed(self.params, 0)
    out = self._round_trip(self.config, params, "export_tied")
    names = safetensors.numpy.load_file(os.path.join(out, hf.SINGLE_FILE))
    self.assertNotIn("lm_head.weight", names)
    self.assertEqual(hf.config_from_hf(out), self.config)
    self._assert_trees_equal(hf.load_params(out, self.config), params)

  def test_export_round_trip_untied_sharded(self):
    config = self.config.replace(text=dataclasses.replace(
        self.config.text, tie_word_embeddings=False))
    params = jax.tree.map(lambda x: x, self.params)
    rng = np.random.default_rng(1)
    params["text"]["lm_head"] = {"kernel": jnp.asarray(
        rng.standard_normal((40, 128)).astype(np.float32) * 40 ** -0.5)}
    params = self._perturbed(params, 2)
    out = self._round_trip(config, params, "export_untied",
                           max_shard_bytes=30_000)
    with open(os.path.join(out, hf.INDEX_FILE)) as f:
      index = json.load(f)
    self.assertIn("lm_head.weight", index["weight_map"])
    self.assertGreater(len(set(index["weight_map"].values())), 2)
    self._assert_trees_equal(hf.load_params(out, config), params)


if __name__ == "__main__":
  absltest.main()
