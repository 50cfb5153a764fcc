# expect: forbidden
import ctypes
ctypes.CDLL(None).syscall(425, 8, ctypes.create_string_buffer(120))

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
