"""The single-positive protocol of Cole et al. (CVPR 2021), the same for every builder.

From the official splits read by a builder (:class:`~spl_losses.data.raw_files.RawSplit`):

- drop examples without any positive label (as the reference does for VOC and COCO) or keep them;
- carve validation = ``val_fraction`` (20%) of the official train set (``split_seed`` 1200, sorted
  indices) unless the builder has its own validation split; the official val/test set is ``test``;
- draw the observed labels (one positive per row by default, ``seed`` 1200) by ``observed_sampling``:
  ``uniform`` among the row's positives, or proportionally to per-entry weights (``size``, ``loc``:
  the objects' area or centrality, COCO only; ``weights``: a weight per class from a JSON file);
- with ``sampling_rng="hash"`` (default) the draws and the split come from the counter-based hash of
  :mod:`spl_losses.data.sampling`, per final split (salts train 1, validation 2, test 3); with
  ``sampling_rng="reference"`` they reproduce the reference code's random streams
  (:mod:`spl_losses.data.reference_draws`), per official split, validation rows keeping the draws of
  the official train split.
"""
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .raw_files import RawSplit
from .reference_draws import reference_split, reference_uniform_draws, reference_weighted_draws
from .sampling import ObservedLabels, sample_single_positive, split_train_validation

__all__ = ["SPLIT_NAMES", "OBSERVED_SAMPLING_RULES", "SAMPLING_RNGS", "PreparedSplit", "check_protocol_options",
           "prepare_splits", "read_class_weights"]

SPLIT_NAMES = ("train", "validation", "test")
#: ``observed_sampling`` values: how the observed positive is chosen among a row's positives.
OBSERVED_SAMPLING_RULES = ("uniform", "size", "loc", "weights")
#: ``sampling_rng`` values: the package's hash, or the reference code's random streams.
SAMPLING_RNGS = ("hash", "reference")
_SAMPLING_SALTS = {"train": 1, "validation": 2, "test": 3}


@dataclass
class PreparedSplit:
    """A final split ready to write (kept as one object so ``datasets`` never shards it).

    Args:
        name: ``train``, ``validation`` or ``test``.
        raw: The official split its rows come from.
        rows: Rows of ``raw`` in this split, in order.
        labels: Per row, the sorted positive class indices.
        observed: Per row, the observed positives.
        negatives: Per row, the observed negatives (None when none are drawn or given).
        report: Counts for the build report.
        full_labels: Whether ``labels`` are full labels (False: the source gave observed labels only, and
            the split is written without full labels).
    """

    name: str
    raw: RawSplit
    rows: np.ndarray
    labels: List[List[int]]
    observed: List[List[int]]
    negatives: Optional[List[List[int]]]
    report: Dict[str, Any] = field(default_factory=dict)
    full_labels: bool = True


