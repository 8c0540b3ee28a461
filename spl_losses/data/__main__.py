"""Command line: build an SPML dataset, write it with its card, optionally push it to the Hub.

    python -m spl_losses.data build NAME --data-dir RAW_DIR --output OUT_DIR [--seed 1200]
                                         [--format arrow|parquet] [--push-to-hub ORG/NAME [--private]]
                                         [--dataset-option KEY=VALUE ...]
    python -m spl_losses.data download NAME --data-dir RAW_DIR [--mirror URL] [--jobs N] [--keep-archives]
    python -m spl_losses.data build NAME --data-dir RAW_DIR --download ...   (download, then build)
    python -m spl_losses.data list

``--data-dir`` (alias ``--root``) and ``--dataset-option`` (alias ``--option``) are the training
recipe's flags too. Everything is checked before the build starts: the options, that ``--output`` can
be created and is empty, and, with ``--push-to-hub``, that a token exists and the Hub accepts it.
Every failure prints ``error: ...`` and exits with status 2; flags are never abbreviated, and an
unknown flag is named with the closest ones.

``--format arrow`` (default) writes ``DatasetDict.save_to_disk`` (read back with
``datasets.load_from_disk(OUT_DIR)``); ``--format parquet`` writes ``OUT_DIR/data/{split}-*.parquet``
with the images embedded (read back with ``datasets.load_dataset(OUT_DIR)``). Both add the dataset
card ``README.md`` and the build report ``build_report.json``.
"""
import argparse
import errno
import json
import os
import sys
import warnings
from typing import Any, Dict, List, Optional, Sequence

import datasets

from ..training.cli import FlagParser
from .build_cache import is_built
from .builder import create_builder
from .download import DownloadError, check_external_files, download, downloadable_datasets
from .card import make_dataset_card, merge_card_metadata
from .generic import ClassListWarning
from .image_checks import VERIFY_AUTO_LIMIT
from .options import check_dataset_options, parse_dataset_options
from .registry import get_dataset_info, list_datasets

__all__ = ["main", "build_parser", "write_parquet", "format_report"]

DEFAULT_MAX_SHARD_SIZE = "500MB"


