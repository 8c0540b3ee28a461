"""Training and feature-extraction images/s of the recipe against a plain hand-written timm + accelerate loop.

Same model, batch, precision, optimizer (fused Adam), worker count and generated COCO-like JPEGs
(640 x 480) for both:

1. training: ``recipes/train.py`` itself (end_to_end, loss ``an``: its ``TrainStep``, accelerate, its
   loader) for ``--epochs`` epochs, each epoch timed from its start to the end of its validation pass
   over 8 images (the checkpoint it then writes is not timed), against a loop of
   ``timm.data.create_loader`` (prefetcher), a random flip, ``BCEWithLogits``, ``accelerator.backward``
   and the optimizer step, with the same validation forward pass;
2. feature extraction: ``spl_losses.training.extract_or_load_features`` (its loader, device
   normalisation, gathering, the cache file written) against a loop of ``create_loader`` and
   ``model.forward_head(model.forward_features(x), pre_logits=True)``.

The first epoch (worker start, allocator warm-up, compilation with ``--compile``) is not rated. The two
are run alternately ``--rounds`` times and each is rated by its fastest epoch (extraction: pass). On
the CPU with no loader workers everything runs in this process, and with ``--clock auto`` epochs are
timed in its CPU time (``time.process_time``; use ``--threads 1``), so that other processes on a shared
machine do not decide the ratio; on a GPU, in wall-clock time.
Targets: the recipe >= 0.95 x the plain loop, for both.

    python benchmarks/e2e_throughput.py                      # CPU: resnet10t at 224 px, fp32
    python benchmarks/e2e_throughput.py --device cuda        # GPU: resnet50 at 448 px, bf16
        [--model NAME] [--image-size N] [--batch-size B] [--images N] [--epochs E] [--precision no|bf16|fp16]
        [--workers auto|N] [--threads N] [--rounds 2] [--channels-last] [--compile [--compile-mode MODE]] [--quick]
"""
import argparse
import importlib.util
import json
import os
import shutil
import tempfile
import time

import torch

from coco_like_images import CLASSES, coco_like_dataset, load_average

TARGET = 0.95
NUM_EVAL = 8
RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "recipes", "train.py")


