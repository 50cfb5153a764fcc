# expect: invalid_output
def edit_image(img, k):
    return "not an image %d" % k


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
