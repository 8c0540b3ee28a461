#!/usr/bin/env python
"""Score an exported checkpoint on a dataset split: mAP (both conventions) and the other SPEC §7 metrics.

The checkpoint is a run directory of ``recipes/train.py``, its ``model/`` folder, ``local-dir:PATH`` or
``hf-hub:ORG/NAME`` (a timm model, or a LinearProbe for a dataset of pre-extracted features). The dataset is
anything ``spl_losses.data.load_spml_dataset`` takes (a registered builder name with ``--data-dir``, a
``save_to_disk`` folder, a Parquet folder or a Hub dataset id). Runs under ``accelerate`` (``accelerate
launch recipes/evaluate.py ...`` for several GPUs); every example is scored exactly once.

Examples::

    python recipes/evaluate.py --checkpoint runs/voc_role --dataset voc2012 --data-dir /data/voc --split test
    python recipes/evaluate.py --checkpoint hf-hub:ORG/NAME --dataset ORG/voc2012-spml --output-json test.json

Images are resized to a square of ``--image-size`` without cropping (the training protocol, SPEC §5) and
normalised with the model's pretrained config; the default size is the training ``image_size`` recorded
with the checkpoint (the run's config.yaml, or the training_config.yaml published beside the model), else
the model's configured input size (recipes/train.py records the training preprocessing in config.json).

A BoostLU run (``boostlu_alpha`` in the checkpoint's config.json) is scored with
``spl_losses.models.BoostLU(model, alpha)``, as in training: plain timm loading gives the un-boosted logits.
"""
import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import yaml

SPLITS = ("train", "validation", "test")


