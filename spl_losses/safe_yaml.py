"""Reading YAML that a user (or a downloaded checkpoint) wrote: the one place the project parses YAML input.

:func:`load_yaml` is ``yaml.safe_load`` (no Python objects are ever built) with a bound on what aliases
may expand to. PyYAML builds an aliased node once and shares it, so a 1 kB "billion laughs" document
(``a: &a [x, x, ...]``, ``b: &b [*a, *a, ...]``, ...) loads into a small graph, but whatever walks it
as a tree afterwards (``json.dumps``, hashing a builder config, writing ``config.yaml``) expands it until
memory runs out. The document is therefore measured before it is built: the size it would have with
every alias written out (nodes plus scalar characters, counted once per shared node, so the count takes
the time of one pass over the file), and refused above :data:`MAX_EXPANDED_SIZE` when aliases make it
larger than it is. Aliases that refer to themselves (recursive structures) are refused too. Documents
without aliases are never refused for their size.
"""
from typing import IO, Any, Dict, Union

import yaml

__all__ = ["load_yaml", "MAX_EXPANDED_SIZE", "BoundedSafeLoader"]

#: The largest size (nodes + scalar characters) aliases may expand a document to.
MAX_EXPANDED_SIZE = 1_000_000


class _AliasBound(yaml.YAMLError):
    pass


class BoundedSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses documents whose aliases expand beyond :data:`MAX_EXPANDED_SIZE`."""

    max_expanded_size = MAX_EXPANDED_SIZE

    def construct_document(self, node):
        _check_expansion(node, self.max_expanded_size)
        return super().construct_document(node)


def _check_expansion(root: yaml.Node, limit: int) -> None:
    """Refuse ``root`` when, with its aliases written out, it would exceed ``limit`` (or is recursive)."""
    expanded: Dict[int, int] = {}  # id(node) -> expanded size, for nodes done
    unique = 0  # the size of the graph as parsed (every node once)
    # iterative post-order walk (deep nesting must not hit Python's recursion limit)
    stack = [(root, False)]
    open_nodes = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            children = _children(node)
            size = 1 + sum(expanded[id(c)] for c in children) + (len(node.value) if _is_scalar(node) else 0)
            expanded[key] = size
            unique += 1 + (len(node.value) if _is_scalar(node) else 0)
            if size > limit and size > unique:
                raise _AliasBound(f"its aliases (*name) expand it to more than {limit:,} nodes and characters "
                                  "(an alias bomb?); write the values out instead")
            continue
        if key in expanded:
            continue
        if key in open_nodes:
            raise _AliasBound("an alias refers to a node that contains it (a recursive structure); "
                              "recursive YAML is not accepted")
        open_nodes.add(key)
        stack.append((node, True))
        for child in _children(node):
            child_key = id(child)
            if child_key in open_nodes:
                raise _AliasBound("an alias refers to a node that contains it (a recursive structure); "
                                  "recursive YAML is not accepted")
            if child_key not in expanded:
                stack.append((child, False))


def _is_scalar(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode)


def _children(node: yaml.Node):
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return ()


def load_yaml(text: Union[str, bytes, IO], source: str) -> Any:
    """Parse YAML from a user: ``yaml.safe_load`` with aliases bounded (see the module docstring).

    Args:
        text: The YAML text, or an open file.
        source: What the text is, for messages: a file path, or e.g. ``"--dataset-option num_train"``.

    Returns:
        The parsed value (None for an empty document).

    Raises:
        ValueError: naming ``source``: the text is not valid YAML, its aliases expand beyond
            :data:`MAX_EXPANDED_SIZE`, or they are recursive.
    """
    try:
        return yaml.load(text, Loader=BoundedSafeLoader)  # noqa: S506 (a SafeLoader subclass)
    except _AliasBound as err:
        raise ValueError(f"{source}: {err}") from None
    except yaml.YAMLError as err:
        detail = " ".join(str(err).split())
        raise ValueError(f"{source} is not valid YAML: {detail}") from None
