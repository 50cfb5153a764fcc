# expect: ok
from PIL import Image
# The harness converts outputs with its own captured functions, so patching
# PIL in the job cannot change what is reported.
Image.Image.tobytes = lambda self, *a, **k: b"\0" * 7
Image.Image.convert = lambda self, *a, **k: Image.new("RGB", (1, 1))

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
