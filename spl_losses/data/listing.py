"""Reading users' listing and class files for the generic builders (``multilabel_files``, ``multilabel_features``)."""
import csv
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["SPLIT_ALIASES", "read_listing_rows", "read_class_file", "refuse_duplicate_images", "resolve_file"]

#: File-name stems under which a split's files are looked for.
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "val"), "test": ("test",)}


def read_class_file(path: str) -> List[str]:
    """Read class names, one a line (blank lines ignored).

    Args:
        path: The text file.
    """
    if not os.path.isfile(path):
        raise ValueError(f"missing classes file: {path}")
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise ValueError(f"classes file {path} lists no class")
    return names


def read_listing_rows(path: str, separator: str = "|") -> Tuple[List[Tuple[str, List[str]]], List[str]]:
    """Read a CSV (header ``path,labels``) or JSON-lines listing into ``(path, class names)`` rows.

    Args:
        path: The listing (``.csv``, or ``.jsonl`` / ``.json`` with one object per line).
        separator: Separator of class names within a CSV labels field (and a JSON labels string).

    Returns:
        ``(rows, entries)``: the rows as read, and each row's name in messages (``"row N"`` for CSV,
        counting data rows from 1; ``"line N"`` for JSON lines).

    Raises:
        ValueError: the file is not UTF-8, the CSV header lacks ``path``/``labels``, a row lacks a field,
            or a JSON line is not an object with ``path`` and ``labels`` (naming the file and row).
    """
    def split_names(text: str) -> List[str]:
        return [n.strip() for n in text.split(separator) if n.strip()]

    rows, entries = [], []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            if path.endswith(".csv"):
                reader = csv.DictReader(f)
                if not {"path", "labels"} <= set(reader.fieldnames or []):
                    raise ValueError(f"{path}: the CSV header must have columns 'path' and 'labels', "
                                     f"got {reader.fieldnames}")
                for row_no, row in enumerate(reader, start=1):
                    if row["path"] is None or row["labels"] is None:
                        raise ValueError(f"{path}, row {row_no}: expected the fields 'path' and 'labels', got {row}")
                    rows.append((row["path"], split_names(row["labels"])))
                    entries.append(f"row {row_no}")
                return rows, entries
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}, line {line_no}: not valid JSON ({err})") from None
                if not isinstance(record, dict) or "path" not in record or "labels" not in record:
                    raise ValueError(f"{path}, line {line_no}: expected an object with 'path' and 'labels'")
                labels = record["labels"]
                if not isinstance(labels, (str, list)):
                    raise ValueError(f"{path}, line {line_no}: 'labels' must be a list of names or a string, "
                                     f"got {labels!r}")
                names = split_names(labels) if isinstance(labels, str) else [str(n) for n in labels]
                rows.append((record["path"], names))
                entries.append(f"line {line_no}")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a UTF-8 text listing ({err})") from None
    except csv.Error as err:
        raise ValueError(f"{path}: not a readable CSV listing ({err})") from None
    return rows, entries


def resolve_file(root: Optional[str], value: Optional[str], candidates: Sequence[str], what: str,
             required: bool) -> Optional[str]:
    """Return the path of a configured or default file, or raise naming the expected path.

    Args:
        root: The folder relative paths are taken from (None: the current folder).
        value: The configured path, or None to look for ``candidates`` under ``root``.
        candidates: Default file names under ``root``.
        what: What the file is, for messages.
        required: Raise when nothing is found (else return None).
    """
    if value is not None:
        path = value if os.path.isabs(value) or root is None else os.path.join(root, value)
        if not os.path.isfile(path):
            raise ValueError(f"missing {what}: {path}")
        return path
    if root is not None:
        for name in candidates:
            path = os.path.join(root, name)
            if os.path.isfile(path):
                return path
    if required:
        where = f"under {root}" if root is not None else "(no root given)"
        raise ValueError(f"missing {what}: none of {list(candidates)} found {where}; pass it explicitly")
    return None


def refuse_duplicate_images(listings: Sequence) -> None:
    """Refuse an image listed twice (within a listing or in two split listings), naming both rows: kept
    twice it would weigh double, or leak test images into training. Paths are compared after
    normalisation (``./img/a.png``, ``img//a.png`` and the absolute spelling are the same file).

    Args:
        listings: Read listings, each with ``path`` (its file), ``images`` (absolute image paths) and
            ``entries`` (each row's name in messages).

    Raises:
        ValueError: naming both rows, their listings and the image.
    """
    seen: Dict[str, Tuple[str, str]] = {}
    for listing in listings:
        for image, entry in zip(listing.images, listing.entries):
            key = os.path.normcase(os.path.normpath(image))
            first = seen.setdefault(key, (listing.path, entry))
            if first != (listing.path, entry):
                raise ValueError(f"{first[0]}, {first[1]} and {listing.path}, {entry} list the same image {key}: "
                                 "an image listed twice is kept twice (and may land in both training and test); "
                                 "keep one row, with the union of its labels")
