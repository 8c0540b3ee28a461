"""End-to-end tests of recipes/train.py on tiny data (digits_mosaic, 64/30/31 mosaics of 16 px).

Runs are in-process (``main(argv)``); the two-process checks fork two CPU processes with gloo, the
way ``accelerate.debug_launcher`` does, on a free port.
"""
import json
import os
import socket
import tempfile

import pytest
from recipe_flags import digits as digits_flags, load_recipe
import torch
import yaml

CONFIG_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "recipes", "configs")


recipe = load_recipe()




def tiny_flags(data_cache, out, *extra, model="test_resnet"):
    data_flags = digits_flags(data_cache, num_train=64, num_validation=30, num_test=31)  # odd sizes: padding
    return [*data_flags, "--model", model, "--pretrained", "false",
            "--image-size", "16", "--batch-size", "16", "--lr", "1e-3", "--epochs", "2", "--no-progress",
            "--cache-dir", os.path.join(data_cache, "features"), "--output-dir", str(out), *extra]


def read(out, name="results.json"):
    with open(os.path.join(out, name)) as f:
        return json.load(f)


# ----------------------------------------------------------------------------------------- the three train modes
@pytest.mark.parametrize("mode,loss", [("linear_fixed_features", "role"), ("end_to_end", "role"),
                                       ("linear_init", "an")])
def test_train_modes_leave_the_run_contract(tmp_path, data_cache, mode, loss):
    out = tmp_path / "run"
    extra = ["--linear-epochs", "2", "--linear-batch-size", "16"] if mode == "linear_init" else []
    results = recipe.main(tiny_flags(data_cache, out, "--train-mode", mode, "--loss", loss, *extra))
    saved = read(out)
    for key in ("best_epoch", "val_map", "val_map_skip_empty", "test_map", "test_map_skip_empty", "test_metrics",
                "dataset", "model", "loss", "train_mode", "label_names", "observed_seed"):
        assert key in saved, key
    assert saved["label_names"] == [str(d) for d in range(10)]
    assert saved["train_mode"] == mode and saved["loss"] == loss
    assert 0.0 <= saved["test_map"] <= 100.0 and saved["test_map"] == pytest.approx(results["test_map"])
    metrics = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [m["epoch"] for m in metrics] == [1, 2]  # epochs count from 1, as the papers
    # the best epoch is the arg-max of the logged validation mAP (first one on ties)
    best = max(range(2), key=lambda e: (metrics[e]["val_map"], -e))
    assert saved["best_epoch"] == best + 1 and saved["val_map"] == pytest.approx(metrics[best]["val_map"])
    cfg = yaml.safe_load(open(out / "config.yaml"))
    assert cfg["train_mode"] == mode
    # k is the benchmark's value (digits_mosaic: 3.439) for losses that take it, absent otherwise
    assert cfg["expected_num_pos"] == (pytest.approx(3.439) if loss == "role" else None)
    assert (out / "val_map.png").stat().st_size > 0
    # the export is a stock timm model whose test predictions reproduce test_map
    import timm

    model = timm.create_model(f"local-dir:{out / 'model'}", pretrained=True)
    assert json.load(open(out / "model" / "config.json"))["label_names"] == saved["label_names"]
    # the export records the training preprocessing (16 px squashed, no crop; test_resnet's own mean/std and
    # interpolation), not timm's default for the architecture (160 px, crop 0.95, center)
    data_config = timm.data.resolve_data_config({}, model=model)
    assert data_config["input_size"] == (3, 16, 16)
    assert data_config["crop_pct"] == 1.0 and data_config["crop_mode"] == "squash"
    assert data_config["interpolation"] == "bilinear"
    assert tuple(data_config["mean"]) == (0.5, 0.5, 0.5) and tuple(data_config["std"]) == (0.5, 0.5, 0.5)
    if loss == "role":
        from safetensors.torch import load_file

        state = load_file(str(out / "model" / "loss_state.safetensors"))
        assert state["estimator.logits"].shape == (64, 10)
    assert model.num_classes == 10


