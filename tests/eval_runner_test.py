"""End to end: the tiny model on a tiny MMStar-style TSV through `evejax.eval.cli.run`.

Writes results.jsonl + summary (JSON, markdown), counts every bad row with its
reason, resumes after an interruption to the rows an uninterrupted run writes,
gives the same greedy replies on an 8-device mesh as on one device, restores
one role's params from an evejax run directory, and scores in-loop validation
into metrics.jsonl.
"""
import base64
import copy
import csv
import importlib.util
import io
import json
import os
import pathlib
import shutil
import tempfile

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from evejax import checkpoint as checkpoint_lib
from evejax import observe
from evejax.eval import cli
from evejax.eval import restore
from evejax.eval import runner
from evejax.eval import validation
from evejax.models import lora
from evejax.models import vlm
from evejax.rl import learner as learner_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_ITEMS = 12   # rows in the TSV, bad ones included
SHARED_ROLES = {"challenger": "challenger", "solver": "challenger"}   # EVE's share_params


def eval_config(**overrides):
  spec = importlib.util.spec_from_file_location("eval_config", ROOT / "configs" / "eval.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("tiny")
  config.log.progress = False
  for key, value in overrides.items():
    node = config
    *path, last = key.split(".")
    for part in path:
      node = node[part]
    node[last] = value
  return config


def write_tiny_hf_checkpoint(out_dir: str, seed: int = 7) -> str:
  """A random tiny Qwen2.5-VL written by transformers, with evejax's built-in tokenizer.

  Its weights have O(1) activations (hf_parity's), so greedy replies differ
  between prompts; the special-token ids are moved to the tokenizer's.
  """
  from evejax.tools import hf_parity  # pylint: disable=g-import-not-at-top
  from evejax.processing import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  # Untied embeddings: with tied ones every greedy reply at this size is a run of newlines.
  hf_parity.make_tiny_hf_checkpoint(out_dir, seed=seed, vocab=2048, tie=False)
  tok = tokenizer_lib.builtin_tokenizer()
  with open(os.path.join(out_dir, "config.json")) as f:
    cfg = json.load(f)
  cfg.update(image_token_id=tok.image_pad_id, video_token_id=tok.video_pad_id,
             vision_start_token_id=tok.vision_start_id, vision_end_token_id=tok.vision_end_id)
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(cfg, f)
  with open(os.path.join(out_dir, "tokenizer.json"), "w") as f:
    f.write(tok.backend.to_str())
  return out_dir


def png_b64(colour, size=(56, 56)) -> str:
  buf = io.BytesIO()
  Image.new("RGB", size, colour).save(buf, format="PNG")
  return base64.b64encode(buf.getvalue()).decode()


def write_mmstar(path: str) -> None:
  colours = ["red", "green", "blue", "white", "black", "yellow", "purple"]
  rows = []
  for k, colour in enumerate(colours):
    rows.append([str(k), png_b64(colour), "What colour fills the image?", "red", "green",
                 "blue", colour, "D", "colour" if k % 2 else "fill", "coarse"])
  rows.append(["7", str([png_b64("red"), png_b64("blue")]), "Which image is red?", "first",
               "second", "both", "neither", "A", "multi", "fine"])
  rows.append(["8", base64.b64encode(b"these bytes are no image" * 3).decode(), "Broken?",
               "a", "b", "c", "d", "A", "colour", "coarse"])
  rows.append(["9", png_b64("red"), "No options here", "", "", "", "", "A", "colour", "coarse"])
  rows.append(["10", "", "No image", "a", "b", "c", "d", "A", "colour", "coarse"])
  rows.append(["11", png_b64("red"), "very long question " * 200, "a", "b", "c", "d", "A",
               "colour", "coarse"])
  assert len(rows) == NUM_ITEMS
  with open(path, "w", newline="") as f:
    w = csv.writer(f, delimiter="\t")
    w.writerow(["index", "image", "question", "A", "B", "C", "D", "answer", "category",
                "l2-category"])
    w.writerows(rows)


def read_rows(out_dir: str) -> dict[str, dict]:
  return {r["id"]: r for r in observe.read_jsonl(os.path.join(out_dir, "mmstar",
                                                              runner.RESULTS_FILE))}


def workspace() -> tuple[str, str, str]:
  """(a temporary folder, its data dir holding MMStar.tsv, a tiny HF checkpoint in it)."""
  tmp = tempfile.mkdtemp()
  data = os.path.join(tmp, "data")
  os.makedirs(data)
  write_mmstar(os.path.join(data, "MMStar.tsv"))
  return tmp, data, write_tiny_hf_checkpoint(os.path.join(tmp, "tiny_hf"))


class EvalRunnerTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp, cls.data, cls.hf_dir = workspace()
    cls.config = eval_config(**{"eval.data_dir": cls.data, "mesh.devices": 1,
                                "eval.chunk_size": 4, "init.hf_dir": cls.hf_dir})
    cls.out = os.path.join(cls.tmp, "one_device")
    cls.summaries = cli.run(cls.config, cls.out)
    cls.rows = read_rows(cls.out)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def test_results_rows_and_summary(self):
    self.assertLen(self.rows, NUM_ITEMS)
    for r in self.rows.values():
      for key in ("id", "prompt", "reply", "extracted", "gold", "score", "category", "reason"):
        self.assertIn(key, r)
    ok = [r for r in self.rows.values() if not r["reason"]]
    self.assertLen(ok, 8)
    self.assertTrue(all(r["reply"] is not None and r["prompt"].endswith(
        "Please put your final answer within \\boxed{}.") for r in ok))
    with open(os.path.join(self.out, "mmstar", "summary.json")) as f:
      summary = json.load(f)
    self.assertEqual(summary["failures"], {"no_image": 1, "no_options": 1,
                                           "prompt_too_long": 1, "undecodable_image": 1})
    # no_image rows leave the denominator; the other failures score 0 in it.
    self.assertEqual((summary["num_rows"], summary["num_counted"], summary["num_graded"]),
                     (NUM_ITEMS, NUM_ITEMS - 1, 8))
    expected = 100.0 * sum(r["score"] for r in ok) / (NUM_ITEMS - 1)
    self.assertAlmostEqual(summary["score"], expected)
    self.assertEqual(summary["profile"]["name"], "eve")
    self.assertTrue(summary["profile"]["sampling"]["greedy"])
    self.assertGreater(summary["items_per_s"], 0)
    self.assertEqual(set(summary["per_category"]), {"colour", "fill", "multi"})
    with open(os.path.join(self.out, "summary.md")) as f:
      self.assertIn("| MMStar | eve |", f.read())
    with open(os.path.join(self.out, "mmstar", "summary.md")) as f:
      self.assertIn("| colour |", f.read())

  def test_resume_after_an_interruption_writes_the_same_rows(self):
    out = os.path.join(self.tmp, "resumed")
    shutil.copytree(self.out, out)
    path = os.path.join(out, "mmstar", runner.RESULTS_FILE)
    with open(path) as f:
      lines = f.read().splitlines()
    # The skipped row, the first chunk of 4 items, 2 rows and a torn line of the second.
    with open(path, "w") as f:
      f.write("\n".join(lines[:7]) + "\n" + lines[7][:20])
    summaries = cli.run(self.config, out)
    self.assertEqual(read_rows(out), self.rows)
    # Chunk 1 is sampled again whole (4 items), chunk 2 for the first time (3).
    self.assertEqual(summaries[0]["sampled_this_run"], 7)

  def test_a_different_evaluation_in_the_same_workdir_is_refused(self):
    config = copy.deepcopy(self.config)
    config.eval.profile = "evolmm"
    with self.assertRaisesRegex(runner.EvalError, "another evaluation"):
      cli.run(config, self.out)

  def test_eight_devices_give_the_same_greedy_replies(self):
    self.assertGreaterEqual(jax.device_count(), 8)
    config = copy.deepcopy(self.config)
    config.mesh.devices = 8
    out = os.path.join(self.tmp, "eight_devices")
    cli.run(config, out)
    rows = read_rows(out)
    replies = {k: r["reply"] for k, r in self.rows.items()}
    self.assertEqual({k: r["reply"] for k, r in rows.items()}, replies)
    self.assertGreater(len(set(replies.values())), 3)   # the replies differ between prompts

  def test_missing_file_fails_before_the_model_loads(self):
    config = copy.deepcopy(self.config)
    config.eval.benchmarks = ("hallusion",)
    with self.assertRaisesRegex(Exception, r"HallusionBench\.tsv"):
      cli.run(config, os.path.join(self.tmp, "missing"))

  def _run_dir(self, name, state, train, roles=SHARED_ROLES):
    """A run directory laid out as the recipe runner writes one (EVE, shared weights)."""
    run_dir = os.path.join(self.tmp, name)
    with checkpoint_lib.Checkpointer(os.path.join(run_dir, "checkpoints"), save_every=1,
                                     keep=2) as ckpt:
      ckpt.maybe_save(4, state, {}, force=True)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
      json.dump({"recipe": "eve", "seed": 0, "eve": {"share_params": True},
                 "warmstart": {"enabled": False}, "train": train,
                 "model": {"preset": "tiny", "dtype": "float32", "param_dtype": "float32"},
                 "init": {"hf_dir": self.hf_dir, "tokenizer_dir": ""}}, f)
    if roles:
      with open(os.path.join(run_dir, restore.ROLES_FILE), "w") as f:
        json.dump(roles, f)
    config = copy.deepcopy(self.config)
    config.init.workdir = run_dir
    return config

  def test_params_of_one_role_from_a_run_directory(self):
    loaded, _ = cli.load(self.config)
    trained = jax.tree.map(lambda x: x + 1.0, loaded.params)
    cfg = learner_lib.default_train_config()
    cfg.loss.kl_coef = 0.0
    state = {"policy/challenger": {"train": learner_lib.Learner(
        loaded.model_config, cfg, trained).state}}
    config = self._run_dir("run", state, {"loss": {"kl_coef": 0.0}})
    restored, info = cli.load(config)   # the solver shares the challenger's weights
    self.assertEqual((info["role"], info["policy"], info["step"]), ("solver", "challenger", 4))
    for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(trained)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    config.init.role = "proposer"
    with self.assertRaisesRegex(Exception, r"no role 'proposer'.*challenger"):
      cli.load(config)

  def test_a_run_directory_without_its_role_map(self):
    loaded, _ = cli.load(self.config)
    state = {"policy/challenger": {"train": learner_lib.Learner(
        loaded.model_config, {"loss": {"kl_coef": 0.0}}, loaded.params).state}}
    config = self._run_dir("bare_run", state, {"loss": {"kl_coef": 0.0}}, roles=None)
    with self.assertRaisesRegex(restore.RestoreError, r"no roles.json.*\['challenger'\]"):
      cli.load(config)   # solver: which policy holds it cannot be told
    config.init.role = "challenger"
    _, info = cli.load(config)
    self.assertEqual(info["policy"], "challenger")

  def test_lora_adapters_are_merged_onto_the_backbone(self):
    loaded, _ = cli.load(self.config)
    train = {"loss": {"kl_coef": 0.0}, "lora": {"rank": 4, "alpha": 8.0}}
    learner = learner_lib.Learner(loaded.model_config, train, loaded.params)
    adapter = jax.tree.map(lambda x: x + 0.05, learner.params)   # B != 0: the weights move
    state = {"policy/challenger": {"train": learner.state.replace(params=adapter)}}
    restored, info = cli.load(self._run_dir("lora_run", state, train))
    self.assertTrue(info["lora"])
    want = lora.merge(loaded.params, adapter, learner.lora)
    for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(want)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    moved = lambda tree: tree["text"]["layers"]["q"]["kernel"]
    self.assertFalse(np.allclose(moved(restored.params), moved(loaded.params)))

  def test_in_loop_validation_writes_scores(self):
    loaded, _ = cli.load(self.config)
    sampler = cli.make_sampler(self.config, loaded, 8)
    block = validation.config_block(benchmark="mmstar", num_items=5, every=2, data_dir=self.data,
                                    max_new_tokens=8)
    block.min_pixels, block.max_pixels = 56 * 56, 112 * 112
    val = validation.Validation(block, loaded.model_config, loaded.tokenizer, sampler)
    self.assertLen(val.prepared, 5)
    workdir = os.path.join(self.tmp, "train_run")
    with observe.MetricsWriter(workdir, tensorboard=False) as writer:
      self.assertIsNone(val.maybe_evaluate(1, loaded.params, writer))
      metrics = val.maybe_evaluate(2, loaded.params, writer)
    self.assertBetween(metrics["score"], 0.0, 100.0)
    logged = observe.read_jsonl(os.path.join(workdir, observe.METRICS_FILE))
    self.assertEqual([r["step"] for r in logged], [2])
    self.assertEqual(logged[0]["val/mmstar/score"], metrics["score"])


if __name__ == "__main__":
  absltest.main()
