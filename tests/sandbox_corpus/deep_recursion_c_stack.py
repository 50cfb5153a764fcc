# expect: crashed|memory
import sys
sys.setrecursionlimit(10 ** 8)
nested = []
for _ in range(10 ** 5):
    nested = [nested]
import json
json.dumps(nested)  # C-level recursion: overflows the C stack

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
