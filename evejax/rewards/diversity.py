"""Lexical diversity by sentence-BLEU: distances, clusters, cluster shares.

EVE's diversity penalty, EVE's queue near-duplicate check and MM-Zero's
proposal diversity all use sentence-BLEU between whitespace-token strings. The
reference code calls nltk's ``sentence_bleu`` with
``SmoothingFunction().method1`` and 4-gram uniform weights. We reproduce that
number with sacrebleu:

* tokens are ``str.split()`` (what sacrebleu's ``tokenize='none'`` n-gram
  extraction does as well);
* the score is ``BLEU.compute_bleu`` with ``smooth_method='floor'`` and
  ``smooth_value=0.1`` -- "floor" is Chen & Cherry's method 1, which is nltk's
  method1 (a zero match count becomes 0.1 / total);
* no effective order; an n-gram order the hypothesis is too short to have is
  counted with total 1 (nltk's ``max(1, denominator)``), so short texts get
  the same smoothed score as in the reference instead of 0;
* scores are returned in [0, 1] (sacrebleu reports percent).

The pairwise matrix symmetrises BLEU, which is not symmetric, by averaging both
directions (the reference fills its matrix from one direction, i < j, only).
Clusters: agglomerative, average linkage on the precomputed distances
``1 - BLEU``, cut so that merges happen only at linkage distance *below* the
threshold (scikit-learn's ``distance_threshold`` semantics, used by the
references; computed here with scipy).
"""

import collections
from typing import Sequence

import numpy as np
from sacrebleu.metrics import bleu as sacrebleu_bleu
from sacrebleu.metrics import helpers as sacrebleu_helpers
from scipy.cluster import hierarchy
from scipy.spatial import distance as scipy_distance


class _Stats:
  """A text's n-gram counts, length and per-order totals, computed once."""

  def __init__(self, text: str, max_order: int):
    self.grams, self.length = sacrebleu_helpers.extract_all_word_ngrams(
        text, 1, max_order)
    totals = [0] * max_order
    for gram, count in self.grams.items():
      totals[len(gram) - 1] += count
    # nltk divides by max(1, total): an order the text is too short to have
    # is smoothed to 0.1 instead of zeroing the score.
    self.totals = [max(t, 1) for t in totals]


def _score(matches: list[int], hyp: _Stats, ref: _Stats, smooth_value: float,
           max_order: int) -> float:
  out = sacrebleu_bleu.BLEU.compute_bleu(
      list(matches), list(hyp.totals), hyp.length, ref.length,
      smooth_method="floor", smooth_value=smooth_value, effective_order=False,
      max_ngram_order=max_order)
  return out.score / 100.0


def _matches(a: collections.Counter, b: collections.Counter,
             max_order: int) -> list[int]:
  """Clipped n-gram match counts per order (symmetric in a and b)."""
  if len(b) < len(a):
    a, b = b, a
  out = [0] * max_order
  for gram, count in a.items():
    other = b.get(gram)
    if other:
      out[len(gram) - 1] += min(count, other)
  return out


def sentence_bleu(hypothesis: str, reference: str, *,
                  smooth_value: float = 0.1, max_order: int = 4) -> float:
  """Smoothed sentence-BLEU in [0, 1] of a hypothesis against one reference."""
  hyp, ref = _Stats(hypothesis, max_order), _Stats(reference, max_order)
  return _score(_matches(hyp.grams, ref.grams, max_order), hyp, ref,
                smooth_value, max_order)


def pairwise_bleu(texts: Sequence[str], *, smooth_value: float = 0.1,
                  max_order: int = 4) -> np.ndarray:
  """[n, n] matrix with B[i, j] = BLEU(hypothesis=texts[i], reference=texts[j]).

  The diagonal is 1. Each text's n-grams are counted once; match counts are
  computed once per unordered pair.
  """
  stats = [_Stats(t, max_order) for t in texts]
  n = len(texts)
  out = np.eye(n)
  for i in range(n):
    for j in range(i + 1, n):
      m = _matches(stats[i].grams, stats[j].grams, max_order)
      out[i, j] = _score(m, stats[i], stats[j], smooth_value, max_order)
      out[j, i] = _score(m, stats[j], stats[i], smooth_value, max_order)
  return out


def bleu_distance_matrix(texts: Sequence[str], **kwargs) -> np.ndarray:
  """Symmetric distances 1 - (B + B^T) / 2 with a zero diagonal."""
  b = pairwise_bleu(texts, **kwargs)
  d = 1.0 - 0.5 * (b + b.T)
  np.fill_diagonal(d, 0.0)
  return np.clip(d, 0.0, 1.0)


def cluster_labels(distances: np.ndarray, threshold: float = 0.5,
                   linkage: str = "average") -> np.ndarray:
  """Agglomerative cluster labels (0-based) from a square distance matrix.

  Two clusters merge while their linkage distance is strictly below
  ``threshold``.
  """
  n = distances.shape[0]
  if n <= 1:
    return np.zeros((n,), np.int64)
  tree = hierarchy.linkage(
      scipy_distance.squareform(distances, checks=False), method=linkage)
  # fcluster keeps merges at height <= t; the largest float below the
  # threshold turns that into height < threshold.
  cut = np.nextafter(threshold, -np.inf)
  return hierarchy.fcluster(tree, t=cut, criterion="distance") - 1


def cluster_shares(labels: Sequence[int]) -> np.ndarray:
  """For each item, the size of its cluster divided by the number of items."""
  labels = np.asarray(labels)
  if labels.size == 0:
    return np.zeros((0,))
  _, inverse, counts = np.unique(labels, return_inverse=True,
                                 return_counts=True)
  return counts[inverse] / labels.size


def minmax_normalize(values: Sequence[float]) -> np.ndarray:
  """(v - min) / (max - min); values are returned unchanged when max == min.

  Leaving a constant vector as is follows the EVE reference: a batch whose
  programs all share one cluster keeps share 1 (full penalty) rather than 0.
  """
  v = np.asarray(values, np.float64)
  if v.size == 0 or v.max() <= v.min():
    return v.copy()
  return (v - v.min()) / (v.max() - v.min())


def bleu_cluster_shares(texts: Sequence[str], *, threshold: float = 0.5,
                        linkage: str = "average",
                        smooth_value: float = 0.1) -> np.ndarray:
  """Cluster share of each text under BLEU-distance clustering."""
  if not texts:
    return np.zeros((0,))
  d = bleu_distance_matrix(texts, smooth_value=smooth_value)
  return cluster_shares(cluster_labels(d, threshold, linkage))


def bleu_near_duplicate(text: str, others: Sequence[str], *,
                        threshold: float = 0.25,
                        smooth_value: float = 0.1) -> bool:
  """Whether BLEU(hypothesis=text, reference=other) exceeds threshold for any.

  EVE's queue admission test (the candidate is the hypothesis, each queued
  entry the reference); pass function texts without their ``args_list``.
  """
  return any(sentence_bleu(text, o, smooth_value=smooth_value) > threshold
             for o in others)
