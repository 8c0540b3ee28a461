"""Unit tests of the reusable pieces of spl_losses.training (hand-computed expectations, invariants)."""
import pytest
import torch
import yaml
from torch import nn

from spl_losses.training.flags import load_config_file, parse_args
from spl_losses.training.evaluation import scatter_by_index
from spl_losses.training.features import weights_fingerprint
from spl_losses.training.linear import train_linear_epoch
from spl_losses.training.builders import build_loss, loss_parameters
from spl_losses.training.phase_book import BestEpochTracker
from spl_losses.training.run_dir import RunDir, RunDirBusyError
from spl_losses.training.parallel import epoch_flip_mask, epoch_permutation
from spl_losses.training.study import REFERENCE_GRID, grid_points, run_name, select_winner


def test_scatter_by_index_places_rows_and_refuses_gaps_or_repeats():
    values = torch.tensor([[10.0], [30.0], [20.0]])
    assert scatter_by_index(values, torch.tensor([0, 2, 1]), 3).flatten().tolist() == [10.0, 20.0, 30.0]
    with pytest.raises(RuntimeError, match="1 examples missing and 1 repeated"):
        scatter_by_index(values, torch.tensor([0, 0, 1]), 3)
    with pytest.raises(RuntimeError, match="exactly once"):
        scatter_by_index(values[:2], torch.tensor([0, 1]), 3)


def test_epoch_draws_depend_only_on_seed_and_epoch():
    a = epoch_permutation(50, seed=3, epoch=1)
    torch.manual_seed(123)  # the global RNG must not matter
    assert torch.equal(a, epoch_permutation(50, seed=3, epoch=1))
    assert sorted(a.tolist()) == list(range(50))
    assert not torch.equal(a, epoch_permutation(50, seed=3, epoch=2))
    assert not torch.equal(a, epoch_permutation(50, seed=4, epoch=1))
    mask = epoch_flip_mask(10000, seed=0, epoch=0)
    assert abs(mask.float().mean().item() - 0.5) < 0.03


def test_best_epoch_tracker_keeps_the_first_best_and_ignores_nan():
    t = BestEpochTracker()
    assert t.update(1, 50.0) and not t.update(2, 50.0) and t.update(3, 60.0) and not t.update(4, float("nan"))
    assert (t.best_epoch, t.best_val_map, t.epochs_done) == (3, 60.0, 4)
    u = BestEpochTracker()
    u.load_state_dict(t.state_dict())
    assert u.state_dict() == t.state_dict()


def test_search_grid_and_winner():
    points = grid_points(REFERENCE_GRID)
    assert len(points) == 8 and points[0] == {"batch_size": 8, "lr": 1e-2} and points[-1] == {"batch_size": 16, "lr": 1e-5}
    assert run_name({"batch_size": 8, "lr": 0.001}) == "batch_size-8_lr-0.001"
    with pytest.raises(ValueError, match="not a flag"):
        grid_points({"nope": [1]}, allowed=["lr"])
    runs = [{"name": "a", "val_map": 1.0}, {"name": "b", "val_map": float("nan")}, {"name": "c", "val_map": 3.0},
            {"name": "d", "val_map": 3.0}]
    assert select_winner(runs)["name"] == "c"


def test_config_file_keys_must_be_flags_and_flags_override(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"lr": 0.5, "batch_size": 4, "search_grid": {"lr": [1, 2]}}))
    args, extra = parse_args(["-c", str(good), "--lr", "0.25"])
    assert args.lr == 0.25 and args.batch_size == 4 and extra == {"search_grid": {"lr": [1, 2]}}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"learning_rate": 0.5}))
    with pytest.raises(ValueError, match="learning_rate"):
        load_config_file(str(bad))


def test_output_dir_check_ignores_bookkeeping_keys(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"lr": 0.1, "resume": False, "output_dir": "x"}))
    assert RunDir(str(tmp_path)).check({"lr": 0.2}, {}, resume=False) == "unclaimed"  # no epoch finished: anyone's
    (tmp_path / "results.json").write_text("{}")  # a finished run: its folder
    RunDir(str(tmp_path)).check({"lr": 0.1, "resume": True, "output_dir": "y"}, {}, resume=False)
    with pytest.raises(ValueError, match="lr: 0.1 -> 0.2"):
        RunDir(str(tmp_path)).check({"lr": 0.2}, {}, resume=False)


