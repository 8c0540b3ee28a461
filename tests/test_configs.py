"""The shipped recipe configs (recipes/configs/*.yaml, demo.yaml aside) against the originals' own settings.

The table below is written from the original repositories, not from the configs:
- Cole et al. (elijahcole/single-positive-multi-label, train.py): 10 epochs, the batch size x lr grid, no early
  stopping; linear_init's linear phase: 25 epochs at the fixed (lr, batch size) of the lookup in train.py
  (role: lr 1e-3, batch size 16, CUB 8; the lookup has no an / bce entry: lr 1e-3, batch size 16, the values
  train.py used for every loss before the lookup).
- Zhou et al. (Correr-Zhou/SPML-AckTheUnknown, main.py): fixed (batch size, lr, alpha[, beta, warm-up]) per
  dataset, theta 0.9, 10 epochs; stop at the first epoch whose validation mAP is not above the best.
- Kim et al. 2022 (snucml/LargeLossMatters): batch size 16, lr 1e-5, classifier lr x10, 10 epochs; stop when the
  validation mAP is more than 3 points below the best. delta_rel 0.5 / 0.2 / 0.1 % (LL-R / LL-Ct / LL-Cp).
- Kim et al. 2023 (youngwk/BridgeGapExplanationPAMC): as LL-R with alpha 5, no early stopping.
- Chen et al. 2024 (yan4xi1/GRLoss, config.py, train.py): 8 epochs, batch size 8, lr 1e-5, classifier lr x10;
  stop when the validation mAP is more than 2 points below the best.
- Xing et al. 2024 (VLPL) and Tran et al. 2025 (AEVLP / GPR): the tables VLPL and AEVLP below.
"""
import math
import os
import random

import pytest
import yaml

from spl_losses import loss_parameters
from spl_losses.training.flags import LOSS_OPTION_FLAGS, load_config_file, parse_args
from spl_losses.training.phase_book import BestEpochTracker, EarlyStopping

CONFIG_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "recipes", "configs")
DATASETS = ("voc2012", "coco2014", "nuswide", "cub200")
COMMON = {"model": "resnet50", "pretrained": True, "image_size": 448, "opt": "adam", "weight_decay": 0.0,
          "val_set_variant": "clean", "observed_seed": 1200, "seed": 0}
GRID = {"batch_size": [8, 16], "lr": [1e-2, 1e-3, 1e-4, 1e-5]}
EXPECTED_NUM_POS = {"voc2012": 1.5, "coco2014": 2.9, "nuswide": 1.9, "cub200": 31.4}
# Zhou et al.: (batch size, lr, alpha, beta, warm-up epochs) per dataset
EM_SETTINGS = {"voc2012": (8, 1e-5, 0.2, 0.02, 5), "coco2014": (16, 1e-5, 0.1, 0.9, 5),
               "nuswide": (16, 1e-5, 0.1, 0.2, 4), "cub200": (8, 1e-4, 0.01, 0.4, 3)}
ROLE_LINEAR_BATCH = {"voc2012": 16, "coco2014": 16, "nuswide": 16, "cub200": 8}
LARGE_LOSS_DELTA = {"ll_r": 0.005, "ll_ct": 0.002, "ll_cp": 0.001}
# Xing et al. 2024 (mvrl/VLPL): (alpha, lr) per dataset; batch size 8, 10 epochs, beta 0.7, CLIP ViT-L/14-336, T 0.01,
# threshold 0.3
VLPL = {"voc2012": (0.2, 1e-5), "coco2014": (0.1, 1e-5), "nuswide": (0.1, 1e-5), "cub200": (0.01, 1e-4)}
# Tran et al. 2025 (the AEVLP paper): (lambda1, lambda2, reg, temperature, threshold, gate, grid, batch size, epochs,
# top-k) per dataset, CLIP ViT-B/16, lr 1e-5
AEVLP = {"voc2012": (0.7, 0.4, 0.05, 0.01, 0.5, 0.0, 4, 8, 8, 3),
         "coco2014": (0.7, 0.5, 0.001, 0.01, 0.5, 0.3, 4, 16, 8, 3),
         "nuswide": (0.7, 0.5, 0.001, 0.01, 0.6, 0.3, 4, 16, 10, 3),
         "cub200": (0.8, 0.2, 0.01, 0.1, 0.005, 0.005, 5, 8, 10, 32)}


