# expect: exception
import os
# Each file stays under the file-size limit; the private /tmp fills up.
i = 0
while True:
    fd = os.open(f"part{i}.bin", os.O_WRONLY | os.O_CREAT)
    os.write(fd, b"\1" * (8 * 2 ** 20))
    os.close(fd)
    i += 1

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