def parse_args(argv=None):
    """Parse the command line (device-dependent defaults).

    Args:
        argv: Arguments (default ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--model", default=None, help="timm model (default: resnet10t on cpu, resnet50 on cuda)")
    parser.add_argument("--image-size", type=int, default=None, help="default: 224 on cpu, 448 on cuda")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 16 on cpu, 64 on cuda")
    parser.add_argument("--images", type=int, default=None, help="training images (default: 96 on cpu, 1024 on cuda)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs (the first is not rated)")
    parser.add_argument("--precision", default=None, choices=("no", "bf16", "fp16"),
                        help="mixed precision (default: no on cpu, bf16 on cuda)")
    parser.add_argument("--workers", default="auto", help="'auto' (the recipe's rule) or a count, for both loops")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: the CPUs)")
    parser.add_argument("--rounds", type=int, default=2, help="alternate runs of each loop")
    parser.add_argument("--clock", default="auto", choices=("auto", "wall", "cpu"),
                        help="auto: CPU time on the CPU without workers, else wall-clock time")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model in both loops")
    parser.add_argument("--compile-mode", default="default")
    parser.add_argument("--skip-features", action="store_true", help="skip the feature-extraction comparison")
    parser.add_argument("--quick", action="store_true", help="a dry run: 32 images, 2 epochs, 64 px")
    parser.add_argument("--work-dir", default=None, help="folder for the images (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    gpu = args.device == "cuda"
    args.model = args.model or ("resnet50" if gpu else "resnet10t")
    args.image_size = args.image_size or (448 if gpu else 224)
    args.batch_size = args.batch_size or (64 if gpu else 16)
    args.images = args.images or (1024 if gpu else 96)
    args.precision = args.precision or ("bf16" if gpu else "no")
    if args.quick:
        args.images, args.epochs, args.image_size = 32, 2, 64
    return args


CLOCK = time.perf_counter  # set by main(): time.process_time or time.perf_counter


def _best_rate(images: int, runs) -> float:
    """Images/s of the fastest rated epoch (or pass) over runs: ``runs`` is a list of per-epoch seconds."""
    return images / min(min(seconds[1:] or seconds) for seconds in runs)


def _reset_accelerate():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def recipe_training(args, dataset_dir, work, workers):
    """Epoch seconds of ``recipes/train.py`` (end_to_end, loss an) on the saved dataset: from the end of one
    epoch's checkpoint to the start of the next one's (``PhaseBook.end_epoch`` scores, logs and checkpoints)."""
    from spl_losses.training.phase_book import PhaseBook

    spec = importlib.util.spec_from_file_location("spl_train_recipe", RECIPE)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    out = os.path.join(work, "recipe_run")
    flags = ["--dataset", dataset_dir, "--model", args.model, "--no-pretrained", "--image-size", str(args.image_size),
             "--batch-size", str(args.batch_size), "--epochs", str(args.epochs), "--lr", "1e-4", "--loss", "an",
             "--workers", str(workers), "--mixed-precision", args.precision, "--no-progress", "--output-dir", out,
             "--keep-checkpoints", "1"]
    flags += ["--channels-last"] if args.channels_last else []
    flags += ["--compile", "--compile-mode", args.compile_mode] if args.compile else []
    marks, end_epoch = [], PhaseBook.end_epoch

    def timed_end_epoch(self, *args, **kwargs):
        marks.append(CLOCK())
        try:
            return end_epoch(self, *args, **kwargs)
        finally:
            marks.append(CLOCK())

    _reset_accelerate()
    PhaseBook.end_epoch = timed_end_epoch
    try:
        recipe.main(flags)
    finally:
        PhaseBook.end_epoch = end_epoch
        _reset_accelerate()
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
        first = json.loads(f.readline())["seconds"]  # (not rated)
    return [first] + [marks[2 * k] - marks[2 * k - 1] for k in range(1, len(marks) // 2)]


def _timm_loader(folder, model, args, workers, batch_size, device):
    from timm.data import ImageDataset, create_loader

    from spl_losses.training.images import protocol_data_config

    cfg = protocol_data_config(model, args.image_size)
    return create_loader(ImageDataset(folder), input_size=cfg["input_size"], batch_size=batch_size,
                         is_training=False, use_prefetcher=True, device=device, num_workers=workers, crop_pct=1.0,
                         crop_mode="squash", interpolation=cfg["interpolation"], mean=cfg["mean"], std=cfg["std"],
                         pin_memory=device.type == "cuda", persistent_workers=True)


def _plain_model(args):
    import timm

    model = timm.create_model(args.model, pretrained=False, num_classes=len(CLASSES))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        model = torch.compile(model, mode=None if args.compile_mode == "default" else args.compile_mode)
    return model


def plain_training(args, work, workers):
    """Epoch seconds of a hand-written timm + accelerate training loop on the same images."""
    from accelerate import Accelerator
    from timm.optim import create_optimizer_v2

    _reset_accelerate()
    accelerator = Accelerator(mixed_precision=args.precision, cpu=args.device == "cpu")
    torch.manual_seed(0)
    model = _plain_model(args)
    optimizer = create_optimizer_v2(model, "adam", lr=1e-4, fused=True)
    model, optimizer = accelerator.prepare(model, optimizer)
    loader = _timm_loader(os.path.join(work, "timm_train"), accelerator.unwrap_model(model), args, workers,
                          args.batch_size, accelerator.device)
    val = next(iter(_timm_loader(os.path.join(work, "timm_eval"), accelerator.unwrap_model(model), args, 0, NUM_EVAL,
                                 accelerator.device)))[0]
    targets = (torch.rand(args.images, len(CLASSES), generator=torch.Generator().manual_seed(0)) < 0.1).float()
    targets = targets.to(accelerator.device)
    criterion = torch.nn.BCEWithLogitsLoss()
    seconds = []
    for _ in range(args.epochs):
        start = CLOCK()
        model.train()
        for i, (images, _) in enumerate(loader):
            flip = torch.rand(images.shape[0], device=images.device) < 0.5
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with accelerator.autocast():
                loss = criterion(model(images), targets[i * args.batch_size:i * args.batch_size + images.shape[0]])
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        model.eval()
        with torch.no_grad(), accelerator.autocast():
            model(val).float().cpu()
        seconds.append(CLOCK() - start)
    _reset_accelerate()
    return seconds


def recipe_extraction(args, split, work, workers, repeats=2):
    """Seconds of ``extract_or_load_features`` over ``split`` (a fresh cache file each time)."""
    import timm
    from accelerate import Accelerator

    from spl_losses.training import ImagePipeline, extract_or_load_features

    _reset_accelerate()
    accelerator = Accelerator(mixed_precision=args.precision, cpu=args.device == "cpu")
    model = timm.create_model(args.model, pretrained=False, num_classes=len(CLASSES))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    pipeline = ImagePipeline.for_model(model, args.image_size, device=accelerator.device, workers=workers,
                                       channels_last=args.channels_last, accelerator=accelerator)
    seconds = []
    for _ in range(repeats):
        start = CLOCK()
        path = os.path.join(work, "features.safetensors")
        if os.path.exists(path):
            os.remove(path)  # extract again
        extract_or_load_features(accelerator, model, split, pipeline, path, batch_size=args.batch_size,
                                 split_name="train")
        seconds.append(CLOCK() - start)
    _reset_accelerate()
    return seconds


@torch.no_grad()
def plain_extraction(args, work, workers, repeats=2):
    """Seconds of a hand-written pooled-feature loop over the same images."""
    from accelerate import Accelerator

    _reset_accelerate()
    accelerator = Accelerator(mixed_precision=args.precision, cpu=args.device == "cpu")
    model = _plain_model(argparse.Namespace(**{**vars(args), "compile": False}))
    model = model.to(accelerator.device).eval()
    seconds = []
    for _ in range(repeats):
        start = CLOCK()
        loader = _timm_loader(os.path.join(work, "timm_train"), model, args, workers, args.batch_size,
                              accelerator.device)
        features = []
        for images, _ in loader:
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with accelerator.autocast():
                features.append(model.forward_head(model.forward_features(images), pre_logits=True).float().cpu())
        torch.cat(features)
        del loader
        seconds.append(CLOCK() - start)
    _reset_accelerate()
    return seconds


def _timm_folders(work, data):
    """timm's ImageDataset folders (class subfolder 'images') holding the train and the eval JPEGs."""
    import datasets

    for name, split in (("timm_train", data["train"]), ("timm_eval", data["validation"])):
        folder = os.path.join(work, name, "images")
        os.makedirs(folder, exist_ok=True)
        for i, entry in enumerate(split.cast_column("image", datasets.Image(decode=False))["image"]):
            os.symlink(entry["path"], os.path.join(folder, f"{i:06d}.jpg"))


