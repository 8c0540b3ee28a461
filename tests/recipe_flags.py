"""The recipes as modules, and the flags and tiny datasets shared by the tests that run recipes/train.py."""
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


def save_features_dataset(path, num_classes=3, sizes=(40, 20, 20), noise=0.2, seed=0):
    """A tiny features dataset saved with ``save_to_disk``: 1 or 2 positives per row among ``num_classes``
    classes (``a``, ``b``, ...), the first one observed, features = the multi-hot labels plus Gaussian noise.

    Args:
        path: The folder.
        num_classes: C.
        sizes: Rows of train, validation and test.
        noise: Standard deviation of the noise.
        seed: Seed of the draws (rows, then noise, split after split).

    Returns:
        ``path`` as a string.
    """
    import datasets
    import numpy as np

    rng = np.random.default_rng(seed)
    label_feature = datasets.List(datasets.ClassLabel(names=[chr(ord("a") + c) for c in range(num_classes)]))

    def split(n):
        labels = [sorted(rng.choice(num_classes, size=rng.integers(1, 3), replace=False).tolist()) for _ in range(n)]
        feats = np.asarray([[float(c in row) for c in range(num_classes)] for row in labels])
        feats = feats + rng.normal(0, noise, (n, num_classes))
        return datasets.Dataset.from_dict(
            {"features": feats.astype(np.float32).tolist(), "labels": labels,
             "observed_labels": [r[:1] for r in labels], "index": list(range(n))},
            features=datasets.Features({"features": datasets.List(datasets.Value("float32")), "labels": label_feature,
                                        "observed_labels": label_feature, "index": datasets.Value("int64")}))

    datasets.DatasetDict(dict(zip(("train", "validation", "test"), (split(n) for n in sizes)))).save_to_disk(str(path))
    return str(path)
