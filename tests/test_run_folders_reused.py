"""Run folders a newcomer can fix and extend, through recipes/train.py: a run that failed before its first epoch
leaves a folder the corrected command reuses; offline without cached weights fails at once naming
--no-pretrained; a finished run continues to more epochs where its schedule allows; the README's quick look
works after the demo."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest
import yaml
from recipe_flags import dataset_options
from test_recipe import read, recipe, tiny_flags

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
README = os.path.join(REPO, "README.md")


def linear(data_cache, out, *extra):
    return tiny_flags(data_cache, out, "--train-mode", "linear_fixed_features", "--loss", "an", *extra)


def metrics(out):
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


# ------------------------------------------------------------------------------ a run that failed before training
def test_a_folder_whose_run_failed_before_its_first_epoch_is_reused(tmp_path, data_cache, monkeypatch):
    out = tmp_path / "run"

    def no_teacher(*args, **kwargs):
        raise RuntimeError("failed before training")

    monkeypatch.setattr(recipe, "teacher_pseudo_labels", no_teacher)
    with pytest.raises(RuntimeError, match="before training"):
        recipe.main(linear(data_cache, out, "--lr", "0.5"))
    monkeypatch.undo()
    assert (out / "config.yaml").exists() and (out / "run.lock").exists()
    (out / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_map": 1.0}) + "\n")  # a stale record
    results = recipe.main(linear(data_cache, out, "--lr", "1e-3"))  # the corrected command
    assert yaml.safe_load((out / "config.yaml").read_text())["lr"] == 1e-3
    assert [r["epoch"] for r in metrics(out)] == [1, 2] and metrics(out)[0]["val_map"] != 1.0
    assert read(out) == results


def test_a_folder_with_a_finished_epoch_still_belongs_to_its_run(tmp_path, data_cache):
    out = tmp_path / "run"
    assert recipe.main(linear(data_cache, out, "--stop-after", "1")) is None
    with pytest.raises(ValueError, match="holds a different run .*lr"):
        recipe.main(linear(data_cache, out, "--lr", "0.5", "--resume"))


# ------------------------------------------------------------------------------ offline without cached weights
def _recipe_process(args, env_extra, cwd, timeout=120):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(REPO), env.get("PYTHONPATH", "")])
    start = time.perf_counter()
    done = subprocess.run([sys.executable, os.path.join(REPO, "recipes", "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return done, time.perf_counter() - start


def test_offline_without_cached_weights_fails_before_the_data_naming_no_pretrained(tmp_path):
    cache = tmp_path / "datasets"
    args = ["--dataset", "digits_mosaic", *dataset_options(num_train=32, num_validation=16, num_test=16,
                                                           image_size=16, cache_dir=str(cache)),
            "--model", "test_resnet", "--image-size", "16", "--epochs", "1", "--output-dir", str(tmp_path / "run")]
    done, _ = _recipe_process(args, {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}, tmp_path)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--no-pretrained" in errors[0] and "HF_HUB_OFFLINE" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not cache.exists() and not (tmp_path / "run").exists()  # before the data: nothing built, nothing left


def test_offline_a_features_dataset_needs_no_backbone_weights(tmp_path):
    """A linear probe on a features dataset builds no backbone: offline, the default --model (resnet50,
    --pretrained) is no reason to stop; on an image dataset in the same mode the frozen backbone needs them."""
    import datasets
    import numpy as np

    rng = np.random.default_rng(0)
    names = datasets.List(datasets.ClassLabel(names=["a", "b"]))

    def split(n):
        labels = [[int(i % 2)] for i in range(n)]
        return datasets.Dataset.from_dict(
            {"features": rng.normal(size=(n, 4)).astype(np.float32).tolist(), "labels": labels,
             "observed_labels": labels, "index": list(range(n))},
            features=datasets.Features({"features": datasets.List(datasets.Value("float32")), "labels": names,
                                        "observed_labels": names, "index": datasets.Value("int64")}))

    datasets.DatasetDict({"train": split(16), "validation": split(8), "test": split(8)}).save_to_disk(
        str(tmp_path / "feats"))
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    done, _ = _recipe_process(["--dataset", str(tmp_path / "feats"), "--train-mode", "linear_fixed_features",
                               "--loss", "an", "--epochs", "1", "--no-progress", "--output-dir",
                               str(tmp_path / "probe")], offline, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "probe" / "results.json").exists()
    images = ["--dataset", "digits_mosaic", *dataset_options(num_train=32, num_validation=16, num_test=16,
                                                             image_size=16, cache_dir=str(tmp_path / "datasets")),
              "--model", "test_resnet", "--image-size", "16", "--train-mode", "linear_fixed_features",
              "--epochs", "1", "--output-dir", str(tmp_path / "frozen")]
    done, _ = _recipe_process(images, offline, tmp_path)
    assert done.returncode == 2 and "--no-pretrained" in done.stderr, done.stderr


def test_an_unreachable_hub_names_no_pretrained(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["--dataset", "digits_mosaic", *dataset_options(num_train=32, num_validation=16, num_test=16,
                                                           image_size=16, cache_dir=str(tmp_path / "datasets")),
            "--model", "test_resnet", "--image-size", "16", "--epochs", "1", "--output-dir", str(tmp_path / "run")]
    done, _ = _recipe_process(args, {"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(tmp_path / "hf")},
                              tmp_path, timeout=300)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--no-pretrained" in errors[0] and "unreachable" in errors[0], done.stderr
    assert not (tmp_path / "datasets").exists()  # before the data, without the download's retries


def test_pretrained_weights_in_the_cache_are_found(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from spl_losses.training.settings import pretrained_weights_cached

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert pretrained_weights_cached("test_resnet") is False
    snapshot = tmp_path / "models--timm--test_resnet.r160_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"")
    (tmp_path / "models--timm--test_resnet.r160_in1k" / "refs").mkdir()
    (tmp_path / "models--timm--test_resnet.r160_in1k" / "refs" / "main").write_text("0" * 40)
    assert pretrained_weights_cached("test_resnet") is True


# ------------------------------------------------------------------------------ more epochs for a finished run
def test_a_finished_run_continues_to_more_epochs_with_resume(tmp_path, data_cache):
    out = tmp_path / "run"
    recipe.main(linear(data_cache, out))
    with pytest.raises(ValueError, match="pass --resume to continue it to epoch 3"):
        recipe.main(linear(data_cache, out, "--epochs", "3"))
    longer = recipe.main(linear(data_cache, out, "--epochs", "3", "--resume"))
    assert longer["epochs"] == 3 and read(out) == longer
    assert [r["epoch"] for r in metrics(out)] == [1, 2, 3]
    assert yaml.safe_load((out / "config.yaml").read_text())["epochs"] == 3
    straight = recipe.main(linear(data_cache, tmp_path / "straight", "--epochs", "3"))
    assert [r["val_map"] for r in metrics(out)] == [r["val_map"] for r in metrics(tmp_path / "straight")]
    assert (longer["best_epoch"], longer["test_map"]) == (straight["best_epoch"], straight["test_map"])
    with pytest.raises(ValueError, match="--epochs 2 is fewer than the epochs it trained"):
        recipe.main(linear(data_cache, out, "--epochs", "2", "--resume"))


def test_a_stopped_run_continues_to_more_epochs(tmp_path, data_cache):
    out = tmp_path / "run"
    assert recipe.main(linear(data_cache, out, "--stop-after", "1")) is None
    results = recipe.main(linear(data_cache, out, "--epochs", "3", "--resume"))
    assert results["epochs"] == 3 and [r["epoch"] for r in metrics(out)] == [1, 2, 3]


@pytest.mark.parametrize("extra,reason", [(["--sched", "cosine"], "--sched cosine"),
                                          (["--loss", "em_apl", "--apl-warmup-epochs", "1"], "num_epochs")])
def test_more_epochs_are_refused_where_the_horizon_is_part_of_the_run(tmp_path, data_cache, extra, reason):
    out = tmp_path / "run"
    recipe.main(linear(data_cache, out, *extra))
    with pytest.raises(ValueError, match=f"cannot extend it, because .*{re.escape(reason)}"):
        recipe.main(linear(data_cache, out, "--epochs", "3", "--resume", *extra))


# ------------------------------------------------------------------------------ the README's commands in a row
def _readme_commands():
    """Every README mention of the demo config's command (in code blocks and in the text, wrapped or not)."""
    with open(README, encoding="utf-8") as f:
        text = " ".join(f.read().split())
    found = re.findall(r"accelerate launch recipes/train\.py -c recipes/configs/demo\.yaml[^`#]*", text)
    return [command.strip() for command in found]


