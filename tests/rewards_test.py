"""Tests for evejax.rewards: values worked out by hand from METHODS.md."""

import math

from absl.testing import absltest
import numpy as np
from sacrebleu.metrics import BLEU

from evejax.rewards import diversity
from evejax.rewards import eve
from evejax.rewards import evolmm
from evejax.rewards import mmzero
from evejax.rewards import registry

CROP = """from PIL import Image

def edit_image(img, bbox):
    w, h = img.size
    box = [bbox[0] * w // 1000, bbox[1] * h // 1000, bbox[2] * w // 1000, bbox[3] * h // 1000]
    return img.crop(box)

args_list = [{'bbox': [0, 0, 500, 500]}, {'bbox': [500, 0, 1000, 500]},
             {'bbox': [0, 500, 500, 1000]}, {'bbox': [500, 500, 1000, 1000]}]"""

JIGSAW = """from PIL import Image

def edit_image(img: Image.Image, N: int, order: list) -> Image.Image:
    width, height = img.size
    block_w = width // N
    block_h = height // N
    out_img = Image.new("RGB", (N * block_w, N * block_h))
    for new_idx in range(N * N):
        orig_idx = order[new_idx]
        left = (orig_idx % N) * block_w
        upper = (orig_idx // N) * block_h
        block = img.crop((left, upper, left + block_w, upper + block_h))
        out_img.paste(block, ((new_idx % N) * block_w, (new_idx // N) * block_h))
    return out_img

args_list = [{'N': 2, 'order': [3, 0, 1, 2]}, {'N': 2, 'order': [1, 0, 3, 2]},
             {'N': 2, 'order': [0, 3, 2, 1]}, {'N': 2, 'order': [2, 1, 0, 3]}]"""


def _reply(code, think="I will crop four quadrants."):
  return f"<think>{think}</think>\n```python\n{code}\n```"


class DiversityTest(absltest.TestCase):

  def test_bleu_matches_sacrebleu_sentence_score(self):
    ref_metric = BLEU(tokenize="none", smooth_method="floor", smooth_value=0.1)
    hyp = "def edit_image ( img , angle ) : return img . rotate ( angle )"
    ref = "def edit_image ( img , a ) : return img . rotate ( a , expand )"
    want = ref_metric.sentence_score(hyp, [ref]).score / 100
    self.assertAlmostEqual(diversity.sentence_bleu(hyp, ref), want, places=12)

  def test_bleu_by_hand(self):
    # nltk method1 on a 2-token pair: p1 = p2 = 1, p3 = p4 = 0.1 / 1,
    # BLEU = exp((ln 1 + ln 1 + ln 0.1 + ln 0.1) / 4) = 0.1 ** 0.5.
    self.assertAlmostEqual(diversity.sentence_bleu("a b", "a b"), 0.1 ** 0.5)
    # All precisions 1, hypothesis 4 tokens vs reference 6: BP = e^(1 - 6/4).
    self.assertAlmostEqual(diversity.sentence_bleu("a b c d", "a b c d e f"),
                           math.exp(1 - 6 / 4))
    self.assertEqual(diversity.sentence_bleu("", "a b c d"), 0.0)
    self.assertEqual(diversity.sentence_bleu("x y z w", "a b c d"), 0.0)

  def test_distance_matrix_symmetric(self):
    d = diversity.bleu_distance_matrix([CROP, JIGSAW, CROP[:300]])
    np.testing.assert_allclose(d, d.T)
    np.testing.assert_array_equal(np.diag(d), 0.0)
    self.assertTrue(((d >= 0) & (d <= 1)).all())

  def test_identical_texts_cluster_unrelated_do_not(self):
    texts = [CROP, JIGSAW, CROP, "completely different words here now", CROP]
    shares = diversity.bleu_cluster_shares(texts)
    np.testing.assert_allclose(shares, [3 / 5, 1 / 5, 3 / 5, 1 / 5, 3 / 5])

  def test_threshold_is_strict_and_linkage_is_average(self):
    self.assertLen(set(diversity.cluster_labels(
        np.array([[0.0, 0.5], [0.5, 0.0]]), 0.5)), 2)
    self.assertLen(set(diversity.cluster_labels(
        np.array([[0.0, 0.49], [0.49, 0.0]]), 0.5)), 1)
    # a-b merge at 0.2; c joins {a, b} at average (0.4 + 0.7) / 2 = 0.55 > 0.5
    # (single linkage would merge at 0.4).
    d = np.array([[0.0, 0.2, 0.4], [0.2, 0.0, 0.7], [0.4, 0.7, 0.0]])
    labels = diversity.cluster_labels(d, 0.5)
    self.assertEqual(labels[0], labels[1])
    self.assertNotEqual(labels[0], labels[2])

  def test_minmax(self):
    np.testing.assert_allclose(diversity.minmax_normalize([0.2, 0.6, 0.4]),
                               [0.0, 1.0, 0.5])
    np.testing.assert_allclose(diversity.minmax_normalize([0.5, 0.5]),
                               [0.5, 0.5])

  def test_near_duplicate(self):
    func = eve.split_program(CROP)[0]
    renamed = func.replace("box", "region")
    self.assertTrue(diversity.bleu_near_duplicate(renamed, [func]))
    self.assertFalse(diversity.bleu_near_duplicate(
        eve.split_program(JIGSAW)[0], [func]))
    self.assertFalse(diversity.bleu_near_duplicate(func, []))