_OPTIONS_HELP = f"""\
dataset options (--dataset-option KEY=VALUE, values read as YAML; see each builder's config):
  observed_sampling=uniform|weights|size|loc
                        how the observed positive is chosen among an image's positives: uniform
                        (default), proportional to class_weights_file's weights, or (coco2014) by
                        the objects' area / closeness to the image centre (Arroyo et al. 2023)
  class_weights_file=PATH
                        JSON {{"class name": weight}} for observed_sampling=weights
  sampling_rng=hash|reference
                        hash (default): the package's counter-based draws, identical everywhere;
                        reference: Cole et al.'s own random streams, draw for draw
  verify_images=true|false|null
                        open every listed image with PIL so that no other kind of file enters the
                        dataset (null, the default: splits of at most {VERIFY_AUTO_LIMIT:,} images;
                        multilabel_files also verifies rows with absolute paths); paths leaving
                        their folder are always refused
  listing=PATH, test_fraction=0.2
                        multilabel_files: one CSV / JSON-lines listing of all images, test carved out
  classes_file=PATH     multilabel_files, multilabel_features: the class list, one name a line, in
                        label-index order (relative to --data-dir when given); a listing row naming
                        another class is refused, so a typo (circel for circle) cannot become a class
  class_names=[a, b, ...]
                        the same, as a YAML list; without either, the classes are the sorted names
                        found in the listings (and the build warns about classes seen in fewer than
                        3 rows, missing from validation or test, only in test, or differing only in
                        case)
  val_fraction=0.2, num_negatives=0, drop_without_positive=..., num_train=... (digits_mosaic)
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m spl_losses.data``.

    Args:
        (none)
    """
    parser = FlagParser(prog="python -m spl_losses.data",
                        description="Build SPML datasets (single-positive multi-label benchmarks).")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build a dataset, write it with its card, optionally push it",
                           epilog=_OPTIONS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    build.add_argument("name", help="registered dataset name (see `list`)")
    build.add_argument("--data-dir", "--root", dest="data_dir",
                       help="folder of the raw download (not needed for digits_mosaic)")
    build.add_argument("--output", help="output folder (created; must be empty or absent, and writable)")
    build.add_argument("--seed", type=int, default=1200, help="seed of the single positives (default 1200)")
    build.add_argument("--split-seed", type=int, default=1200, help="seed of the train/validation split")
    build.add_argument("--format", choices=("arrow", "parquet"), default="arrow",
                       help="arrow: save_to_disk folder; parquet: data/*.parquet with images embedded")
    build.add_argument("--cache-dir", help="datasets cache folder for the build (datasets' default if unset)")
    build.add_argument("--force", action="store_true", help="rebuild even if a cached build exists")
    build.add_argument("--dataset-option", "--option", dest="dataset_option", action="append", default=[],
                       metavar="KEY=VALUE", help="builder option, e.g. --dataset-option observed_sampling=size "
                                                 "(repeatable; listed below)")
    build.add_argument("--push-to-hub", metavar="ORG/NAME", help="also push the dataset and its card to the Hub "
                                                                 "(token and Hub checked before the build)")
    build.add_argument("--private", action="store_true", help="create the Hub repository as private")
    build.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, help="Parquet shard size (500MB)")
    build.add_argument("--download", action="store_true",
                       help="first download, verify and unpack the official archives into --data-dir "
                            "(as `download`; a second call finds them in place)")
    _add_download_flags(build)
    fetch = sub.add_parser("download", help="download, verify and unpack a benchmark's official archives",
                              epilog=_DOWNLOAD_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    fetch.add_argument("name", help="dataset name: " + ", ".join(downloadable_datasets()))
    fetch.add_argument("--data-dir", "--root", dest="data_dir", required=True,
                       help="folder to unpack into (created), then `build --data-dir`")
    _add_download_flags(fetch)
    fetch.add_argument("--keep-archives", action="store_true",
                          help="keep the verified archives (under DIR/.spl_data/downloads) after unpacking")
    sub.add_parser("list", help="list the registered datasets")
    return parser


_DOWNLOAD_HELP = """\
Files go to DIR/.spl_data/downloads first (a partial file is resumed with an HTTP Range request on the
next call), are checked against the size and checksum kept in the package (spl_losses/data/archives.py),
then unpacked through a temporary folder (no member may leave DIR) and moved into DIR. A marker with the
archive's checksum makes a second call do nothing. HF_HUB_OFFLINE=1 refuses any transfer.
nuswide: NUS-WIDE's concept list, labels and tags; its images are not distributed by its authors.
"""


def _add_download_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mirror", metavar="URL",
                        help="base URL serving the same file names instead of the official hosts")
    parser.add_argument("--jobs", type=int, default=1, help="files transferred in parallel (default 1)")


def format_report(report: Dict[str, Any]) -> str:
    """Human-readable build report: split sizes and examples without positives.

    Args:
        report: A builder's ``build_report``.
    """
    lines = [f"dataset {report.get('dataset')}: {report.get('num_classes')} classes, seed {report.get('seed')}, "
             f"split seed {report.get('split_seed')}, observed_sampling {report.get('observed_sampling', 'uniform')}, "
             f"sampling_rng {report.get('sampling_rng', 'hash')}"]
    for split, entry in report.get("splits", {}).items():
        lines.append(f"  {split:<10} {entry.get('num_examples', 0):>8,} examples; "
                     f"dropped without positive: {entry.get('dropped_without_positive', 0):,}; "
                     f"kept without positive: {entry.get('kept_without_positive', 0):,}")
    return "\n".join(lines)


