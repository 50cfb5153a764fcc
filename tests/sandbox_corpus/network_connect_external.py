# expect: forbidden
import socket
socket.create_connection(("1.1.1.1", 80), timeout=1)

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
