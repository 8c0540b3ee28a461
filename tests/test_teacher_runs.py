"""Teacher pseudo-labels through recipes/train.py on every path: a single run, ``--search`` (the points of a
batch size trained by one linear loop), two processes, linear and end to end.

The teacher is an oracle (``--teacher scores:PATH`` with the training split's true labels as scores), so
the pseudo-labels are known exactly and vlpl must then beat teacher-free EM clearly; the prevalence rule
gives negatives, which must each get a loss term (the defect this guards: ``beta_neg`` defaulting to 0).
"""
import json
import os

import datasets
import numpy as np
import pytest
import torch
import yaml
from recipe_flags import digits as digits_flags
from test_recipe import launch_two_processes, recipe

from spl_losses.teachers import create_rule

NUM_CLASSES, K = 8, 2.5


def _split(rng, n):
    labels = []
    for _ in range(n):
        count = int(rng.integers(2, 4))  # 2 or 3 positives: k = 2.5
        labels.append(sorted(rng.choice(NUM_CLASSES, size=count, replace=False).tolist()))
    multi_hot = np.zeros((n, NUM_CLASSES), dtype=np.float32)
    for i, row in enumerate(labels):
        multi_hot[i, row] = 1.0
    feats = multi_hot * 1.5 + rng.normal(0, 1.0, (n, NUM_CLASSES)).astype(np.float32)
    observed = [[int(rng.choice(row))] for row in labels]
    names = [f"c{c}" for c in range(NUM_CLASSES)]
    label_feature = datasets.List(datasets.ClassLabel(names=names))
    ds = datasets.Dataset.from_dict(
        {"features": feats.tolist(), "labels": labels, "observed_labels": observed, "index": list(range(n))},
        features=datasets.Features({"features": datasets.List(datasets.Value("float32")), "labels": label_feature,
                                    "observed_labels": label_feature, "index": datasets.Value("int64")}))
    return ds, multi_hot, observed


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """A features dataset and the oracle scores of its training split (its true labels), as .npy."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("teacher_runs")
    (train, full, observed), (val, _, _), (test, _, _) = (_split(rng, n) for n in (240, 96, 96))
    datasets.DatasetDict({"train": train, "validation": val, "test": test}).save_to_disk(str(root / "feats"))
    np.save(root / "oracle.npy", full)
    observed_dense = np.zeros_like(full)
    for i, row in enumerate(observed):
        observed_dense[i, row] = 1.0
    return {"dataset": str(root / "feats"), "scores": str(root / "oracle.npy"), "full": full,
            "observed": observed_dense}


def flags(oracle, out, *extra):
    return ["--dataset", oracle["dataset"], "--train-mode", "linear_fixed_features", "--epochs", "6",
            "--batch-size", "16", "--lr", "0.05", "--no-progress", "--output-dir", str(out), *extra]


def teacher(oracle, *extra):
    return ["--loss", "vlpl", "--teacher", f"scores:{oracle['scores']}", "--pseudo-label-rule", "prevalence",
            "--expected-num-pos", str(K), *extra]


def read(out, name="results.json"):
    with open(os.path.join(out, name)) as f:
        return yaml.safe_load(f) if name.endswith(".yaml") else json.load(f)


@pytest.fixture(scope="module")
def em_run(oracle, tmp_path_factory):
    """Teacher-free EM on the same data and settings: the baseline a teacher must beat."""
    return recipe.main(flags(oracle, tmp_path_factory.mktemp("em") / "run", "--loss", "em"))


def test_a_single_run_trains_on_every_pseudo_label_of_the_rule(oracle, em_run, tmp_path):
    out = tmp_path / "vlpl"
    results = recipe.main(flags(oracle, out, *teacher(oracle)))
    assert results["test_map"] > em_run["test_map"] + 5, (results["test_map"], em_run["test_map"])
    config = read(out, "config.yaml")
    assert config["expected_num_pos"] == K  # k reached the run ...
    assert config["pseudo_label_options"]["expected_num_pos"] == K  # ... and the rule
    assert config["pseudo_label_loss_weights"] == {"beta": 1.0, "beta_neg": 1.0}  # negatives weighed, recorded
    # the counts are those of the rule applied with this k (an independent application), not with its default
    expected = create_rule("prevalence", expected_num_pos=K)(torch.from_numpy(oracle["full"]),
                                                            torch.from_numpy(oracle["observed"]))
    default_k = create_rule("prevalence")(torch.from_numpy(oracle["full"]), torch.from_numpy(oracle["observed"]))
    counts = read(out)["pseudo_labels"]
    assert counts["positive"] == int((expected > 0).sum()) and counts["negative"] == int((expected < 0).sum())
    assert (counts["positive"], counts["negative"]) != (int((default_k > 0).sum()), int((default_k < 0).sum()))
    truth = torch.from_numpy(oracle["full"]) > 0  # an oracle's positives are right; negatives beyond the rank
    assert counts["positive_precision"] == 1.0  # boundary are true negatives but where a class has more hidden
    assert counts["negative_precision"] == pytest.approx(  # positives than (k - 1) times its observed ones
        float(((expected < 0) & ~truth).sum() / (expected < 0).sum()))
    assert counts["observed_agreement"] == 1.0
    from safetensors.torch import load_file

    state = load_file(str(out / "model" / "loss_state.safetensors"))
    torch.testing.assert_close(state["pseudo_labels"], expected)  # the loss trained on exactly these


def test_the_search_trains_with_the_teacher_and_its_winner_is_the_single_run(oracle, em_run, tmp_path):
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump({"search_grid": {"lr": [0.1, 0.05, 0.02]}}))
    summary = recipe.main(["-c", str(config), *flags(oracle, tmp_path / "search", *teacher(oracle)), "--search"])
    winner = summary["winner"]
    assert winner["test_map"] > em_run["test_map"] + 5
    for point in summary["runs"]:  # every point trained on the teacher's pseudo-labels, not as plain EM
        assert read(tmp_path / "search" / point["name"])["pseudo_labels"]["negative"] > 0
    lr = read(tmp_path / "search" / winner["name"], "config.yaml")["lr"]
    single = recipe.main(flags(oracle, tmp_path / "single", *teacher(oracle), "--lr", str(lr)))
    assert (single["val_map"], single["test_map"], single["best_epoch"]) == \
        (winner["val_map"], winner["test_map"], winner["best_epoch"])  # to the last digit


def test_two_processes_train_with_the_teacher_as_one(oracle, em_run, tmp_path):
    one = recipe.main(flags(oracle, tmp_path / "one", *teacher(oracle)))
    launch_two_processes(flags(oracle, tmp_path / "two", *teacher(oracle)))
    two = read(tmp_path / "two")
    assert two["num_processes"] == 2 and two["pseudo_labels"] == one["pseudo_labels"]
    assert (two["val_map"], two["test_map"], two["best_epoch"]) == (one["val_map"], one["test_map"], one["best_epoch"])
    assert two["test_map"] > em_run["test_map"] + 5


def test_end_to_end_trains_with_the_teacher(tmp_path, data_cache):
    from spl_losses.data.options import parse_dataset_options
    from spl_losses.training.run_data import load_data

    data_flags = digits_flags(data_cache, num_train=64, num_validation=30, num_test=31)
    options = parse_dataset_options([data_flags[i + 1] for i, f in enumerate(data_flags) if f == "--dataset-option"])
    data = load_data("digits_mosaic", options=options)
    scores = tmp_path / "oracle.npy"
    np.save(scores, data.train_full.numpy())
    base = [*data_flags, "--model", "test_efficientnet_gn", "--pretrained", "false", "--image-size", "16",
            "--batch-size", "16", "--lr", "3e-3", "--epochs", "4", "--no-progress", "--train-mode", "end_to_end",
            "--cache-dir", os.path.join(data_cache, "features")]
    em = recipe.main([*base, "--loss", "em", "--output-dir", str(tmp_path / "em")])
    vlpl = recipe.main([*base, "--loss", "vlpl", "--teacher", f"scores:{scores}", "--pseudo-label-rule", "prevalence",
                        "--output-dir", str(tmp_path / "vlpl")])
    counts = vlpl["pseudo_labels"]
    k = read(tmp_path / "vlpl", "config.yaml")["pseudo_label_options"]["expected_num_pos"]
    expected = create_rule("prevalence", expected_num_pos=k)(data.train_full, data.train_observed)
    truth = data.train_full > 0
    assert counts["negative"] == int((expected < 0).sum()) > 0 and counts["positive"] == int((expected > 0).sum())
    assert counts["positive_precision"] == pytest.approx(float(((expected > 0) & truth).sum() / (expected > 0).sum()))
    assert vlpl["test_map"] > em["test_map"], (vlpl["test_map"], em["test_map"])


def test_two_processes_train_end_to_end_with_the_teacher_as_one(tmp_path, data_cache):
    """GroupNorm model, vlpl (a per-entry mean): the global batch split over 2 processes gives one process's run."""
    from spl_losses.data.options import parse_dataset_options
    from spl_losses.training.run_data import load_data

    data_flags = digits_flags(data_cache, num_train=64, num_validation=30, num_test=31)
    options = parse_dataset_options([data_flags[i + 1] for i, f in enumerate(data_flags) if f == "--dataset-option"])
    scores = tmp_path / "oracle.npy"
    np.save(scores, load_data("digits_mosaic", options=options).train_full.numpy())

    def flags(out):
        return [*data_flags, "--model", "test_efficientnet_gn", "--pretrained", "false", "--image-size", "16",
                "--batch-size", "16", "--lr", "1e-3", "--epochs", "2", "--no-progress", "--train-mode", "end_to_end",
                "--loss", "vlpl", "--teacher", f"scores:{scores}", "--pseudo-label-rule", "prevalence",
                "--cache-dir", os.path.join(data_cache, "features"), "--output-dir", str(out)]

    one = recipe.main(flags(tmp_path / "one"))
    launch_two_processes(flags(tmp_path / "two"))
    two = read(tmp_path / "two")
    assert two["num_processes"] == 2 and two["pseudo_labels"] == one["pseudo_labels"]
    assert one["pseudo_labels"]["negative"] > 0
    log_one = [json.loads(line) for line in open(tmp_path / "one" / "metrics.jsonl")]
    log_two = [json.loads(line) for line in open(tmp_path / "two" / "metrics.jsonl")]
    assert [r["val_map"] for r in log_two] == [r["val_map"] for r in log_one]
    assert [r["train_loss"] for r in log_two] == pytest.approx([r["train_loss"] for r in log_one], rel=1e-5)
    assert two["test_map"] == one["test_map"]


