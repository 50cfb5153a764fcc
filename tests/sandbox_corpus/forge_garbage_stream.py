# expect: invalid_output
import os
os.write(3, b"\xff" * 4096)
os._exit(0)

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
