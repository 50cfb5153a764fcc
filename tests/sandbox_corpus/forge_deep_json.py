# expect: invalid_output
import os
import struct
# A result header nested deeper than any JSON parser recursion limit.
head = b"[" * 60000 + b"]" * 60000
os.write(3, struct.pack(">I", len(head)) + head)
os._exit(0)

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
