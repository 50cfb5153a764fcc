# expect: forbidden
import numpy as np


def edit_image(img, k):
    return img.rotate(np.random.uniform(0, 360))


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
