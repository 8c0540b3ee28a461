"""Flags shared by the tests that run recipes/train.py on tiny digits_mosaic data."""


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
