# expect: memory
chunks = []
while True:
    chunks.append(bytearray(16 * 2 ** 20))

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
