# expect: exception
import os
i = 0
while True:
    fd = os.open(f"fill{i}.bin", os.O_WRONLY | os.O_CREAT)
    for _ in range(64):
        os.write(fd, b"\0" * 2 ** 20)
    i += 1

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
