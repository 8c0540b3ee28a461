"""Images/s of the training recipe's image loader at 448 px on generated COCO-like JPEGs (640 x 480).

Measures, on the same files (built with the ``multilabel_files`` builder, as a run reads them):

1. one core's rate of the work a loader worker does per image: decode + squash to 448 px, to uint8
   (and, for reference, on to a normalised float tensor, the work of the old CPU pipeline);
2. the machine's limit: that single-core rate (measured around each loader, see below) x the CPUs this
   process may use;
3. the recipe's training loader (``ImagePipeline``: its worker count, persistent workers, uint8 batches
   on ``--device``, prepared by accelerate) per epoch: the batches as delivered, then flipped and normalised
   on the device as the training step does, then read from the image cache;
4. timm's own ``create_loader`` (prefetcher: uint8 batches normalised on the device) with the same
   worker count, batch size and files.

Target: the recipe's loader with default settings delivers >= 0.9 x the limit. ``--workers auto`` is the
recipe's rule for a process feeding an accelerator (its share of the CPUs); the recipe itself uses 0
workers when the model trains on the CPU. The first epoch includes starting the workers.

On a shared machine (a virtual machine whose cores other guests use) one core's rate drifts by 10-25 %
within minutes, so a limit measured once and a loader measured later are not comparable. The single-core
rate is therefore measured right before and right after each loader (128 images each time, per
CPU-second) and that loader's limit is their mean x the CPUs ("limit" column); the spread of all these
windows is printed. Each loader's CPU time is measured too (this process's and its workers', read from
/proc over the later epochs): "CPU eff." is its images per CPU-second over the single-core rate around it,
i.e. the share of the limit it reaches when its workers keep every core busy. The wall-clock column "best"
is each loader's fastest later epoch.

    python benchmarks/input_pipeline.py [--device cpu|cuda] [--images N] [--epochs 4] [--batch-size 32]
        [--workers auto] [--threads 1] [--quick]
"""
import argparse
import gc
import os
import shutil
import tempfile
import time

import torch

from coco_like_images import CLASSES, coco_like_dataset, load_average

TARGET = 0.9


def parse_args(argv=None):
    """Parse the command line.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="where batches are normalised (cpu, cuda)")
    parser.add_argument("--images", type=int, default=None,
                        help="generated training images (default: 768 on cpu, 2048 on cuda)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per loader (the first starts the workers)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--workers", default="auto", help="'auto' (the recipe's rule for an accelerator) or a count")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the main process")
    parser.add_argument("--model", default="resnet50", help="timm model whose mean/std/interpolation are used")
    parser.add_argument("--quick", action="store_true", help="a dry run: 64 images, 2 epochs")
    parser.add_argument("--work-dir", default=None, help="folder for the images (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    args.images = args.images or (2048 if args.device.startswith("cuda") else 768)
    if args.quick:
        args.images, args.epochs = 64, 2
    return args


def _worker_pids(loader):
    """The worker processes of a (possibly wrapped) DataLoader with persistent workers."""
    while not hasattr(loader, "_iterator") and hasattr(loader, "loader"):  # timm's PrefetchLoader
        loader = loader.loader
    iterator = getattr(loader, "_iterator", None)
    return [w.pid for w in getattr(iterator, "_workers", [])]


def cpu_seconds(pids=()) -> float:
    """CPU time of this process and of the processes ``pids`` (from /proc)."""
    total = time.process_time()
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total


def single_core_rate(split, transform, limit_images=128):
    """Images per CPU-second of decode + ``transform`` of the split's first ``limit_images`` images, in this process."""
    import datasets

    from spl_losses.training.images import decode_image

    entries = split.cast_column("image", datasets.Image(decode=False))["image"][:limit_images]
    start = time.process_time()
    for i, entry in enumerate(entries):
        transform(decode_image(entry, i))
    return len(entries) / (time.process_time() - start)


