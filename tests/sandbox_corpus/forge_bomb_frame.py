# expect: invalid_output
import json
import os
import struct
head = json.dumps({"t": "image", "i": 0, "h": 100000, "w": 100000, "c": 4, "n": 16}).encode()
os.write(3, struct.pack(">I", len(head)) + head + b"\0" * 16)
os._exit(0)

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
