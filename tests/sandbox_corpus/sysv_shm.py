# expect: forbidden
import ctypes
# A SysV shared memory segment would outlive the job.
ctypes.CDLL(None).shmget(0, 2 ** 30, 0o1000 | 0o600)

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