class EveTest(absltest.TestCase):

  def test_parse_challenger_output(self):
    think, code, reason = eve.parse_challenger_output(_reply(CROP))
    self.assertEqual(reason, "ok")
    self.assertEqual(think, "I will crop four quadrants.")
    self.assertEqual(code, CROP)
    _, code, reason = eve.parse_challenger_output(
        "<think>a</think><think>b</think>```python\nx=1\n```")
    self.assertEqual((code, reason), ("x=1", "think_blocks=2"))
    self.assertEqual(eve.parse_challenger_output(
        "<think>```python\nx=1\n```</think> done")[2], "no_code_block")
    self.assertEqual(eve.parse_challenger_output(
        "<thinking>t</thinking>```python\n```", think_tag="thinking")[2], "empty_code_block")
    # Only the tag the family's prompt asks for counts.
    thinking = "<thinking>t</thinking>```python\nx=1\n```"
    self.assertEqual(eve.format_score(thinking, think_tag="thinking"), (1.0, "ok"))
    self.assertEqual(eve.format_score(thinking), (0.0, "think_blocks=0"))
    self.assertEqual(eve.format_score(_reply(CROP), think_tag="thinking"),
                     (0.0, "think_blocks=0"))

  def test_split_program_and_comment_markers(self):
    func, args = eve.split_program(CROP)
    self.assertTrue(func.endswith("return img.crop(box)"))
    self.assertTrue(args.startswith("args_list = ["))
    commented = CROP.replace("    w, h", '    """doc"""\n    # size\n    w, h')
    self.assertEqual(eve.count_comment_markers(eve.split_program(commented)[0]),
                     3)
    self.assertEqual(eve.format_score(_reply(commented)),
                     (0.0, "comment_markers=3>2"))
    self.assertEqual(eve.format_score(_reply(commented),
                                      max_comment_markers=3), (1.0, "ok"))
    self.assertEqual(eve.format_score(_reply(CROP)), (1.0, "ok"))

  def test_difficulty(self):
    # d0 = 1 - 2|0.5 - 0.5| = 1; d1 = 1 - 2|0.25 - 0.5| = 0.5; d = 0.75.
    self.assertAlmostEqual(eve.difficulty([0.5, 0.25]), 0.75)
    # Reference quirk: some p in [0.25, 1) -> d = d1 = 0.5.
    self.assertAlmostEqual(eve.difficulty([0.5, 0.25], reference_quirk=True),
                           0.5)
    self.assertAlmostEqual(eve.difficulty([1.0, 0.0], reference_quirk=True),
                           0.0)
    self.assertEqual(eve.difficulty([]), 0.0)

  def test_challenger_reward_by_hand(self):
    r = eve.challenger_reward(1.0, True, 0.75, 0.0)
    self.assertAlmostEqual(r.value, 0.2 * 1 + 0.4 * 1 + 0.4 * 0.75 - 0.3 * 0.0)
    r = eve.challenger_reward(0.0, True, 0.5, 1.0)
    self.assertAlmostEqual(r.value, 0.2 * 0 + 0.4 * 1 + 0.4 * 0.5 - 0.3 * 1.0)

  def test_challenger_rewards_batch(self):
    texts = [_reply(CROP), _reply(JIGSAW), _reply(CROP), _reply(CROP)]
    valid = [True, True, True, False]
    rates = [[0.5, 0.5], [1.0, 0.0], [0.5, 0.25], None]
    rewards = eve.challenger_rewards(texts, valid, rates)
    # Shares: the two valid CROPs 2/4, JIGSAW 1/4, the invalid one (an empty
    # text) 1/4 -> min-max: CROPs 1, JIGSAW 0; invalid forced to 0.
    c = [r.parts["diversity_penalty"] for r in rewards]
    np.testing.assert_allclose(c, [1.0, 0.0, 1.0, 0.0])
    want = [0.2 * 1 + 0.4 * 1 + 0.4 * 1.0 - 0.3 * 1.0,
            0.2 * 1 + 0.4 * 1 + 0.4 * 0.0 - 0.3 * 0.0,
            0.2 * 1 + 0.4 * 1 + 0.4 * 0.75 - 0.3 * 1.0,
            0.2 * 1 + 0.4 * 0 + 0.4 * 0.0 - 0.3 * 0.0]
    np.testing.assert_allclose([r.value for r in rewards], want)
    self.assertEqual(rewards[3].reason, "invalid_program")
    with self.assertRaisesRegex(ValueError, "equal length"):
      eve.challenger_rewards(texts, valid, rates[:2])

  def test_solver_reward(self):
    self.assertAlmostEqual(
        eve.solver_reward("Image 2 is rotated, so \\boxed{B}", "B").value,
        0.2 * 1 + 0.8 * 1)
    self.assertAlmostEqual(eve.solver_reward("\\boxed{B}", "B").value,
                           0.2 * 0.5 + 0.8 * 1)
    self.assertAlmostEqual(eve.solver_reward("so \\boxed{(C)}", "B").value,
                           0.2 * 1 + 0.8 * 0)
    r = eve.solver_reward("It is B.", "B")
    self.assertEqual((r.value, r.reason), (0.0, "no_boxed_answer"))
    self.assertAlmostEqual(
        eve.solver_reward("so \\boxed{BDCA}", "BDAC",
                          kind="letter_sequence").value,
        0.2 * 1 + 0.8 * 0.5)
    self.assertAlmostEqual(
        eve.solver_reward("so \\boxed{0.5}", "1/2", kind="math").value, 1.0)


