# expect: memory|invalid_output
# kind: plot
from PIL import Image


def draw():
    return Image.new("RGB", (40000, 40000))
