# expect: syntax_error
def edit_image(img, k):
    return img +

args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
