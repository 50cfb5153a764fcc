# expect: timeout
import os
while True:
    os.write(2, b"e" * 65536)

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
