# expect: exception
import os
import signal
out = []
for pid in [os.getppid(), 1, -1] + [int(p) for p in os.listdir("/proc") if p.isdigit()]:
    if pid == os.getpid():
        continue
    try:
        os.kill(pid, signal.SIGKILL)
        out.append((pid, "killed"))
    except OSError as e:
        out.append((pid, e.errno))
raise RuntimeError(repr(out))

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