def _expected_table():
    """File stem -> every key the config holds besides COMMON (dataset, loss and train mode included)."""
    table = {}
    for d in DATASETS:
        def row(loss, mode="end_to_end", **keys):
            table[f"{d}_{loss}_{mode}"] = {"dataset": d, "loss": loss.replace("_boostlu", ""), "train_mode": mode,
                                           **keys}

        k, bs_em, lr_em, alpha, beta, warmup = (EXPECTED_NUM_POS[d], *EM_SETTINGS[d])
        cole = {"epochs": 10, "search_grid": GRID}
        for loss, options in (("an", {}), ("wan", {}), ("bce", {}), ("an_ls", {"ls_coef": 0.1}),
                              ("epr", {"expected_num_pos": k}), ("role", {"expected_num_pos": k, "lr_mult": 10.0})):
            row(loss, **cole, **options)
        for loss, options, linear_batch in (("an", {}, 16), ("bce", {}, 16),
                                            ("role", {"expected_num_pos": k, "lr_mult": 10.0}, ROLE_LINEAR_BATCH[d])):
            row(loss, "linear_init", **cole, **options, linear_epochs=25, linear_lr=1e-3,
                linear_batch_size=linear_batch)
        row("em", epochs=10, batch_size=bs_em, lr=lr_em, alpha=alpha, early_stop_patience=1)
        row("em_apl", epochs=10, batch_size=bs_em, lr=lr_em, alpha=alpha, beta=beta, apl_warmup_epochs=warmup,
            theta=0.9, early_stop_patience=1)
        large_loss = {"epochs": 10, "batch_size": 16, "lr": 1e-5, "head_lr_mult": 10.0}
        for loss, delta in LARGE_LOSS_DELTA.items():
            row(loss, **large_loss, delta_rel=delta, early_stop_max_drop=3.0)
        row("ll_r_boostlu", **large_loss, delta_rel=0.005, boostlu=True, boostlu_alpha=5.0)
        row("gr", epochs=8, batch_size=8, lr=1e-5, head_lr_mult=10.0, early_stop_max_drop=2.0)
        v_alpha, v_lr = VLPL[d]
        row("vlpl", epochs=10, batch_size=8, lr=v_lr, alpha=v_alpha, beta=0.7, teacher="clip:ViT-L-14-336@openai",
            teacher_kwargs={"temperature": 0.01}, pseudo_label_rule="threshold", pseudo_label_kwargs={"threshold": 0.3})
        l1, l2, reg, temperature, threshold, gate, grid, bs, epochs, top_k = AEVLP[d]
        row("gpr", epochs=epochs, batch_size=bs, lr=1e-5, expected_num_pos=k,
            loss_kwargs={"lambda1": l1, "lambda2": l2, "reg": reg}, teacher="clip:ViT-B-16@openai",
            teacher_kwargs={"temperature": temperature, "grid": grid, "gate": gate}, pseudo_label_rule="topk",
            pseudo_label_kwargs={"k": top_k, "threshold": threshold})
    return table


EXPECTED = _expected_table()
CONFIG_FILES = sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml") and f != "demo.yaml")


def _path(stem):
    return os.path.join(CONFIG_DIR, stem + ".yaml")


def test_one_config_per_row_of_the_table():
    assert sorted(f[:-5] for f in CONFIG_FILES) == sorted(EXPECTED)
    assert len(EXPECTED) == 4 * 18


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_config_holds_the_originals_settings(stem):
    with open(_path(stem), encoding="utf-8") as f:
        text = f.read()
    raw = yaml.safe_load(text)
    assert {k: raw.get(k) for k in COMMON} == COMMON, stem
    assert {k: v for k, v in raw.items() if k not in COMMON} == EXPECTED[stem], stem
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert header and "SPEC" not in text, stem  # each file says where its settings come from


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_config_parses_with_the_recipe_parser(stem):
    expected = EXPECTED[stem]
    cfg = load_config_file(_path(stem))
    args, extra = parse_args(["-c", _path(stem)])
    assert args.config == _path(stem)
    assert stem == f"{args.dataset}_{expected['loss']}{'_boostlu' if args.boostlu else ''}_{args.train_mode}"
    for key, value in expected.items():
        if key == "search_grid":
            assert extra == {"search_grid": value}
        else:
            assert getattr(args, key) == value, (stem, key)
    assert set(cfg) - {"search_grid", "losses"} <= set(vars(args))
    # settings the original fixed are not searched; searched ones are not fixed
    if "search_grid" in expected:
        assert not {"batch_size", "lr"} & set(cfg), stem
    else:
        assert extra == {} and {"batch_size", "lr", "epochs"} <= set(cfg), stem
    # no early stopping unless the original stopped early
    if "early_stop_patience" not in expected:
        assert args.early_stop_patience is None, stem
    if "early_stop_max_drop" not in expected:
        assert args.early_stop_max_drop is None, stem


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_config_loss_options_are_constructor_arguments(stem):
    cfg = load_config_file(_path(stem))
    options = {LOSS_OPTION_FLAGS[k] for k in LOSS_OPTION_FLAGS if cfg.get(k) is not None}
    assert options <= loss_parameters(cfg["loss"]), (stem, options)
    if "expected_num_pos" in cfg:
        assert "expected_num_pos" in loss_parameters(cfg["loss"]), stem


