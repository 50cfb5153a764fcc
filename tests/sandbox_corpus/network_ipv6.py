# expect: forbidden
import socket
socket.socket(socket.AF_INET6, socket.SOCK_STREAM)

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
