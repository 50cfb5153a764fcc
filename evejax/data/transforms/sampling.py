"""Helpers for `sample_args`: boxes, points and permutations spread over an image.

Every helper returns plain Python ints/floats/lists (so `repr` gives a clean
literal) and spreads its picks apart, because the 4 results of one program must
differ enough for perceptual hashes to tell them apart, on images as small as
112x112 pixels.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# The four 2x2 quadrants as (column, row); each of 4 regions lands in its own.
QUADRANTS = ((0, 0), (1, 0), (0, 1), (1, 1))


def pick(rng: np.random.Generator, options: Sequence[Any], k: int = 4) -> list[Any]:
  """k distinct options in random order."""
  idx = rng.choice(len(options), size=k, replace=False)
  return [options[int(i)] for i in idx]


def spread_box(rng: np.random.Generator, w: int, h: int, quadrant: tuple[int, int],
               lo: float, hi: float) -> list[int]:
  """A box [x0, y0, x1, y1] whose sides are lo..hi of the image's, centred in `quadrant`.

  The centre is drawn inside the quadrant (away from the image centre line) and
  the box is then shifted to lie fully inside the image.
  """
  bw = max(2, int(round(w * rng.uniform(lo, hi))))
  bh = max(2, int(round(h * rng.uniform(lo, hi))))
  cx = w * (quadrant[0] + rng.uniform(0.3, 0.7)) / 2
  cy = h * (quadrant[1] + rng.uniform(0.3, 0.7)) / 2
  x0 = int(np.clip(round(cx - bw / 2), 0, w - bw))
  y0 = int(np.clip(round(cy - bh / 2), 0, h - bh))
  return [x0, y0, x0 + bw, y0 + bh]


def spread_boxes(rng: np.random.Generator, w: int, h: int, lo: float, hi: float,
                 k: int = 4) -> list[list[int]]:
  """k boxes, one per quadrant, in random order (see `spread_box`)."""
  return [spread_box(rng, w, h, q, lo, hi) for q in pick(rng, QUADRANTS, k)]


def spread_points(rng: np.random.Generator, w: int, h: int, k: int,
                  margin: float = 0.12) -> list[list[int]]:
  """k points, each in its own cell of a coarse grid, `margin` away from the borders."""
  side = int(np.ceil(np.sqrt(k))) + 1
  cells = pick(rng, [(c, r) for r in range(side) for c in range(side)], k)
  span_x, span_y = w * (1 - 2 * margin), h * (1 - 2 * margin)
  return [[int(w * margin + span_x * (c + rng.uniform(0.2, 0.8)) / side),
           int(h * margin + span_y * (r + rng.uniform(0.2, 0.8)) / side)] for c, r in cells]


def permutations(rng: np.random.Generator, n: int, k: int = 4,
                 min_moved: int = 2) -> list[list[int]]:
  """k distinct permutations of range(n); each moves >= min_moved items and any
  two differ in >= min_moved positions."""
  # Greedy picks can paint themselves into a corner (few permutations of 4
  # items move >= 3), so a stuck attempt starts over instead of failing.
  for _ in range(200):
    out: list[list[int]] = []
    for _ in range(200):
      p = [int(i) for i in rng.permutation(n)]
      if sum(a != b for a, b in zip(p, range(n))) < min_moved:
        continue
      if all(sum(a != b for a, b in zip(p, q)) >= min_moved for q in out):
        out.append(p)
        if len(out) == k:
          return out
  raise ValueError(f"Cannot draw {k} permutations of {n} moving >= {min_moved} items.")


def ladder(rng: np.random.Generator, lo: float, hi: float, k: int = 4,
           decimals: int = 2) -> list[float]:
  """k values spread over [lo, hi] (one per equal slice, jittered), in random order."""
  edges = np.linspace(lo, hi, k + 1)
  vals = [round(float(rng.uniform(edges[i] + 0.15 * (edges[i + 1] - edges[i]),
                                   edges[i + 1] - 0.15 * (edges[i + 1] - edges[i]))),
                decimals) for i in range(k)]
  return [vals[int(i)] for i in rng.permutation(k)]
