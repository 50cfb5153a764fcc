# expect: crashed
import os
for fd in range(3, 64):
    try:
        os.close(fd)
    except OSError:
        pass

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
