# expect: forbidden
import ctypes
libc = ctypes.CDLL(None)
libc.ptrace(16, 1, 0, 0)  # PTRACE_ATTACH to the worker

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
