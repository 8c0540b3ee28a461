"""The recipes as modules, and flags shared by the tests that run recipes/train.py on tiny digits_mosaic data."""
import functools
import importlib.util
import os

RECIPES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "recipes")


@functools.lru_cache(maxsize=None)
def load_recipe(name: str = "train"):
    """``recipes/NAME.py`` as a module, loaded once per test session (every test runs the same module)."""
    spec = importlib.util.spec_from_file_location(f"spl_recipe_{name}", os.path.join(RECIPES_DIR, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dataset_options(**options):
    """``--dataset-option KEY=VALUE`` flags for each option."""
    flags = []
    for key, value in options.items():
        flags += ["--dataset-option", f"{key}={value}"]
    return flags


def digits(cache_dir, num_train=32, num_validation=16, num_test=16, image_size=16):
    """The options of a tiny digits_mosaic dataset built into ``cache_dir``."""
    return ["--dataset", "digits_mosaic", *dataset_options(num_train=num_train, num_validation=num_validation,
                                                           num_test=num_test, image_size=image_size,
                                                           cache_dir=cache_dir)]
