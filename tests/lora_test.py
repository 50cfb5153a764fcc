"""LoRA adapters: exact base at init, merged = low-rank path, dropout masks,
gradients and optimizer state for the adapter only, named adapters on one
backbone, 8-device mesh = 1 device, sampling on merged weights, PEFT-dir errors.

The numerical interchange with peft/transformers is `lora_peft_test.py`.
"""
import os

import dataclasses
import functools
import json
import shutil
import tempfile

from absl.testing import absltest
import jax
import jax.numpy as jnp
import jax.extend
import ml_collections
import numpy as np
import optax
import safetensors.numpy

from evejax import parallel
from evejax import sampling
from evejax.models import layers
from evejax.models import lora
from evejax.models import vlm
from evejax.models.presets import tiny
from evejax.processing import batching
from evejax.processing import images

# Every kind of Linear kernel: text projections, an untied lm head, the
# vision blocks, the merger and the patch embedding.
CONFIG = tiny(vocab_size=256).replace(text=dataclasses.replace(
    tiny().text, vocab_size=256, tie_word_embeddings=False))
ALL = lora.LoraConfig(rank=4, alpha=8.0, targets=(r"kernel$",))
FAST_COMPILE = {"xla_backend_optimization_level": 0}
_jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)


@functools.lru_cache(maxsize=None)
def _params():
  params = _jit(vlm.init_params, static_argnums=0)(CONFIG, jax.random.key(1))
  return jax.tree.map(lambda x: 2 * x, params)  # logits of std ~1


def _random_b(adapter, seed, std=0.3):
  """The adapter with every B drawn at random (a trained adapter's shape)."""
  out = jax.tree.map(lambda x: x, adapter)
  for j, (_, node) in enumerate(lora.modules(out)):
    node["lora_b"] = std * jax.random.normal(
        jax.random.key(seed * 1000 + j), node["lora_b"].shape)
  return out


def _inputs(config=CONFIG):
  rng = np.random.default_rng(0)
  patches, grid = images.preprocess_image(
      rng.integers(0, 256, (56, 84, 3), dtype=np.uint8))
  image = ([config.vision_start_token_id]
           + [config.image_token_id] * images.num_image_tokens(grid)
           + [config.vision_end_token_id])
  examples = [
      batching.Example(tokens=np.asarray([1, 50] + image + [51], np.int32),
                       images=[(patches, grid)]),
      batching.Example(tokens=np.arange(20, 40, dtype=np.int32))]
  inputs = batching.make_batch(
      examples, vision=config.vision, image_token_id=config.image_token_id,
      vision_start_id=config.vision_start_token_id, pad_id=0,
      length_buckets=(24,), patch_buckets=(24,), padding="right")
  return jax.tree.map(jnp.asarray, inputs)


@functools.partial(_jit, static_argnums=1)
def _forward(params, config, inputs):
  return vlm.forward(params, config, inputs)


@functools.partial(_jit, static_argnums=(2, 3))
def _adapted(params, adapter, cfg, config, inputs, rng=None):
  return lora.apply(vlm.forward, params, adapter, cfg, config, inputs,
                    dropout_rng=rng)


