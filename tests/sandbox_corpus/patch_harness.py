# expect: invalid_output
import gc
import types
gc.unfreeze()  # the worker froze its objects; undo that first
patched = 0
for obj in gc.get_objects():
    if isinstance(obj, types.FunctionType) and obj.__name__ == "_emit_image":
        obj.__code__ = (lambda *a, **k: None).__code__
        patched += 1
print("patched", patched)

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
