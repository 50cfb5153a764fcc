"""Tests for evejax.parallel: mesh construction, rule table, shardings."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import AxisType, PartitionSpec as P

from evejax import parallel


def _synthetic_params():
  """A param tree shaped like a tiny VLM, with its logical axes."""
  shapes = {
      "embed_tokens": (64, 16),
      "layers": {
          "q": (2, 16, 4, 4),         # layers, embed, heads, head_dim
          "k": (2, 16, 3, 4),         # 3 KV heads: indivisible by tensor=2
          "mlp_up": (2, 16, 32),
          "norm": (2, 16),
      },
      "visual": {"patch_embed": (1176, 8), "mlp": (8, 24)},
      "scale": (),
  }
  axes = {
      "embed_tokens": ("vocab", "embed"),
      "layers": {
          "q": ("layers", "embed", "heads", "head_dim"),
          "k": ("layers", "embed", "kv_heads", "head_dim"),
          "mlp_up": ("layers", "embed", "mlp"),
          "norm": ("layers", None),
      },
      "visual": {"patch_embed": ("patch", "vision_embed"),
                 "mlp": ("vision_embed", "vision_mlp")},
      "scale": (),
  }
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes,
                        is_leaf=lambda x: isinstance(x, tuple))
  return params, axes


class MakeMeshTest(absltest.TestCase):

  def test_default_puts_all_devices_on_fsdp_with_auto_axes(self):
    mesh = parallel.make_mesh()
    self.assertEqual(mesh.axis_names, ("data", "fsdp", "tensor"))
    self.assertEqual(dict(mesh.shape), {"data": 1, "fsdp": 8, "tensor": 1})
    self.assertEqual(mesh.axis_types, (AxisType.Auto,) * 3)

  def test_minus_one_takes_the_rest_and_config_dict_works(self):
    cfg = ml_collections.ConfigDict(dict(data=2, fsdp=-1, tensor=2, rules=()))
    mesh = parallel.make_mesh(cfg)
    self.assertEqual(dict(mesh.shape), {"data": 2, "fsdp": 2, "tensor": 2})

  def test_subset_of_devices(self):
    mesh = parallel.make_mesh({"tensor": 2}, devices=jax.devices()[:2])
    self.assertEqual(dict(mesh.shape), {"data": 1, "fsdp": 1, "tensor": 2})

  def test_bad_sizes_give_clear_errors(self):
    with self.assertRaisesRegex(ValueError, "needs 12 devices but 8"):
      parallel.make_mesh({"data": 3, "fsdp": 4, "tensor": 1})
    with self.assertRaisesRegex(ValueError, "at most one axis may be -1"):
      parallel.make_mesh({"data": -1, "fsdp": -1})
    with self.assertRaisesRegex(ValueError, "not divisible"):
      parallel.make_mesh({"data": 3, "fsdp": -1})
    with self.assertRaisesRegex(ValueError, "Unknown mesh axes.*'model'"):
      parallel.make_mesh({"model": 8})


class RulesTest(absltest.TestCase):

  def test_spec_without_mesh_follows_table_and_uses_mesh_axis_once(self):
    # batch takes ('data','fsdp'), so embed (-> fsdp) must stay whole.
    self.assertEqual(parallel.logical_to_spec(("batch", "length", "embed")),
                     P(("data", "fsdp")))
    self.assertEqual(parallel.logical_to_spec(("embed", "mlp")), P("fsdp", "tensor"))
    self.assertEqual(parallel.logical_to_spec(("layers", "embed", "heads", "head_dim")),
                     P(None, "fsdp", "tensor"))

  def test_indivisible_dims_are_replicated(self):
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    # 3 KV heads cannot split 2 ways; 4 heads can.
    self.assertEqual(parallel.logical_to_spec(("kv_heads",), mesh=mesh, shape=(3,)), P())
    self.assertEqual(parallel.logical_to_spec(("heads",), mesh=mesh, shape=(4,)),
                     P("tensor"))
    # A batch of 2 fits on 'data' only; 'fsdp' is then free for embed.
    self.assertEqual(
        parallel.logical_to_spec(("batch", "embed"), mesh=mesh, shape=(2, 6)),
        P("data", "fsdp"))
    self.assertEqual(
        parallel.logical_to_spec(("batch", "embed"), mesh=mesh, shape=(8, 6)),
        P(("data", "fsdp")))

  def test_unknown_logical_axis_names_the_fix(self):
    with self.assertRaisesRegex(ValueError, "'widgets' has no rule.*config.mesh.rules"):
      parallel.logical_to_spec(("widgets",))

  def test_overrides_from_config(self):
    cfg = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1,
                                         rules=(("mlp", None), ("embed", ["data", "fsdp"]))))
    rules = parallel.rules_from_config(cfg)
    self.assertEqual(parallel.logical_to_spec(("embed", "mlp"), rules),
                     P(("data", "fsdp")))
    self.assertEqual(parallel.make_rules({"vocab": "none"}, rules),
                     parallel.make_rules((("vocab", None),), rules))
    self.assertEqual(parallel.logical_to_spec(("vocab",), parallel.make_rules({"vocab": ""})),
                     P())
    with self.assertRaisesRegex(ValueError, "unknown mesh axis 'model'"):
      parallel.make_rules((("mlp", "model"),))


class ShardingsTest(absltest.TestCase):

  def test_shardings_for_places_params_as_the_rules_say(self):
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    params, axes = _synthetic_params()
    shardings = parallel.shardings_for(axes, mesh, parallel.LOGICAL_RULES, params)
    self.assertEqual(jax.tree.structure(shardings), jax.tree.structure(params))
    placed = parallel.shard_tree(params, shardings)
    # Values survive placement.
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(placed)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    shard = lambda x: x.addressable_shards[0].data.shape
    self.assertEqual(shard(placed["embed_tokens"]), (32, 8))       # vocab/2, embed/2
    self.assertEqual(shard(placed["layers"]["q"]), (2, 8, 2, 4))   # heads/2
    self.assertEqual(shard(placed["layers"]["k"]), (2, 8, 3, 4))   # 3 heads whole
    self.assertEqual(shard(placed["visual"]["mlp"]), (4, 12))
    self.assertEqual(shard(placed["scale"]), ())

  def test_shape_tuples_as_shapes_tree(self):
    mesh = parallel.make_mesh({"fsdp": 8})
    axes = {"a": ("embed",), "b": ("embed", "mlp")}
    shapes = {"a": (12,), "b": (16, 4)}   # 12 is not divisible by 8
    sh = parallel.shardings_for(axes, mesh, shapes_tree=shapes)
    self.assertEqual(sh["a"].spec, P())
    self.assertEqual(sh["b"].spec, P("fsdp"))   # tensor has size 1: 'mlp' -> tensor
    no_shapes = parallel.shardings_for(axes, mesh)
    self.assertEqual(no_shapes["a"].spec, P("fsdp"))

  def test_batch_sharding_and_replicated(self):
    mesh = parallel.make_mesh({"data": 2, "fsdp": 4})
    sh = parallel.batch_sharding(mesh, ndim=3, batch_axis=1)
    self.assertEqual(sh.spec, P(None, ("data", "fsdp")))
    x = jax.device_put(jnp.zeros((3, 16, 5)), sh)
    self.assertEqual(x.addressable_shards[0].data.shape, (3, 2, 5))
    r = jax.device_put(jnp.zeros((3, 5)), parallel.replicated(mesh))
    self.assertTrue(all(s.data.shape == (3, 5) for s in r.addressable_shards))

  def test_with_logical_constraint_in_jit(self):
    mesh = parallel.make_mesh({"data": 2, "fsdp": 4})

    @jax.jit
    def f(x):
      return parallel.with_logical_constraint(x * 2, ("batch", "embed"), mesh=mesh)

    y = f(jnp.ones((8, 4)))
    self.assertEqual(y.sharding.spec, P(("data", "fsdp")))

    @jax.jit
    def g(x):  # mesh from context
      return parallel.with_logical_constraint(x + 1, ("embed", "mlp"))

    with jax.set_mesh(mesh):
      z = g(jnp.ones((8, 4)))
    self.assertEqual(z.sharding.spec, P("fsdp"))
    # Without any mesh it is the identity.
    np.testing.assert_array_equal(g(jnp.ones((3,) * 2)), 2 * np.ones((3, 3)))

  def test_describe_and_per_device_bytes_match_real_shards(self):
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    params, axes = _synthetic_params()
    shardings = parallel.shardings_for(axes, mesh, shapes_tree=params)
    placed = parallel.shard_tree(params, shardings)
    dev0 = jax.devices()[0]
    real = sum(s.data.nbytes for x in jax.tree.leaves(placed)
               for s in x.addressable_shards if s.device == dev0)
    self.assertEqual(parallel.per_device_bytes(params, shardings), real)
    self.assertEqual(parallel.per_device_bytes(placed), real)
    abstract = parallel.abstract_tree(placed)
    self.assertEqual(parallel.per_device_bytes(abstract), real)
    text = parallel.describe(mesh, shardings, params)
    self.assertIn("['layers']['k']", text)
    self.assertIn(f"per device {parallel._fmt_bytes(real)}", text)
    self.assertEqual(text, parallel.describe(mesh, placed))
    total = sum(x.nbytes for x in jax.tree.leaves(params))
    self.assertIn(f"total {parallel._fmt_bytes(total)}", text)


if __name__ == "__main__":
  absltest.main()