def time_epochs(make_loader, epochs, consume, release=lambda: None):
    """Images/s of each epoch of the loader ``make_loader()`` (consuming every batch with ``consume``) and its
    images per CPU-second (this process and its workers) over the epochs after the first."""
    loader = make_loader()
    rates, images, cpu_start = [], 0, None
    for epoch in range(epochs):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        count, start = 0, time.perf_counter()
        for batch in loader:
            count += consume(batch, epoch)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        rates.append(count / (time.perf_counter() - start))
        if cpu_start is None:  # the workers started during the first epoch
            pids = _worker_pids(loader)
            cpu_start = cpu_seconds(pids)
        else:
            images += count
    per_cpu_second = images / (cpu_seconds(pids) - cpu_start) if images else float("nan")
    del loader
    release()
    gc.collect()  # shuts the persistent workers down
    return rates, per_cpu_second


def recipe_loader_rates(accelerator, pipeline, split, args, fingerprint=None, normalise=True):
    """Epoch rates of the recipe's training loader (with ``normalise``: flipped and normalised on the device, as
    the recipe's step does)."""
    from spl_losses.training.images import flip_images
    from spl_losses.training.parallel import EpochPermutationSampler, epoch_flip_mask

    def make_loader():
        return accelerator.prepare_data_loader(pipeline.loader(
            split, args.batch_size, fingerprint=fingerprint, sampler=EpochPermutationSampler(len(split), 0),
            split_name="train"))

    masks = [epoch_flip_mask(len(split), 0, e).to(accelerator.device) for e in range(args.epochs)]

    def consume(batch, epoch):
        images = batch["pixel_values"]
        if normalise:
            images = pipeline.normalize(flip_images(images, masks[epoch][batch["index"]]))
        return images.shape[0]

    return time_epochs(make_loader, args.epochs, consume, release=accelerator.free_memory)


def timm_loader_rates(folder, pipeline, workers, args):
    """Epoch rates of ``timm.data.create_loader`` on the same JPEGs (prefetcher: normalised on the device)."""
    from timm.data import ImageDataset, create_loader

    mean, std = pipeline.normalize.mean, pipeline.normalize.std

    def make_loader():
        size = (3, args.image_size, args.image_size)
        return create_loader(ImageDataset(os.path.join(folder, "timm")), input_size=size,
                             batch_size=args.batch_size, is_training=False, use_prefetcher=True,
                             device=torch.device(args.device), num_workers=workers, crop_pct=1.0, crop_mode="squash",
                             interpolation=pipeline.interpolation, mean=mean, std=std,
                             pin_memory=args.device.startswith("cuda"), persistent_workers=True)

    return time_epochs(make_loader, args.epochs, lambda batch, epoch: batch[0].shape[0])