class ConfigTest(absltest.TestCase):

  def test_from_config_block(self):
    block = ml_collections.ConfigDict(dict(
        rank=16, alpha=32, dropout=0.05, targets=[lora.TEXT_PROJECTIONS],
        adapters=("proposer", "solver")))
    cfg = lora.from_config(block)
    self.assertEqual(cfg, lora.LoraConfig(16, 32.0, 0.05,
                                          (lora.TEXT_PROJECTIONS,)))
    self.assertEqual(cfg.scale, 2.0)
    self.assertIsNone(lora.from_config(ml_collections.ConfigDict(
        dict(rank=0, alpha=32, dropout=0.0, targets=()))))
    self.assertEqual(lora.LoraConfig(16, 32.0, use_rslora=True).scale, 8.0)
    hash(cfg)  # a static argument of jit

  def test_bad_values_name_the_key(self):
    with self.assertRaisesRegex(ValueError, "rank=-1"):
      lora.LoraConfig(-1, 8.0)
    with self.assertRaisesRegex(ValueError, "dropout=1.0"):
      lora.LoraConfig(4, 8.0, dropout=1.0)
    with self.assertRaisesRegex(ValueError, r"'q\(' is not a valid regex"):
      lora.LoraConfig(4, 8.0, targets=("q(",))
    with self.assertRaisesRegex(ValueError, r"rank=4 but no \['alpha'\]"):
      lora.from_config({"rank": 4, "targets": ("q",)})

  def test_targets_select_kernels(self):
    cfg = lora.LoraConfig(4, 8.0, targets=(lora.TEXT_PROJECTIONS,
                                           lora.VISION_MERGER))
    paths = [t.path for t in lora.select_targets(cfg, CONFIG)]
    self.assertEqual(sorted(paths), sorted(
        [f"text/layers/{p}/kernel" for p in ("q", "k", "v", "o")]
        + [f"text/layers/mlp/{p}/kernel" for p in ("gate", "up", "down")]
        + ["vision/merger/fc1/kernel", "vision/merger/fc2/kernel"]))
    o = [t for t in lora.select_targets(cfg, CONFIG) if t.path.endswith("/o/kernel")][0]
    self.assertEqual((o.in_shape, o.out_shape), ((4, 32), (128,)))
    with self.assertRaisesRegex(ValueError, r"'embedding' matches no Linear kernel.*"
                                r"text/layers/q/kernel"):
      lora.select_targets(lora.LoraConfig(4, 8.0, targets=("embedding",)),
                          CONFIG)


class AdapterMathTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.params = _params()
    cls.inputs = _inputs()
    cls.base = _forward(cls.params, CONFIG, cls.inputs)

  def test_init_shapes_and_peft_init(self):
    adapter = lora.init_adapter(ALL, CONFIG, jax.random.key(0))
    q = adapter["text"]["layers"]["q"]
    self.assertEqual(q["lora_a"].shape, (2, 128, 4))      # layers, embed, rank
    self.assertEqual(q["lora_b"].shape, (2, 4, 4, 32))    # layers, rank, heads, hd
    o = adapter["text"]["layers"]["o"]["lora_a"]
    self.assertEqual(o.shape, (2, 4, 32, 4))              # heads, hd in
    self.assertEqual(adapter["vision"]["patch_embed"]["lora_a"].shape, (1176, 4))
    # Kaiming-uniform(a=sqrt(5)) bound 1/sqrt(fan_in); B zero.
    a = np.asarray(adapter["text"]["layers"]["mlp"]["down"]["lora_a"])
    bound = 1 / np.sqrt(256)
    self.assertLessEqual(np.abs(a).max(), bound)
    self.assertGreater(np.abs(a).max(), 0.9 * bound)
    self.assertGreater(np.abs(a[0] - a[1]).max(), 0)  # layers drawn apart
    for _, node in lora.modules(adapter):
      self.assertFalse(np.any(np.asarray(node["lora_b"])))
    shapes = jax.eval_shape(lambda: lora.init_adapter(ALL, CONFIG, jax.random.key(0)))
    self.assertEqual(jax.tree.structure(shapes), jax.tree.structure(adapter))

  def test_zero_adapter_is_the_base_model_exactly(self):
    adapter = lora.init_adapter(ALL, CONFIG, jax.random.key(0))
    merged = lora.merge(self.params, adapter, ALL)
    np.testing.assert_array_equal(_forward(merged, CONFIG, self.inputs), self.base)
    np.testing.assert_array_equal(
        _adapted(self.params, adapter, ALL, CONFIG, self.inputs), self.base)
    for x, y in zip(jax.tree.leaves(merged), jax.tree.leaves(self.params)):
      np.testing.assert_array_equal(x, y)

  def test_low_rank_path_equals_merged_weights(self):
    adapter = _random_b(lora.init_adapter(ALL, CONFIG, jax.random.key(0)), 1)
    merged = _forward(lora.merge(self.params, adapter, ALL), CONFIG, self.inputs)
    path = _adapted(self.params, adapter, ALL, CONFIG, self.inputs)
    self.assertGreater(float(jnp.abs(merged - self.base).max()), 1.0)
    np.testing.assert_allclose(path, merged, atol=1e-4, rtol=0)
    # Adapters off: the base model, whatever the adapter holds.
    np.testing.assert_array_equal(
        _adapted(self.params, None, ALL, CONFIG, self.inputs), self.base)

  def test_merge_on_the_unrolled_inference_layout(self):
    adapter = _random_b(lora.init_adapter(ALL, CONFIG, jax.random.key(0)), 2)
    scanned = lora.merge(self.params, adapter, ALL)
    fast = lora.merge(vlm.inference_params(self.params, CONFIG), adapter, ALL)
    for i in range(CONFIG.text.num_layers):
      for mod in ("q", "o"):
        np.testing.assert_allclose(
            fast["text"][f"layers_{i}"][mod]["kernel"],
            scanned["text"]["layers"][mod]["kernel"][i], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(fast["vision"]["merger"]["fc1"]["kernel"],
                                  scanned["vision"]["merger"]["fc1"]["kernel"])
    # Kernels keep their dtype; the delta is added in fp32 then cast.
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), self.params)
    got = lora.merge(bf16, adapter, ALL)["text"]["layers"]["q"]["kernel"]
    self.assertEqual(got.dtype, jnp.bfloat16)
    want = scanned["text"]["layers"]["q"]["kernel"]  # fp32 W + delta
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=1e-2,
                               atol=1e-3)
    # Params the adapter does not fit give one clear error.
    tied = {**self.params, "text": {k: v for k, v in self.params["text"].items()
                                    if k != "lm_head"}}
    with self.assertRaisesRegex(ValueError, "lm_head/kernel, which params do not have"):
      lora.merge(tied, adapter, ALL)

  def test_dropout_masks_the_adapter_input(self):
    """One Linear: y = x W + (mask * x) A (s B), masks from dropout_key."""
    module = layers.Linear((6,), (2, 3), ("embed",), ("heads", "head_dim"))
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(6, 2, 3)), jnp.float32)
    adapter = {"lora_a": jnp.asarray(rng.normal(size=(6, 4)), jnp.float32),
               "lora_b": jnp.asarray(rng.normal(size=(4, 2, 3)), jnp.float32)}
    x = jnp.asarray(rng.normal(size=(5, 7, 6)), jnp.float32)
    cfg = lora.LoraConfig(4, 2.0, dropout=0.5, targets=("kernel",))
    fn = lambda p, x: module.apply({"params": p}, x)
    key = jax.random.key(3)
    got = lora.apply(fn, {"kernel": w}, adapter, cfg, x, dropout_rng=key)
    mask = lora.dropout_mask(lora.dropout_key(key, adapter, ()), x.shape, 0.5)
    self.assertEqual(set(np.unique(np.asarray(mask))), {0.0, 2.0})
    want = (jnp.einsum("btd,dhk->bthk", x, w) + 0.5 * jnp.einsum(
        "btd,dr,rhk->bthk", x * mask, adapter["lora_a"], adapter["lora_b"]))
    np.testing.assert_allclose(got, want, atol=1e-5)
    # No key (evaluation, a sampling pass): no dropout.
    plain = lora.apply(fn, {"kernel": w}, adapter, cfg, x)
    np.testing.assert_allclose(plain, jnp.einsum(
        "btd,dhk->bthk", x, w) + 0.5 * jnp.einsum(
            "btd,dr,rhk->bthk", x, adapter["lora_a"], adapter["lora_b"]),
        atol=1e-5)
    other = lora.apply(fn, {"kernel": w}, adapter, cfg, x,
                       dropout_rng=jax.random.key(4))
    self.assertGreater(float(jnp.abs(other - got).max()), 0.1)

  def test_dropout_in_the_model_differs_per_layer_and_key(self):
    cfg = lora.LoraConfig(4, 8.0, dropout=0.3, targets=(lora.TEXT_PROJECTIONS,))
    adapter = _random_b(lora.init_adapter(cfg, CONFIG, jax.random.key(0)), 3)
    a = _adapted(self.params, adapter, cfg, CONFIG, self.inputs, jax.random.key(1))
    again = _adapted(self.params, adapter, cfg, CONFIG, self.inputs,
                     jax.random.key(1))
    b = _adapted(self.params, adapter, cfg, CONFIG, self.inputs, jax.random.key(2))
    np.testing.assert_array_equal(a, again)
    self.assertGreater(float(jnp.abs(a - b).max()), 0.1)
    k0 = lora.dropout_key(jax.random.key(1), adapter, ("text", "layers", "q"), 0)
    k1 = lora.dropout_key(jax.random.key(1), adapter, ("text", "layers", "q"), 1)
    self.assertFalse(np.array_equal(k0, k1))


