"""Prints the versions of the packages that decide evejax's numbers and pixels.

  python -m evejax.tools.versions

CI prints this at the start of every run; paste it into a bug report. Compare
with constraints.txt, the versions the suite last passed with.
"""
from importlib import metadata
import platform
import sys

# Distribution names (as pip knows them), in the order a reader checks them.
KEY_PACKAGES = ("jax", "jaxlib", "libtpu", "flax", "optax", "orbax-checkpoint",
                "numpy", "transformers", "torch", "peft", "pillow",
                "matplotlib", "cairosvg", "tokenizers")


def versions() -> dict[str, str]:
  """Each key package's installed version, or "not installed"."""
  found = {}
  for name in KEY_PACKAGES:
    try:
      found[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      found[name] = "not installed"
  return found


def main() -> None:
  print(f"python {platform.python_version()} ({sys.executable}) on "
        f"{platform.system()} {platform.machine()}")
  for name, version in versions().items():
    print(f"  {name:18s} {version}")


if __name__ == "__main__":
  main()
