# expect: exception
import glob
found = []
for pattern in ["/tmp/evejax_sandbox_secret*", "/etc/shadow", "/etc/passwd",
                "/root/*", "/root/.*", "/home/*/*", "/work/*/*", "/proc/1/root/tmp/*"]:
    for path in glob.glob(pattern):
        try:
            with open(path, "rb") as f:
                found.append((path, f.read(200)))
        except OSError as e:
            found.append((path, repr(e)))
try:
    found.append(open("/tmp/evejax_sandbox_secret.txt").read())
except OSError as e:
    found.append(repr(e))
print(found)
raise RuntimeError(repr(found))

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