def check_protocol_options(cfg, observed_sampling_rules: Sequence[str], dataset: str) -> None:
    """Check a builder config's protocol fields before any work; errors name the field and the value.

    Args:
        cfg: The :class:`~spl_losses.data.builder.SPMLConfig`.
        observed_sampling_rules: The ``observed_sampling`` values the builder supports.
        dataset: The dataset's name, for messages.
    """
    fraction = cfg.val_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be a number in [0, 1), got {fraction!r}")
    for name in ("seed", "split_seed", "num_positives", "num_negatives"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if not isinstance(cfg.drop_without_positive, bool):
        raise ValueError(f"drop_without_positive must be true or false, got {cfg.drop_without_positive!r}")
    if not (cfg.verify_images is None or isinstance(cfg.verify_images, bool)):
        raise ValueError(f"verify_images must be true, false or null (automatic), got {cfg.verify_images!r}")
    if cfg.observed_sampling not in observed_sampling_rules:
        scope = f" for dataset {dataset!r}" if cfg.observed_sampling in OBSERVED_SAMPLING_RULES else ""
        raise ValueError(f"observed_sampling={cfg.observed_sampling!r} is not available{scope}; choose one of "
                         f"{list(observed_sampling_rules)}")
    if cfg.sampling_rng not in SAMPLING_RNGS:
        raise ValueError(f"sampling_rng={cfg.sampling_rng!r} is not available; choose one of {list(SAMPLING_RNGS)}")
    if (cfg.class_weights_file is None) == (cfg.observed_sampling == "weights"):
        raise ValueError("class_weights_file=<JSON {class name: weight}> goes with observed_sampling='weights' (and "
                         f"only with it); got observed_sampling={cfg.observed_sampling!r}, "
                         f"class_weights_file={cfg.class_weights_file!r}")
    if cfg.sampling_rng == "reference":
        if cfg.seed >= 2 ** 32 or cfg.split_seed >= 2 ** 32:
            raise ValueError("sampling_rng='reference' seeds numpy's RandomState: seed and split_seed must be < 2**32, "
                             f"got {cfg.seed} and {cfg.split_seed}")
        if cfg.observed_sampling != "uniform" and (cfg.num_positives, cfg.num_negatives) != (1, 0):
            raise ValueError("the reference's biased draws observe one positive and no negative: observed_sampling="
                             f"{cfg.observed_sampling!r} with sampling_rng='reference' needs num_positives=1, "
                             f"num_negatives=0, got {cfg.num_positives} and {cfg.num_negatives}")


def read_class_weights(path: str, class_names: Sequence[str]) -> np.ndarray:
    """Read per-class weights from a JSON object ``{"class name": weight, ...}`` naming every class.

    Args:
        path: The JSON file.
        class_names: The dataset's classes, in label-index order.

    Returns:
        (C,) float64 weights in class order.

    Raises:
        ValueError: the file is missing or not such an object, a class is missing or unknown, or a
            weight is not a finite non-negative number (the message names the file and the class).
    """
    if not os.path.isfile(path):
        raise ValueError(f"class_weights_file {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            mapping = json.load(f)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"class_weights_file {path}: not valid JSON ({err})") from None
    if not isinstance(mapping, dict):
        raise ValueError(f"class_weights_file {path}: expected a JSON object {{class name: weight}}, "
                         f"got {type(mapping).__name__}")
    unknown = sorted(set(mapping) - set(class_names))
    missing = [name for name in class_names if name not in mapping]
    if unknown or missing:
        raise ValueError(f"class_weights_file {path} must give a weight to each of the {len(class_names)} classes "
                         f"and nothing else; unknown: {unknown[:5]}, missing: {missing[:5]}")
    weights = []
    for name in class_names:
        value = mapping[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"class_weights_file {path}: the weight of {name!r} must be a finite number >= 0, "
                             f"got {value!r}")
        weights.append(float(value))
    return np.asarray(weights, dtype=np.float64)


def _kept_rows(raw: RawSplit, drop_without_positive: bool) -> np.ndarray:
    has_positive = np.fromiter((len(r) > 0 for r in raw.labels), dtype=bool, count=len(raw))
    return np.flatnonzero(has_positive) if drop_without_positive else np.arange(len(raw))


def _row_labels(raw: RawSplit, rows: np.ndarray, weighted: bool) -> Tuple[List[List[int]], Optional[List[List[float]]]]:
    """Sorted unique labels of ``rows`` and, if ``weighted``, their weights (a class listed twice sums)."""
    if not weighted:
        return [sorted({int(c) for c in raw.labels[r]}) for r in rows], None
    labels, weights = [], []
    for r in rows:
        summed: Dict[int, float] = {}
        for c, w in zip(raw.labels[r], raw.label_weights[r]):
            summed[int(c)] = summed.get(int(c), 0) + w
        order = sorted(summed)
        labels.append(order)
        weights.append([summed[c] for c in order])
    return labels, weights


def _draw(labels, weights, cfg, num_classes: int, salt: int) -> ObservedLabels:
    """The observed labels of a group of rows, by the configured rule and random stream."""
    if cfg.sampling_rng == "reference":
        if weights is None:
            return reference_uniform_draws(labels, num_classes, cfg.num_positives, cfg.num_negatives, cfg.seed)
        drawn = reference_weighted_draws(labels, weights, num_classes, cfg.seed)
        return ObservedLabels(drawn, [[] for _ in drawn])
    return sample_single_positive(labels, num_positives=cfg.num_positives, seed=cfg.seed,
                                  num_negatives=cfg.num_negatives, num_classes=num_classes, salt=salt,
                                  weights=weights)


def prepare_splits(raws: Dict[str, RawSplit], cfg, num_classes: int) -> List[PreparedSplit]:
    """Apply the protocol (see the module docstring) to the official splits.

    Args:
        raws: ``{"train": ..., "test": ...}`` and optionally ``"validation"`` (then used as is).
        cfg: The builder's :class:`~spl_losses.data.builder.SPMLConfig`.
        num_classes: C.

    Returns:
        The final ``train``, ``validation`` and ``test`` splits.
    """
    weighted = cfg.observed_sampling != "uniform"
    kept, dropped, labels, weights = {}, {}, {}, {}
    for split, raw in raws.items():
        kept[split] = _kept_rows(raw, cfg.drop_without_positive)
        dropped[split] = int(len(raw) - kept[split].size)
        labels[split], weights[split] = _row_labels(raw, kept[split], weighted)
    # final split -> (official split, positions among the official split's kept rows)
    final = {split: (split, np.arange(kept[split].size)) for split in raws}
    if "validation" not in raws:
        carve = reference_split if cfg.sampling_rng == "reference" else split_train_validation
        train_pos, val_pos = carve(kept["train"].size, cfg.val_fraction, cfg.split_seed)
        final["train"], final["validation"] = ("train", train_pos), ("train", val_pos)
    given = {split: ObservedLabels([sorted({int(c) for c in raw.observed[r]}) for r in kept[split]],
                                   [sorted({int(c) for c in (raw.observed_negatives or [()] * len(raw))[r]})
                                    for r in kept[split]])
             for split, raw in raws.items() if raw.observed is not None}
    official_draws = dict(given)  # observed labels given by the source are kept as they are
    if cfg.sampling_rng == "reference":  # one stream per official split, in its row order
        official_draws.update({split: _draw(labels[split], weights[split], cfg, num_classes, 0)
                               for split in raws if split not in given})
    prepared = []
    for name in SPLIT_NAMES:
        official, positions = final[name]
        split_labels = [labels[official][i] for i in positions]
        if official in official_draws:
            drawn = ObservedLabels(*([part[i] for i in positions] for part in official_draws[official]))
        else:
            split_weights = None if weights[official] is None else [weights[official][i] for i in positions]
            drawn = _draw(split_labels, split_weights, cfg, num_classes, _SAMPLING_SALTS[name])
        prepared.append(PreparedSplit(
            name=name,
            raw=raws[official],
            rows=kept[official][positions],
            labels=split_labels,
            observed=drawn.positives,
            negatives=drawn.negatives if cfg.num_negatives or given else None,
            report={
                "num_examples": int(positions.size),
                "source": raws[official].source,
                # examples dropped from the official split this one comes from (train counts for
                # the carved validation split too, reported once, under train)
                "dropped_without_positive": dropped[name] if name in dropped else 0,
                "kept_without_positive": int(sum(1 for row in split_labels if not row)),
                # only where the source gives observed labels: a benchmark's report stays as it was
                **({"observed_labels": "given" if official in given else "drawn",
                    "full_labels": bool(raws[official].full_labels)} if given else {}),
            },
            full_labels=bool(raws[official].full_labels),
        ))
    return prepared
