"""The TPU compiler in the loop: the tiny presets compiled for tpu:v5p-8 on this CPU host.

Needs libtpu (`pip install -e '.[tpu]'`, which CI installs); skipped without it.
Each kind of program is compiled once over the three recipes (the largest
bucket combination; a tiny train step takes the TPU compiler 20-60 s on 2
cores): EVE's GRPO step and vision tower, MM-Zero's reference
pass, EvoLMM's LoRA step and LoRA-adapted sampling chunk (prefill + decode),
the evaluator's chunk, all with splash attention as the Mosaic kernel. The
compiler's argument bytes of each train step are set against the train state
computed from the shapes.
"""
import math

from absl.testing import absltest
import jax
import jax.numpy as jnp
import pytest

from evejax import config_utils
from evejax import parallel
from evejax.tools import targets

GiB = 1024 ** 3


def _tiled_bytes(tree) -> int:
  """Per-device bytes with each shard's last two dims padded to 128 (1-D to 1024):
  more than any (8, 128) tiling of the TPU's layouts takes."""
  total = 0
  for x in jax.tree.leaves(tree):
    shape = list(x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape)
    if len(shape) == 1:
      shape = [-(-shape[0] // 1024) * 1024]
    elif shape:
      shape[-1], shape[-2] = (-(-shape[-1] // 128) * 128, -(-shape[-2] // 128) * 128)
    total += math.prod(shape) * jnp.dtype(x.dtype).itemsize
  return total


def _one_of_each(progs):
  """The first program of each kind (train steps: of each policy's step kind)."""
  seen, out = set(), []
  for p in progs:
    key = p.name.rsplit("/", 1)[-1] if p.kind == "train" else p.kind
    if key not in seen:
      seen.add(key)
      out.append(p)
  return out


@pytest.mark.slow   # minutes of the TPU compiler
@absltest.skipUnless(targets.libtpu_installed(), "needs libtpu: pip install -e '.[tpu]'")
class TinyPresetsOnV5pTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    targets.setup_host()
    cls.top = targets.topology("tpu:v5p-8")
    cls.mesh = parallel.make_mesh({"fsdp": 4}, devices=targets.devices(cls.top))

  def _compile(self, spec, overrides=(), select=_one_of_each):
    from evejax.tools import aot_plan, aot_programs  # pylint: disable=g-import-not-at-top
    config = config_utils.load_config(spec, list(overrides) + ["mesh.fsdp=4"])
    progs, resident = aot_programs.programs(config, self.mesh, largest=True)
    progs = select(progs)
    results = aot_plan.compile_all(progs, self.top.chip, log=lambda *a, **k: None)
    for r in results:
      self.assertNotIn("error", r, r["name"])
      self.assertTrue(r["fits"], r["name"])
      if not r["name"].endswith("/init"):   # a slot run's empty state: zeros, no FLOPs
        self.assertGreater(r["flops"], 0, r["name"])
      self.assertGreaterEqual(r["flops"], r["flops_xla_once"], r["name"])
    return config, {r["name"]: r for r in results}, resident

  def _check_train_state(self, config, results, resident):
    """Each train step's arguments hold its state (params + Adam moments), from the shapes."""
    from evejax import recipes  # pylint: disable=g-import-not-at-top
    from evejax.recipes import runner  # pylint: disable=g-import-not-at-top
    policies = runner.abstract_policies(recipes.resolve(config.recipe), config,
                                        self.mesh)
    for name, r in results.items():
      if r["kind"] != "train":
        continue
      learner = policies[name.split("/")[1]]
      state = learner.abstract_state()
      params = parallel.per_device_bytes(state.params)
      adam = parallel.per_device_bytes(state.opt_state)
      # AdamW: two moments per trainable parameter, in the params' dtype (and step counts).
      self.assertBetween(adam - 2 * params, 0, 64)
      args = parallel.per_device_bytes(state) + (
          parallel.per_device_bytes(learner.backbone) if learner.backbone is not None else 0)
      self.assertGreaterEqual(r["argument_bytes"], args, name)
      upper = _tiled_bytes(state) + (_tiled_bytes(learner.backbone)
                                     if learner.backbone is not None else 0)
      batch = r["argument_bytes"] - args
      self.assertLess(batch, upper - args + 64 * 2**20, name)   # the rest is the batch
      # Every other policy's state is counted beside it.
      self.assertEqual(r["resident_bytes"] + _state_of(learner),
                       sum(resident.values()), name)

  def test_eve_grpo_step_and_vision(self):
    # The SFT warm-start step is the same forward and backward with another loss
    # (the tool compiles it too); the suite's time goes to the other kinds.
    config, results, resident = self._compile(
        "configs/eve.py:tiny", select=lambda ps: [p for p in _one_of_each(ps)
                                                 if p.kind == "vision"
                                                 or p.name == "train/challenger/grpo"])
    self.assertEqual({r["kind"] for r in results.values()}, {"train", "vision"})
    self.assertIn("train/challenger/grpo", results)
    self._check_train_state(config, results, resident)
    step = results["train/challenger/grpo"]
    # Loops counted by trip count: the scanned layers and micro-batches run more than once.
    self.assertTrue(any(trip > 1 for _, trip in step["loops"]))
    self.assertGreater(step["mfu_bound"], 0)
    self.assertLessEqual(step["roofline_s"], 10.0)

  def test_mmzero_reference_pass(self):
    from evejax import recipes  # pylint: disable=g-import-not-at-top
    from evejax.recipes import runner  # pylint: disable=g-import-not-at-top
    config, results, resident = self._compile(
        "configs/mmzero.py:tiny", ["train.loss.kl_coef=0.01"],
        select=lambda ps: [p for p in ps if p.name == "score/proposer/reference"])
    ref = results["score/proposer/reference"]
    self.assertLen(resident, 3)   # proposer, coder, solver
    learner = runner.abstract_policies(recipes.resolve("mmzero"), config,
                                       self.mesh)["proposer"]
    ref_bytes = parallel.per_device_bytes(learner.reference_params)
    # Its argument is the reference copy; every train state stays resident beside it.
    self.assertGreaterEqual(ref["argument_bytes"], ref_bytes)
    self.assertLess(ref["argument_bytes"], _tiled_bytes(learner.reference_params) + 64 * 2**20)
    self.assertEqual(ref["resident_bytes"], sum(resident.values()) - ref_bytes)

  def test_evolmm_lora_step_and_adapted_sampling(self):
    config, results, resident = self._compile(
        "configs/evolmm.py:tiny", ["warmstart.enabled=False"],
        select=lambda ps: [p for p in ps if p.name == "train/solver/grpo"]
        + [p for p in ps if p.name.startswith("decode/solver")][:1])
    self.assertIn("train/solver/grpo", results)
    self.assertTrue(any(r["kind"] == "decode" for r in results.values()))
    self._check_train_state(config, results, resident)
    self.assertIn("backbone", resident)   # held once for both adapters

  def test_slot_decoding_programs(self):
    # With decoding.mode=slots a run samples through four programs per call, not two.
    _, results, _ = self._compile(
        "configs/eve.py:tiny", ["decoding.mode=slots"],
        select=lambda ps: [p for p in ps if "/solver/" in p.name and p.kind in
                           ("prefill", "decode")][:4])
    loop, = [n for n in results if n.startswith("decode/") and not n.endswith(("init", "insert"))]
    tag = loop[len("decode/"):]
    self.assertEqual(sorted(results), sorted([loop, f"{loop}/init", f"{loop}/insert",
                                              f"prefill/{tag}"]))
    decode = results[loop]
    # The slot loop's length is decided at run time (free slots, refill_every): counted once.
    self.assertNotEmpty(decode["unknown_loops"])

  def test_evaluator(self):
    _, results, resident = self._compile(
        "configs/eval.py:tiny", select=lambda ps: [p for p in ps if p.kind == "prefill"][:1])
    self.assertLen(results, 1)
    self.assertEqual(list(resident), ["params"])


def _state_of(learner) -> int:
  from evejax.tools import aot_programs  # pylint: disable=g-import-not-at-top
  return aot_programs._state_bytes(learner) + (  # pylint: disable=protected-access
      parallel.per_device_bytes(learner.backbone) if learner.backbone is not None else 0)


@absltest.skipUnless(targets.libtpu_installed(), "needs libtpu: pip install -e '.[tpu]'")
class OversizedTest(absltest.TestCase):
  """A program the chip cannot hold is reported as not fitting, with its bytes."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    targets.setup_host()
    cls.top = targets.topology("tpu:v5e-4")   # 16 GiB chips
    cls.mesh = parallel.make_mesh({"fsdp": 4}, devices=targets.devices(cls.top))

  def _program(self, name, rows, resident, model_flops=0.0):
    from evejax.tools import aot_programs  # pylint: disable=g-import-not-at-top
    sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec("fsdp"))
    x = jax.ShapeDtypeStruct((rows, 4096), jnp.float32, sharding=sharding)
    # [rows, rows] f32, replicated: rows^2 * 4 bytes on every device.
    fn = jax.jit(lambda x: x @ x.T, out_shardings=parallel.replicated(self.mesh))
    return aot_programs.Program(name, "train", "test", f"{rows} rows", lambda: fn.lower(
        x).compile(), resident, model_flops)

  def test_model_flops_the_compiler_cannot_see_set_the_compute_time(self):
    from evejax.tools import aot_plan  # pylint: disable=g-import-not-at-top
    # As with splash kernels: the model does far more than the compiler counts.
    seen, unseen = aot_plan.compile_all(
        [self._program("seen", 1024, 0), self._program("unseen", 1024, 0, model_flops=1e15)],
        self.top.chip, log=lambda *a, **k: None)
    self.assertLess(seen["flops"], 1e13)
    self.assertIn(seen["bound"], ("compute", "memory"))
    self.assertEqual(unseen["bound"], "compute (model FLOPs)")
    self.assertAlmostEqual(unseen["compute_s"], 1e15 / self.top.chip.peak_flops)
    self.assertAlmostEqual(unseen["mfu_bound"], 1.0)   # never above 100%

  def test_too_big_for_the_compiler_and_too_big_beside_the_state(self):
    from evejax.tools import aot_plan  # pylint: disable=g-import-not-at-top
    progs = [self._program("refused", 96 * 1024, 0),       # 36 GiB per device
             self._program("crowded", 16 * 1024, 15 * GiB)]  # 2 GiB beside 15 GiB
    results = aot_plan.compile_all(progs, self.top.chip, log=lambda *a, **k: None)
    refused, crowded = results
    self.assertIn("RESOURCE_EXHAUSTED", refused["error"])
    self.assertGreater(refused["peak_bytes"], self.top.chip.hbm_bytes)
    self.assertNotIn("error", crowded)
    self.assertFalse(crowded["fits"])
    self.assertGreater(crowded["peak_bytes"], 15 * GiB)
    lines = aot_plan.failures({"programs": results})
    self.assertLen(lines, 2)
    self.assertRegex(lines[0], r"^refused does not compile \(needs [\d.]+ GiB")
    self.assertRegex(lines[1], r"^crowded does not fit: 1\d\.\d\d GiB per device \([\d.]+ "
                               r"program \+ 15\.00 resident\) of 16\.00 GiB HBM")


if __name__ == "__main__":
  absltest.main()
