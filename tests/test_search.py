"""--search on a shared Optuna study: several workers, a killed worker, resuming, PostgreSQL, TPE.

Workers are separate processes running ``recipes/train.py ... --search`` (what a user starts on several
machines or GPUs), on a tiny features dataset so that each point trains in a fraction of a second.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from recipe_flags import save_features_dataset
import yaml
from test_recipe import recipe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "recipes", "train.py")
GRID = {"batch_size": [8, 16], "lr": [0.3, 0.1, 0.03, 0.01]}



@pytest.fixture(scope="module")
def features_data(tmp_path_factory):
    return save_features_dataset(tmp_path_factory.mktemp("search_data") / "feats", num_classes=4, sizes=(64, 32, 32),
                                 noise=0.6)


def _config(tmp_path, features_data, epochs=2, grid=GRID, **extra):
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump({"dataset": features_data, "train_mode": "linear_fixed_features", "loss": "an",
                                      "epochs": epochs, "progress": False, "search_grid": grid, **extra}))
    return str(config)


def _worker(config, out, *extra, env=None):
    return subprocess.Popen([sys.executable, TRAIN, "-c", config, "--search", "--output-dir", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _trained_points(outputs):
    return [line.split("] ", 1)[1] for text in outputs for line in text.splitlines()
            if line.startswith("[search] ") and not line.startswith("[search] winner")
            and " point(s) finished" not in line]


def _metrics(out, name):
    return [json.loads(line) for line in open(os.path.join(out, name, "metrics.jsonl"))]


def test_three_workers_share_one_study_each_point_once(tmp_path, features_data):
    config = _config(tmp_path, features_data)
    sequential = recipe.main(["-c", config, "--search", "--output-dir", str(tmp_path / "seq")])
    assert len(sequential["runs"]) == 8
    workers = [_worker(config, tmp_path / "shared") for _ in range(3)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    trained = _trained_points(outputs)
    assert sorted(trained) == sorted(r["name"] for r in sequential["runs"])  # every point once, by one worker
    shared = json.load(open(tmp_path / "shared" / "search.json"))
    assert shared["winner"]["name"] == sequential["winner"]["name"]
    by_name = {r["name"]: r for r in shared["runs"]}
    for run in sequential["runs"]:
        assert by_name[run["name"]]["val_map"] == pytest.approx(run["val_map"], abs=1e-9)
        assert by_name[run["name"]]["test_map"] == pytest.approx(run["test_map"], abs=1e-9)
        assert [m["val_map"] for m in _metrics(tmp_path / "shared", run["name"])] == \
            [m["val_map"] for m in _metrics(tmp_path / "seq", run["name"])]
    # started again: nothing left to train, the same summary
    again = _worker(config, tmp_path / "shared")
    assert not _trained_points([again.communicate(timeout=120)[0]])
    assert json.load(open(tmp_path / "shared" / "search.json"))["winner"] == shared["winner"]


def test_a_killed_workers_point_is_retried_and_the_search_completes(tmp_path, features_data):
    import optuna

    grid = {"lr": [0.3, 0.1]}
    config = _config(tmp_path, features_data, epochs=40, grid=grid)
    out = tmp_path / "killed"
    worker = _worker(config, out)
    deadline = time.time() + 120
    first = None
    while time.time() < deadline and first is None:  # wait until the first point is a few epochs in
        time.sleep(0.2)
        for name in os.listdir(out) if out.exists() else []:
            log = os.path.join(out, name, "metrics.jsonl")
            if os.path.isfile(log) and sum(1 for _ in open(log)) >= 3:
                first = name
    assert first is not None, "the worker did not start training"
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert not os.path.isfile(os.path.join(out, first, "results.json"))
    finisher = _worker(config, out)
    output = finisher.communicate(timeout=600)[0]
    assert finisher.returncode == 0, output
    assert first in _trained_points([output])
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{out / 'search.db'}")
    states = [t.state.name for t in study.trials]
    failed = [t.number for t in study.trials if t.state.name == "FAIL"]
    retried = sorted(t.user_attrs["retry_of"] for t in study.trials if "retry_of" in t.user_attrs)
    # the killed worker's trials (in linear mode both points, trained as one group), each failed and retried once
    assert states.count("COMPLETE") == 2 and failed and retried == failed
    epochs = [m["epoch"] for m in _metrics(out, first)]
    assert epochs == list(range(1, 41))  # resumed from its checkpoint: every epoch logged once
    assert json.load(open(out / "search.json"))["winner"]["name"]


def test_tpe_search_over_ranges(tmp_path, features_data):
    config = _config(tmp_path, features_data, epochs=2,
                     search_space={"lr": {"low": 0.01, "high": 0.3, "log": True}, "batch_size": [8, 16]})
    summary = recipe.main(["-c", config, "--search", "--search-sampler", "tpe", "--search-trials", "3",
                           "--output-dir", str(tmp_path / "tpe")])
    assert len(summary["runs"]) == 3
    for run in summary["runs"]:
        assert 0.01 <= run["params"]["lr"] <= 0.3 and run["params"]["batch_size"] in (8, 16)
    assert summary["winner"]["val_map"] == max(r["val_map"] for r in summary["runs"])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres(tmp_path):
    """A throw-away PostgreSQL server (initdb refuses root: it runs as the ``postgres`` user)."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("the PostgreSQL driver psycopg is not installed (pip install -e '.[test]')")
    as_postgres = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
    if as_postgres and not shutil.which("runuser"):
        pytest.skip("running as root without runuser: initdb refuses root")
    import pathlib
    import tempfile

    base = pathlib.Path(tempfile.mkdtemp(prefix="spl_pg_"))  # in /tmp: pytest's own folders are private to root
    os.chmod(base, 0o755)
    if as_postgres:
        shutil.chown(base, "postgres")
    data, port = base / "data", _free_port()
    subprocess.run([*as_postgres, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], check=True,
                   capture_output=True)
    subprocess.run([*as_postgres, pg_ctl, "-D", str(data), "-o", f"-k {base} -p {port} -c listen_addresses=''",
                    "-l", str(base / "log"), "-w", "start"], check=True, capture_output=True)
    try:
        subprocess.run([*as_postgres, shutil.which("createdb") or "createdb", "-h", str(base), "-p", str(port),
                        "-U", "postgres", "search"], check=True, capture_output=True)
        yield f"postgresql+psycopg://postgres@/search?host={base}&port={port}"
    finally:
        subprocess.run([*as_postgres, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_shared_search_on_postgresql(tmp_path, features_data, postgres):
    config = _config(tmp_path, features_data, epochs=2)
    workers = [_worker(config, tmp_path / "pg_search", "--search-storage", postgres) for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    assert sorted(_trained_points(outputs)) == sorted(
        f"batch_size-{b}_lr-{lr}" for b in GRID["batch_size"] for lr in GRID["lr"])
    assert json.load(open(tmp_path / "pg_search" / "search.json"))["winner"]["name"]


def test_next_trials_takes_the_waiting_points_of_one_group(tmp_path):
    from spl_losses.training.study import group_key
    from spl_losses.training.study import SearchStudy

    study = SearchStudy(str(tmp_path), grid=GRID, allowed=list(GRID))

    def params(taken):
        return [point[0] for _, point in taken]

    assert params(study.next_trials(group_key)) == [{"batch_size": 8, "lr": lr} for lr in GRID["lr"]]
    assert params(study.next_trials(group_key, limit=3)) == [{"batch_size": 16, "lr": lr} for lr in GRID["lr"][:3]]
    assert params(study.next_trials(group_key)) == [{"batch_size": 16, "lr": GRID["lr"][3]}]
    assert study.next_trials(group_key) == []


def test_linear_search_trains_each_batch_size_in_one_pass(tmp_path, features_data, monkeypatch):
    config = _config(tmp_path, features_data, epochs=3, loss="epr")
    passes = []
    run = recipe.run

    def spy(point_args, accelerator=None):  # every call of the one run function: its points
        passes.append([(a.batch_size, a.lr) for a in point_args])
        return run(point_args, accelerator)

    monkeypatch.setattr(recipe, "run", spy)
    batched = recipe.main(["-c", config, "--search", "--output-dir", str(tmp_path / "batched")])
    assert passes == [[(bs, lr) for lr in GRID["lr"]] for bs in GRID["batch_size"]]
    monkeypatch.setattr(recipe, "can_train_together", lambda args, accelerator: False)  # point by point
    sequential = recipe.main(["-c", config, "--search", "--output-dir", str(tmp_path / "sequential")])
    assert passes[2:] == [[(bs, lr)] for bs in GRID["batch_size"] for lr in GRID["lr"]]  # the same run, one by one
    assert len(sequential["runs"]) == len(batched["runs"]) == 8
    passes.clear()  # --search-group-size: at most that many points per pass; 1: point by point
    monkeypatch.undo()
    monkeypatch.setattr(recipe, "run", spy)
    recipe.main(["-c", config, "--search", "--output-dir", str(tmp_path / "pairs"), "--search-group-size", "3"])
    assert passes == [[(bs, lr) for lr in GRID["lr"][:3]] if i % 2 == 0 else [(bs, GRID["lr"][3])]
                      for bs in GRID["batch_size"] for i in range(2)]
    passes.clear()
    single = recipe.main(["-c", config, "--search", "--output-dir", str(tmp_path / "single"), "--search-group-size", "1"])
    assert passes == [[(bs, lr)] for bs in GRID["batch_size"] for lr in GRID["lr"]]
    assert [r["name"] for r in single["runs"]] == [r["name"] for r in sequential["runs"]]
    assert [r["val_map"] for r in single["runs"]] == pytest.approx([r["val_map"] for r in sequential["runs"]], abs=1e-4)
    assert json.load(open(tmp_path / "batched" / "search.json"))["winner"]["name"] == sequential["winner"]["name"]
    by_name = {r["name"]: r for r in batched["runs"]}
    for run in sequential["runs"]:
        name = run["name"]
        assert {"config.yaml", "metrics.jsonl", "results.json", "val_map.png", "model", "checkpoints"} <= \
            set(os.listdir(tmp_path / "batched" / name))
        assert by_name[name]["best_epoch"] == run["best_epoch"]
        assert by_name[name]["val_map"] == pytest.approx(run["val_map"], abs=1e-4)
        assert by_name[name]["test_map"] == pytest.approx(run["test_map"], abs=1e-4)
        assert [m["val_map"] for m in _metrics(tmp_path / "batched", name)] == \
            pytest.approx([m["val_map"] for m in _metrics(tmp_path / "sequential", name)], abs=1e-4)


def test_a_search_stopped_with_stop_after_continues(tmp_path, features_data):
    config = _config(tmp_path, features_data, epochs=3, grid={"lr": [0.3, 0.1]})
    out = tmp_path / "stopped"
    assert recipe.main(["-c", config, "--search", "--output-dir", str(out), "--stop-after", "1"]) == {}
    summary = recipe.main(["-c", config, "--search", "--output-dir", str(out)])  # continues, not restarts
    assert len(summary["runs"]) == 2
    for run in summary["runs"]:
        assert [m["epoch"] for m in _metrics(out, run["name"])] == [1, 2, 3]
