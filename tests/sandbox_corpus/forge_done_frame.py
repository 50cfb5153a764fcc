# expect: invalid_output
import json
import os
import struct
head = json.dumps({"t": "done", "n": 0}).encode()
os.write(3, struct.pack(">I", len(head)) + head)
os._exit(0)

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
