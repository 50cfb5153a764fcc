# expect: exception|memory
import io
import struct
import zlib
from PIL import Image


def chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


w = h = 50000
raw = zlib.compress(b"\0" * (1 + w) * 16, 9)
png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
       + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
Image.open(io.BytesIO(png)).load()

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