@pytest.mark.parametrize("loss", sorted(__import__("spl_losses").list_losses()))
def test_every_registered_loss_runs_through_the_linear_recipe(tmp_path, data_cache, loss):
    # the generic protocol: set_epoch, index for per-example state, update_from_predictions, state export
    extra = ["--apl-warmup-epochs", "1"] if loss == "em_apl" else []  # APL pseudo-labels after epoch 1
    results = recipe.main(tiny_flags(data_cache, tmp_path / loss, "--train-mode", "linear_fixed_features",
                                     "--loss", loss, "--epochs", "2", *extra))
    assert results["best_epoch"] in (1, 2) and 0 <= results["test_map"] <= 100


@pytest.mark.parametrize("loss,extra", [("em_apl", ["--apl-warmup-epochs", "1"]), ("ll_cp", [])])
def test_stateful_losses_end_to_end_export_their_state(tmp_path, data_cache, loss, extra):
    from safetensors.torch import load_file

    out = tmp_path / loss
    recipe.main(tiny_flags(data_cache, out, "--train-mode", "end_to_end", "--loss", loss, *extra))
    state = load_file(str(out / "model" / "loss_state.safetensors"))
    assert any(t.dim() == 2 and t.shape == (64, 10) for t in state.values())  # per-example label state


def test_linear_mode_reuses_the_feature_cache(tmp_path, data_cache):
    cache = os.path.join(data_cache, "features")
    recipe.main(tiny_flags(data_cache, tmp_path / "a", "--train-mode", "linear_fixed_features", "--loss", "an"))
    files = sorted(os.listdir(cache))
    stamps = {f: os.path.getmtime(os.path.join(cache, f)) for f in files}
    recipe.main(tiny_flags(data_cache, tmp_path / "b", "--train-mode", "linear_fixed_features", "--loss", "an",
                           "--lr", "1e-2"))
    assert sorted(os.listdir(cache)) == files  # same backbone (same seed, same size): nothing new extracted
    assert {f: os.path.getmtime(os.path.join(cache, f)) for f in files} == stamps


def test_features_dataset_trains_a_linear_probe(tmp_path):
    import datasets
    import numpy as np

    rng = np.random.default_rng(0)
    names = ["a", "b", "c"]
    label_feature = datasets.List(datasets.ClassLabel(names=names))

    def split(n):
        labels = [sorted(rng.choice(3, size=rng.integers(1, 3), replace=False).tolist()) for _ in range(n)]
        observed = [[row[0]] for row in labels]
        feats = np.asarray([[float(c in row) for c in range(3)] for row in labels]) + rng.normal(0, 0.3, (n, 3))
        return datasets.Dataset.from_dict(
            {"features": feats.astype(np.float32).tolist(), "labels": labels, "observed_labels": observed,
             "index": list(range(n))},
            features=datasets.Features({"features": datasets.List(datasets.Value("float32")),
                                        "labels": label_feature, "observed_labels": label_feature,
                                        "index": datasets.Value("int64")}))

    path = tmp_path / "feats"
    datasets.DatasetDict({"train": split(48), "validation": split(24), "test": split(24)}).save_to_disk(str(path))
    out = tmp_path / "run"
    recipe.main(["--dataset", str(path), "--train-mode", "linear_fixed_features", "--loss", "epr", "--epochs", "4",
                 "--batch-size", "8", "--lr", "0.1", "--no-progress", "--output-dir", str(out),
                 "--feature-backbone", "test_resnet"])
    results = read(out)
    cfg = yaml.safe_load(open(out / "config.yaml"))
    # k for a non-benchmark dataset: mean positives per row of the clean validation labels
    val = datasets.load_from_disk(str(path))["validation"]
    assert cfg["expected_num_pos"] == pytest.approx(np.mean([len(r) for r in val["labels"]]))
    assert results["test_map"] > 60.0  # separable features: far above chance (~50)
    from spl_losses.models.linear_probe import LinearProbe

    probe = LinearProbe.from_pretrained(str(out / "model"))
    assert probe.label_names == names and probe.in_features == 3
    # --feature-backbone: the probe says which timm model makes its features and how it preprocesses images
    # (test_resnet's pretrained config: 160 px, bilinear, crop 0.95 center, mean = std = 0.5)
    assert probe.backbone == "test_resnet"
    assert probe.preprocessing == {"input_size": [3, 160, 160], "interpolation": "bilinear", "mean": [0.5] * 3,
                                   "std": [0.5] * 3, "crop_pct": 0.95, "crop_mode": "center"}


