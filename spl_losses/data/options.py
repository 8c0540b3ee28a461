"""``KEY=VALUE`` builder options, parsed the same way by the data CLI and the training recipe."""
from typing import Any, Dict, Mapping, Optional, Sequence, Union

from ..safe_yaml import load_yaml

__all__ = ["parse_dataset_options", "check_dataset_options"]


def parse_dataset_options(options: Optional[Union[Sequence[str], Mapping[str, Any]]],
                          flag: str = "--dataset-option") -> Dict[str, Any]:
    """Parse builder options given as ``KEY=VALUE`` strings (values read as YAML) or as a mapping.

    ``num_train=2000`` gives ``{"num_train": 2000}``; ``listing=data/all.csv`` a string; dashes in keys
    become underscores. A YAML config may give the same options as a mapping.

    Args:
        options: The repeated flag's values, a mapping, or None.
        flag: The flag's name, for messages.

    Returns:
        The options as a dict.

    Raises:
        ValueError: an item is not ``KEY=VALUE``, a key is empty, or a value is not YAML (or an alias bomb:
            values are read with :func:`spl_losses.safe_yaml.load_yaml`).
    """
    if options is None:
        return {}
    if isinstance(options, Mapping):
        items = list(options.items())
    elif isinstance(options, str):
        raise ValueError(f"{flag} expects KEY=VALUE items (repeat the flag), got the string {options!r}")
    else:
        items = []
        for item in options:
            if not isinstance(item, str) or "=" not in item:
                raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
            key, value = item.split("=", 1)
            items.append((key, load_yaml(value, f"{flag} {key.strip()}")))
    parsed = {}
    for key, value in items:
        key = str(key).strip().replace("-", "_")
        if not key:
            raise ValueError(f"{flag}: empty option name in {options!r}")
        parsed[key] = value
    return parsed


def check_dataset_options(name: str, options: Mapping[str, Any], flag: str = "--dataset-option",
                          reserved: Optional[Mapping[str, str]] = None) -> None:
    """Check parsed options against the config fields of the registered builder ``name``, before any work.

    Args:
        name: Registered dataset name.
        options: The parsed options.
        flag: The flag's name, for messages.
        reserved: Options that have their own flag (``{"seed": "--seed"}``): giving them here is an error.

    Raises:
        ValueError: an option the builder does not have (the message lists those it has), or a reserved one.
    """
    import dataclasses

    from datasets import BuilderConfig

    from .registry import get_dataset_class

    for key, own_flag in (reserved or {}).items():
        if key in options:
            raise ValueError(f"{flag} {key}=...: give it as {own_flag}")
    config_class = get_dataset_class(name).BUILDER_CONFIG_CLASS
    base = {f.name for f in dataclasses.fields(BuilderConfig)}
    known = sorted(f.name for f in dataclasses.fields(config_class) if f.name not in base)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"{flag}: dataset {name!r} has no option {unknown[0]!r}; its options: {', '.join(known)}")
