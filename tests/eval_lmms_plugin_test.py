"""`python -m lmms_eval --model evejax` on a task written at test time.

Runs only where lmms-eval 0.7.3 is installed (README "Evaluating" says how;
it is not a test extra): the task is a YAML with a local parquet file given by
`--include_path`, the model is registered through a `lmms_eval.models` entry
point (a dist-info written here, as setup.py's would be installed), and the
tiny random checkpoint answers. Its replies must equal evejax's own greedy
replies to the same prompts.
"""
import base64
import glob
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import textwrap

from absl.testing import absltest
import numpy as np
from PIL import Image

try:
  import lmms_eval  # pylint: disable=unused-import
  HAVE_LMMS_EVAL = True
except ImportError:
  HAVE_LMMS_EVAL = False

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLOURS = ("red", "green", "blue", "yellow")
QUESTION = "What colour fills the image?"


def png_b64(colour) -> str:
  buf = io.BytesIO()
  Image.new("RGB", (56, 56), colour).save(buf, format="PNG")
  return base64.b64encode(buf.getvalue()).decode()


def context(colour_index: int) -> str:
  return f"{QUESTION}\nAnswer with one word."


def write_task(task_dir: str, parquet: str) -> None:
  import pandas as pd  # pylint: disable=g-import-not-at-top
  pd.DataFrame({"id": [str(k) for k in range(len(COLOURS))],
                "image": [png_b64(c) for c in COLOURS],
                "answer": list(COLOURS)}).to_parquet(parquet)
  with open(os.path.join(task_dir, "evejax_colours.yaml"), "w") as f:
    f.write(textwrap.dedent(f"""\
        task: evejax_colours
        dataset_path: parquet
        dataset_kwargs:
          data_files:
            test: {parquet}
        test_split: test
        output_type: generate_until
        doc_to_visual: !function utils.doc_to_visual
        doc_to_text: !function utils.doc_to_text
        doc_to_target: answer
        generation_kwargs:
          max_new_tokens: 6
          temperature: 0
          do_sample: false
        metric_list:
          - metric: exact_match
            aggregation: mean
            higher_is_better: true
            ignore_case: true
        metadata:
          - version: 0.0
        """))
  with open(os.path.join(task_dir, "utils.py"), "w") as f:
    f.write(textwrap.dedent(f"""\
        import base64, io
        from PIL import Image

        def doc_to_visual(doc):
          return [Image.open(io.BytesIO(base64.b64decode(doc["image"]))).convert("RGB")]

        def doc_to_text(doc, lmms_eval_specific_kwargs=None):
          return {QUESTION!r} + "\\nAnswer with one word."
        """))


def write_entry_point(site: str) -> None:
  """What installing evejax with setup.py's entry point leaves behind, for lmms-eval to find."""
  dist = os.path.join(site, "evejax_lmms_entry-0.0.dist-info")
  os.makedirs(dist)
  with open(os.path.join(dist, "METADATA"), "w") as f:
    f.write("Metadata-Version: 2.1\nName: evejax-lmms-entry\nVersion: 0.0\n")
  with open(os.path.join(dist, "entry_points.txt"), "w") as f:
    f.write("[lmms_eval.models]\nevejax = evejax.eval.lmms_plugin:manifests\n")


@absltest.skipUnless(HAVE_LMMS_EVAL, "lmms-eval 0.7.3 is not installed (README: Evaluating)")
class LmmsEvalPluginTest(absltest.TestCase):

  def test_lmms_eval_runs_a_local_task_with_the_evejax_model(self):
    import eval_runner_test as runner_test  # pylint: disable=g-import-not-at-top
    tmp = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
    hf_dir = runner_test.write_tiny_hf_checkpoint(os.path.join(tmp, "tiny_hf"))
    task_dir, site, out = (os.path.join(tmp, d) for d in ("tasks", "site", "out"))
    os.makedirs(task_dir)
    write_task(task_dir, os.path.join(tmp, "colours.parquet"))
    write_entry_point(site)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), site]),
               HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=os.path.join(tmp, "hf"),
               JAX_PLATFORMS="cpu", XLA_FLAGS="", OPENAI_API_KEY="unused")
    args = ("hf_dir=" + hf_dir + ",devices=1,dtype=float32,max_new_tokens=8,"
            "length_buckets=128/256,patch_buckets=64/128,min_pixels=3136,max_pixels=12544")
    proc = subprocess.run(
        [sys.executable, "-m", "lmms_eval", "--model", "evejax", "--model_args", args,
         "--tasks", "evejax_colours", "--include_path", task_dir, "--batch_size", "2",
         "--output_path", out, "--log_samples"],
        env=env, cwd=tmp, capture_output=True, text=True, timeout=600)
    # lmms-eval's CLI exits 0 after an evaluation error: its files are the evidence.
    results = glob.glob(os.path.join(out, "**", "*results.json"), recursive=True)
    self.assertLen(results, 1, proc.stderr[-4000:])
    with open(results[0]) as f:
      self.assertIn("evejax_colours", json.load(f)["results"])
    samples = [json.loads(line) for path in glob.glob(os.path.join(out, "**", "*samples*.jsonl"),
                                                      recursive=True)
               for line in open(path)]
    self.assertLen(samples, len(COLOURS))
    unwrap = lambda r: unwrap(r[0]) if isinstance(r, list) else r
    replies = {int(s["doc_id"]): unwrap(s["resps"]) for s in samples}
    self.assertEqual(replies, self.evejax_replies(hf_dir))
    self.assertGreater(len(set(replies.values())), 1)

  def evejax_replies(self, hf_dir):
    """evejax's own greedy replies to the task's prompts (the same model and settings)."""
    from evejax.eval import cli  # pylint: disable=g-import-not-at-top
    from evejax.eval import lmms_plugin  # pylint: disable=g-import-not-at-top
    from evejax.processing import prompts  # pylint: disable=g-import-not-at-top
    from evejax.sampling import SamplingParams  # pylint: disable=g-import-not-at-top
    config = lmms_plugin.model_config(hf_dir=hf_dir, devices=1, dtype="float32",
                                      length_buckets=(128, 256), patch_buckets=(64, 128),
                                      batch_buckets=(2,))
    loaded, _ = cli.load(config)
    sampler = cli.make_sampler(config, loaded, 8)
    examples = [prompts.user_prompt(loaded.model_config, loaded.tokenizer, context(k),
                                    [Image.new("RGB", (56, 56), c)], min_pixels=3136,
                                    max_pixels=12544) for k, c in enumerate(COLOURS)]
    tok = loaded.tokenizer
    out = sampler.generate(loaded.params, examples, SamplingParams(
        max_new_tokens=6, greedy=True, eos_ids=tuple(tok.stop_ids), pad_id=tok.pad_id), 0)
    lengths, tokens = np.asarray(out.lengths), np.asarray(out.tokens)
    return {k: tok.decode(tokens[k, :lengths[k]], skip_special_tokens=True)
            for k in range(len(COLOURS))}


if __name__ == "__main__":
  absltest.main()