def main(argv=None):
    """Run both comparisons and print their table.

    Args:
        argv: Command-line arguments.
    """
    args = parse_args(argv)
    from spl_losses.training.images import available_cpus, resolve_workers

    torch.set_num_threads(args.threads or available_cpus())
    workers = resolve_workers("auto" if args.workers == "auto" else int(args.workers), args.device)
    global CLOCK
    cpu_clock = args.clock == "cpu" or (args.clock == "auto" and args.device == "cpu" and workers == 0)
    CLOCK = time.process_time if cpu_clock else time.perf_counter
    work = args.work_dir or tempfile.mkdtemp(prefix="spl_e2e_throughput_")
    try:
        data, _, kilobytes = coco_like_dataset(os.path.join(work, "data"), args.images, num_eval=NUM_EVAL)
        dataset_dir = os.path.join(work, "dataset")
        data.save_to_disk(dataset_dir)
        _timm_folders(work, data)
        print(f"{args.device}: {args.model} at {args.image_size} px, batch {args.batch_size}, "
              f"precision {args.precision}, "
              f"{args.images} JPEGs 640x480 ({kilobytes:.0f} kB), {args.epochs} epochs, torch threads "
              f"{torch.get_num_threads()}, workers {workers} ({args.workers}), channels-last {args.channels_last}, "
              f"compile {args.compile}; {'CPU' if cpu_clock else 'wall-clock'} time; load average {load_average()}")
        runs = {"plain": [], "recipe": [], "plain_f": [], "recipe_f": []}
        for _ in range(args.rounds):
            runs["plain"].append(plain_training(args, work, workers))
            shutil.rmtree(os.path.join(work, "recipe_run"), ignore_errors=True)
            runs["recipe"].append(recipe_training(args, dataset_dir, work, workers))
            if not args.skip_features:
                from datasets import load_from_disk

                runs["plain_f"].append(plain_extraction(args, work, workers))
                runs["recipe_f"].append(recipe_extraction(args, load_from_disk(dataset_dir)["train"], work, workers))
        rows = [("training (img/s)", _best_rate(args.images, runs["recipe"]), _best_rate(args.images, runs["plain"]))]
        if not args.skip_features:
            rows.append(("feature extraction (img/s)", _best_rate(args.images, runs["recipe_f"]),
                         _best_rate(args.images, runs["plain_f"])))
        print(f"\n{'':<28} {'recipe':>8} {'plain':>8} {'ratio':>7}")
        for name, ours, theirs in rows:
            print(f"{name:<28} {ours:8.1f} {theirs:8.1f} {ours / theirs:7.3f}  "
                  f"({'met' if ours >= TARGET * theirs else 'not met'}: target >= {TARGET})")
        print(f"load average after: {load_average()}")
        return {name: ours / theirs for name, ours, theirs in rows}
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
