# expect: forbidden
import os
os.system("id > /tmp/evejax_sandbox_canary_system")

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
