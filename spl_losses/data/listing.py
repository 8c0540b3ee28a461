"""Reading users' listing and class files for the generic builders (``multilabel_files``, ``multilabel_features``)."""
import csv
import json
import os
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

__all__ = ["SPLIT_ALIASES", "LABEL_FIELDS", "NEGATIVE_MARK", "ListingRow", "read_listing_rows", "read_class_file",
           "refuse_duplicate_images", "resolve_file"]

#: File-name stems under which a split's files are looked for.
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "val"), "test": ("test",)}
#: The label fields of a listing row: full labels, observed labels.
LABEL_FIELDS = ("labels", "observed")
#: The mark of an observed negative in an ``observed`` field (``cat|-dog``: cat positive, dog negative).
NEGATIVE_MARK = "-"


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


class ListingRow(NamedTuple):
    """One row of a listing: the image path, and its labels by class name.

    Args:
        path: The image path as listed.
        labels: The full labels (every positive of the image), or None when the listing gives none.
        positives: The observed positives (``observed`` field), or None when the listing gives none.
        negatives: The observed negatives (the names marked ``-`` in ``observed``), or None likewise.
    """

    path: str
    labels: Optional[List[str]]
    positives: Optional[List[str]]
    negatives: Optional[List[str]]


def _split_observed(names: Sequence[str], where: str) -> Tuple[List[str], List[str]]:
    """Observed names into (positives, negatives): a leading ``-`` marks an observed negative. Refuses a
    row without a positive and a class both positive and negative, naming the row."""
    positives, negatives = [], []
    for name in names:
        if name.startswith(NEGATIVE_MARK):
            negative = name[len(NEGATIVE_MARK):].strip()
            if not negative:
                raise ValueError(f"{where}: {name!r} in 'observed' marks no class as negative")
            negatives.append(negative)
        else:
            positives.append(name)
    both = sorted(set(positives) & set(negatives))
    if both:
        raise ValueError(f"{where}: class {both[0]!r} is both an observed positive and an observed negative "
                         f"('{both[0]}' and '{NEGATIVE_MARK}{both[0]}' in 'observed')")
    if not positives:
        what = "only observed negatives" if negatives else "no observed label"
        raise ValueError(f"{where}: the row has {what}; every row needs at least one observed positive in "
                         "'observed' (drop the row, or give it a positive)")
    return sorted(set(positives)), sorted(set(negatives))


def read_listing_rows(path: str, separator: str = "|") -> Tuple[List[ListingRow], List[str]]:
    """Read a CSV or JSON-lines listing into :class:`ListingRow` rows.

    A row gives full ``labels`` (every positive of the image), ``observed`` labels (what is known of it:
    positives, and negatives marked with a leading ``-``, e.g. ``cat|-dog``), or both; a listing gives each
    field for all its rows or for none (CSV: the header's columns; JSON lines: the same keys on every line).

    Args:
        path: The listing (``.csv`` with header ``path`` plus ``labels`` and/or ``observed``, or ``.jsonl`` /
            ``.json`` with one object per line).
        separator: Separator of class names within a CSV field (and a JSON string).

    Returns:
        ``(rows, entries)``: the rows as read, and each row's name in messages (``"row N"`` for CSV,
        counting data rows from 1; ``"line N"`` for JSON lines).

    Raises:
        ValueError: the file is not UTF-8, the CSV header lacks ``path`` or both ``labels`` and ``observed``, a
            row lacks a field, a JSON line is not such an object, a row has no observed positive, or a class is
            both an observed positive and negative (naming the file and row).
    """
    def split_names(text: str) -> List[str]:
        return [n.strip() for n in text.split(separator) if n.strip()]

    rows, entries = [], []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            if path.endswith(".csv"):
                reader = csv.DictReader(f)
                header = set(reader.fieldnames or [])
                fields = [k for k in LABEL_FIELDS if k in header]
                if "path" not in header or not fields:
                    raise ValueError(f"{path}: the CSV header must have the column 'path' and 'labels' (full labels) "
                                     f"and/or 'observed' (observed labels), got {reader.fieldnames}")
                for row_no, row in enumerate(reader, start=1):
                    where = f"{path}, row {row_no}"
                    if row["path"] is None or any(row[k] is None for k in fields):
                        expected = " and ".join(repr(k) for k in ("path", *fields))
                        raise ValueError(f"{where}: expected the fields {expected}, got {row}")
                    rows.append(_row(row["path"], {k: split_names(row[k]) for k in fields}, where))
                    entries.append(f"row {row_no}")
                return rows, entries
            keys = None
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}, line {line_no}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{where}: not valid JSON ({err})") from None
                if not isinstance(record, dict) or "path" not in record \
                        or not any(k in record for k in LABEL_FIELDS):
                    raise ValueError(f"{where}: expected an object with 'path' and 'labels' (full labels) and/or "
                                     "'observed' (observed labels)")
                present = tuple(k for k in LABEL_FIELDS if k in record)
                if keys is None:
                    keys = (present, line_no)
                elif present != keys[0]:
                    raise ValueError(f"{where} gives {list(present)} but line {keys[1]} gives {list(keys[0])}: a "
                                     "listing gives full labels ('labels') and observed labels ('observed') for "
                                     "every row or for none")
                values = {}
                for key in present:
                    value = record[key]
                    if not isinstance(value, (str, list)):
                        raise ValueError(f"{where}: {key!r} must be a list of names or a string, got {value!r}")
                    values[key] = split_names(value) if isinstance(value, str) else [str(n).strip() for n in value]
                rows.append(_row(record["path"], values, where))
                entries.append(f"line {line_no}")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a UTF-8 text listing ({err})") from None
    except csv.Error as err:
        raise ValueError(f"{path}: not a readable CSV listing ({err})") from None
    return rows, entries


def _row(image: str, values: Dict[str, List[str]], where: str) -> ListingRow:
    labels = values.get("labels")
    if "observed" not in values:
        return ListingRow(image, labels, None, None)
    positives, negatives = _split_observed(values["observed"], where)
    if labels is not None:
        full = set(labels)
        unlabelled = [n for n in positives if n not in full]
        if unlabelled:
            raise ValueError(f"{where}: observed positive {unlabelled[0]!r} is not among the row's full labels "
                             f"{sorted(full)}")
        contradicted = [n for n in negatives if n in full]
        if contradicted:
            raise ValueError(f"{where}: observed negative {NEGATIVE_MARK}{contradicted[0]} is among the row's full "
                             f"labels {sorted(full)}")
    return ListingRow(image, labels, positives, negatives)


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
