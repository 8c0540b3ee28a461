"""Partial labels as a user has them (issue 23): observed positives and explicit negatives, full labels
optional per split, in a CSV / JSON-lines listing and in a saved dataset (columns mappable); the recipe
trains on them, validates on observed labels, says when there is no clean test, and records the kind of
labels it trained on (results.json, model card)."""
import json
import os

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from spl_losses.data import build_dataset, load_spml_dataset
from test_recipe import recipe

CLASSES = ["bird", "car", "cat", "dog"]


def _image(path, i):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(i)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)


def _write_csv(path, header, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.write(",".join(header) + "\n")
        for row in rows:
            f.write(",".join(row) + "\n")


def _negative(i):
    """Train row i's observed negative (a few rows only), or None."""
    return CLASSES[(i + 1) % 4] if i % 5 == 0 else None


@pytest.fixture(scope="module")
def partial_tree(tmp_path_factory):
    """train.csv: observed labels only (one positive per row, a negative on every 5th row); test.csv: observed
    labels only too (no clean test)."""
    root = tmp_path_factory.mktemp("partial")
    train = []
    for i in range(40):
        _image(str(root / "img" / f"tr{i}.png"), i)
        observed = CLASSES[i % 4] + (f"|-{_negative(i)}" if _negative(i) else "")
        train.append((f"img/tr{i}.png", observed))
    test = []
    for i in range(12):
        _image(str(root / "img" / f"te{i}.png"), 100 + i)
        test.append((f"img/te{i}.png", CLASSES[i % 4]))
    _write_csv(root / "train.csv", ["path", "observed"], train)
    _write_csv(root / "test.csv", ["path", "observed"], test)
    return root


def _flags(root, cache, out, *extra):
    return ["--dataset", "multilabel_files", "--data-dir", str(root), "--dataset-option", f"cache_dir={cache}",
            "--model", "test_resnet", "--pretrained", "false", "--image-size", "16", "--batch-size", "8",
            "--lr", "1e-2", "--epochs", "1", "--no-progress", "--train-mode", "linear_fixed_features",
            "--expected-num-pos", "1.5", "--cache-dir", os.path.join(str(cache), "features"),
            "--output-dir", str(out), *extra]


# ------------------------------------------------------------------------------------------------ the listing
def test_partial_csv_builds_observed_columns_without_full_labels(partial_tree, tmp_path):
    ds = build_dataset("multilabel_files", root=str(partial_tree), cache_dir=str(tmp_path / "c"))
    for split in ds:
        assert {"labels", "observed_labels", "observed_negatives"} <= set(ds[split].column_names)
        assert all(row is None for row in ds[split]["labels"])  # no full labels: null, not "no positive"
        assert all(len(row) == 1 for row in ds[split]["observed_labels"])
    assert "Observed labels given" in ds["train"].info.description
    negatives = sum(len(r) for s in ("train", "validation") for r in ds[s]["observed_negatives"])
    assert negatives == sum(1 for i in range(40) if _negative(i))


def test_jsonl_partial_labels_with_full_labels_on_test(tmp_path):
    root = tmp_path / "raw"
    lines = {"train": [], "test": []}
    for i in range(10):
        _image(str(root / f"tr{i}.png"), i)
        lines["train"].append({"path": f"tr{i}.png", "observed": [CLASSES[i % 4], f"-{CLASSES[(i + 2) % 4]}"]})
    for i in range(4):
        _image(str(root / f"te{i}.png"), 50 + i)
        lines["test"].append({"path": f"te{i}.png", "labels": [CLASSES[i], CLASSES[(i + 1) % 4]]})
    for split, rows in lines.items():
        with open(root / f"{split}.jsonl", "w") as f:
            f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = build_dataset("multilabel_files", root=str(root), cache_dir=str(tmp_path / "c"))
    assert all(row is None for row in ds["train"]["labels"])
    assert list(ds["test"]["labels"]) == [[0, 1], [1, 2], [2, 3], [0, 3]]
    assert all(len(r) == 1 for r in ds["test"]["observed_labels"])  # drawn from the full labels
    from spl_losses.training.run_data import load_data

    data = load_data("multilabel_files", str(root), {"cache_dir": str(tmp_path / "c")})
    assert data.train_full is None and data.val_full is None and data.test_full is not None
    assert data.labels_origin == "given"
    assert ((data.train_observed < 0).sum(dim=1) == 1).all()  # one explicit negative per row
    assert data.labels_summary()["negatives_per_image"] == 1.0


@pytest.mark.parametrize("rows,message", [
    ([("a.png", "cat"), ("b.png", "cat|-dgo")],
     r"row 2: unknown class name\(s\) \['dgo'\] \(did you mean 'dog'\?\) in 'observed \(negatives\)'"),
    ([("a.png", "cat"), ("b.png", "")], r"row 2: the row has no observed label"),
    ([("a.png", "cat"), ("b.png", "-dog")], r"row 2: the row has only observed negatives"),
    ([("a.png", "cat|-cat")], r"row 1: class 'cat' is both an observed positive and an observed negative"),
])
def test_ambiguous_partial_rows_are_refused_naming_the_row(tmp_path, rows, message):
    root = tmp_path / "raw"
    for p, _ in rows:
        _image(str(root / p), 0)
    _image(str(root / "t.png"), 1)
    _write_csv(root / "train.csv", ["path", "observed"], rows)
    _write_csv(root / "test.csv", ["path", "observed"], [("t.png", "cat")])
    with pytest.raises(ValueError, match=message) as err:
        build_dataset("multilabel_files", root=str(root), cache_dir=str(tmp_path / "c"),
                      class_names=tuple(CLASSES))
    assert "\n" not in str(err.value) and "train.csv" in str(err.value)


def test_observed_and_full_labels_that_disagree_are_refused(tmp_path):
    root = tmp_path / "raw"
    _image(str(root / "a.png"), 0)
    _write_csv(root / "train.csv", ["path", "labels", "observed"], [("a.png", "cat|dog", "cat|-dog")])
    _write_csv(root / "test.csv", ["path", "labels"], [("a2.png", "cat")])
    with pytest.raises(ValueError, match=r"row 1: observed negative -dog is among the row's full labels"):
        build_dataset("multilabel_files", root=str(root), cache_dir=str(tmp_path / "c"))


# ------------------------------------------------------------------------------- a saved dataset, mapped columns
def _saved(tmp_path, rows_positive, rows_negative, names=("tags", "seen", "unseen"), with_full=True):
    lf = datasets.List(datasets.ClassLabel(names=CLASSES))
    full, seen, unseen = names

    def split(n):
        cols = {"features": [[float(i % 4 == c) for c in range(4)] for i in range(n)],
                seen: [rows_positive(i) for i in range(n)], unseen: [rows_negative(i) for i in range(n)]}
        feats = {"features": datasets.List(datasets.Value("float32")), seen: lf, unseen: lf}
        if with_full:
            cols[full] = [[i % 4, (i + 1) % 4] for i in range(n)]
            feats[full] = lf
        return datasets.Dataset.from_dict(cols, features=datasets.Features(feats))

    path = tmp_path / "saved"
    datasets.DatasetDict({"train": split(16), "validation": split(8), "test": split(8)}).save_to_disk(str(path))
    return str(path)


def test_saved_dataset_columns_are_mappable(tmp_path):
    path = _saved(tmp_path, lambda i: [i % 4], lambda i: [(i + 2) % 4] if i % 3 == 0 else [])
    dsd = load_spml_dataset(path, label_column="tags", observed_column="seen", negatives_column="unseen")
    assert {"labels", "observed_labels", "observed_negatives", "index"} <= set(dsd["train"].column_names)
    with pytest.raises(ValueError, match="no split has a column 'tagz'"):
        load_spml_dataset(path, label_column="tagz", observed_column="seen")


def test_saved_dataset_row_positive_and_negative_is_refused(tmp_path):
    path = _saved(tmp_path, lambda i: [i % 4], lambda i: [i % 4] if i == 5 else [], with_full=False)
    with pytest.raises(ValueError, match=r"split 'train', row 5: class 'car' is both an observed positive"):
        load_spml_dataset(path, observed_column="seen", negatives_column="unseen")


def test_saved_dataset_row_without_observed_positive_is_refused(tmp_path):
    path = _saved(tmp_path, lambda i: [] if i == 3 else [i % 4], lambda i: [], with_full=False)
    with pytest.raises(ValueError, match=r"split 'train', row 3 has no observed positive"):
        load_spml_dataset(path, observed_column="seen", negatives_column="unseen")


# --------------------------------------------------------------------------------------------------- the recipe
@pytest.mark.parametrize("loss", sorted(__import__("spl_losses").list_losses()))
def test_every_loss_trains_on_a_partial_csv(partial_tree, tmp_path_factory, loss):
    cache = tmp_path_factory.getbasetemp() / "partial_cache"  # one build and feature cache for every loss
    out = tmp_path_factory.mktemp("runs") / loss
    extra = ["--apl-warmup-epochs", "0"] if loss == "em_apl" else []
    if loss in ("bce", "bce_ls"):
        with pytest.raises(ValueError, match=f"--loss {loss} trains on full labels.*observed labels only"):
            recipe.main(_flags(partial_tree, cache, out, "--loss", loss))
        assert not (out / "metrics.jsonl").exists()
        return
    results = recipe.main(_flags(partial_tree, cache, out, "--loss", loss, *extra))
    assert results["test_map"] is None and "no clean test" in results["test_note"]
    assert 0 <= results["val_map"] <= 100
    on_disk = json.load(open(out / "results.json"))
    assert on_disk["test_map"] is None and on_disk["test_metrics"] is None and on_disk["test_note"]
    assert on_disk["labels"]["kind"] == "given"
    assert on_disk["labels"]["negatives_per_image"] > 0 and on_disk["labels"]["positives_per_image"] == 1.0
    assert on_disk["labels"]["full_labels"] == {"train": False, "validation": False, "test": False}


def test_the_run_trains_on_the_negatives_and_says_what_it_validates_on(partial_tree, tmp_path_factory, capsys,
                                                                         monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "partial_cache"
    seen = {}
    original = recipe.training_targets

    def recording(settings, data):
        seen["targets"] = original(settings, data).clone()
        seen["data"] = data
        return seen["targets"]

    monkeypatch.setattr(recipe, "training_targets", recording)
    out = tmp_path_factory.mktemp("runs") / "epr_negatives"
    recipe.main(_flags(partial_tree, cache, out, "--loss", "epr"))
    log = capsys.readouterr().out
    assert "validation: observed labels" in log and "no clean test" in log
    targets, data = seen["targets"], seen["data"]
    # the training targets hold -1 at exactly the listing's negatives (rows found by image file name)
    paths = [os.path.basename(p["path"]) for p in data.splits["train"].cast_column(
        "image", datasets.Image(decode=False))["image"]]
    expected = torch.zeros_like(targets)
    for row, name in enumerate(paths):
        i = int(name[2:-4])
        expected[row, CLASSES.index(CLASSES[i % 4])] = 1
        if _negative(i):
            expected[row, CLASSES.index(_negative(i))] = -1
    assert torch.equal(targets, expected) and (targets < 0).any()
    import yaml

    assert yaml.safe_load(open(out / "config.yaml"))["val_set_variant"] == "observed"


@pytest.mark.parametrize("loss,kwargs", [("iu", {}), ("epr", {"expected_num_pos": 1.5}), ("em", {}),
                                         ("role", {"num_classes": 4, "num_examples": 2, "expected_num_pos": 1.5})])
def test_losses_see_an_explicit_negative(loss, kwargs):
    """The gradient at an observed negative differs from the same entry unobserved, on the loss alone: for iu
    and epr (which give an unobserved entry no per-entry term) by exactly the gradient of -log(1 - p + eps)
    over the B*C entries, computed here by hand."""
    from spl_losses import create_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 4)
    with_negative = torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    grads = []
    for targets in (with_negative, with_negative.clamp_min(0)):
        options = dict(kwargs, observed_labels=targets) if loss == "role" else kwargs
        fn = create_loss(loss, **options)
        x = logits.clone().requires_grad_(True)
        value = fn(x, targets, torch.arange(2)) if getattr(fn, "requires_index", False) else fn(x, targets)
        value.backward()
        grads.append(x.grad[0, 1].item())
    p = torch.sigmoid(logits[0, 1]).item()
    if loss in ("iu", "epr"):
        assert grads[0] - grads[1] == pytest.approx(p * (1 - p) / (1 - p + 1e-5) / 8, rel=1e-4)
    else:
        assert grads[0] != pytest.approx(grads[1], abs=1e-6)


# ------------------------------------------------------------------------------------------- what a reader sees
def test_model_card_tells_given_partial_labels_from_simulated_single_positives():
    from spl_losses.hub.card import build_model_card

    config = {"dataset": "multilabel_files", "loss": "epr", "train_mode": "linear_fixed_features",
              "observed_seed": 1200, "val_set_variant": "observed"}
    given = {"val_map": 50.0, "test_map": None, "test_note": "no clean test: the test split has no full labels",
             "labels": {"kind": "given", "positives_per_image": 1.25, "negatives_per_image": 0.5}}
    simulated = {"val_map": 50.0, "test_map": 40.0,
                 "labels": {"kind": "simulated", "rule": "size", "seed": 7, "positives_per_image": 1.0,
                            "negatives_per_image": 0.0}}
    card_given = str(build_model_card(config, given, "me/partial"))
    card_simulated = str(build_model_card(dict(config, observed_seed=7), simulated, "me/simulated"))
    assert "given partial labels" in card_given and "1.25 observed positive(s) and 0.50 observed negative(s)" \
        in card_given and "No test metrics: no clean test" in card_given
    assert "simulated single positives" not in card_given and "Single-positive seed" not in card_given
    assert "simulated single positives (rule `size`)" in card_simulated and "| Single-positive seed | 7 |" \
        in card_simulated and "given partial labels" not in card_simulated


def test_partial_run_results_and_card_say_given_labels(partial_tree, tmp_path_factory):
    from spl_losses.hub.card import build_model_card, read_run

    cache = tmp_path_factory.getbasetemp() / "partial_cache"
    out = tmp_path_factory.mktemp("runs") / "an_card"
    recipe.main(_flags(partial_tree, cache, out, "--loss", "an"))
    run = read_run(out)
    card = str(build_model_card(run["config"], run["results"], "me/partial", run["model_config"]))
    assert "given partial labels" in card and "No test metrics" in card


def test_simulated_and_stored_runs_say_so(tmp_path, data_cache):
    from test_recipe import tiny_flags

    sim = recipe.main(tiny_flags(data_cache, tmp_path / "sim", "--train-mode", "linear_fixed_features", "--loss", "an",
                                 "--epochs", "1"))
    assert sim["labels"]["kind"] == "simulated" and sim["labels"]["rule"] == "uniform"
    assert sim["labels"]["seed"] == 1200 and sim["labels"]["full_labels"]["test"] and sim["test_map"] is not None
    path = _saved(tmp_path, lambda i: [i % 4], lambda i: [(i + 2) % 4] if i % 3 == 0 else [])
    stored = recipe.main(["--dataset", path, "--dataset-option", "label_column=tags", "--dataset-option",
                          "observed_column=seen", "--dataset-option", "negatives_column=unseen", "--loss", "iu",
                          "--train-mode", "linear_fixed_features", "--epochs", "1", "--batch-size", "4",
                          "--no-progress", "--output-dir", str(tmp_path / "stored")])
    assert stored["labels"]["kind"] == "stored" and stored["labels"]["negatives_per_image"] == pytest.approx(6 / 16)
    assert stored["test_map"] is not None


def test_role_estimator_starts_low_at_the_observed_negatives(partial_tree, tmp_path_factory):
    from safetensors.torch import load_file

    cache = tmp_path_factory.getbasetemp() / "partial_cache"
    out = tmp_path_factory.mktemp("runs") / "role_init"
    seen = {}
    original = recipe.training_targets

    def recording(settings, data):
        seen["targets"] = original(settings, data)
        return seen["targets"]

    recipe.training_targets, restore = recording, original
    try:
        recipe.main(_flags(partial_tree, cache, out, "--loss", "role", "--lr", "1e-4"))
    finally:
        recipe.training_targets = restore
    state = load_file(str(out / "model" / "loss_state.safetensors"))
    logits = next(t for t in state.values() if t.dim() == 2)
    targets = seen["targets"]
    # initialised at logit(0.005) on observed negatives, in (-logit(0.6), logit(0.6)) when unobserved
    assert logits[targets < 0].max() < -3 < logits[targets == 0].min()


def test_search_without_a_clean_test_prints_and_records_it(partial_tree, tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "partial_cache"
    out = tmp_path_factory.mktemp("runs") / "search"
    summary = recipe.main(_flags(partial_tree, cache, out, "--loss", "an", "--search"))
    assert summary["winner"]["test_map"] is None and len(summary["runs"]) == 8


def test_dataset_card_says_which_splits_have_given_labels():
    from spl_losses.data.card import _given_text

    report = {"splits": {"train": {"observed_labels": "given", "full_labels": False},
                         "validation": {"observed_labels": "given", "full_labels": False},
                         "test": {"observed_labels": "drawn", "full_labels": True}}}
    text = " ".join(_given_text(report))
    assert "given by the source for `train`, `validation`" in text and "No full labels in `train`, `validation`" in text
    assert _given_text({"splits": {"train": {"num_examples": 3}}}) == []


def test_saved_features_dataset_without_any_full_labels_trains(tmp_path):
    path = _saved(tmp_path, lambda i: [i % 4], lambda i: [(i + 2) % 4] if i % 3 == 0 else [], with_full=False)
    out = tmp_path / "run"
    results = recipe.main(["--dataset", path, "--dataset-option", "observed_column=seen", "--dataset-option",
                           "negatives_column=unseen", "--loss", "epr", "--expected-num-pos", "1",
                           "--train-mode", "linear_fixed_features", "--epochs", "2", "--batch-size", "4",
                           "--lr", "0.1", "--no-progress", "--output-dir", str(out)])
    assert results["test_map"] is None and results["labels"]["kind"] == "given"
    assert results["val_map"] > 60  # observed validation on separable features
