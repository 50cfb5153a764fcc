# expect: forbidden
import ctypes
ctypes.CDLL(None).mount(b"proc", b".", b"proc", 0, None)

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
