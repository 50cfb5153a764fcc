# expect: invalid_output
import os
# Floods the result pipe: the host stops reading at its cap and kills the job.
chunk = b"\0" * 2 ** 20
while True:
    os.write(3, chunk)

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