@pytest.mark.parametrize("extra", [["--cl", "--cl-coef", "0.5", "--loss", "an"], ["--boostlu", "--loss", "ll_r"]])
def test_contrastive_and_boostlu_options_train_end_to_end(tmp_path, data_cache, extra):
    out = tmp_path / "run"
    results = recipe.main(tiny_flags(data_cache, out, "--epochs", "1", *extra, model="resnet10t") +
                          ["--model-kwargs", "{channels: [16, 32, 64, 128], stem_width: 16}"])
    assert 0 < results["test_map"] <= 100
    model_config = json.load(open(out / "model" / "config.json"))
    assert ("boostlu_alpha" in model_config) == ("--boostlu" in extra)


def test_em_apl_warm_up_epochs_skip_the_training_set_predictions(tmp_path, data_cache, monkeypatch):
    """predictions_due: with 2 warm-up epochs of 3, only epochs 2 and 3 (1-based) predict the training set."""
    calls = []
    original = recipe.predict_linear

    def counting(head, x):
        calls.append(x.shape[0])
        return original(head, x)

    monkeypatch.setattr(recipe, "predict_linear", counting)
    recipe.main(tiny_flags(data_cache, tmp_path / "apl", "--train-mode", "linear_fixed_features", "--loss", "em_apl",
                           "--epochs", "3", "--apl-warmup-epochs", "2"))
    assert calls.count(64) == 2  # training set (64 rows): not in the first epoch
    assert calls.count(30) == 3 and calls.count(31) == 1  # validation every epoch, test once


def test_checkpoint_with_other_class_count_is_refused_before_training(tmp_path, data_cache):
    import timm

    timm.models.save_for_hf(timm.create_model("test_resnet", num_classes=4), tmp_path / "four", safe_serialization=True)
    out = tmp_path / "run"
    flags = tiny_flags(data_cache, out, "--loss", "an", model=f"local-dir:{tmp_path / 'four'}")
    flags[flags.index("--pretrained") + 1] = "true"
    with pytest.raises(ValueError, match=r"predicts 4 classes but the dataset has 10"):
        recipe.main(flags)
    assert not (out / "metrics.jsonl").exists()
    with pytest.raises(ValueError, match="no exported model"):
        recipe.main(tiny_flags(data_cache, out, "--loss", "an", model=f"local-dir:{tmp_path / 'nowhere'}"))


# ----------------------------------------------------------------------------------------- resume, bf16, search
def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, data_cache):
    flags = ["--train-mode", "end_to_end", "--loss", "role", "--epochs", "3"]
    recipe.main(tiny_flags(data_cache, tmp_path / "full", *flags))
    assert recipe.main(tiny_flags(data_cache, tmp_path / "split", *flags, "--stop-after", "1")) is None
    assert not (tmp_path / "split" / "results.json").exists()
    recipe.main(tiny_flags(data_cache, tmp_path / "split", *flags, "--resume"))
    full, split = read(tmp_path / "full"), read(tmp_path / "split")
    for key in ("best_epoch", "val_map", "test_map", "test_map_skip_empty"):
        assert split[key] == full[key], key
    full_log = [json.loads(line) for line in open(tmp_path / "full" / "metrics.jsonl")]
    split_log = [json.loads(line) for line in open(tmp_path / "split" / "metrics.jsonl")]
    assert [m["val_map"] for m in split_log] == [m["val_map"] for m in full_log]


