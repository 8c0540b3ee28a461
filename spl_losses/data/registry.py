"""Dataset-builder registry: ``register_dataset`` / ``list_datasets`` / ``get_dataset_info``.

Builders register themselves with ``@register_dataset("name")`` when their module is imported
(``spl_losses.data`` imports them all). ``build_dataset`` lives in :mod:`spl_losses.data.builder`.
"""
import difflib
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Union

from .._registry import filter_names

__all__ = ["register_dataset", "list_datasets", "is_dataset", "get_dataset_class", "get_dataset_info", "DatasetInfo"]

_dataset_builders: Dict[str, type] = {}


def register_dataset(name: str) -> Callable[[type], type]:
    """Register a dataset builder class under ``name``.

    Args:
        name: Registry name, lower case (``"voc2012"``). Registering another class under a taken name
            is an error.

    Returns:
        A decorator that registers the class, sets its ``dataset_key`` attribute and returns it.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"register_dataset expects a non-empty string name, got {name!r}")

    def _decorator(cls: type) -> type:
        previous = _dataset_builders.get(name)
        if previous is not None and previous.__qualname__ != cls.__qualname__:
            raise ValueError(f"A dataset named {name!r} is already registered ({previous!r})")
        _dataset_builders[name] = cls
        cls.dataset_key = name
        return cls

    return _decorator


def list_datasets(filter: Union[str, List[str]] = "") -> List[str]:
    """List registered dataset names, sorted.

    Args:
        filter: A wildcard pattern (``"c*"``) or a list of patterns; empty lists everything.

    Returns:
        The sorted names that match any pattern.
    """
    return filter_names(_dataset_builders, filter)


def is_dataset(name: str) -> bool:
    """Return whether ``name`` is a registered dataset builder.

    Args:
        name: Dataset name.
    """
    return isinstance(name, str) and name in _dataset_builders


def get_dataset_class(name: str) -> type:
    """Return the builder class registered under ``name``.

    Args:
        name: Dataset name.

    Raises:
        ValueError: ``name`` is not registered; the message lists the known names and the closest match.
    """
    if not is_dataset(name):
        known = sorted(_dataset_builders)
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown dataset {name!r}.{hint} Known datasets: {', '.join(known)}")
    return _dataset_builders[name]


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a registered benchmark, read from its builder class.

    Args:
        name: Registry name.
        expected_num_pos: Expected positives per image k (VOC 1.5, COCO 2.9, NUS 1.9, CUB 31.4), or None.
        num_classes: Number of classes when fixed by the benchmark, else None.
        needs_root: Whether building needs a raw data folder.
        license: Licence of the source data.
        citation: BibTeX of the source.
        homepage: Source homepage.
        description: One-paragraph description.
    """

    name: str
    expected_num_pos: Optional[float]
    num_classes: Optional[int]
    needs_root: bool
    license: str
    citation: str
    homepage: str
    description: str


def get_dataset_info(name: str) -> DatasetInfo:
    """Return the static facts of a registered dataset (``expected_num_pos`` for EPR/ROLE's k, licence, ...).

    Args:
        name: Dataset name, see :func:`list_datasets`.
    """
    cls = get_dataset_class(name)
    return DatasetInfo(
        name=name,
        expected_num_pos=getattr(cls, "expected_num_pos", None),
        num_classes=getattr(cls, "num_classes", None),
        needs_root=bool(getattr(cls, "needs_root", True)),
        license=getattr(cls, "source_license", ""),
        citation=getattr(cls, "source_citation", ""),
        homepage=getattr(cls, "source_homepage", ""),
        description=getattr(cls, "source_description", ""),
    )
