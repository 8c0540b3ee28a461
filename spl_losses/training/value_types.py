"""The value types of the recipe's flags: each converts a command-line string or a YAML value, or refuses it.

A refusal raises ``argparse.ArgumentTypeError`` saying what was expected and what was given; argparse
turns it into its usage error, and a config file's keys are checked with the same functions.
"""
import argparse
import math
from typing import Any, Callable, Dict, Union

from ..safe_yaml import load_yaml

__all__ = ["boolean", "positive_int", "non_negative_int", "positive_float", "non_negative_float", "finite_float",
           "probability", "worker_count", "mapping", "text"]


def _fail(expected: str, value: Any):
    raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}")


def boolean(value: Any) -> bool:
    """``true/false, yes/no, on/off, 1/0`` (or a YAML bool)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
        return False
    _fail("a boolean (true/false)", value)


def _integer(value: Any) -> int:
    if isinstance(value, bool) or isinstance(value, float):
        _fail("an integer", value)
    try:
        return int(value)
    except (TypeError, ValueError):
        _fail("an integer", value)


def _real(value: Any) -> float:
    if isinstance(value, bool):
        _fail("a number", value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        _fail("a number", value)
    if not math.isfinite(number):
        _fail("a finite number", value)
    return number


def _bounded(convert: Callable[[Any], Any], accept: Callable[[Any], bool], expected: str,
             value_type: type) -> Callable[[Any], Any]:
    """A value type: ``convert``, then refuse what ``accept`` rejects (saying what was ``expected``); its
    ``value_type`` is the Python type of what it returns (the settings' field type)."""
    def check(value: Any) -> Any:
        converted = convert(value)
        return converted if accept(converted) else _fail(expected, value)

    check.__doc__ = f"{expected[0].upper()}{expected[1:]}."
    check.value_type = value_type
    return check


positive_int = _bounded(_integer, lambda n: n > 0, "an integer > 0", int)
non_negative_int = _bounded(_integer, lambda n: n >= 0, "an integer >= 0", int)
positive_float = _bounded(_real, lambda x: x > 0, "a number > 0", float)
non_negative_float = _bounded(_real, lambda x: x >= 0, "a number >= 0", float)
finite_float = _bounded(_real, lambda x: True, "a finite number", float)
probability = _bounded(_real, lambda x: 0.0 <= x <= 1.0, "a number in [0, 1]", float)


def worker_count(value: Any) -> Any:
    """``auto`` or an integer >= 0."""
    if value == "auto":
        return value
    try:
        return non_negative_int(value)
    except argparse.ArgumentTypeError:
        _fail("'auto' or an integer >= 0", value)


worker_count.value_type = Union[str, int]


def mapping(value: Any) -> Dict[str, Any]:
    """A YAML/JSON mapping (``'{num_train: 64}'``) or an already parsed dict (YAML aliases bounded)."""
    if isinstance(value, str):
        try:
            parsed = load_yaml(value, "the value")
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected a mapping such as '{{key: value}}': {err}") from None
    else:
        parsed = value
    if parsed is None:
        return {}
    return dict(parsed) if isinstance(parsed, dict) else _fail("a mapping such as '{key: value}'", value)


mapping.value_type = Dict[str, Any]


def text(value: Any) -> str:
    """A non-empty string."""
    return value if isinstance(value, str) and value else _fail("a non-empty string", value)


text.value_type = str
