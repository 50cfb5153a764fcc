# expect: crashed
import os
import signal
os.kill(os.getpid(), signal.SIGKILL)

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
