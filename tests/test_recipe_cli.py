"""The recipe as a user meets it: --help, configs (the demo's among them), what it prints, checkpoints,
schedules, accumulation and trackers (tiny digits_mosaic data, in-process runs)."""
import contextlib
import io
import json
import os
import re

import pytest
import torch
import yaml
from recipe_flags import dataset_options
from recipe_flags import digits as digits_flags
from test_recipe import CONFIG_DIR, read, recipe

from spl_losses.training.flags import FLAGS, build_parser, parse_args




def flags(data_cache, out, *extra):
    return [*digits_flags(data_cache, num_train=48, num_validation=24, num_test=24), "--model", "test_resnet",
            "--no-pretrained", "--image-size", "16", "--batch-size", "16", "--lr", "1e-3", "--epochs", "2",
            "--no-progress", "--output-dir", str(out), *extra]


def test_help_lists_a_default_for_every_flag():
    body = build_parser().format_help().split("\noptions:", 1)[1]
    entries = {}
    for entry in filter(str.strip, re.split(r"\n  (?=-)", body)):  # one entry per option: names, then help
        entries[entry.split()[0].rstrip(",")] = " ".join(entry.split())
    assert len(FLAGS) > 50
    for flag in FLAGS:
        assert "(default:" in entries[flag.name], flag.name


def test_switches_take_no_form_a_value_or_nothing():
    assert parse_args(["--no-pretrained"])[0].pretrained is False
    assert parse_args(["--pretrained"])[0].pretrained is True
    assert parse_args(["--pretrained", "false"])[0].pretrained is False
    assert parse_args([])[0].pretrained is True


@pytest.mark.parametrize("key,value,message", [
    ("train_mode", "end2end", "expected one of"), ("val_set_variant", "cleen", "expected one of"),
    ("epochs", 1.7, "an integer"), ("lr", [1, 2], "a number"), ("image_size", 0, "an integer > 0"),
    ("lr", -1, "a number > 0"), ("expected_num_pos", float("nan"), "a finite number"), ("pretrained", "maybe", "boolean"),
])
def test_config_values_are_checked_like_flags(tmp_path, key, value, message):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({key: value}))
    with pytest.raises(ValueError, match=f"{key}: .*{message}"):
        parse_args(["-c", str(config)])


def test_demo_config_with_overrides_compares_its_losses(tmp_path, data_cache):
    demo = os.path.join(CONFIG_DIR, "demo.yaml")
    out = tmp_path / "demo"
    overrides = [*dataset_options(num_train=48, num_validation=24, num_test=24, image_size=16, cache_dir=data_cache),
                 "--image-size", "16", "--epochs", "1", "--output-dir", str(out)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rows = recipe.main(["-c", demo, *overrides])
    assert [r["loss"] for r in rows] == yaml.safe_load(open(demo))["losses"]
    assert all(r["best_epoch"] == 1 for r in rows)
    text = printed.getvalue()
    # what runs where, on the main process
    assert "1 process(es) on cpu (1 CPU thread(s) each), mixed precision no" in text
    assert "Next:" in text and "--dataset multilabel_files" in text
    assert (out / "val_map.png").stat().st_size > 0
    for row in rows:
        assert read(out / row["loss"])["test_map"] == pytest.approx(row["test_map"])
    # run again: finished runs are reused, not retrained
    stamp = os.path.getmtime(out / "an" / "results.json")
    recipe.main(["-c", demo, *overrides])
    assert os.path.getmtime(out / "an" / "results.json") == stamp
    # --loss runs one of them
    single = recipe.main(["-c", demo, *overrides, "--loss", "an", "--output-dir", str(tmp_path / "one")])
    assert single["loss"] == "an" and not (tmp_path / "one" / "epr").exists()


def test_no_dataset_without_a_config_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no dataset.*demo.yaml"):
        recipe.main(["--loss", "an", "--output-dir", str(tmp_path / "x")])


def test_finished_run_is_not_retrained_silently(tmp_path, data_cache):
    out = tmp_path / "run"
    first = recipe.main(flags(data_cache, out, "--loss", "an", "--train-mode", "linear_fixed_features"))
    with pytest.raises(ValueError, match="already holds this finished run"):
        recipe.main(flags(data_cache, out, "--loss", "an", "--train-mode", "linear_fixed_features"))
    again = recipe.main(flags(data_cache, out, "--loss", "an", "--train-mode", "linear_fixed_features", "--resume"))
    assert again == first


def test_checkpoint_holds_the_weights_once_in_safetensors(tmp_path, data_cache):
    out = tmp_path / "run"
    assert recipe.main(flags(data_cache, out, "--loss", "role", "--epochs", "3", "--stop-after", "2",
                             "--keep-checkpoints", "1")) is None
    root = out / "checkpoints"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["epoch_002"]  # keep-last 1
    files = {p.name for p in (root / "epoch_002").iterdir()}
    assert {"model.safetensors", "optimizer.bin", "recipe_state.json"} <= files
    assert not [f for f in files if f.endswith((".pt", ".pth"))]
    state = json.loads((root / "epoch_002" / "recipe_state.json").read_text())
    assert state["epoch"] == 2 and state["tracker"]["epochs_done"] == 2
    best = state["best_weights"]
    assert best == f"best_epoch_{state['tracker']['best_epoch']:03d}.safetensors" and (root / best).is_file()
    from safetensors.torch import load_file

    weights = load_file(str(root / "epoch_002" / "model.safetensors"))
    model_keys = [k for k in weights if k.startswith("model.")]
    assert model_keys and "loss.estimator.logits" in weights  # model and loss state, once
    assert {p.name for p in root.iterdir() if p.is_file()} == {best}  # stale best files are removed


def test_schedule_warmup_and_clipping_reach_the_optimizer(tmp_path, data_cache):
    from spl_losses.training.builders import build_scheduler

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=0.1)
    sched = build_scheduler(opt, "none", epochs=4, updates_per_epoch=5, warmup_epochs=2, warmup_lr=0.0)
    lrs = []
    for step in range(1, 21):
        sched.step_update(num_updates=step)
        lrs.append(opt.param_groups[0]["lr"])
    # linear warm-up from 0 over 10 updates, then constant (the protocol's rate)
    assert lrs[:10] == pytest.approx([0.01 * s for s in range(1, 11)]) and lrs[10:] == pytest.approx([0.1] * 10)
    assert build_scheduler(opt, "none", 4, 5) is None
    results = recipe.main(flags(data_cache, tmp_path / "run", "--loss", "an", "--sched", "cosine", "--warmup-epochs",
                                "1", "--clip-grad", "1.0"))
    assert 0 <= results["test_map"] <= 100