def test_linear_init_resumes_inside_the_fine_tuning_phase(tmp_path, data_cache):
    flags = ["--train-mode", "linear_init", "--loss", "role", "--linear-epochs", "2", "--linear-batch-size", "16"]
    full = recipe.main(tiny_flags(data_cache, tmp_path / "full", *flags))
    # interrupted after linear epoch 1, then after fine-tuning epoch 1, then finished
    assert recipe.main(tiny_flags(data_cache, tmp_path / "split", *flags, "--stop-after", "1")) is None
    assert recipe.main(tiny_flags(data_cache, tmp_path / "split", *flags, "--stop-after", "1", "--resume")) is None
    split = recipe.main(tiny_flags(data_cache, tmp_path / "split", *flags, "--resume"))
    for key in ("best_epoch", "val_map", "test_map"):
        assert split[key] == full[key], key
    assert read(tmp_path / "split" / "linear_phase") == read(tmp_path / "full" / "linear_phase")


def test_observed_validation_variant_selects_on_single_positives(tmp_path, data_cache):
    out = tmp_path / "obs"
    recipe.main(tiny_flags(data_cache, out, "--train-mode", "linear_fixed_features", "--loss", "an",
                           "--val-set-variant", "observed"))
    clean = tmp_path / "clean"
    recipe.main(tiny_flags(data_cache, clean, "--train-mode", "linear_fixed_features", "--loss", "an"))
    obs_log = [json.loads(line) for line in open(out / "metrics.jsonl")]
    clean_log = [json.loads(line) for line in open(clean / "metrics.jsonl")]
    # same training, different validation labels: train losses agree, validation mAPs do not
    assert [r["train_loss"] for r in obs_log] == [r["train_loss"] for r in clean_log]
    assert [r["val_map"] for r in obs_log] != [r["val_map"] for r in clean_log]


def test_push_to_hub_uploads_the_export(hub, tmp_path, data_cache):
    out = tmp_path / "run"
    recipe.main(tiny_flags(data_cache, out, "--train-mode", "linear_fixed_features", "--loss", "role",
                           "--epochs", "1", "--push-to-hub", "spl-test/recipe-run"))
    files = hub.repo_files("spl-test/recipe-run")
    assert {"config.json", "model.safetensors", "loss_state.safetensors", "README.md"} <= set(files)


def test_bf16_on_cpu(tmp_path, data_cache):
    results = recipe.main(tiny_flags(data_cache, tmp_path / "bf16", "--train-mode", "end_to_end", "--loss", "an",
                                     "--mixed-precision", "bf16", "--epochs", "1"))
    assert results["test_map"] == results["test_map"] and 0 < results["test_map"] <= 100


def test_search_runs_the_grid_and_skips_finished_runs(tmp_path, data_cache):
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump({"search_grid": {"lr": [1e-3, 1e-2]}, "train_mode": "linear_fixed_features",
                                      "loss": "an", "epochs": 2}))
    out = tmp_path / "search"
    summary = recipe.main(["-c", str(config), "--search", *tiny_flags(data_cache, out)])
    assert [r["name"] for r in summary["runs"]] == ["lr-0.001", "lr-0.01"]
    saved = read(out, "search.json")
    best = max(saved["runs"], key=lambda r: r["val_map"])
    assert saved["winner"]["name"] == best["name"]
    assert (out / "val_map.png").exists() and (out / "lr-0.01" / "val_map.png").exists()
    stamp = os.path.getmtime(out / "lr-0.001" / "results.json")
    recipe.main(["-c", str(config), "--search", *tiny_flags(data_cache, out)])
    assert os.path.getmtime(out / "lr-0.001" / "results.json") == stamp


def test_linear_init_search_trains_the_linear_phase_once(tmp_path, data_cache):
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump({"search_grid": {"lr": [1e-3, 1e-2]}, "train_mode": "linear_init", "loss": "role",
                                      "linear_epochs": 2, "linear_batch_size": 16}))
    out = tmp_path / "search"
    recipe.main(["-c", str(config), "--search", *tiny_flags(data_cache, out)])
    phase_log = [json.loads(line) for line in open(out / "linear_phase" / "metrics.jsonl")]
    assert [r["epoch"] for r in phase_log] == [1, 2]  # trained once, reused by the second run
    assert not (out / "lr-0.001" / "linear_phase").exists()
    standalone = recipe.main(tiny_flags(data_cache, tmp_path / "alone", "--train-mode", "linear_init", "--loss", "role",
                                        "--linear-epochs", "2", "--linear-batch-size", "16",
                                        "--lr", "1e-2"))
    assert read(out / "lr-0.01")["test_map"] == standalone["test_map"]


