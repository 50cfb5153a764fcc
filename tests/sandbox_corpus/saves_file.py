# expect: forbidden
def edit_image(img, k):
    img.save(f"/tmp/out{k}.png")
    return img


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