def build_parser() -> argparse.ArgumentParser:
    """The command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True,
                        help="run directory, model folder, local-dir:PATH or hf-hub:ORG/NAME")
    parser.add_argument("--dataset", required=True, help="builder name, saved/Parquet folder or Hub dataset id")
    parser.add_argument("--data-dir", default=None, help="raw data root of a builder dataset")
    parser.add_argument("--dataset-kwargs", default=None, type=yaml.safe_load,
                        help="YAML/JSON mapping of extra builder options, as recipes/train.py's flag")
    parser.add_argument("--seed", type=int, default=1200, help="single-positive seed of the dataset")
    parser.add_argument("--split", default="test", choices=SPLITS)
    parser.add_argument("--labels", default="full", choices=("full", "observed"),
                        help="score against the full labels or the observed single positives")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    parser.add_argument("--output-json", default=None, help="also write the metrics to this JSON file")
    return parser


def model_label_names(model: torch.nn.Module) -> Optional[List[str]]:
    """Class names stored with an exported model (timm ``pretrained_cfg`` or LinearProbe config).

    Args:
        model: A timm model or a LinearProbe.
    """
    names = getattr(model, "label_names", None)
    if names is None:
        names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
    return list(names) if names is not None else None


def run_image_size(checkpoint: str) -> Optional[int]:
    """The training ``image_size`` recorded with a checkpoint, if any.

    Read from a run directory's ``config.yaml``, or from the ``training_config.yaml`` that
    ``spl_losses.hub.push_run_to_hub`` writes beside the model (locally and on the Hub).

    Args:
        checkpoint: The ``--checkpoint`` value.
    """
    import yaml

    from spl_losses.hub import TRAINING_CONFIG_FILENAME

    if checkpoint.startswith("hf-hub:"):
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            path = Path(hf_hub_download(checkpoint[len("hf-hub:"):], TRAINING_CONFIG_FILENAME))
        except EntryNotFoundError:
            return None
    else:
        folder = Path(checkpoint[len("local-dir:"):] if checkpoint.startswith("local-dir:") else checkpoint)
        candidates = [folder / "config.yaml", folder / TRAINING_CONFIG_FILENAME, folder / "model" / TRAINING_CONFIG_FILENAME]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            return None
    with open(path, encoding="utf-8") as f:
        size = (yaml.safe_load(f) or {}).get("image_size")
    return int(size) if size else None


def image_transform(model: torch.nn.Module, image_size: Optional[int]):
    """timm's eval transform, squashing to ``image_size`` × ``image_size`` (no crop), model normalisation.

    Args:
        model: The timm model.
        image_size: Side in pixels; None uses the model's configured input size.
    """
    from timm.data import create_transform, resolve_model_data_config

    cfg = resolve_model_data_config(model)
    size = image_size or cfg["input_size"][-1]
    return create_transform(input_size=(3, size, size), is_training=False, crop_pct=1.0, crop_mode="squash",
                            interpolation=cfg.get("interpolation", "bilinear"), mean=cfg["mean"], std=cfg["std"])


class _ToInputs:
    """``with_transform`` callable: a batch of rows -> ``{"inputs": tensors, "index": ints}``."""

    def __init__(self, transform=None):
        self.transform = transform

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        if self.transform is None:
            inputs = [torch.as_tensor(f, dtype=torch.float32) for f in batch["features"]]
        else:
            inputs = [self.transform(image.convert("RGB")) for image in batch["image"]]
        return {"inputs": inputs, "index": batch["index"]}


def check_classes(model: torch.nn.Module, class_names: Sequence[str]) -> None:
    """Refuse a model whose classes differ from the dataset's.

    Args:
        model: The loaded model.
        class_names: The dataset's class names.
    """
    names = model_label_names(model)
    num_classes = getattr(model, "num_classes", None)
    if num_classes is not None and num_classes != len(class_names):
        raise ValueError(f"the checkpoint predicts {num_classes} classes but the dataset has {len(class_names)}")
    if names is not None and list(names) != list(class_names):
        differ = [(i, a, b) for i, (a, b) in enumerate(zip(names, class_names)) if a != b][:5]
        raise ValueError(f"the checkpoint's class names differ from the dataset's (first differences, as "
                         f"(position, checkpoint, dataset): {differ})")


@torch.no_grad()
def predict(model, split, accelerator, batch_size: int, transform=None, workers: int = 0) -> torch.Tensor:
    """(N, C) logits for every row of ``split`` in ``index`` order, each row scored exactly once.

    Args:
        model: The model (prepared or not).
        split: A split with an ``index`` column and ``image`` or ``features``.
        accelerator: The ``accelerate.Accelerator``.
        batch_size: Batch size per process.
        transform: Image transform; None for a ``features`` split.
        workers: DataLoader worker processes.
    """
    from torch.utils.data import DataLoader

    column = "features" if transform is None else "image"
    view = split.select_columns([column, "index"]).with_transform(_ToInputs(transform))
    loader = DataLoader(view, batch_size=batch_size, shuffle=False, drop_last=False, num_workers=workers)
    model, loader = accelerator.prepare(model, loader)
    model.eval()
    logits, indices = [], []
    for batch in loader:
        with accelerator.autocast():
            out = model(batch["inputs"])
        out, index = accelerator.gather_for_metrics((out.float().contiguous(), batch["index"]))
        logits.append(out.cpu())
        indices.append(index.cpu())
    logits, index = torch.cat(logits), torch.cat(indices).long()
    if not torch.equal(torch.sort(index).values, torch.arange(len(split))):
        raise RuntimeError(f"expected every one of the {len(split)} rows scored once, got {index.numel()} rows")
    out = torch.empty_like(logits)
    out[index] = logits
    return out


def evaluate(args: argparse.Namespace) -> Dict[str, Any]:
    """Load the checkpoint and the split, score it, and return the metrics (see :func:`main`).

    Args:
        args: Parsed arguments of :func:`build_parser`.
    """
    from accelerate import Accelerator

    from spl_losses.data import load_spml_dataset
    from spl_losses.hub import load_exported_model
    from spl_losses.labels import indices_to_dense
    from spl_losses.metrics import compute_metrics
    from spl_losses.models import BoostLU

    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    model = load_exported_model(args.checkpoint, apply_boostlu=True)
    kwargs = dict(args.dataset_kwargs or {})
    split = load_spml_dataset(args.dataset, data_dir=args.data_dir, seed=args.seed, **kwargs)[args.split]
    class_names = list(split.features["labels"].feature.names)
    check_classes(model, class_names)
    if "image" in split.column_names and hasattr(model, "pretrained_cfg"):
        timm_model = model.model if isinstance(model, BoostLU) else model
        transform = image_transform(timm_model, args.image_size or run_image_size(args.checkpoint))
    elif "features" in split.column_names and not hasattr(model, "pretrained_cfg"):
        transform = None
    else:
        raise ValueError(f"the checkpoint is a {type(model).__name__} but split {args.split!r} has columns "
                         f"{split.column_names}: a timm model needs an 'image' column, a LinearProbe 'features'")
    logits = predict(model, split, accelerator, args.batch_size, transform, args.workers)
    column = "labels" if args.labels == "full" else "observed_labels"
    targets = indices_to_dense(split[column], len(class_names))
    metrics = compute_metrics(logits, targets)
    return {"checkpoint": args.checkpoint, "dataset": args.dataset, "split": args.split, "labels": args.labels,
            "num_examples": len(split), "boostlu_alpha": model.alpha if isinstance(model, BoostLU)
            else None, "metrics": metrics}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Evaluate, print the metrics and optionally write them as JSON.

    Args:
        argv: Command-line arguments (default ``sys.argv[1:]``).

    Returns:
        ``{"checkpoint", "dataset", "split", "labels", "num_examples", "metrics": compute_metrics(...)}``.
    """
    args = build_parser().parse_args(argv)
    result = evaluate(args)
    metrics = result["metrics"]
    print(f"{args.checkpoint} on {args.dataset} [{args.split}, {result['num_examples']} images, {args.labels} labels]")
    print(f"  mAP (classes without positives count as AP 0): {metrics['map']:.2f}")
    print(f"  mAP (classes without positives skipped):       {metrics['map_skip_empty']:.2f}")
    for key, value in metrics.items():
        if key not in ("map", "map_skip_empty"):
            print(f"  {key}: {value:.2f}")
    if args.output_json:
        os.makedirs(os.path.dirname(os.path.abspath(args.output_json)), exist_ok=True)
        with open(args.output_json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