# ----------------------------------------------------------------------------------------- errors before work
@pytest.mark.parametrize("extra,message", [
    (["--loss", "nope"], "Unknown loss 'nope'"),
    (["--model", "resnet_does_not_exist"], "unknown timm model"),
    (["--dataset", "/nonexistent/spml/dataset"], "Could not load SPML dataset"),
    (["--loss", "an", "--alpha", "0.3"], "does not take option"),
])
def test_errors_before_work(tmp_path, data_cache, extra, message):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        recipe.main(tiny_flags(data_cache, out, *extra))
    assert not (out / "metrics.jsonl").exists()


def test_bce_on_single_positive_training_labels_is_refused(tmp_path):
    import datasets

    names = ["a", "b"]
    lf = datasets.List(datasets.ClassLabel(names=names))
    feats = datasets.Features({"features": datasets.List(datasets.Value("float32")), "labels": lf,
                               "observed_labels": lf, "index": datasets.Value("int64")})
    rows = {"features": [[0.0, 1.0]] * 4, "labels": [[0], [1], [0], [1]], "observed_labels": [[0], [1], [0], [1]],
            "index": [0, 1, 2, 3]}
    path = tmp_path / "sp"
    split = datasets.Dataset.from_dict(rows, features=feats)
    datasets.DatasetDict({"train": split, "validation": split, "test": split}).save_to_disk(str(path))
    with pytest.raises(ValueError, match="full labels.*--loss an"):
        recipe.main(["--dataset", str(path), "--loss", "bce", "--train-mode", "linear_fixed_features",
                     "--output-dir", str(tmp_path / "o")])
    # k cannot be estimated from validation labels that are single positives only
    with pytest.raises(ValueError, match="expected-num-pos"):
        recipe.main(["--dataset", str(path), "--loss", "epr", "--train-mode", "linear_fixed_features",
                     "--val-set-variant", "observed", "--output-dir", str(tmp_path / "o2")])