class EvoLmmTest(absltest.TestCase):

  def test_entropy_band_pass_table(self):
    # reference/METHODS.md, N = 5: pattern -> (H, r).
    table = {(5,): (0.00, 0.04), (4, 1): (0.50, 0.52), (3, 2): (0.67, 0.81),
             (3, 1, 1): (0.95, 0.99), (2, 2, 1): (1.06, 0.91),
             (2, 1, 1, 1): (1.33, 0.47), (1, 1, 1, 1, 1): (1.61, 0.13)}
    for pattern, (h_want, r_want) in table.items():
      replies = [f"<answer>{chr(97 + k)}</answer>"
                 for k, count in enumerate(pattern) for _ in range(count)]
      r = evolmm.proposer_reward(replies)
      # Two-decimal table; its 1.06 for 2-2-1 is H = 1.0549, hence 0.006.
      self.assertAlmostEqual(r.parts["entropy"], h_want, delta=0.006,
                             msg=pattern)
      self.assertAlmostEqual(r.value, r_want, delta=0.005, msg=pattern)

  def test_solver_rewards_by_hand(self):
    long_reply = " ".join(["w"] * 12) + " <answer>Red.</answer>"
    mid_reply = " ".join(["w"] * 9) + " <answer>red</answer>"
    replies = ["<answer>red</answer>", long_reply, mid_reply,
               "it is <answer>blue</answer>", "<answer>green</answer>"]
    got = [r.value for r in evolmm.solver_rewards(replies)]
    want = [(3 / 5) ** 0.7,
            (3 / 5) ** 0.7 * (1 - 0.1 * 1.0),  # (12 - 6) / 6 = 1
            (3 / 5) ** 0.7 * (1 - 0.1 * 0.5),  # (9 - 6) / 6 = 0.5
            (1 / 5) ** 0.7,  # 2 words <= tau: no length penalty
            (1 / 5) ** 0.7]
    np.testing.assert_allclose(got, want)

  def test_answers_without_tags_and_empty(self):
    self.assertEqual(evolmm.extract_answer("I think\nThe  Cat, sat."),
                     "the cat sat")
    self.assertEqual(evolmm.words_before_answer("one two\nthree\nfinal"), 3)
    rewards = evolmm.solver_rewards(["<answer></answer>", "<answer></answer>"])
    self.assertEqual([r.value for r in rewards], [0.0, 0.0])
    self.assertEqual(rewards[0].reason, "no_answer")

  def test_closed_answer_tag(self):
    self.assertTrue(evolmm.has_answer_tag("so\n<answer>red</answer>"))
    self.assertTrue(evolmm.has_answer_tag("<answer></answer>"))
    for reply in ("<answer>", "<answer>red", "red</answer>", "red", ""):
      self.assertFalse(evolmm.has_answer_tag(reply), reply)

  def test_parse_question(self):
    self.assertEqual(evolmm.parse_question(
        "why: <question> How many cats? </question>"), ("How many cats?", "ok"))
    self.assertEqual(evolmm.parse_question("How many cats?"),
                     (None, "no_question_tag"))


