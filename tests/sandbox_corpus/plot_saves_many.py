# expect: invalid_output
# kind: plot
from PIL import Image
for i in range(5):
    Image.new("RGB", (64, 64), (i * 40, 0, 0)).save(f"plot{i}.png")