def main(argv=None):
    """Run the benchmark and print its table.

    Args:
        argv: Command-line arguments.
    """
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import timm
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    from spl_losses.data import dataset_fingerprint
    from spl_losses.training.images import protocol_transform
    from spl_losses.training.images import (ImagePipeline, available_cpus, default_workers,
                                                    local_process_count)

    cpus = available_cpus()
    if args.workers == "auto":
        workers = default_workers(cpus, local_process_count(), on_accelerator=True)
        workers_note = f"auto: {cpus} CPUs / {local_process_count()} process(es) on this machine"
    else:
        workers, workers_note = int(args.workers), "--workers"
    folder = args.work_dir or tempfile.mkdtemp(prefix="spl_input_pipeline_")
    try:
        data, gen_seconds, kilobytes = coco_like_dataset(folder, args.images)
        os.makedirs(os.path.join(folder, "timm"), exist_ok=True)
        if not os.path.exists(os.path.join(folder, "timm", "images")):
            os.symlink(os.path.join(folder, "images"), os.path.join(folder, "timm", "images"))
        split = data["train"].select(range(args.images))  # timm's folder also holds validation and test images
        model = timm.create_model(args.model, pretrained=False, num_classes=len(CLASSES))
        accelerator = Accelerator(cpu=args.device == "cpu",
                                  dataloader_config=DataLoaderConfiguration(split_batches=True, non_blocking=True))
        pipeline = ImagePipeline.for_model(model, args.image_size, device=accelerator.device, workers=workers,
                                           accelerator=accelerator)
        print(f"machine: {cpus} CPUs for this process, load average {load_average()} (shared machine); "
              f"device {accelerator.device}")
        print(f"torch threads {torch.get_num_threads()}, workers {workers} ({workers_note}), batch {args.batch_size}, "
              f"{args.image_size} px, {args.images} generated JPEGs 640x480 (mean {kilobytes:.0f} kB, "
              f"{gen_seconds:.1f} s to write)")
        reference = protocol_transform(model, args.image_size)
        windows = []  # every single-core measurement (uint8), for the spread

        def core_rate():
            windows.append(single_core_rate(split, pipeline.transform))
            return windows[-1]

        uint8_rate, float_rate = core_rate(), single_core_rate(split, reference)
        print(f"one core: decode + squash to {args.image_size} px -> uint8 {uint8_rate:.0f} img per CPU-s "
              f"(-> normalised float {float_rate:.0f}); measured again around each loader")

        def bracketed(measure):
            """A loader's rates and the single-core rate around it (mean of the windows before and after)."""
            before = windows[-1]  # the last window measured: right before this loader
            rates = measure()
            return rates, (before + core_rate()) / 2

        rows = [("recipe loader: uint8 batches on the device",
                 bracketed(lambda: recipe_loader_rates(accelerator, pipeline, split, args, normalise=False))),
                (f"recipe loader + flip + normalise on {accelerator.device.type}",
                 bracketed(lambda: recipe_loader_rates(accelerator, pipeline, split, args)))]
        cache_dir = os.path.join(folder, "image_cache")
        cached = ImagePipeline.for_model(model, args.image_size, device=accelerator.device, workers=workers,
                                         image_cache_dir=cache_dir, accelerator=accelerator)
        fingerprint = dataset_fingerprint(split)
        start = time.perf_counter()
        cached.loader(split, args.batch_size, fingerprint=fingerprint)  # builds the cache
        build = time.perf_counter() - start
        rows.append((f"  the same from the image cache (built in {build:.1f} s)",
                     bracketed(lambda: recipe_loader_rates(accelerator, cached, split, args, fingerprint))))
        rows.append((f"timm create_loader (prefetcher: normalised on {accelerator.device.type})",
                     bracketed(lambda: timm_loader_rates(folder, pipeline, workers, args))))
        ordered = sorted(windows)
        print(f"one core over the run: {len(windows)} windows, {ordered[0]:.0f} - {ordered[-1]:.0f} img per CPU-s "
              f"(median {ordered[len(ordered) // 2]:.0f}): the host's other load")
        print(f"\n{'loader (img/s)':<62} {'epoch 1':>8} {'best':>8} {'limit':>8} {'x limit':>8} {'CPU eff.':>8}")
        summary = {}
        for name, ((rates, per_cpu_second), core) in rows:
            best, limit = max(rates[1:] or rates), core * cpus
            summary[name] = (best, limit, per_cpu_second / core)
            print(f"{name:<62} {rates[0]:8.0f} {best:8.0f} {limit:8.0f} {best / limit:8.2f} "
                  f"{per_cpu_second / core:8.2f}")
        steady, limit, efficiency = summary[rows[0][0]]
        print(f"\ntarget: the recipe's loader (best later epoch) >= {TARGET} x limit (one core's rate around it x "
              f"{cpus} CPUs = {limit:.0f} img/s): {steady / limit:.2f} ({'met' if steady >= TARGET * limit else 'not met'}"
              f"; load average {load_average()}); CPU efficiency {efficiency:.2f}")
        return {"limit": limit, "recipe": steady, "ratio": steady / limit, "efficiency": efficiency,
                "workers": workers}
    finally:
        if args.work_dir is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