PROPOSAL = """<content_type>data_chart</content_type>
< caption >A bar chart of rainfall in four cities during {month}.</caption>
<easy_question>Which city has the tallest bar?</easy_question>
<easy_answer>Oslo</easy_answer>
<hard_question>By how many mm does Oslo exceed Rome?</hard_question>
<hard_answer>{answer}</hard_answer>"""

OTHER = """<content_type>geometry</content_type>
<caption>Triangle ABC inscribed in a circle with one angle marked.</caption>
<easy_question>What shape encloses the triangle here?</easy_question>
<easy_answer>circle</easy_answer>
<hard_question>What is the measure of the unmarked angle?</hard_question>
<hard_answer>40</hard_answer>"""


class MmZeroTest(absltest.TestCase):

  def test_parse(self):
    p, reason = mmzero.parse_proposer_output(
        PROPOSAL.format(month="May", answer="12"))
    self.assertEqual(reason, "ok")
    self.assertEqual(p.caption, "A bar chart of rainfall in four cities "
                     "during May.")
    self.assertEqual((p.content_type, p.hard_answer), ("data_chart", "12"))
    p, _ = mmzero.parse_proposer_output(
        PROPOSAL.replace("data_chart", "poster").format(month="May", answer=1))
    self.assertEqual(p.content_type, "data_chart")  # from "bar chart"
    p, reason = mmzero.parse_proposer_output("<caption>x</caption>")
    self.assertIsNone(p)
    self.assertIn("easy_question", reason)
    good = PROPOSAL.format(month="May", answer="12")
    twice = good + "\n<hard_answer>13</hard_answer>"
    self.assertEqual(mmzero.parse_proposer_output(twice), (None, "duplicate_tags=hard_answer"))
    long = PROPOSAL.format(month="May", answer="twelve millimetres of rain in total")
    self.assertEqual(mmzero.parse_proposer_output(long), (None, "long_answer=hard_answer"))
    self.assertEqual(mmzero.proposer_rewards([twice], [[]])[0].value, -1.0)

  def test_consistency_and_verification(self):
    votes = ["4", "4.0", "four", "none", "N/A"]
    c, rep, n_valid = mmzero.consistency(votes)
    self.assertEqual((c, rep, n_valid), (2 / 3, "4", 3))
    self.assertAlmostEqual(mmzero.visual_verification(votes, "4"), 2 / 5)
    self.assertEqual(mmzero.consistency(["none", None]), (0.0, None, 0))

  def test_proposal_score_by_hand(self):
    ro = mmzero.RenderOutcome
    value, parts = mmzero.proposal_score(
        [ro(True, 1.0, 0.5), ro(True, 0.25, 0.75), ro(False), ro(False)])
    # (min(1, .5) + min(.5, .5) + min(.25, .5) + min(.75, .25)) / 4
    self.assertAlmostEqual(value, (0.5 + 0.5 + 0.25 + 0.25) / 4)
    self.assertFalse(parts["too_easy"])
    value, parts = mmzero.proposal_score(
        [ro(True, 1.0, 1.0), ro(False), ro(False), ro(False)])
    self.assertAlmostEqual(value, (0.5 + 0.0) / 4 - 0.3)  # too easy
    self.assertTrue(parts["too_easy"])
    self.assertEqual(mmzero.proposal_score([ro(False)] * 4)[0], 0.0)

  def test_diversity_terms_by_hand(self):
    base, _ = mmzero.parse_proposer_output(
        PROPOSAL.format(month="May", answer="12"))
    others = [
        mmzero.Proposal("map", f"caption number {k} about {w} {w} {w} today",
                        f"question {w} {k} alpha beta", "x",
                        f"hard {w} {k} gamma delta", "y")
        for k, w in enumerate(("zebra", "quartz", "violin"))]
    # Two proposals share only the caption: share 2/5 vs uniform 1/5.
    twin = mmzero.Proposal("map", base.caption, "Totally unrelated easy one?",
                           "a", "Another unrelated hard question here?", "b")
    terms = mmzero.diversity_terms([base, twin] + others)
    want = 0.45 * (2 / 5 - 1 / 5) * 5 * 0.5
    np.testing.assert_allclose(terms, [want, want, 0.0, 0.0, 0.0], atol=1e-12)
    self.assertEqual(mmzero.diversity_terms([base]).tolist(), [0.0])

  def test_content_type_penalty_by_hand(self):
    pen = mmzero.content_type_penalties(["data_chart"] * 3 + ["map"])
    # share 0.75: 0.15 * (0.75 - 0.5) / 0.5; share 0.25: 0.
    np.testing.assert_allclose(pen, [0.075, 0.075, 0.075, 0.0])
    np.testing.assert_array_equal(
        mmzero.content_type_penalties(["map"] * 3), 0.0)

  def test_proposer_rewards_batch(self):
    ro = mmzero.RenderOutcome
    replies = [PROPOSAL.format(month="May", answer="12"), "garbage", OTHER]
    outcomes = [[ro(True, 0.8, 0.6), ro(False)], [], [ro(False), ro(False)]]
    rewards = mmzero.proposer_rewards(replies, outcomes)
    # Two parsed proposals, unique texts and one type each: batch terms 0.
    self.assertAlmostEqual(rewards[0].value, (min(0.8, 0.5) + 0.4) / 2)
    self.assertEqual((rewards[1].value, rewards[1].reason[:12]),
                     (-1.0, "missing_tags"))
    self.assertEqual(rewards[2].value, 0.0)

  def test_coder_reward(self):
    svg = "```svg\n<svg width='10' height='10'></svg>\n```"
    self.assertAlmostEqual(
        mmzero.coder_reward(svg, True, 0.5, 0.8).value, 1 + 0.5 + 0.2)
    self.assertAlmostEqual(mmzero.coder_reward(svg, False).value, -0.1)
    self.assertAlmostEqual(mmzero.coder_reward("sorry", False).value, -0.5)
    r = mmzero.coder_reward("sorry", False, floor=-1.0)
    self.assertAlmostEqual(r.value, -(0.1 + 0.05 + 0.5))
    self.assertEqual(r.reason, "empty_code")
    r = mmzero.coder_reward("```svg\nhello\n```", False, floor=-1.0)
    self.assertAlmostEqual(r.value, -(0.1 + 0.5))
    self.assertEqual(r.reason, "not_svg")

  def test_extract_svg(self):
    self.assertEqual(mmzero.extract_svg("```xml\n<svg>a</svg>\n```"),
                     "<svg>a</svg>")
    self.assertEqual(mmzero.extract_svg("here: <SVG x='1'>b</SVG> ok"),
                     "<SVG x='1'>b</SVG>")
    self.assertEqual(mmzero.extract_svg("```xml\n<p/>\n```"), "")

  def test_solver_reward(self):
    good = "<think>count the bars</think> \\boxed{4}"
    self.assertAlmostEqual(mmzero.solver_reward(good, "4.0").value,
                           0.9 * 1 + 0.1 * 1)
    self.assertAlmostEqual(mmzero.solver_reward("\\boxed{4}", "4").value, 0.9)
    self.assertAlmostEqual(mmzero.solver_reward(good, "5").value, 0.1)
    self.assertAlmostEqual(
        mmzero.solver_reward(good + " and more text", "4").value, 0.9)
    self.assertEqual(mmzero.solver_reward(good, None).reason,
                     "no_silver_label")


class RegistryTest(absltest.TestCase):

  def test_resolve(self):
    self.assertIs(registry.resolve("eve.solver"), eve.solver_reward)
    self.assertIs(registry.resolve("evejax.rewards.mmzero:coder_reward"),
                  mmzero.coder_reward)
    self.assertIs(registry.resolve("evejax.rewards.evolmm.proposer_reward"),
                  evolmm.proposer_reward)
    for name in registry.REWARDS:
      self.assertTrue(callable(registry.resolve(name)), name)

  def test_errors_name_the_reward(self):
    with self.assertRaisesRegex(ValueError, "no_such_pkg.mod"):
      registry.resolve("no_such_pkg.mod:fn")
    with self.assertRaisesRegex(ValueError, "has no attribute 'nope'"):
      registry.resolve("evejax.rewards.eve:nope")
    with self.assertRaisesRegex(ValueError, "not a function"):
      registry.resolve("evejax.rewards.registry:REWARDS")
    with self.assertRaisesRegex(ValueError, "eve.solver"):
      registry.resolve("solver")


if __name__ == "__main__":
  absltest.main()