class TrainingTest(absltest.TestCase):

  def test_gradients_and_optimizer_state_are_the_adapters_only(self):
    config = CONFIG.replace(remat=True)  # the low-rank path under nn.remat too
    cfg = lora.LoraConfig(4, 8.0, dropout=0.1, targets=(lora.TEXT_PROJECTIONS,
                                                       lora.VISION_MERGER))
    params, inputs = _params(), _inputs(config)
    adapter = _random_b(lora.init_adapter(cfg, config, jax.random.key(0)), 4,
                        std=0.05)

    def loss(adapter, params, rng):
      logits = lora.apply(vlm.forward, params, adapter, cfg, config, inputs,
                          dropout_rng=rng)
      return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 7])

    grad = jax.grad(loss)
    # The backbone is not differentiated and no kernel-shaped weight gradient
    # is formed (no dot_general yields an adapted kernel's shape); the merged
    # form, for contrast, forms them.
    kernel_shapes = {tuple(sorted(t.kernel_shape[1:] if t.entry.layers
                                  else t.kernel_shape))
                     for t in lora.select_targets(cfg, config)}

    def dot_shapes(fn, *args):
      shapes = set()

      def walk(jaxpr):
        for eqn in jaxpr.eqns:
          if eqn.primitive.name == "dot_general":
            shapes.add(tuple(sorted(eqn.outvars[0].aval.shape)))
          for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            walk(sub)
      walk(jax.make_jaxpr(fn)(*args).jaxpr)
      return shapes

    key = jax.random.key(5)
    self.assertEqual(dot_shapes(grad, adapter, params, key) & kernel_shapes, set())
    merged_loss = lambda a, p: loss(None, lora.merge(p, a, cfg), key)
    self.assertEqual(dot_shapes(jax.grad(merged_loss), adapter, params)
                     & kernel_shapes, kernel_shapes)

    tx = optax.adamw(1e-2)
    state = tx.init(adapter)
    adapter_leaves = {(x.shape, x.dtype) for x in jax.tree.leaves(adapter)}
    moments = [x for x in jax.tree.leaves(state) if x.ndim > 0]
    self.assertLen(moments, 2 * len(jax.tree.leaves(adapter)))  # mu and nu
    self.assertTrue(all((x.shape, x.dtype) in adapter_leaves for x in moments))
    # With one tree holding backbone and adapter, a mask gives the same.
    both = {"backbone": params, "adapter": adapter}
    masked = optax.masked(tx, {"backbone": jax.tree.map(lambda _: False, params),
                               "adapter": jax.tree.map(lambda _: True, adapter)})
    self.assertEqual(
        sum(x.size for x in jax.tree.leaves(masked.init(both)) if x.ndim),
        sum(x.size for x in moments))

    before = jax.tree.map(np.asarray, params)
    base = _forward(params, config, inputs)
    step = _jit(lambda a, s, p, k: _update(tx, grad, a, s, p, k))
    trained, state = step(adapter, state, params, key)
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(before)):
      np.testing.assert_array_equal(x, y)
    eval_loss = _jit(lambda a, p: loss(a, p, None))
    self.assertLess(float(eval_loss(trained, params)),
                    float(eval_loss(adapter, params)))
    # The reference policy (adapters off) is the untouched base model.
    np.testing.assert_array_equal(_forward(params, config, inputs), base)

  def test_named_adapters_share_one_backbone(self):
    params, inputs = _params(), _inputs()
    cfg = lora.LoraConfig(4, 8.0, targets=(lora.TEXT_PROJECTIONS,))
    init = lora.init_adapter(cfg, CONFIG, jax.random.key(0))
    roles = {"proposer": _random_b(init, 5), "solver": _random_b(init, 6)}
    state = {"backbone": params, "adapters": roles}
    snapshot = jax.tree.map(lambda x: x, params)
    logits = {name: _adapted(params, a, cfg, CONFIG, inputs)
              for name, a in roles.items()}
    self.assertGreater(float(jnp.abs(logits["proposer"] - logits["solver"]).max()), 1.0)
    # Held once: the backbone's arrays are the same objects after both
    # policies ran and were merged, and an adapter is a small fraction of it.
    lora.merge(params, roles["solver"], cfg)
    for x, y in zip(jax.tree.leaves(state["backbone"]), jax.tree.leaves(snapshot)):
      self.assertIs(x, y)
    size = lambda t: sum(x.size for x in jax.tree.leaves(t))
    self.assertLess(size(roles["solver"]), 0.15 * size(params))
    merged = lora.merge(params, roles["solver"], cfg)
    self.assertIs(merged["text"]["embed"]["embedding"],
                  params["text"]["embed"]["embedding"])