def test_gradient_accumulation_equals_the_larger_batch(tmp_path, data_cache):
    common = ["--loss", "an", "--epochs", "1", "--lr", "1e-2", "--model", "test_efficientnet_gn"]
    big = recipe.main(flags(data_cache, tmp_path / "big", *common, "--batch-size", "16"))
    small = recipe.main(flags(data_cache, tmp_path / "acc", *common, "--batch-size", "8", "--grad-accum-steps", "2"))
    assert small["val_map"] == pytest.approx(big["val_map"], abs=1e-3)
    log_big = [json.loads(line) for line in open(tmp_path / "big" / "metrics.jsonl")]
    log_acc = [json.loads(line) for line in open(tmp_path / "acc" / "metrics.jsonl")]
    assert log_acc[0]["val_map"] == pytest.approx(log_big[0]["val_map"], abs=1e-3)


def test_trackers_get_step_loss_learning_rate_and_test_map(tmp_path, data_cache, monkeypatch):
    from accelerate import Accelerator
    from accelerate.tracking import GeneralTracker

    from spl_losses.training import settings

    class Recording(GeneralTracker):
        name, requires_logging_directory, main_process_only = "recording", False, True
        logged = []

        def __init__(self):
            super().__init__()

        @property
        def tracker(self):
            return self

        def store_init_configuration(self, values):
            self.logged.append(("config", dict(values)))

        def log(self, values, step=None, **kwargs):
            self.logged.append((step, dict(values)))

    monkeypatch.setitem(settings.TRACKER_MODULES, "recording", "json")  # "installed"
    argv = flags(data_cache, tmp_path / "run", "--loss", "an", "--log-with", "recording", "--log-interval", "1")
    args, _ = parse_args(argv)
    results = recipe.train(args, Accelerator(log_with=[Recording()]))
    steps = [(s, v) for s, v in Recording.logged if isinstance(s, int) and "train/loss" in v]
    assert len(steps) == 2 * 3 and [s for s, _ in steps] == list(range(1, 7))  # 48 rows / 16 per step, 2 epochs
    assert all(v["train/lr"] == pytest.approx(1e-3) for _, v in steps)
    assert [v["test/map"] for _, v in Recording.logged if "test/map" in v] == [pytest.approx(results["test_map"])]


def test_uninstalled_tracker_and_bad_push_fail_before_work(tmp_path, data_cache, monkeypatch):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="not an accelerate tracker"):
        recipe.main(flags(data_cache, out, "--log-with", "nope"))
    monkeypatch.setattr("spl_losses.training.settings.TRACKER_MODULES", {"tensorboard": "no_such_module_xyz"})
    with pytest.raises(ValueError, match="not installed"):
        recipe.main(flags(data_cache, out, "--log-with", "tensorboard"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no_login"))
    with pytest.raises(ValueError, match="no Hugging Face token"):
        recipe.main(flags(data_cache, out, "--push-to-hub", "org/name"))
    assert not out.exists()