def test_output_dir_of_other_files_is_refused_and_untouched(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no run.*notes.txt"):
        RunDir(str(tmp_path)).check({"lr": 0.1}, {}, resume=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    RunDir(str(tmp_path / "new")).check({"lr": 0.1}, {}, resume=False)  # a missing folder is fine


def test_unfinished_run_with_checkpoints_needs_resume(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"lr": 0.1}))
    (tmp_path / "checkpoints" / "epoch_001").mkdir(parents=True)
    with pytest.raises(ValueError, match="--resume"):
        RunDir(str(tmp_path)).check({"lr": 0.1}, {}, resume=False)
    RunDir(str(tmp_path)).check({"lr": 0.1}, {}, resume=True)


def test_run_dir_lock_refuses_another_holder_and_is_reentrant(tmp_path):
    import fcntl

    other = open(tmp_path / "run.lock", "a+")  # another process's lock: a separate open file
    fcntl.flock(other.fileno(), fcntl.LOCK_EX)
    try:
        with pytest.raises(RunDirBusyError, match="in use by another run"):
            RunDir(str(tmp_path)).acquire()
    finally:
        other.close()  # released (as when that process dies)
    first, second = RunDir(str(tmp_path)), RunDir(str(tmp_path))
    first.acquire()
    second.acquire()  # the same process again: re-entrant
    second.release()
    blocked = open(tmp_path / "run.lock", "a+")
    with pytest.raises(OSError):  # still held after one release
        fcntl.flock(blocked.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    first.release()
    fcntl.flock(blocked.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # free now
    blocked.close()


def test_early_stopping_rules():
    from spl_losses.training.phase_book import EarlyStopping

    t, patience, drop = BestEpochTracker(), EarlyStopping(patience=1), EarlyStopping(max_drop=2.0)
    t.update(1, 50.0)
    assert patience.should_stop(t, 50.0) is None and drop.should_stop(t, 50.0) is None
    t.update(2, 49.0)  # no improvement: EM's rule stops; a 1-point drop is within 2
    assert "patience 1" in patience.should_stop(t, 49.0) and drop.should_stop(t, 49.0) is None
    t.update(3, 47.5)
    assert "2.50 points below" in drop.should_stop(t, 47.5)
    assert EarlyStopping().should_stop(t, 0.0) is None and not EarlyStopping().enabled


def test_loss_factory_passes_only_what_the_loss_takes():
    assert {"ls_coef", "eps", "stable"} <= loss_parameters("an_ls")  # through **kwargs to SPLoss
    assert "expected_num_pos" in loss_parameters("role") and "expected_num_pos" not in loss_parameters("an")
    observed = torch.zeros(4, 3)
    observed[torch.arange(4), torch.tensor([0, 1, 2, 0])] = 1
    role = build_loss("role", 3, 4, observed, expected_num_pos=1.5, seed=0)
    assert role.estimator.logits.shape == (4, 3) and role.expected_num_pos == 1.5
    with pytest.raises(ValueError, match="does not take"):
        build_loss("an", 3, 4, options={"alpha": 0.1})
    with pytest.raises(ValueError, match="needs expected_num_pos"):
        build_loss("epr", 3, 4)


def test_feature_cache_path_separates_every_key_part():
    from spl_losses.training.features import feature_cache_path

    base = ("/c", "resnet50", "abc", 448, "fp1")
    path = feature_cache_path(*base)
    assert path.startswith("/c/resnet50-448px-") and path.endswith(".safetensors")
    assert feature_cache_path(*base) == path
    variants = [("/c", "resnet18", "abc", 448, "fp1"), ("/c", "resnet50", "abd", 448, "fp1"),
                ("/c", "resnet50", "abc", 224, "fp1"), ("/c", "resnet50", "abc", 448, "fp2")]
    assert len({feature_cache_path(*v) for v in variants} | {path}) == 5
    assert feature_cache_path(*base, precision="bf16") != path


def test_weights_fingerprint_ignores_the_classifier_only():
    import timm

    a = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    b = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b.get_classifier().weight.add_(1.0)
    assert weights_fingerprint(a) == weights_fingerprint(b)
    with torch.no_grad():
        next(b.parameters()).add_(1.0)
    assert weights_fingerprint(a) != weights_fingerprint(b)


def test_linear_epoch_equals_a_hand_written_loop():
    torch.manual_seed(0)
    x, order = torch.randn(10, 4), torch.randperm(10)
    targets = torch.zeros(10, 3)
    targets[torch.arange(10), torch.arange(10) % 3] = 1
    import spl_losses

    heads = [nn.Linear(4, 3) for _ in range(2)]
    heads[1].load_state_dict(heads[0].state_dict())
    opt_a = torch.optim.SGD(heads[0].parameters(), lr=0.1)
    mean_loss = train_linear_epoch(heads[0], spl_losses.create_loss("an"), [opt_a], x, targets, order, 4)
    opt_b, loss_fn, losses = torch.optim.SGD(heads[1].parameters(), lr=0.1), spl_losses.create_loss("an"), []
    for idx in (order[:4], order[4:8], order[8:]):  # last partial batch kept
        opt_b.zero_grad()
        loss = loss_fn(heads[1](x[idx]), targets[idx])
        loss.backward()
        opt_b.step()
        losses.append(loss.item())
    assert torch.allclose(heads[0].weight, heads[1].weight) and mean_loss == pytest.approx(sum(losses) / 3)


def test_linear_fast_path_matches_autograd_path_for_role():
    import contextlib

    import spl_losses

    torch.manual_seed(0)
    x, order = torch.randn(12, 5), torch.randperm(12)
    observed = torch.zeros(12, 3)
    observed[torch.arange(12), torch.arange(12) % 3] = 1
    results = []
    for autocast in (None, contextlib.nullcontext):  # None: manual head gradients; else: autograd
        torch.manual_seed(1)
        head = nn.Linear(5, 3)
        loss = spl_losses.create_loss("role", num_classes=3, num_examples=12, expected_num_pos=1.5,
                                      observed_labels=observed, seed=0)
        opt = torch.optim.Adam([{"params": head.parameters()}, {"params": loss.parameters(), "lr": 1e-2}], lr=1e-3)
        for epoch in range(2):
            train_linear_epoch(head, loss, [opt], x, observed, order, 5, autocast=autocast)
        results.append((head.weight.detach().clone(), loss.estimator.logits.detach().clone()))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)


def test_output_dir_check_counts_flags_added_since_as_their_default(tmp_path):
    with open(tmp_path / "config.yaml", "w") as f:
        yaml.safe_dump({"loss": "an", "lr": 0.1}, f)  # written before the flag init_loss_state existed
    (tmp_path / "results.json").write_text("{}")  # it finished
    defaults = {"loss": "epr", "lr": 1e-5, "init_loss_state": "auto"}
    run = RunDir(str(tmp_path))
    run.check({"loss": "an", "lr": 0.1, "init_loss_state": "auto"}, defaults, resume=False)
    with pytest.raises(ValueError, match="init_loss_state: 'auto' -> 'none'"):
        run.check({"loss": "an", "lr": 0.1, "init_loss_state": "none"}, defaults, resume=False)
    with pytest.raises(ValueError, match="lr: 0.1 -> 1e-05"):  # keys present in the old file are compared as written
        run.check({"loss": "an", "lr": 1e-5, "init_loss_state": "auto"}, defaults, resume=False)


def test_protocol_data_config_squashes_to_the_training_size():
    import timm
    from PIL import Image

    from spl_losses.training.images import protocol_data_config, protocol_transform

    model = timm.create_model("test_resnet", pretrained=False)  # timm default: 160 px, crop 0.95, center
    config = protocol_data_config(model, 24)
    assert config == {"input_size": (3, 24, 24), "crop_pct": 1.0, "crop_mode": "squash", "interpolation": "bilinear",
                      "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    # squash, not crop: a 40x10 image whose left quarter is black keeps it (a center crop would drop it);
    # white normalises to (1 - 0.5) / 0.5 = 1, black to -1
    image = Image.new("RGB", (40, 10), (255, 255, 255))
    image.paste((0, 0, 0), (0, 0, 10, 10))
    out = protocol_transform(model, 24)(image)
    assert out.shape == (3, 24, 24)
    assert torch.allclose(out[:, :, :4], -torch.ones(3, 24, 4), atol=1e-5)
    assert torch.allclose(out[:, :, 8:], torch.ones(3, 24, 16), atol=1e-5)