def test_a_rule_whose_negatives_would_get_no_loss_term_is_refused(oracle, tmp_path):
    with pytest.raises(ValueError, match=r"prevalence gives negative pseudo-labels.*vlpl.*beta_neg=0"):
        recipe.main(flags(oracle, tmp_path / "zero", *teacher(oracle, "--beta-neg", "0")))
    with pytest.raises(ValueError, match=r"--teacher gives pseudo-labels, but --loss em takes none"):
        recipe.main(flags(oracle, tmp_path / "em", "--loss", "em", "--teacher", f"scores:{oracle['scores']}"))
    assert not (tmp_path / "zero").exists()  # refused before any work


def test_every_pseudo_negative_gets_a_downward_gradient(oracle, tmp_path):
    """The loss as the recipe builds it: at logit 0 (p = 1/2), every pseudo-negative entry's gradient is positive
    (a descent step lowers the logit) and every pseudo-positive's negative."""
    from accelerate import Accelerator

    from spl_losses.training.flags import parse_args
    from spl_losses.training.run_data import load_data
    from spl_losses.training.builders import build_run_loss
    from spl_losses.training.pseudo_labels import teacher_pseudo_labels
    from spl_losses.training.settings import resolve_settings

    args, _ = parse_args(flags(oracle, tmp_path / "grad", *teacher(oracle)))
    data = load_data(args.dataset)
    settings = resolve_settings(args, data)
    pseudo, _ = teacher_pseudo_labels(Accelerator(), settings.pseudo_labels, {}, None, args.dataset, data)
    loss_fn = build_run_loss(settings, data.__class__(**{**data.__dict__, "train_pseudo": pseudo}), settings.epochs)
    logits = torch.zeros(data.num_train, data.num_classes, requires_grad=True)
    loss_fn(logits, data.train_observed, index=torch.arange(data.num_train)).backward()
    grad = logits.grad
    assert int((pseudo < 0).sum()) > 0 and bool((grad[pseudo < 0] > 0).all())
    assert bool((grad[pseudo > 0] < 0).all())
