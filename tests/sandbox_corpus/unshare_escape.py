# expect: forbidden
import ctypes
libc = ctypes.CDLL(None)
libc.unshare(0x10000000)  # CLONE_NEWUSER

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