def write_parquet(dataset_dict: datasets.DatasetDict, output: str,
                  max_shard_size: str = DEFAULT_MAX_SHARD_SIZE) -> List[str]:
    """Write ``output/data/{split}-NNNNN-of-NNNNN.parquet`` with image files embedded, as the Hub stores them.

    Args:
        dataset_dict: The dataset to write.
        output: Output folder.
        max_shard_size: Largest shard, e.g. ``"500MB"``.

    Returns:
        The written file paths, relative to ``output``.
    """
    from datasets.table import embed_table_storage
    from datasets.utils.py_utils import convert_file_size_to_int

    limit = convert_file_size_to_int(max_shard_size)
    written = []
    os.makedirs(os.path.join(output, "data"), exist_ok=True)
    for split, ds in dataset_dict.items():
        num_shards = max(1, int(ds._estimate_nbytes() // limit) + 1) if len(ds) else 1
        for i in range(num_shards):
            shard = ds.shard(num_shards=num_shards, index=i, contiguous=True)
            shard = shard.with_format("arrow").map(embed_table_storage, batched=True, batch_size=1000,
                                                   keep_in_memory=True, desc=f"Embedding {split} files")
            relative = f"data/{split}-{i:05d}-of-{num_shards:05d}.parquet"
            shard.with_format(None).to_parquet(os.path.join(output, relative))
            written.append(relative)
    return written


def _parquet_configs(dataset_dict: datasets.DatasetDict) -> list:
    return [{"config_name": "default",
             "data_files": [{"split": split, "path": f"data/{split}-*"} for split in dataset_dict]}]


def _prepare_output(output: str) -> bool:
    """Create ``output`` (or check the existing empty folder) and prove it writable; True if created."""
    path = os.path.abspath(output)
    if os.path.exists(path):
        if not os.path.isdir(path) or os.listdir(path):
            raise ValueError(f"--output {output} exists and is not an empty folder; choose a new folder")
        created = False
    else:
        try:
            os.makedirs(path)
        except OSError as err:
            raise ValueError(f"--output {output} cannot be created: {err.strerror or err}") from None
        created = True
    probe = os.path.join(path, ".spl_losses_write_check")
    try:
        with open(probe, "w", encoding="utf-8"):
            pass
        os.remove(probe)
    except OSError as err:
        if created:
            os.rmdir(path)
        raise ValueError(f"--output {output} is not writable: {err.strerror or err}") from None
    return created


def build_command(args: argparse.Namespace) -> int:
    """Run ``build``: check everything, build, write, report, push.

    Args:
        args: Parsed arguments of the ``build`` sub-command.
    """
    if not args.output and not args.push_to_hub:
        raise ValueError("build needs --output OUT_DIR and/or --push-to-hub ORG/NAME")
    options = parse_dataset_options(args.dataset_option, "--dataset-option")
    info = get_dataset_info(args.name)  # fails early on an unknown name, listing the known ones
    check_dataset_options(args.name, options, "--dataset-option",
                          reserved={"root": "--data-dir", "seed": "--seed", "split_seed": "--split-seed"})
    if info.needs_root and not args.data_dir:
        raise ValueError(f"dataset {args.name!r} needs --data-dir <folder of the raw download>")
    if args.download:
        if not args.data_dir:
            raise ValueError("--download needs --data-dir <folder to download into>")
        if args.name not in downloadable_datasets():
            raise ValueError(f"--download: no download for dataset {args.name!r} (downloadable: "
                             f"{', '.join(downloadable_datasets())})")
        check_external_files(args.name, args.data_dir)  # files no archive holds: checked before any transfer
    if args.push_to_hub:
        from ..hub import check_push_access

        check_push_access(args.push_to_hub, repo_type="dataset")
    created = _prepare_output(args.output) if args.output else False
    try:
        if args.download:
            download(args.name, args.data_dir, mirror=args.mirror, jobs=args.jobs)
        builder = create_builder(args.name, root=args.data_dir, seed=args.seed, split_seed=args.split_seed,
                                 cache_dir=args.cache_dir, **options)
        if not args.force and is_built(builder):
            print(f"reusing the cached build at {builder.cache_dir} (same options, code and input files; --force "
                  "rebuilds)", file=sys.stderr)
        builder.download_and_prepare(download_mode=datasets.DownloadMode.FORCE_REDOWNLOAD if args.force else None)
    except BaseException:
        if created and not os.listdir(args.output):
            os.rmdir(args.output)
        raise
    dsd = builder.as_dataset()
    report = builder.build_report
    print(format_report(report))
    if args.output:
        _write_output(args, dsd, report)
    if args.push_to_hub:
        _push(args, dsd, report)
    return 0


def _write_output(args: argparse.Namespace, dsd: datasets.DatasetDict, report: Dict[str, Any]) -> None:
    out_path = os.path.abspath(args.output)
    if args.format == "arrow":
        dsd.save_to_disk(args.output)
        how = f"datasets.load_from_disk({out_path!r})"
    else:
        write_parquet(dsd, args.output, args.max_shard_size)
        how = f"datasets.load_dataset({out_path!r})"
    card = make_dataset_card(dsd, name=args.name, report=report, repo_id=args.push_to_hub, local_load=how)
    if args.format == "parquet":
        card.data["configs"] = _parquet_configs(dsd)
    card.save(os.path.join(args.output, "README.md"))
    with open(os.path.join(args.output, "build_report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.output} ({args.format}); load it with {how}")


def _push(args: argparse.Namespace, dsd: datasets.DatasetDict, report: Dict[str, Any]) -> None:
    from huggingface_hub import DatasetCard

    card = make_dataset_card(dsd, name=args.name, report=report, repo_id=args.push_to_hub)
    dsd.push_to_hub(args.push_to_hub, private=args.private or None)
    try:
        card = merge_card_metadata(card, DatasetCard.load(args.push_to_hub, repo_type="dataset"))
    except Exception as err:  # the data is pushed; still push our card, without datasets' metadata
        warnings.warn(f"could not read back the card datasets wrote on {args.push_to_hub} ({err}); "
                      "pushing the SPML card without its dataset_info metadata")
    card.push_to_hub(args.push_to_hub, repo_type="dataset", commit_message="Add the SPML dataset card")
    print(f"pushed to https://huggingface.co/datasets/{args.push_to_hub}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m spl_losses.data``.

    Args:
        argv: Arguments (``sys.argv[1:]`` if None).

    Returns:
        The exit status: 0 on success, 2 on a usage or data error (message on stderr).
    """
    args = build_parser().parse_args(argv)
    if args.command == "download":
        try:
            download(args.name, args.data_dir, mirror=args.mirror, jobs=args.jobs, keep_archives=args.keep_archives)
        except DownloadError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except OSError as err:
            print(f"error: {describe_failure(err)}", file=sys.stderr)
            return 2
        return 0
    if args.command == "list":
        for name in list_datasets():
            k = get_dataset_info(name).expected_num_pos
            print(name if k is None else f"{name} (k={k})")
        return 0
    try:
        with warnings.catch_warnings():
            default_show = warnings.showwarning

            def show(message, category, filename, lineno, file=None, line=None):
                if issubclass(category, ClassListWarning):  # a message for the user, not a code location
                    print(f"warning: {message}", file=sys.stderr)
                else:
                    default_show(message, category, filename, lineno, file, line)

            warnings.showwarning = show
            return build_command(args)
    except (ValueError, TypeError, DownloadError) as err:  # input errors (HubPushError is a ValueError): the message says it all
        print(f"error: {err}", file=sys.stderr)
    except Exception as err:  # anything else (disk full, an interrupted download): no traceback either
        print(f"error: {describe_failure(err)}", file=sys.stderr)
    return 2


_DISK_HINTS = {errno.ENOSPC: "free some space, or choose another --cache-dir / --output",
               errno.EFBIG: "the file system's largest file is smaller: choose another --cache-dir / --output",
               errno.EDQUOT: "the disk quota is reached: free some space, or choose another --cache-dir / --output"}


def describe_failure(err: BaseException) -> str:
    """One line for an unexpected failure: its type and message, then its causes (``__cause__`` /
    ``__context__``), so that a ``DatasetGenerationError`` still says "No space left on device" and the file.

    Args:
        err: The exception.
    """
    parts, seen, current = [], set(), err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = " ".join(str(current).split())
        if isinstance(current, OSError) and current.errno in _DISK_HINTS:
            name = errno.errorcode.get(current.errno, str(current.errno))
            where = f": {current.filename}" if current.filename else ""
            text = f"{name} {current.strerror or os.strerror(current.errno)}{where} ({_DISK_HINTS[current.errno]})"
        parts.append(f"{type(current).__name__}: {text}" if text else type(current).__name__)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return " <- caused by ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