def test_dataset_without_observed_labels_is_refused(tmp_path):
    import datasets

    lf = datasets.List(datasets.ClassLabel(names=["a", "b"]))
    feats = datasets.Features({"features": datasets.List(datasets.Value("float32")), "labels": lf,
                               "index": datasets.Value("int64")})
    split = datasets.Dataset.from_dict({"features": [[0.0, 1.0]] * 4, "labels": [[0], [1], [0, 1], [1]],
                                        "index": [0, 1, 2, 3]}, features=feats)
    path = tmp_path / "no_observed"
    datasets.DatasetDict({"train": split, "validation": split, "test": split}).save_to_disk(str(path))
    with pytest.raises(ValueError, match="observed_labels"):
        recipe.main(["--dataset", str(path), "--loss", "an", "--train-mode", "linear_fixed_features",
                     "--output-dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_output_dir_of_another_run_is_refused(tmp_path, data_cache):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump({"loss": "an", "lr": 0.5}))
    (out / "results.json").write_text("{}")  # it finished: the folder is its run's
    with pytest.raises(ValueError, match="holds a different run"):
        recipe.main(tiny_flags(data_cache, out, "--loss", "role"))


# ----------------------------------------------------------------------------------------- two processes
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(argv):
    from accelerate.state import AcceleratorState

    os.environ["LOCAL_RANK"] = str(torch.distributed.get_rank())  # one machine: local rank = rank
    AcceleratorState._reset_state(reset_partial_state=True)
    torch.set_num_threads(1)
    recipe.main(argv)


def launch_two_processes(argv):
    """Fork two CPU processes with gloo (what accelerate.debug_launcher does, on a free port)."""
    from accelerate.utils import PrepareForLaunch, patch_environment
    from torch.multiprocessing import start_processes

    with tempfile.NamedTemporaryFile() as rdv, patch_environment(
            world_size=2, master_addr="127.0.0.1", master_port=str(_free_port()), accelerate_use_cpu="yes",
            accelerate_debug_rdv_file=rdv.name, gloo_socket_ifname="lo"):
        start_processes(PrepareForLaunch(_child, debug=True), args=(argv,), nprocs=2, start_method="fork")


@pytest.mark.parametrize("mode", ["linear_fixed_features", "end_to_end"])
def test_two_processes_match_one_process(tmp_path, data_cache, mode):
    # GroupNorm model and a per-entry-mean loss: the global batch split over 2 processes gives the same update
    flags = ["--train-mode", mode, "--loss", "an" if mode == "end_to_end" else "role"]
    one = recipe.main(tiny_flags(data_cache, tmp_path / "one", *flags, model="test_efficientnet_gn"))
    launch_two_processes(tiny_flags(data_cache, tmp_path / "two", *flags, model="test_efficientnet_gn"))
    two = read(tmp_path / "two")
    assert two["num_processes"] == 2
    assert two["best_epoch"] == one["best_epoch"]
    for key in ("val_map", "test_map", "test_map_skip_empty"):
        assert two[key] == one[key], key  # rankings identical; losses agree to float rounding
    log_one = [json.loads(line) for line in open(tmp_path / "one" / "metrics.jsonl")]
    log_two = [json.loads(line) for line in open(tmp_path / "two" / "metrics.jsonl")]
    assert [r["val_map"] for r in log_two] == [r["val_map"] for r in log_one]
    assert [r["train_loss"] for r in log_two] == pytest.approx([r["train_loss"] for r in log_one], rel=1e-5)


@pytest.mark.parametrize("batch_size,loss", [("20", "epr"), ("21", "ll_r")])
def test_two_processes_match_one_process_when_the_last_batch_is_uneven(tmp_path, data_cache, batch_size, loss):
    """64 rows in batches of 20: the last global batch has 4 rows (2 + 2); of 21: 1 row, so one process gets none.
    Nothing is padded or repeated, so two processes train exactly one process's batches (batch-level statistics:
    EPR's regulariser, LL-R's selection over the global batch)."""
    flags = ["--train-mode", "end_to_end", "--loss", loss, "--batch-size", batch_size, "--epochs", "3"] + \
        (["--delta-rel", "0.2"] if loss == "ll_r" else [])
    one = recipe.main(tiny_flags(data_cache, tmp_path / "one", *flags, model="test_efficientnet_gn"))
    launch_two_processes(tiny_flags(data_cache, tmp_path / "two", *flags, model="test_efficientnet_gn"))
    two = read(tmp_path / "two")
    log_one = [json.loads(line) for line in open(tmp_path / "one" / "metrics.jsonl")]
    log_two = [json.loads(line) for line in open(tmp_path / "two" / "metrics.jsonl")]
    assert [r["train_loss"] for r in log_two] == pytest.approx([r["train_loss"] for r in log_one], rel=1e-4)
    # shares of 11 and 10 rows convolve in another grouping than one batch of 21: rounding-level differences, which
    # a near-tie in a ranking can turn into a small mAP difference
    assert [r["val_map"] for r in log_two] == pytest.approx([r["val_map"] for r in log_one], abs=0.1)
    assert two["test_map"] == pytest.approx(one["test_map"], abs=0.1)


def test_a_batchnorm_model_with_an_empty_share_is_refused_before_training(tmp_path, data_cache):
    from spl_losses.training.parallel import check_process_shares as _check_shares

    import timm

    bn = timm.create_model("test_resnet", pretrained=False)
    with pytest.raises(ValueError, match="1 row\\(s\\).*fewer than the 2 processes"):
        _check_shares(bn, 64, 21, 2)
    _check_shares(bn, 64, 20, 2)  # 4 rows: 2 per process
    _check_shares(timm.create_model("test_efficientnet_gn", pretrained=False), 64, 21, 2)  # GroupNorm: fine
