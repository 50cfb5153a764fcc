"""The built-in library of EVE-contract transformation programs.

A `Family` is the text of an `edit_image(img, **params)` function plus a sampler
of 4 argument dicts; `family.program(args_list)` is a complete EVE program. The
four EVE seeds start the Challenger's example queue; the held-out families are
never shown to the Challenger and measure how the Solver generalises.
Extra libraries are named in config and loaded with `load_library`.
"""
from evejax.data.transforms import color
from evejax.data.transforms import drawing
from evejax.data.transforms import geometry
from evejax.data.transforms.family import check_args_list
from evejax.data.transforms.family import Family
from evejax.data.transforms.family import format_args_list
from evejax.data.transforms.family import imports_for
from evejax.data.transforms.family import load_library

# The method's four seeds, never evicted from the queue; the relative form (0-1000
# coordinates) is what EVE shows Qwen3-VL.
SEED_FAMILIES = ("highlight_box", "crop_box", "rotate", "jigsaw_2x2")
RELATIVE_SEED_FAMILIES = ("highlight_box_relative", "crop_box_relative", "rotate", "jigsaw_2x2")
# Symmetry, resolution and colour edits: none resembles a seed.
HELDOUT_FAMILIES = ("mirror_half", "pixelate_region", "channel_permute_region")


# Relative twins of the absolute-pixel families, by the name they replace.
_RELATIVE = {"crop_box": geometry.CROP_BOX_RELATIVE, "highlight_box": drawing.HIGHLIGHT_BOX_RELATIVE}


def library(coordinates: str = "absolute") -> dict[str, Family]:
  """All built-in families by name (seeds first).

  `coordinates="relative"` swaps the seeds' box families for their 0-1000 forms.
  """
  if coordinates not in ("absolute", "relative"):
    raise ValueError(f"coordinates={coordinates!r}: use 'absolute' or 'relative'.")
  families = geometry.FAMILIES + drawing.FAMILIES + color.FAMILIES
  seeds = SEED_FAMILIES
  if coordinates == "relative":
    families = tuple(_RELATIVE.get(f.name, f) for f in families)
    seeds = RELATIVE_SEED_FAMILIES
  rank = {name: i for i, name in enumerate(seeds)}
  out = {f.name: f for f in sorted(families, key=lambda f: rank.get(f.name, len(rank)))}
  assert len(out) == len(families), "duplicate built-in family name"
  return out


def training_families() -> dict[str, Family]:
  """Built-in families the Challenger may see (all but the held-out ones)."""
  return {k: v for k, v in library().items() if k not in HELDOUT_FAMILIES}


__all__ = [
    "Family", "library", "training_families", "load_library", "SEED_FAMILIES",
    "RELATIVE_SEED_FAMILIES",
    "HELDOUT_FAMILIES", "check_args_list", "format_args_list", "imports_for",
]