def _update(tx, grad, adapter, state, params, key):
  updates, state = tx.update(grad(adapter, params, key), state, adapter)
  return optax.apply_updates(adapter, updates), state


class MeshTest(absltest.TestCase):

  def test_sharded_adapter_equals_one_device(self):
    params, inputs = _params(), _inputs()
    adapter = _random_b(lora.init_adapter(ALL, CONFIG, jax.random.key(0)), 7)
    want = _adapted(params, adapter, ALL, CONFIG, inputs)

    mesh = parallel.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    axes = vlm.param_axes(CONFIG)
    p_sh = parallel.shardings_for(axes, mesh, shapes_tree=params)
    a_axes = lora.adapter_axes(adapter, axes)
    a_sh = parallel.shardings_for(a_axes, mesh, shapes_tree=adapter)
    self.assertEqual(a_axes["text"]["layers"]["q"],
                     {"lora_a": ("layers", "embed", "lora_rank"),
                      "lora_b": ("layers", "lora_rank", "heads", "head_dim")})
    # Factors shard like their kernel: q's embed over fsdp, its heads over tensor.
    self.assertEqual(a_sh["text"]["layers"]["q"]["lora_a"].spec,
                     jax.sharding.PartitionSpec(None, "fsdp"))
    self.assertEqual(a_sh["text"]["layers"]["q"]["lora_b"].spec,
                     jax.sharding.PartitionSpec(None, None, "tensor"))
    sharded_params = jax.device_put(params, p_sh)
    sharded_adapter = jax.device_put(adapter, a_sh)
    batch = parallel.batch_sharding(mesh, 2)
    sharded_inputs = batching.to_device(jax.tree.map(np.asarray, inputs), batch)
    got = _adapted(sharded_params, sharded_adapter, ALL, CONFIG, sharded_inputs)
    # fp32 sums split over devices round differently (~2e-5 on logits ~2).
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    # Merged kernels keep their kernel's sharding.
    merged = lora.merge(sharded_params, sharded_adapter, ALL)
    for path in (("text", "layers", "q"), ("vision", "merger", "fc1")):
      w = sharded_params
      m = merged
      for k in path + ("kernel",):
        w, m = w[k], m[k]
      self.assertTrue(m.sharding.is_equivalent_to(w.sharding, w.ndim))
    np.testing.assert_allclose(
        _forward(merged, CONFIG, sharded_inputs), want, atol=1e-4, rtol=0)


