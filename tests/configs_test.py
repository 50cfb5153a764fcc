"""Every preset of every configs/*.py loads and builds its recipe's roles, and
every `--config.` override the README shows applies; nothing is compiled."""
import os
import re

from absl.testing import absltest
from absl.testing import parameterized

from evejax import config_utils
from evejax import recipes
from evejax.recipes import runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(f for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py"))
_OVERRIDE = re.compile(r"""--config\.([\w.]+)=('[^']*'|"[^"]*"|[^\s`]+)""")


def _presets(filename: str) -> list[str]:
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, "configs", filename))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return sorted(module.PRESETS)


def _recipe_class(config):
  """The Recipe subclass of a training config (None for other configs, e.g. eval)."""
  if "recipe" not in config:
    return None
  return recipes.resolve(config.recipe)


def readme_overrides() -> list[tuple[str, str]]:
  text = open(os.path.join(ROOT, "README.md")).read()
  return [(k, v.strip("'\"")) for k, v in _OVERRIDE.findall(text)]


class ConfigsTest(parameterized.TestCase):

  @parameterized.parameters(*[(f, p) for f in CONFIG_FILES for p in _presets(f)])
  def test_preset_builds_its_roles(self, filename, preset):
    config = config_utils.load_config(f"configs/{filename}:{preset}")
    self.assertEqual(config.preset_name, preset)
    recipe = _recipe_class(config)
    if recipe is None:
      return
    policies = runner.abstract_policies(recipe, config)
    self.assertNotEmpty(policies)
    for learner in policies.values():
      self.assertTrue(learner.abstract)

  def test_readme_overrides_apply(self):
    """Every README override is a key of some config, and builds the roles of the
    first training config that has it (configs/eve.py: the README's examples are
    EVE's); a user's module paths and model directories are examples: keys only."""
    overrides = readme_overrides()
    self.assertNotEmpty(overrides)
    defaults = [f"configs/{f}" for f in CONFIG_FILES]
    for key, value in overrides:
      with self.subTest(key):
        owners = []
        for spec in defaults:
          try:
            owners.append(config_utils.load_config(spec, [f"{key}={value}"]))
          except config_utils.ConfigError:
            continue
        self.assertNotEmpty(owners, f"--config.{key} is a key of no config in configs/")
        example = "mypkg" in value or key.startswith("init.") or key in ("recipe", "data.path")
        if example:
          continue
        training = [c for c in owners if _recipe_class(c) is not None]
        if training:   # the README's examples are EVE's first
          runner.abstract_policies(_recipe_class(training[0]), training[0])

  def test_booleans_as_shells_spell_them(self):
    for text, value in (("false", False), ("True", True), ("FALSE", False)):
      config = config_utils.load_config("configs/eve.py:tiny", [f"train.completion_window={text}"])
      self.assertIs(config.train.completion_window, value)
    config = config_utils.load_config("configs/eve.py:tiny", ["init.hf_dir=true",
                                                              "data.path=1e-4"])
    self.assertEqual((config.init.hf_dir, config.data.path), ("true", "1e-4"))  # as typed

  def test_bad_keys_and_presets_name_the_valid_ones(self):
    with self.assertRaisesRegex(config_utils.ConfigError, r"config\.eve\.iteration\b.*iterations"):
      config_utils.load_config("configs/eve.py:tiny", ["eve.iteration=3"])
    with self.assertRaisesRegex(config_utils.ConfigError, "valid presets: .*tiny"):
      config_utils.load_config("configs/eve.py:huge")
    with self.assertRaisesRegex(ValueError, "matches no parameter"):
      config = config_utils.load_config("configs/eve.py:tiny", ['train.freeze=("^visual/",)'])
      runner.abstract_policies(_recipe_class(config), config)
    spec, overrides, rest = config_utils.split_overrides(
        ["prog", "--config", "configs/eve.py:tiny", "--config.eve.iterations", "2",
         "--config.seed=3", "--workdir=w"])
    self.assertEqual((spec, overrides, rest),
                     ("configs/eve.py:tiny", ["eve.iterations=2", "seed=3"], ["prog", "--workdir=w"]))
    config = config_utils.load_config(spec, overrides)
    self.assertEqual((config.eve.iterations, config.seed), (2, 3))


if __name__ == "__main__":
  absltest.main()
