"""A class-name typo in a listing (circel for circle) is warned about at build time, naming the class, its rows,
the closest class and how to pin the class list; a clean listing warns nothing."""
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from spl_losses.data import build_dataset
from spl_losses.data.generic import ClassListWarning, class_usage_problems

SHAPES = ["circle", "square", "triangle", "star", "cross"]


def _listing(root, labels):
    os.makedirs(root / "img", exist_ok=True)
    lines = ["path,labels"]
    for i, label in enumerate(labels):
        Image.new("RGB", (4, 4), (i % 256, 0, 0)).save(root / "img" / f"{i}.png")
        lines.append(f"img/{i}.png,{label}")
    (root / "all.csv").write_text("\n".join(lines) + "\n")
    return str(root / "all.csv")


def _build(tmp_path, labels, **options):
    listing = _listing(tmp_path / "raw", labels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = build_dataset("multilabel_files", listing=listing, cache_dir=str(tmp_path / "cache"), **options)
    return ds, [str(w.message) for w in caught if issubclass(w.category, ClassListWarning)]


def _clean_labels(n=60):
    return [f"{SHAPES[i % 5]}|{SHAPES[(i + 2) % 5]}" for i in range(n)]


def test_a_typo_class_warns_naming_it_and_the_closest_class(tmp_path):
    labels = _clean_labels()
    labels[7] = "circel"
    ds, messages = _build(tmp_path, labels)
    assert "circel" in ds["train"].features["labels"].feature.names  # built as asked, but not silently
    typo = [m for m in messages if "'circel'" in m]
    assert len(typo) == 1, messages
    message = typo[0]
    assert "(rows: train 1, validation 0, test 0) is in only 1 row" in message
    assert "closest other class: 'circle'" in message
    assert "classes_file=" in message and "class_names=" in message
    assert not [m for m in messages if m.split(" (rows")[0].endswith("'circle'")]  # the real classes are fine


def test_a_clean_listing_warns_nothing(tmp_path):
    _, messages = _build(tmp_path, _clean_labels())
    assert messages == []


def test_a_pinned_class_list_refuses_the_typo_with_a_suggestion(tmp_path):
    labels = _clean_labels()
    labels[7] = "circel"
    with pytest.raises(ValueError, match=r"unknown class name\(s\) \['circel'\] \(did you mean 'circle'\?\)"):
        _build(tmp_path, labels, class_names=list(SHAPES))
    (tmp_path / "classes.txt").write_text("\n".join(SHAPES) + "\n")
    _, messages = _build(tmp_path, _clean_labels(), classes_file=str(tmp_path / "classes.txt"))
    assert messages == []


def test_class_only_in_test_rare_and_case_twins():
    names = ["Cat", "cat", "dog", "zebra", "yak"]
    counts = {"train": np.array([5, 6, 7, 0, 4]), "validation": np.array([2, 2, 2, 0, 0]),
              "test": np.array([3, 3, 3, 4, 2])}
    problems = class_usage_problems(counts, names)
    by_class = {p.split("'")[1]: p for p in problems}
    assert by_class["cat"].startswith("class 'cat' (rows: train 6, validation 2, test 3) differs only in case")
    assert set(by_class) == {"Cat", "cat", "zebra", "yak"}
    assert "differs only in case from 'cat'" in by_class["Cat"] and "closest other class: 'cat'" in by_class["Cat"]
    assert "only in test" in by_class["zebra"] and "rows: train 0, validation 0, test 4" in by_class["zebra"]
    assert "missing from validation" in by_class["yak"]
    assert "in only" not in by_class["yak"]
    rare = class_usage_problems({"train": np.array([1, 9]), "validation": np.array([0, 3]),
                                 "test": np.array([1, 3])}, ["a", "b"])
    assert len(rare) == 1 and "'a' (rows: train 1, validation 0, test 1) is in only 2 rows" in rare[0]
    assert "is missing from validation (it cannot be validated)" in rare[0]


def test_spl_data_build_help_documents_the_class_list_options():
    from spl_losses.data.__main__ import build_parser

    parser = build_parser()
    build = next(a for a in parser._actions if isinstance(a.choices, dict)).choices["build"]
    text = build.format_help()
    assert "classes_file=PATH" in text and "class_names=" in text


def test_spl_data_build_prints_the_warning_as_one_line(tmp_path, capsys):
    from spl_losses.data.__main__ import main

    labels = _clean_labels()
    labels[7] = "circel"
    listing = _listing(tmp_path / "raw", labels)
    assert main(["build", "multilabel_files", "--dataset-option", f"listing={listing}", "--output",
                 str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(err) == 1 and "'circel'" in err[0] and "closest other class: 'circle'" in err[0]
