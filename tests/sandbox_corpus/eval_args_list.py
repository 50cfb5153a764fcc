# expect: invalid_program
def edit_image(img, k):
    return img


args_list = [__import__("os").system("touch /tmp/evejax_sandbox_canary_host") or {"k": i} for i in range(4)]