class SamplingTest(absltest.TestCase):

  def test_adapted_model_samples_the_merged_weights(self):
    params = _params()
    cfg = lora.LoraConfig(4, 8.0, targets=(lora.TEXT_PROJECTIONS,))
    adapter = _random_b(lora.init_adapter(cfg, CONFIG, jax.random.key(0)), 8)
    prompts = [batching.Example(tokens=np.asarray([1, 40, 41, 42], np.int32)),
               batching.Example(tokens=np.arange(20, 35, dtype=np.int32))]
    kw = dict(length_buckets=(16,), patch_buckets=(0,), batch_buckets=(2,),
              max_cache=24)
    greedy = sampling.SamplingParams(max_new_tokens=8, greedy=True)
    mesh = parallel.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    plain = sampling.Sampler(CONFIG, **kw)
    want = plain.generate(lora.merge(params, adapter, cfg), prompts, greedy, seed=0)
    base = plain.generate(params, prompts, greedy, seed=0)
    self.assertFalse(np.array_equal(want.tokens, base.tokens))
    adapted = sampling.Sampler(CONFIG, mesh=mesh, model=lora.AdaptedModel(cfg),
                               **kw)
    got = adapted.generate({"backbone": params, "adapter": adapter}, prompts,
                           greedy, seed=0)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-4)
    # The base model's two programs (prefill, decode): a decode step runs on
    # weights of the base model's shapes, laid out like them.
    self.assertEqual(adapted.num_compiles, plain.num_compiles)
    fast = adapted._inference_params({"backbone": params, "adapter": adapter})
    base_fast = jax.eval_shape(lambda p: vlm.inference_params(p, CONFIG), params)
    self.assertEqual(jax.tree.structure(fast), jax.tree.structure(base_fast))
    want_sh = parallel.shardings_for(vlm.inference_param_axes(CONFIG), mesh,
                                     adapted.rules, base_fast)
    q = fast["text"]["layers_1"]["q"]["kernel"]
    self.assertTrue(q.sharding.is_equivalent_to(
        want_sh["text"]["layers_1"]["q"]["kernel"], q.ndim))
    with self.assertRaisesRegex(ValueError, "unroll_layers=True"):
      sampling.Sampler(CONFIG, model=lora.AdaptedModel(cfg), unroll_layers=False,
                       **kw).generate({"backbone": params, "adapter": adapter},
                                      prompts, greedy, seed=0)


