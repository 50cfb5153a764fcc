# expect: forbidden|exception
import multiprocessing
with multiprocessing.Pool(4) as p:
    print(p.map(abs, range(8)))

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
