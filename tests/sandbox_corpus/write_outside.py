# expect: exception
import os
results = []
for path in ["/tmp/evejax_sandbox_canary_write", "/work/main/evejax_sandbox_canary",
             "/etc/evejax_sandbox_canary", "/usr/evejax_sandbox_canary",
             "/evejax_sandbox_canary", "../evejax_sandbox_canary"]:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT)
        os.write(fd, b"pwned")
        results.append((path, "WROTE"))
    except OSError as e:
        results.append((path, repr(e)))
raise RuntimeError(repr(results))

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
