# expect: ok
import threading
import time


def forever():
    while True:
        time.sleep(0.01)


threading.Thread(target=forever).start()

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
