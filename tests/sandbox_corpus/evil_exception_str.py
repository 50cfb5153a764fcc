# expect: exception
class Evil(Exception):
    def __str__(self):
        raise RuntimeError("no str for you")


raise Evil()

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
