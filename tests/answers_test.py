"""Tests for evejax.rl.answers: extraction edge cases and grading."""

import threading

from absl.testing import absltest

from evejax.rl import answers


class ExtractTest(absltest.TestCase):

  def test_boxed_nested_braces(self):
    self.assertEqual(answers.extract_boxed(r"so \boxed{\frac{1}{2}} done"),
                     r"\frac{1}{2}")
    self.assertEqual(answers.extract_boxed(r"\boxed{\text{(B)}}"),
                     r"\text{(B)}")

  def test_last_boxed_wins(self):
    self.assertEqual(answers.extract_boxed(r"\boxed{A} no wait \boxed{C}"),
                     "C")

  def test_truncated_final_box_falls_back(self):
    self.assertEqual(answers.extract_boxed(r"\boxed{A} then \boxed{C"), "A")
    self.assertIsNone(answers.extract_boxed(r"\boxed{C"))

  def test_no_boxed(self):
    self.assertIsNone(answers.extract_boxed("The answer is C."))
    self.assertIsNone(answers.extract_boxed(""))
    self.assertIsNone(answers.extract_boxed(None))

  def test_boxed_with_space_and_fbox(self):
    self.assertEqual(answers.extract_boxed(r"\boxed {42}"), "42")
    self.assertEqual(answers.extract_boxed(r"\fbox{7}"), "7")

  def test_letters(self):
    cases = {"(B)": "B", "B.": "B", r"\text{D}": "D", "C) image_3": "C",
             "Answer: C": "C", "image_2": None, "": None, "b": None}
    for text, want in cases.items():
      self.assertEqual(answers.extract_letter(text), want, text)
    # The EVE reference rule takes the first A-D character anywhere.
    self.assertEqual(
        answers.extract_letter("Answer: C", letter_mode="first_char"), "A")
    self.assertEqual(answers.extract_letter("E", letters="ABCDE"), "E")

  def test_tagged_answer(self):
    self.assertEqual(
        answers.extract_tagged_answer("x <answer> Red </answer> y"), "Red")
    self.assertEqual(answers.extract_tagged_answer(
        "<answer>a</answer> more <answer>b</answer>"), "b")
    self.assertEqual(
        answers.extract_tagged_answer("thinking...\nblue\n\n  \n"), "blue")
    self.assertEqual(answers.extract_tagged_answer(""), "")


class NormaliseTest(absltest.TestCase):

  def test_normalize_text(self):
    self.assertEqual(answers.normalize_text("  The  Red, Car. "), "the red car")
    self.assertEqual(answers.normalize_text('"(b)."'), "b")
    self.assertEqual(answers.normalize_text(r"\text{Blue}"), "blue")
    self.assertEqual(answers.normalize_text("-3.5"), "-3.5")
    self.assertEqual(answers.normalize_text(".5"), ".5")

  def test_parse_number(self):
    cases = {"1,000": 1000.0, "-3.5": -3.5, "50%": 50.0, "1/2": 0.5,
             r"\frac{3}{4}": 0.75, "$12": 12.0, "2e3": 2000.0, " 7. ": 7.0,
             ".5": 0.5}
    for text, want in cases.items():
      self.assertEqual(answers.parse_number(text), want, text)
    for text in ("three", "3 cm", "1/0", "", None, "1/2/3"):
      self.assertIsNone(answers.parse_number(text), text)


class GradeTest(absltest.TestCase):

  def test_letter(self):
    self.assertTrue(answers.grade(r"\boxed{(B)}", "B", "letter"))
    self.assertTrue(answers.grade("B. the second image", "B", "letter"))
    self.assertFalse(answers.grade(r"\boxed{C}", "B", "letter"))
    self.assertFalse(answers.grade("none", "B", "letter"))
    self.assertFalse(answers.grade(None, "B", "letter"))

  def test_number_tolerance(self):
    self.assertTrue(answers.grade("3.000001", "3", "number"))
    self.assertFalse(answers.grade("3.01", "3", "number"))
    self.assertTrue(answers.grade("1,000", "1000", "number"))
    self.assertFalse(answers.grade("three", "3", "number"))

  def test_text(self):
    self.assertTrue(answers.grade("The red car.", "the Red car", "text"))
    self.assertFalse(answers.grade("red", "blue", "text"))
    self.assertFalse(answers.grade("", "", "text"))
    self.assertFalse(answers.grade(".5", "5", "text"))

  def test_math_equivalence(self):
    self.assertTrue(answers.grade("0.5", "1/2", "math"))
    self.assertTrue(answers.grade(r"\boxed{\frac{1}{2}}", "0.5", "math"))
    self.assertTrue(answers.grade(r"\sqrt{2}", r"\frac{2}{\sqrt{2}}", "math"))
    self.assertTrue(answers.grade("x+1", "1+x", "math"))
    self.assertFalse(answers.grade("x+2", "1+x", "math"))
    # Words are never handed to math_verify (it reads them as products).
    self.assertFalse(answers.grade("blue", "lube", "math"))
    self.assertTrue(answers.grade("Blue", "blue", "math"))

  def test_math_guarded(self):
    junk = r"\frac{" * 300
    self.assertFalse(answers.math_equal(junk, "1"))
    self.assertFalse(answers.math_equal("}}{{\\", "1"))
    # Off the main thread math_verify's SIGALRM timeout would raise; the guard
    # must still return a verdict.
    out = []
    t = threading.Thread(target=lambda: out.append(
        answers.grade(r"\frac{1}{4}", "0.25", "math")))
    t.start()
    t.join()
    self.assertEqual(out, [True])

  def test_unknown_kind(self):
    with self.assertRaisesRegex(ValueError, "letter"):
      answers.grade("a", "a", "exact")

  def test_letter_sequence_partial_credit(self):
    self.assertEqual(answers.grade_letter_sequence(r"\boxed{BDAC}", "BDAC"),
                     1.0)
    self.assertEqual(answers.grade_letter_sequence("BDCA", "BDAC"), 0.5)
    self.assertEqual(answers.grade_letter_sequence("BDA", "BDAC"), 0.0)
    self.assertEqual(answers.grade_letter_sequence("AAAB", "AABC"), 0.0)


class ClusterTest(absltest.TestCase):

  def test_invalid_answers(self):
    for a in (None, "", "None", "N/A", " unknown. ", "-"):
      self.assertTrue(answers.is_invalid_answer(a), a)
    for a in ("0", "no", "B"):
      self.assertFalse(answers.is_invalid_answer(a), a)

  def test_cluster_and_majority(self):
    votes = ["0.5", "1/2", "Red", "none", "red ", "1/2", None]
    labels = answers.cluster_answers(votes)
    self.assertEqual(labels, [0, 0, 1, -1, 1, 0, -1])
    rep, count, valid = answers.majority_answer(votes)
    self.assertEqual((rep, count, valid), ("0.5", 3, 5))
    self.assertEqual(answers.majority_answer(["n/a", None]), (None, 0, 0))

  def test_ties_go_to_first_cluster(self):
    self.assertEqual(answers.majority_answer(["b", "a", "a", "b"])[0], "b")


if __name__ == "__main__":
  absltest.main()