class PeftDirErrorsTest(absltest.TestCase):
  """Import errors name the tensor (the round trip with peft itself is in
  lora_peft_test.py; these dirs are written by export_peft and edited)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.cfg = lora.LoraConfig(4, 8.0, dropout=0.05,
                              targets=(lora.TEXT_PROJECTIONS, lora.VISION_MERGER))
    cls.adapter = _random_b(lora.init_adapter(cls.cfg, CONFIG, jax.random.key(0)), 9)
    cls.dir = os.path.join(cls.tmp, "good")
    lora.export_peft(cls.adapter, cls.cfg, CONFIG, cls.dir)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp)
    super().tearDownClass()

  def _edited(self, name, edit_tensors=None, edit_config=None):
    d = os.path.join(self.tmp, name)
    shutil.copytree(self.dir, d)
    path = os.path.join(d, "adapter_model.safetensors")
    if edit_tensors:
      tensors = safetensors.numpy.load_file(path)
      edit_tensors(tensors)
      safetensors.numpy.save_file(tensors, path, metadata={"format": "pt"})
    if edit_config:
      with open(os.path.join(d, "adapter_config.json")) as f:
        config = json.load(f)
      edit_config(config)
      with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump(config, f)
    return d

  def test_round_trip_is_exact(self):
    adapter, cfg = lora.import_peft(self.dir, CONFIG)
    self.assertEqual((cfg.rank, cfg.alpha, cfg.dropout), (4, 8.0, 0.05))
    self.assertEqual(jax.tree.structure(adapter), jax.tree.structure(self.adapter))
    for x, y in zip(jax.tree.leaves(adapter), jax.tree.leaves(self.adapter)):
      np.testing.assert_array_equal(x, y)
    self.assertEqual([t.path for t in lora.select_targets(cfg, CONFIG)],
                     [t.path for t in lora.select_targets(self.cfg, CONFIG)])
    _, same = lora.import_peft(self.dir, CONFIG, expect=self.cfg)
    self.assertIs(same, self.cfg)

  def test_mismatches_name_the_tensor(self):
    q1 = "base_model.model.model.language_model.layers.1.self_attn.q_proj"

    def rank3(t):
      t[q1 + ".lora_A.weight"] = t[q1 + ".lora_A.weight"][:3]
    with self.assertRaisesRegex(
        ValueError, rf"'{q1}.lora_A.weight'.*\(3, 128\): rank 3, but "
        r"adapter_config.json says r=4"):
      lora.import_peft(self._edited("rank", rank3), CONFIG)

    def wider(t):
      t[q1 + ".lora_B.weight"] = np.zeros((256, 4), np.float32)
    with self.assertRaisesRegex(
        ValueError, rf"'{q1}.lora_B.weight'.*\(256, 4\): this model's "
        r"text/layers/q/kernel needs \(128, 4\)"):
      lora.import_peft(self._edited("shape", wider), CONFIG)

    def drop_layer(t):
      del t[q1 + ".lora_B.weight"]
    with self.assertRaisesRegex(ValueError, rf"no tensor '{q1}.lora_B.weight'"):
      lora.import_peft(self._edited("missing", drop_layer), CONFIG)

    def extra(t):
      t["base_model.model.model.language_model.layers.2.self_attn.q_proj"
        ".lora_A.weight"] = np.zeros((4, 128), np.float32)
    with self.assertRaisesRegex(ValueError, r"layers.2.self_attn.q_proj.lora_A"
                                r".weight' .* is no lora_A/lora_B of a Linear kernel"):
      lora.import_peft(self._edited("extra", extra), CONFIG)

    with self.assertRaisesRegex(ValueError, "use_dora=True"):
      lora.import_peft(self._edited("dora", edit_config=lambda c: c.update(
          use_dora=True)), CONFIG)
    with self.assertRaisesRegex(FileNotFoundError, "adapter_config.json not found"):
      lora.import_peft(self.tmp, CONFIG)

  def test_expected_config_mismatches(self):
    text_only = dataclasses.replace(self.cfg, targets=(lora.TEXT_PROJECTIONS,))
    with self.assertRaisesRegex(
        ValueError, r"'base_model.model.model.visual.merger.mlp.0.lora_A.weight'"
        r".* adapts vision/merger/fc1/kernel, which the config's LoRA targets"):
      lora.import_peft(self.dir, CONFIG, expect=text_only)
    with_lm_head = dataclasses.replace(
        self.cfg, targets=self.cfg.targets + ("lm_head",))
    with self.assertRaisesRegex(ValueError, r"no tensor 'base_model.model.lm_head"
                                r".lora_A.weight'"):
      lora.import_peft(self.dir, CONFIG, expect=with_lm_head)
    with self.assertRaisesRegex(ValueError, r"lora_A.weight' .* has rank 4 but "
                                r"the config's LoRA rank is 8"):
      lora.import_peft(self.dir, CONFIG,
                       expect=dataclasses.replace(self.cfg, rank=8))
    with self.assertRaisesRegex(ValueError, "lora_alpha=8.0.*alpha=16.0"):
      lora.import_peft(self.dir, CONFIG,
                       expect=dataclasses.replace(self.cfg, alpha=16.0))


if __name__ == "__main__":
  absltest.main()
