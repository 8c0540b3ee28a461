#!/usr/bin/env python
"""Score an exported checkpoint on a dataset split: mAP (both conventions), precision/recall@k, top-k hit
rate, and CP, CR, CF1, OP, OR, OF1 at a threshold and for each image's top 3 classes.

    python recipes/evaluate.py --checkpoint runs/voc_role                      # the run's own dataset, test split
    python recipes/evaluate.py --checkpoint hf-hub:ORG/NAME --dataset ORG/voc2012-spml --output-json test.json
    accelerate launch recipes/evaluate.py --checkpoint runs/coco_llr --split validation

The checkpoint is a run folder of ``recipes/train.py``, its ``model/`` folder, ``local-dir:PATH`` or
``hf-hub:ORG/NAME`` (a timm model, or a LinearProbe for a dataset of features). Without ``--dataset`` the
dataset (and its options and single-positive seed) recorded with the checkpoint is used. Images get the
training preprocessing (squashed to the training size, no crop); a BoostLU run is scored with BoostLU, as
in training. Every example is scored exactly once across processes.
"""
import argparse
import json
import os
from typing import Any, Dict, Optional, Sequence

from accelerate import Accelerator

from spl_losses.checkpoints import check_checkpoint_classes, load_exported_model, parse_checkpoint, \
    read_model_config, read_training_config
from spl_losses.data.options import parse_dataset_options
from spl_losses.metrics import compute_metrics
from spl_losses.models import BoostLU
from spl_losses.training.flags import DefaultsOnceHelpFormatter
from spl_losses.training.cli import FlagParser, run_cli
from spl_losses.training.run_data import load_data
from spl_losses.training.evaluation import features_loader, predict_loader
from spl_losses.training.images import loader_for_split, protocol_transform
from spl_losses.training.label_matrices import dense_labels


def build_parser() -> argparse.ArgumentParser:
    """The command-line arguments."""
    parser = FlagParser(description=__doc__.split("\n\n")[0], formatter_class=DefaultsOnceHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="run folder, model folder, local-dir:PATH or hf-hub:ORG/NAME")
    parser.add_argument("--dataset", default=None, help="builder name, saved/Parquet folder or Hub dataset id "
                        "(default: the dataset recorded with the checkpoint)")
    parser.add_argument("--data-dir", default=None, help="raw data root of a builder dataset")
    parser.add_argument("--dataset-option", action="append", default=None, metavar="KEY=VALUE",
                        help="builder option, as recipes/train.py's flag (default: the recorded ones)")
    parser.add_argument("--observed-seed", type=int, default=None, help="single-positive seed (default: recorded, "
                        "else 1200)")
    parser.add_argument("--split", default="test", choices=("train", "validation", "test"), help="split to score")
    parser.add_argument("--labels", default="full", choices=("full", "observed"),
                        help="score against the full labels or the observed single positives")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size per process")
    parser.add_argument("--image-size", type=int, default=None, help="input side (default: the training size)")
    parser.add_argument("--threshold", type=float, default=0.5, help="probability threshold of CP ... OF1")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"), help="autocast precision")
    parser.add_argument("--output-json", default=None, help="also write the metrics to this JSON file")
    return parser


def load_model(source, checkpoint: str):
    """The exported model, or a ValueError naming the weights file and ``config.json``'s architecture when the
    weights do not fit it (a file replaced, or copied from another run)."""
    try:
        return load_exported_model(source, apply_boostlu=True)
    except (RuntimeError, AttributeError, KeyError) as err:  # timm's load_state_dict: missing keys, shapes, modules
        config = read_model_config(source)
        arch = config.get("architecture") or f"LinearProbe({config.get('in_features')} -> {config.get('num_classes')})"
        where = source.repo_id if source.is_hub else str(source.model_dir)
        weights = [name for name in ("model.safetensors", "pytorch_model.bin")
                   if source.is_hub or os.path.isfile(os.path.join(where, name))]
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise ValueError(f"--checkpoint {checkpoint}: the weights {os.path.join(where, weights[0] if weights else '')} "
                         f"do not fit the architecture {arch!r} recorded in {os.path.join(where, 'config.json')} "
                         f"({type(err).__name__}: {first}); export the model again, or pass the model folder the "
                         "weights belong to") from None


def evaluate(args: argparse.Namespace) -> Dict[str, Any]:
    """Load the checkpoint and the split, score it, and return the metrics.

    Args:
        args: Parsed arguments of :func:`build_parser`.
    """
    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    source = parse_checkpoint(args.checkpoint)
    recorded = read_training_config(source) or {}
    dataset = args.dataset or recorded.get("dataset")
    if not dataset:
        raise ValueError(f"--checkpoint {args.checkpoint} records no dataset: pass --dataset")
    same = args.dataset is None or args.dataset == recorded.get("dataset")
    options = args.dataset_option if args.dataset_option is not None else (recorded.get("dataset_option") if same else [])
    seed = args.observed_seed if args.observed_seed is not None else (recorded.get("observed_seed", 1200) if same else 1200)
    data = load_data(dataset, args.data_dir or (recorded.get("data_dir") if same else None),
                     parse_dataset_options(options), seed)
    check_checkpoint_classes(read_model_config(source), data.class_names, f"--checkpoint {args.checkpoint}")
    model = load_model(source, args.checkpoint)
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    split = data.splits[args.split]
    if data.kind == "image" and hasattr(model, "pretrained_cfg"):
        timm_model = model.model if isinstance(model, BoostLU) else model
        size = args.image_size or recorded.get("image_size") or timm_model.pretrained_cfg["input_size"][-1]
        loader, key = loader_for_split(split, protocol_transform(timm_model, int(size)), args.batch_size,
                                       workers=args.workers), "pixel_values"
    elif data.kind == "features" and not hasattr(model, "pretrained_cfg"):
        loader, key = features_loader(split, args.batch_size, args.workers), "features"
    else:
        raise ValueError(f"the checkpoint is a {type(model).__name__} but split {args.split!r} holds {data.kind}: "
                         "a timm model needs an 'image' column, a LinearProbe 'features'")
    model, loader = accelerator.prepare(model, loader)
    logits = predict_loader(model, loader, accelerator, len(split), input_key=key)
    labels = dense_labels(split, "labels" if args.labels == "full" else "observed_labels", data.num_classes)
    return {"checkpoint": args.checkpoint, "dataset": dataset, "split": args.split, "labels": args.labels,
            "num_examples": len(split), "boostlu_alpha": getattr(accelerator.unwrap_model(model), "alpha", None),
            "metrics": compute_metrics(logits, labels, threshold=args.threshold)}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Evaluate, print the metrics and optionally write them as JSON.

    Args:
        argv: Command-line arguments (default ``sys.argv[1:]``).
    """
    args = build_parser().parse_args(argv)
    result = evaluate(args)
    metrics = result["metrics"]
    print(f"{args.checkpoint} on {result['dataset']} [{args.split}, {result['num_examples']} images, "
          f"{args.labels} labels]")
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
    run_cli(main, prog="recipes/evaluate.py")
