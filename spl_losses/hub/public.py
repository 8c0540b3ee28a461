"""What may leave the machine: a run's settings with credentials masked and local paths reduced to names.

A run folder's ``config.yaml`` records every resolved argument, so that the run can be checked and
resumed on its machine. What a push publishes (the model card's "resolved training arguments",
``training_config.yaml``, ``training_results.json``) goes through :func:`public_training_config`:

- the password of any URL (``postgresql://user:password@host/db`` -> ``postgresql://user:***@host/db``)
  and secret query parameters (``?password=``, ``token=``, ``api_key=``, ...) are masked, wherever the URL
  is (a setting of its own, inside a mapping such as ``teacher_kwargs``, or after a prefix);
- the value of a setting whose *name* says it is a secret (``token``, ``hf_token``, ``password``, ...)
  is masked whole;
- an absolute local path (``/home/alice/data``, ``~/runs/x``, ``C:\\data``), alone or after a prefix
  such as ``model:`` or ``journal:``, becomes ``<local>/`` and its last component (``<local>/data``):
  enough to recognise the folder, nothing of the user's or machine's layout. Paths inside URLs without
  a host (``sqlite:////abs/search.db``, ``file:///abs/x``) are reduced the same way.

Relative paths, Hub ids (``org/name``), model names and numbers are kept as they are.
:func:`mask_url_credentials` alone is what a run uses when writing its own ``config.yaml``.
"""
import os
import re
from typing import Any, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["LOCAL_PATH_MARKER", "MASK", "mask_url_credentials", "public_training_config", "public_value"]

#: What replaces a secret.
MASK = "***"
#: The prefix of a local path's last component in published settings.
LOCAL_PATH_MARKER = "<local>"

_SECRET_WORDS = {"password", "passwd", "pwd", "pass", "token", "secret", "apikey", "credential", "credentials",
                 "auth", "signature", "sig"}
_NAMES_NOT_PATHS = {"label_names", "class_names"}
_SECRET_PHRASES = ("password", "api_key", "access_key", "private_key", "secret", "credential")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]*")
_ABSOLUTE = re.compile(r"(?:~[^/\\]*|[A-Za-z]:)?[\\/]")
_PATH = re.compile(r"(?:^|(?<=[\s:=@,;(]))(?:~[^\s/\\'\",;]*|[A-Za-z]:)?[\\/][^\s'\",;]*")


def _is_secret_name(name: str) -> bool:
    name = name.lower().replace("-", "_")
    return any(word in name for word in _SECRET_PHRASES) or any(part in _SECRET_WORDS for part in name.split("_"))


def _local_name(path: str) -> str:
    parts = [p for p in re.split(r"[\\/]+", path) if p and p != "~" and not re.fullmatch(r"[A-Za-z]:", p)]
    return f"{LOCAL_PATH_MARKER}/{parts[-1]}" if parts else LOCAL_PATH_MARKER


def mask_url_credentials(url: str) -> str:
    """Mask the password and secret query parameters of a URL.

    ``postgresql://user:password@host/db`` becomes ``postgresql://user:***@host/db``;
    ``...?password=pw&sslmode=require`` becomes ``...?password=***&sslmode=require`` (likewise ``token``,
    ``access_token``, ``api_key``, ``secret``, ...); the user of an HTTP(S) URL without a password
    (``https://TOKEN@host``) is masked too, other schemes keep a user without a password. A URL without
    credentials, or a string that is not a URL, is returned unchanged.

    Args:
        url: The URL (an SQLAlchemy storage URL, an HTTP URL, ...).

    Returns:
        The URL with its secrets replaced by ``***``.
    """
    if not isinstance(url, str) or "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # a malformed port or netloc: mask everything between "://" and "@"
        return re.sub(r"(://[^/@]*:)[^/@]*@", rf"\g<1>{MASK}@", url)
    netloc = parts.netloc
    if password is not None:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{host}"
    elif "@" in netloc and parts.scheme.lower() in ("http", "https"):  # https://TOKEN@host: the user is a token
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_is_secret_name(k) for k, _ in pairs):
            query = urlencode([(k, MASK if _is_secret_name(k) else v) for k, v in pairs], safe="*")
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _public_url(url: str) -> str:
    url = mask_url_credentials(url)
    parts = urlsplit(url)
    if parts.scheme.lower() in ("http", "https") or not parts.path.strip("/"):
        return url
    if parts.netloc and parts.scheme.lower() != "file":
        return url  # a database or service on a host: its path (database name) is not a local folder
    if parts.path.count("/") < 2:
        return url  # sqlite:///search.db: a path relative to the current folder
    return url.replace(parts.path, "/" + _local_name(parts.path), 1)


def _public_string(text: str) -> str:
    if "://" not in text and _ABSOLUTE.match(text):
        return _local_name(text)  # a whole value that is a path, spaces and all
    pieces, last = [], 0
    for match in _URL.finditer(text):
        pieces.append(_PATH.sub(lambda m: _local_name(m.group(0)), text[last:match.start()]))
        pieces.append(_public_url(match.group(0)))
        last = match.end()
    pieces.append(_PATH.sub(lambda m: _local_name(m.group(0)), text[last:]))
    return "".join(pieces)


def public_value(value: Any, name: str = "") -> Any:
    """One setting as it may be published (see the module docstring); mappings and lists recursively.

    Args:
        value: The setting's value.
        name: The setting's name (a secret's name masks the value whole).
    """
    if name and _is_secret_name(name) and value not in (None, "", False):
        return MASK
    if name in _NAMES_NOT_PATHS:
        return value  # class names such as Open Images' "/m/01g317" are not paths
    if isinstance(value, Mapping):
        return {key: public_value(item, str(key)) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [public_value(item) for item in value]
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str) and re.search(r"[\\/]", value) and "://" not in value and ":" not in value[:8] \
            and os.path.exists(value):
        return _local_name(value)  # a relative path of this machine (data/mine): its last component only
    if isinstance(value, str):
        return _public_string(value)
    return value


def public_training_config(config: Mapping) -> dict:
    """A run's settings (``config.yaml``) or results (``results.json``) as they may be published.

    Credentials in URLs are masked (:func:`mask_url_credentials`), settings named like secrets are
    masked whole, and absolute local paths (``output_dir``, ``data_dir``, ``cache_dir``, a local
    ``dataset`` folder, teacher checkpoints, the config file, ...) become ``<local>/NAME``, their last
    component. Everything else is kept, so the record still says how the model was trained.

    Args:
        config: The mapping as read from the run folder.

    Returns:
        A new dict; ``config`` is not changed.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"public_training_config expects a mapping, got {type(config).__name__}")
    return {key: public_value(value, str(key)) for key, value in config.items()}
