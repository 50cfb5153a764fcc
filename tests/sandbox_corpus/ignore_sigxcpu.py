# expect: timeout
import signal
signal.signal(signal.SIGXCPU, signal.SIG_IGN)
x = 0
while True:
    x += 1

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