def test_the_readme_quick_look_works_after_the_demo(tmp_path):
    quick = sorted(set(_readme_commands()))
    assert len(quick) == 1 and "--epochs 1" in quick[0] and "--output-dir" in quick[0], quick
    shutil.copytree(os.path.join(REPO, "recipes"), tmp_path / "recipes")
    shrink = [*dataset_options(num_train=32, num_validation=16, num_test=16, image_size=16,
                               cache_dir=str(tmp_path / "datasets")),
              "--image-size", "16", "--model-kwargs", "{channels: [8, 8, 8, 8], stem_width: 8}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([os.path.abspath(REPO), os.environ.get("PYTHONPATH", "")])}
    accelerate = [sys.executable, "-m", "accelerate.commands.launch"]
    demo = [*accelerate, "recipes/train.py", "-c", "recipes/configs/demo.yaml", "--epochs", "2", *shrink]
    done = subprocess.run(demo, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "output" / "demo" / "epr" / "results.json").exists()
    command = quick[0].split()
    assert command[:2] == ["accelerate", "launch"]
    done = subprocess.run([*accelerate, *command[2:], *shrink], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = command[command.index("--output-dir") + 1]
    assert read(tmp_path / out / "epr")["epochs"] == 1
    assert read(tmp_path / "output" / "demo" / "epr")["epochs"] == 2  # the demo's runs untouched


# ------------------------------------------------------------------------------ the thread count of a run
@pytest.fixture
def one_thread_after():
    import torch

    yield
    torch.set_num_threads(1)


def test_the_thread_count_is_set_printed_and_recorded(tmp_path, data_cache, monkeypatch, capsys, one_thread_after):
    from spl_losses.training.settings import TORCH_DEFAULT_THREADS, thread_count_of_run

    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # what a launcher sets wins over torch's default
    out = tmp_path / "run"
    results = recipe.main(linear(data_cache, out, "--stop-after", "1"))
    assert results is None and "(2 CPU thread(s) each)" in capsys.readouterr().out
    results = recipe.main(linear(data_cache, out, "--threads", "1", "--resume"))  # not part of the identity
    assert results["num_threads"] == 1 and read(out)["num_threads"] == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert thread_count_of_run("auto", 2) == max(1, TORCH_DEFAULT_THREADS // 2)
    assert thread_count_of_run("auto", 10 ** 6) == 1 and thread_count_of_run(3, 2) == 3
    with pytest.raises(ValueError, match="threads: .*'auto' or an integer > 0"):
        config = tmp_path / "bad.yaml"
        config.write_text("threads: 0\n")
        recipe.main(["-c", str(config)])


# ------------------------------------------------------------------------------ BatchNorm over several processes
def test_batchnorm_over_two_processes_warns_once_and_sync_bn_needs_a_gpu(tmp_path, data_cache, capfd):
    from test_recipe import launch_two_processes

    flags = ["--train-mode", "end_to_end", "--loss", "an", "--epochs", "1"]
    launch_two_processes(tiny_flags(data_cache, tmp_path / "two", *flags))  # test_resnet: BatchNorm
    err = capfd.readouterr().err
    assert err.count("each process normalises with its own share's batch statistics") == 1, err
    assert "--sync-bn" in err
    with pytest.raises(ValueError, match="--sync-bn needs CUDA GPUs .* on cpu"):
        recipe.main(tiny_flags(data_cache, tmp_path / "one", *flags, "--sync-bn"))
    assert not (tmp_path / "one").exists()


# ------------------------------------------------------------------------------ what a run and a search leave
def _features_dataset(path):
    import datasets
    import numpy as np

    rng = np.random.default_rng(0)
    label_feature = datasets.List(datasets.ClassLabel(names=["a", "b", "c"]))

    def split(n):
        labels = [sorted(rng.choice(3, size=rng.integers(1, 3), replace=False).tolist()) for _ in range(n)]
        feats = np.asarray([[float(c in row) for c in range(3)] for row in labels]) + rng.normal(0, 0.3, (n, 3))
        return datasets.Dataset.from_dict(
            {"features": feats.astype(np.float32).tolist(), "labels": labels,
             "observed_labels": [[row[0]] for row in labels], "index": list(range(n))},
            features=datasets.Features({"features": datasets.List(datasets.Value("float32")),
                                        "labels": label_feature, "observed_labels": label_feature,
                                        "index": datasets.Value("int64")}))

    datasets.DatasetDict({"train": split(32), "validation": split(16), "test": split(16)}).save_to_disk(str(path))


def test_a_run_that_was_not_pushed_gets_its_model_card_without_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _features_dataset(tmp_path / "data" / "feats")
    recipe.main(["--dataset", "data/feats", "--train-mode", "linear_fixed_features", "--loss", "an", "--epochs", "1",
                 "--batch-size", "8", "--lr", "0.1", "--no-progress", "--output-dir", "runs/mine"])
    card = (tmp_path / "runs" / "mine" / "model" / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert "datasets" not in metadata and "data/feats" not in card and str(tmp_path) not in card
    assert "<local>/feats" in card and "hf-hub:YOUR_ORG/mine" in card


def test_the_search_plot_keeps_its_legend_off_the_curves_and_names_the_dataset(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures = {}
    close = plt.close

    def keep(fig=None):
        figures[fig.axes[0].get_title()] = fig
        close(fig)

    monkeypatch.setattr(plt, "close", keep)
    _features_dataset(tmp_path / "feats")
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump({"search_grid": {"lr": [0.1, 0.01]}, "train_mode": "linear_fixed_features",
                                      "loss": "an", "epochs": 2}))
    recipe.main(["-c", str(config), "--search", "--dataset", str(tmp_path / "feats"), "--batch-size", "8",
                 "--no-progress", "--output-dir", str(tmp_path / "search")])
    fig = figures["feats: an search"]  # the dataset's name, not its path
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    legend, axes = fig.axes[0].get_legend().get_window_extent(renderer), fig.axes[0].get_window_extent(renderer)
    assert not legend.overlaps(axes), (legend, axes)


def test_a_reused_run_reports_the_time_it_trained_for(tmp_path, data_cache, capsys):
    demo = os.path.join(REPO, "recipes", "configs", "demo.yaml")
    overrides = [*dataset_options(num_train=32, num_validation=16, num_test=16, image_size=16, cache_dir=data_cache),
                 "--image-size", "16", "--epochs", "1", "--loss", "an", "--model", "test_resnet",
                 "--model-kwargs", "{}", "--output-dir", str(tmp_path / "demo")]
    config = tmp_path / "two.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load(open(demo)), "losses": ["an", "epr"]}))
    overrides.remove("--loss"), overrides.remove("an")
    recipe.main(["-c", str(config), *overrides])
    capsys.readouterr()
    recipe.main(["-c", str(config), *overrides])  # both reused
    table = capsys.readouterr().out.split("seconds\n", 1)[1].strip().splitlines()[:2]
    for line in table:
        loss, seconds = line.split()[0], float(line.split()[-1])
        trained = sum(r["seconds"] for r in metrics(tmp_path / "demo" / loss))
        assert seconds == pytest.approx(trained, abs=0.05), line


def test_sync_bn_converts_batchnorm_before_prepare_on_several_processes():
    import timm
    import torch

    from spl_losses.training.parallel import sync_batchnorm

    def kinds(model):
        return {type(m) for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}

    for name in ("test_resnet", "test_efficientnet"):  # BatchNorm2d; timm's BatchNormAct2d (its activation kept)
        converted = sync_batchnorm(timm.create_model(name), True, 2, True)
        assert kinds(converted) and all(issubclass(k, torch.nn.SyncBatchNorm) for k in kinds(converted)), name
        acts = [m.act for m in converted.modules() if hasattr(m, "act") and isinstance(m, torch.nn.SyncBatchNorm)]
        assert name == "test_resnet" or any(not isinstance(a, torch.nn.Identity) for a in acts)
    assert torch.nn.SyncBatchNorm not in kinds(sync_batchnorm(timm.create_model("test_resnet"), True, 1, True))
    assert torch.nn.SyncBatchNorm not in kinds(sync_batchnorm(timm.create_model("test_resnet"), False, 2, False))
