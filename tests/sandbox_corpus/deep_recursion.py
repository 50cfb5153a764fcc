# expect: exception
def edit_image(img, k):
    return edit_image(img, k + 1)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
