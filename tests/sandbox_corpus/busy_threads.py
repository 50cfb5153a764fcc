# expect: timeout
import threading


def spin():
    while True:
        pass


for _ in range(3):
    threading.Thread(target=spin, daemon=True).start()
spin()

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
