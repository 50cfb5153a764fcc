# expect: forbidden
import socket
socket.create_connection(("127.0.0.1", __PORT__), timeout=1).sendall(b"pwned")

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
