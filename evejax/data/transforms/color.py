"""Colour and texture families that act on one box of the image."""
from __future__ import annotations

from evejax.data.transforms import sampling
from evejax.data.transforms.family import Family


def _region_args(lo, hi, extra):
  """Boxes one per quadrant, each with `extra(rng, i)` merged in."""
  def sample(rng, w, h):
    boxes = sampling.spread_boxes(rng, w, h, lo, hi)
    return [{"bbox_2d": b, **extra(rng, i)} for i, b in enumerate(boxes)]
  return sample


PIXELATE_REGION = Family(
    name="pixelate_region",
    source='''
def edit_image(img: Image.Image, bbox_2d: list, blocks: int) -> Image.Image:
    region = img.crop(bbox_2d)
    small = region.resize((blocks, blocks), Image.Resampling.BILINEAR)
    img.paste(small.resize(region.size, Image.Resampling.NEAREST), (bbox_2d[0], bbox_2d[1]))
    return img
''',
    sample_args=_region_args(0.45, 0.6, lambda rng, i: {"blocks": int(rng.integers(2, 6))}),
    description="turns the box bbox_2d into a mosaic of blocks x blocks flat squares.",
)


def _channel_args(rng, w, h):
  orders = sampling.pick(rng, ["GBR", "BRG", "BGR", "GRB", "RBG"])
  return _region_args(0.42, 0.6, lambda _, i: {"order": orders[i]})(rng, w, h)


CHANNEL_PERMUTE_REGION = Family(
    name="channel_permute_region",
    source='''
def edit_image(img: Image.Image, bbox_2d: list, order: str) -> Image.Image:
    region = img.crop(bbox_2d).convert("RGB")
    channels = dict(zip("RGB", region.split()))
    swapped = Image.merge("RGB", [channels[c] for c in order])
    img.paste(swapped, (bbox_2d[0], bbox_2d[1]))
    return img
''',
    sample_args=_channel_args,
    description="reorders the colour channels inside bbox_2d; order 'BRG' makes the new red "
                "the old blue, and so on.",
)


INVERT_REGION = Family(
    name="invert_region",
    source='''
def edit_image(img: Image.Image, bbox_2d: list) -> Image.Image:
    region = ImageOps.invert(img.crop(bbox_2d).convert("RGB"))
    img.paste(region, (bbox_2d[0], bbox_2d[1]))
    return img
''',
    sample_args=_region_args(0.3, 0.5, lambda rng, i: {}),
    description="turns the box bbox_2d into its colour negative.",
)


FAMILIES = (PIXELATE_REGION, CHANNEL_PERMUTE_REGION, INVERT_REGION)
