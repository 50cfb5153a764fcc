# expect: memory|invalid_output
from PIL import Image


def edit_image(img, k):
    return Image.new("L", (60000 + k, 60000))


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