# ------------------------------------------------------------- the originals' stopping rules, re-derived
def _em_stop_epoch(maps):
    """Zhou et al.'s loop: stop after the first epoch whose mAP is not strictly above the best before it."""
    best = -math.inf
    for epoch, value in enumerate(maps, 1):
        if value > best:
            best = value
        else:
            return epoch
    return None


def _drop_stop_epoch(maps, points):
    """Kim et al. 2022 / Chen et al. 2024: a new best is kept, else stop when best - mAP > points."""
    best = 0.0
    for epoch, value in enumerate(maps, 1):
        if best < value:
            best = value
        elif best - value > points:
            return epoch
    return None


def _recipe_stop_epoch(maps, args):
    """The recipe's rule (the tracker and EarlyStopping that the recipe's phase bookkeeping uses)."""
    tracker, stopping = BestEpochTracker(), EarlyStopping(args.early_stop_patience, args.early_stop_max_drop)
    for epoch, value in enumerate(maps, 1):
        tracker.update(epoch, value)
        if stopping.should_stop(tracker, value):
            return epoch
    return None


def _sequences():
    rng = random.Random(0)
    fixed = [[60.0, 61.0, 61.0, 62.0], [60.0, 59.0, 58.0], [70.0, 72.0, 69.0, 68.9, 75.0],
             [70.0, 67.0, 66.5, 71.0], [50.0, 52.0, 50.0, 49.9, 47.9], [40.0, 41.0, 42.0, 43.0]]
    # integer-valued mAPs (ties and drops of exactly 2 or 3 points happen) and finely valued ones
    noisy = [[float(rng.randint(40, 50)) for _ in range(10)] for _ in range(200)]
    noisy += [[rng.uniform(40.0, 50.0) for _ in range(10)] for _ in range(200)]
    return fixed + noisy


ORIGINAL_RULES = {"stop at the first epoch not above the best": _em_stop_epoch,
                  "stop more than 3 points below the best": lambda maps: _drop_stop_epoch(maps, 3.0),
                  "stop more than 2 points below the best": lambda maps: _drop_stop_epoch(maps, 2.0),
                  "no early stopping": lambda maps: None}


@pytest.mark.parametrize("stem,rule", [
    *[(f"{d}_{loss}_end_to_end", "stop at the first epoch not above the best") for d in DATASETS
      for loss in ("em", "em_apl")],
    *[(f"{d}_{loss}_end_to_end", "stop more than 3 points below the best") for d in DATASETS
      for loss in ("ll_r", "ll_ct", "ll_cp")],
    *[(f"{d}_gr_end_to_end", "stop more than 2 points below the best") for d in DATASETS],
    *[(f"{d}_{loss}_{mode}", "no early stopping") for d in DATASETS
      for loss, mode in (("an", "end_to_end"), ("role", "linear_init"), ("ll_r_boostlu", "end_to_end"))],
])
def test_config_stops_where_the_original_loop_stops(stem, rule):
    args, _ = parse_args(["-c", _path(stem)])
    stops = 0
    for maps in _sequences():
        maps = maps[:args.epochs]
        expected = ORIGINAL_RULES[rule](maps)
        assert _recipe_stop_epoch(maps, args) == expected, (stem, maps)
        stops += expected is not None
    assert (stops > 0) == (rule != "no early stopping")
