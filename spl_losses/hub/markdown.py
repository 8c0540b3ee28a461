"""Markdown of cards built from untrusted values (class, dataset, folder and model names).

A value that is not a plain name is written as HTML-escaped text with Markdown punctuation
backslash-escaped (so ``|`` cannot split a table cell, ``*`` or ``[`` cannot format or link, and
``<script>`` is shown, not run), on one line; code blocks get a fence longer than any run of backticks
they hold, so no value can close them.
"""
import html
import re
from typing import Any, List

__all__ = ["text", "code", "fenced", "hub_id"]

_PLAIN = re.compile(r"[\w.\-/:@+=,]+")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_{}\[\]()#+!|~])")


def text(value: Any) -> str:
    """A value as Markdown text: one line, HTML-escaped, Markdown punctuation backslash-escaped.

    Args:
        value: Any value (``str()`` of it is written).
    """
    flat = " ".join(str(value).split())
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", html.escape(flat, quote=False))


def code(value: Any) -> str:
    """A value as inline code when it is a plain name (``resnet50.a1_in1k``), else as :func:`text`.

    Args:
        value: Any value.
    """
    value = str(value)
    return f"`{value}`" if _PLAIN.fullmatch(value) else text(value)


def fenced(lines: List[str], info: str = "") -> List[str]:
    """A fenced code block whose fence is longer than any run of backticks inside it.

    Args:
        lines: The block's lines.
        info: The info string (``"python"``).
    """
    longest = max((len(run) for line in lines for run in re.findall(r"`+", line)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + info, *lines, fence]


def hub_id(value: Any) -> bool:
    """Whether ``value`` reads as a Hub repo id ``ORG/NAME`` (not a local path, not a marker).

    Args:
        value: Any value.
    """
    return isinstance(value, str) and bool(_HUB_ID.fullmatch(value))
