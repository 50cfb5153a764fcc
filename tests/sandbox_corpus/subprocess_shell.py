# expect: forbidden
import subprocess
subprocess.run(["sh", "-c", "echo pwned > /tmp/evejax_sandbox_canary_shell"])

def edit_image(img, k):
    return img.rotate(30 * k)


args_list = [{"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}]
