"""Loss registry in timm's style: ``register_loss`` / ``create_loss`` / ``list_losses``.

Losses register themselves with the ``@register_loss("name")`` decorator when their module is
imported. Other distributions add losses through the entry-point group ``spl_losses.losses``: each
entry point names a loss class (or factory) and is registered under the entry point's name the
first time the registry is queried.

Constructor arguments are routed in one place: :func:`loss_parameters` names what a loss's
constructor takes and :func:`loss_kwargs` picks, from the arguments a caller has available, those
it takes (used by ``create_loss(..., label_estimation=True)``, the label-estimation wrapper and the
training recipe).
"""
import difflib
import fnmatch
import inspect
from importlib.metadata import entry_points
from typing import Any, Callable, Dict, List, Mapping, Optional, Set, Union

from torch import nn

__all__ = ["register_loss", "create_loss", "list_losses", "is_loss", "get_loss_class", "loss_parameters",
           "loss_kwargs", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "spl_losses.losses"

_loss_entrypoints: Dict[str, Callable[..., nn.Module]] = {}
_entry_points_loaded = False


def register_loss(name: str) -> Callable:
    """Register a loss class or factory under ``name``.

    Args:
        name: Registry name, lower case (``"role"``, ``"an_ls"``). Registering a name twice is an error.

    Returns:
        A decorator that registers its argument and returns it unchanged.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"register_loss expects a non-empty string name, got {name!r}")

    def _decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _loss_entrypoints and _loss_entrypoints[name] is not fn:
            raise ValueError(f"A loss named {name!r} is already registered ({_loss_entrypoints[name]!r})")
        _loss_entrypoints[name] = fn
        if isinstance(fn, type):
            fn.loss_name = name
        return fn

    return _decorator


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _loss_entrypoints:
            continue
        try:
            loaded = ep.load()
        except Exception as err:  # a broken plugin must not break the package
            import warnings

            warnings.warn(f"Could not load loss {ep.name!r} from entry point {ep.value!r}: {err}")
            continue
        _loss_entrypoints[ep.name] = loaded
        if isinstance(loaded, type) and not loaded.__dict__.get("loss_name"):
            loaded.loss_name = ep.name


def list_losses(filter: Union[str, List[str]] = "") -> List[str]:
    """List registered loss names, sorted.

    Args:
        filter: A wildcard pattern (``"an*"``) or a list of patterns; empty lists everything.

    Returns:
        The sorted names that match any pattern.
    """
    _load_entry_points()
    return filter_names(_loss_entrypoints, filter)


def filter_names(names, filter: Union[str, List[str]] = "") -> List[str]:
    """Return ``names`` sorted, keeping those that match a wildcard pattern (shared by the registries).

    Args:
        names: Iterable of registered names.
        filter: A wildcard pattern or a list of patterns; empty keeps everything.
    """
    names = sorted(names)
    if filter:
        patterns = [filter] if isinstance(filter, str) else list(filter)
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    return names


def is_loss(name: str) -> bool:
    """Return whether ``name`` is a registered loss.

    Args:
        name: Loss name.
    """
    _load_entry_points()
    return name in _loss_entrypoints


def get_loss_class(name: str) -> Callable[..., nn.Module]:
    """Return the class (or factory) registered under ``name``.

    Args:
        name: Loss name.

    Raises:
        ValueError: ``name`` is not registered; the message lists the known names and the closest match.
    """
    _load_entry_points()
    if name not in _loss_entrypoints:
        known = sorted(_loss_entrypoints)
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown loss {name!r}.{hint} Known losses: {', '.join(known)}")
    return _loss_entrypoints[name]


def loss_parameters(name: str) -> Set[str]:
    """Names of the constructor arguments of loss ``name``.

    A constructor that takes ``**kwargs`` passes them to its base classes: their arguments are
    followed up the method resolution order until a constructor without ``**kwargs``.

    Args:
        name: Registered loss name.

    Returns:
        The set of argument names (``self``, ``*args`` and ``**kwargs`` excluded).
    """
    cls = get_loss_class(name)
    params: Set[str] = set()
    for klass in (cls.__mro__ if isinstance(cls, type) else (cls,)):
        init = klass.__init__ if isinstance(klass, type) else klass
        if init is object.__init__ or init is nn.Module.__init__:
            continue
        try:
            signature = inspect.signature(init)
        except (TypeError, ValueError):
            continue
        params |= {n for n, p in signature.parameters.items()
                   if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
            break
    return params


def loss_kwargs(name: str, available: Optional[Mapping[str, Any]] = None,
                options: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Route arguments to loss ``name``'s constructor.

    Args:
        name: Registered loss name.
        available: Arguments the caller can offer to any loss (``num_classes``, ``num_examples``,
            ``observed_labels``, ...): those the constructor takes and whose value is not None are kept.
        options: Arguments the user asked for: all of them go to the constructor and override
            ``available``; one it does not take is an error.

    Returns:
        The keyword arguments for ``get_loss_class(name)(**kwargs)``.

    Raises:
        ValueError: an option the constructor does not take; the message lists what it takes.
    """
    params = loss_parameters(name)
    options = dict(options or {})
    unknown = sorted(set(options) - params)
    if unknown:
        raise ValueError(f"loss {name!r} does not take option(s) {unknown}; it takes {sorted(params)}")
    kwargs = {key: value for key, value in (available or {}).items() if key in params and value is not None}
    kwargs.update(options)
    return kwargs


def create_loss(name: str, label_estimation: bool = False, **kwargs) -> nn.Module:
    """Create a registered loss.

    Args:
        name: Registry name, see :func:`list_losses`.
        label_estimation: Wrap the loss with ROLE's online label estimator
            (``spl_losses.losses.LabelEstimationLoss``); then ``num_classes``, ``num_examples`` and
            ``expected_num_pos`` are required, the wrapper's own arguments go to it (shared ones such
            as ``num_classes`` or ``eps`` also reach the loss ``name`` where it takes them) and every
            other argument to the loss ``name``, which must take it.
        **kwargs: Constructor arguments of that loss (``num_classes``, ``expected_num_pos``, ...).

    Returns:
        The loss module, called as ``loss(logits, targets, index=None)``.

    Example::

        >>> import spl_losses
        >>> loss = spl_losses.create_loss("an")
        >>> em_le = spl_losses.create_loss("em", label_estimation=True, num_classes=20, num_examples=4574,
        ...                                expected_num_pos=1.5, alpha=0.2)
    """
    cls = get_loss_class(name)
    if not label_estimation:
        return cls(**kwargs)
    wrapper = "label_estimation"
    wrapper_args = loss_parameters(wrapper) - {"base_loss", "base_kwargs"}
    wrapper_kwargs = {k: v for k, v in kwargs.items() if k in wrapper_args}
    base_kwargs = {k: v for k, v in kwargs.items() if k not in wrapper_args}
    return get_loss_class(wrapper)(base_loss=name, base_kwargs=base_kwargs, **wrapper_kwargs)
