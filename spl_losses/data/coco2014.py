"""COCO 2014 as an SPML benchmark (80 classes, SPEC §6).

Raw layout under ``root`` (the official downloads, unpacked)::

    annotations/instances_train2014.json
    annotations/instances_val2014.json
    train2014/COCO_train2014_000000000009.jpg ...
    val2014/COCO_val2014_000000000042.jpg ...

Rules of the reference (Cole et al.): classes in the order of the ``categories`` list; an image is
present in a class if it has at least one instance annotation of it; images with no instance
annotation are dropped; rows are ordered by image id compared as strings (the reference sorts this
way, and the validation split drawn from the training rows depends on the order).
"""
import gc
import json
import os
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json

from .builder import RawSplit, SPMLBuilder
from .raw_files import DenseSplit, RawBenchmark, check_images_exist, require_dir, require_file
from .registry import register_dataset

__all__ = ["COCO2014", "CocoColumns", "read_coco2014", "read_coco_split", "read_coco_columns", "coco_columns",
           "coco_label_matrix", "load_annotation_file", "COCO_SPLITS"]

#: Our split name -> the official split it is read from.
COCO_SPLITS = {"train": "train2014", "test": "val2014"}

_COCO_CITATION = """@inproceedings{lin2014microsoft,
  title = {Microsoft {COCO}: Common Objects in Context},
  author = {Lin, Tsung-Yi and Maire, Michael and Belongie, Serge and Hays, James and Perona, Pietro and
            Ramanan, Deva and Doll{\\'a}r, Piotr and Zitnick, C. Lawrence},
  booktitle = {European Conference on Computer Vision (ECCV)},
  pages = {740--755},
  year = {2014}
}"""


class CocoColumns(NamedTuple):
    """The parts of a COCO instances file that the labels need, as columns.

    Args:
        category_names: Names in ``categories`` order.
        category_ids: (C,) int64 ids in ``categories`` order.
        image_ids: (I,) int64 ``images[].id``.
        file_names: (I,) object ``images[].file_name``.
        ann_image_ids: (A,) int64 ``annotations[].image_id``.
        ann_category_ids: (A,) int64 ``annotations[].category_id``.
    """

    category_names: List[str]
    category_ids: np.ndarray
    image_ids: np.ndarray
    file_names: np.ndarray
    ann_image_ids: np.ndarray
    ann_category_ids: np.ndarray


def coco_columns(annotations: dict, annotation_file: str = "<annotations>") -> CocoColumns:
    """Extract :class:`CocoColumns` from a parsed instances file.

    Args:
        annotations: The parsed ``instances_*.json`` (keys ``images``, ``annotations``, ``categories``).
        annotation_file: File name used in error messages.
    """
    for key in ("images", "annotations", "categories"):
        if key not in annotations:
            raise ValueError(f"{annotation_file!r} is not a COCO instances file: no {key!r} key")
    try:
        categories, images, anns = annotations["categories"], annotations["images"], annotations["annotations"]
        return CocoColumns(
            category_names=[str(c["name"]) for c in categories],
            category_ids=np.array([int(c["id"]) for c in categories], dtype=np.int64),
            image_ids=np.fromiter((im["id"] for im in images), dtype=np.int64, count=len(images)),
            file_names=np.array([im["file_name"] for im in images], dtype=object),
            ann_image_ids=np.fromiter((a["image_id"] for a in anns), dtype=np.int64, count=len(anns)),
            ann_category_ids=np.fromiter((a["category_id"] for a in anns), dtype=np.int64, count=len(anns)),
        )
    except (KeyError, TypeError) as err:
        raise ValueError(f"{annotation_file!r} is not a COCO instances file: an entry lacks {err}") from None


_ARROW_SCHEMA = pa.schema([
    ("images", pa.list_(pa.struct([("id", pa.int64()), ("file_name", pa.string())]))),
    ("annotations", pa.list_(pa.struct([("image_id", pa.int64()), ("category_id", pa.int64())]))),
    ("categories", pa.list_(pa.struct([("id", pa.int64()), ("name", pa.string())]))),
])


def _read_columns_arrow(path: str) -> Optional[CocoColumns]:
    """Parse only the needed fields with pyarrow's JSON reader; None when the file does not fit its rules
    (more than one line, a missing or null field), so the caller falls back to the ``json`` module."""
    try:
        table = pa_json.read_json(
            path,
            read_options=pa_json.ReadOptions(block_size=os.path.getsize(path) + 1, use_threads=True),
            parse_options=pa_json.ParseOptions(explicit_schema=_ARROW_SCHEMA, unexpected_field_behavior="ignore"),
        )
    except (pa.ArrowException, OverflowError):
        return None
    if table.num_rows != 1:
        return None
    lists = {}
    for key in ("images", "annotations", "categories"):
        column = table.column(key)
        if column.null_count:
            return None
        lists[key] = column.chunk(0).values if column.num_chunks == 1 else column.combine_chunks().values
    fields = [(lists["images"], "id"), (lists["images"], "file_name"), (lists["annotations"], "image_id"),
              (lists["annotations"], "category_id"), (lists["categories"], "id"), (lists["categories"], "name")]
    if any(values.field(name).null_count for values, name in fields):
        return None
    images, anns, categories = lists["images"], lists["annotations"], lists["categories"]
    return CocoColumns(
        category_names=categories.field("name").to_pylist(),
        category_ids=categories.field("id").to_numpy(zero_copy_only=False).astype(np.int64),
        image_ids=images.field("id").to_numpy(zero_copy_only=False).astype(np.int64),
        file_names=np.array(images.field("file_name").to_pylist(), dtype=object),
        ann_image_ids=anns.field("image_id").to_numpy(zero_copy_only=False).astype(np.int64),
        ann_category_ids=anns.field("category_id").to_numpy(zero_copy_only=False).astype(np.int64),
    )


def read_coco_columns(path: str) -> CocoColumns:
    """Read the :class:`CocoColumns` of an instances file, fast.

    pyarrow's JSON reader parses only ``images[].{id, file_name}``, ``annotations[].{image_id,
    category_id}`` and ``categories[].{id, name}`` (skipping the polygons), about 5x faster than the
    ``json`` module on ``instances_train2014.json``. Files it cannot read that way (e.g. pretty-printed
    over several lines) are parsed with ``json`` with the garbage collector paused.

    Args:
        path: The ``instances_*.json`` file.
    """
    columns = _read_columns_arrow(path)
    if columns is None:
        columns = coco_columns(load_annotation_file(path), path)
    return columns


def coco_label_matrix(annotations, annotation_file: str = "<annotations>"):
    """Build the label matrix of one COCO instances file, vectorised over annotations.

    Args:
        annotations: The parsed ``instances_*.json`` (a dict with keys ``images``, ``annotations``,
            ``categories``) or its :class:`CocoColumns`.
        annotation_file: File name used in error messages.

    Returns:
        ``(class_names, category_ids, file_names, labels)``: the category names and ids in
        ``categories`` order, the ``file_name`` of every listed image (ordered by image id as a
        string) and the (N, 80) uint8 label matrix, with all-zero rows for images without any
        annotation (the builder drops them, as the reference does).
    """
    if not isinstance(annotations, CocoColumns):
        annotations = coco_columns(annotations, annotation_file)
    names, cat_ids = annotations.category_names, annotations.category_ids
    if not names:
        raise ValueError(f"{annotation_file!r} has an empty 'categories' list")
    if len(np.unique(cat_ids)) != len(cat_ids):
        raise ValueError(f"{annotation_file!r} lists a category id twice in 'categories'")
    ann_image, ann_cat = annotations.ann_image_ids, annotations.ann_category_ids
    image_ids, file_names = annotations.image_ids, annotations.file_names

    # category id -> column, through a lookup table (COCO's ids are small ints, at most 90)
    lut = np.full(int(max(cat_ids.max(), ann_cat.max(initial=0))) + 1, -1, dtype=np.int64)
    lut[cat_ids] = np.arange(len(cat_ids))
    columns = lut[np.clip(ann_cat, 0, None)]
    unknown = (columns < 0) | (ann_cat < 0)
    if unknown.any():
        bad = int(ann_cat[unknown][0])
        raise ValueError(f"{annotation_file!r}: an annotation has category_id {bad}, which is not in 'categories'")

    # one row per listed image, ordered by the image id as a string (the reference's order)
    unique_ids, first = np.unique(image_ids, return_index=True)
    string_order = np.argsort(unique_ids.astype(str), kind="stable")
    row_ids = unique_ids[string_order]
    kept_files = file_names[first[string_order]].tolist()
    sorter = np.argsort(row_ids)
    pos = np.minimum(np.searchsorted(row_ids, ann_image, sorter=sorter), max(len(row_ids) - 1, 0))
    rows = sorter[pos] if len(row_ids) else pos
    listed = (row_ids[rows] == ann_image) if len(row_ids) else np.zeros(len(ann_image), dtype=bool)
    if not listed.all():
        bad = int(ann_image[~listed][0])
        raise ValueError(f"{annotation_file!r}: an annotation refers to image_id {bad}, which is not in 'images'")

    labels = np.zeros((len(row_ids), len(names)), dtype=np.uint8)
    labels[rows, columns] = 1
    return names, cat_ids, kept_files, labels


def load_annotation_file(path: str) -> dict:
    """Parse a COCO JSON file with the garbage collector paused.

    Parsing creates millions of small containers, which makes the cyclic collector run over and over
    without freeing anything; pausing it halves the parse time of ``instances_train2014.json``.

    Args:
        path: The JSON file.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path!r} is not valid JSON: {err}") from None
    finally:
        if was_enabled:
            gc.enable()


def read_coco_split(root: str, official_split: str, check_images: bool = True):
    """Read one official COCO 2014 split.

    Args:
        root: Folder holding ``annotations/``, ``train2014/`` and ``val2014/``.
        official_split: ``"train2014"`` or ``"val2014"``.
        check_images: Check that every listed image file exists.

    Returns:
        ``(class_names, category_ids, DenseSplit)``.
    """
    annotation_file = require_file(
        os.path.join(root, "annotations", f"instances_{official_split}.json"), "COCO annotation file")
    names, cat_ids, files, labels = coco_label_matrix(read_coco_columns(annotation_file), annotation_file)
    image_dir = os.path.join(root, official_split)
    paths = [os.path.join(image_dir, name) for name in files]
    if check_images:
        require_dir(image_dir, "COCO image")
        check_images_exist(paths, annotation_file)
    split = DenseSplit(paths, labels, source_files=[annotation_file])
    return names, cat_ids, split


def read_coco2014(root: str, check_images: bool = True) -> RawBenchmark:
    """Read COCO 2014 from its official raw layout (see the module docstring).

    Args:
        root: Folder holding ``annotations/``, ``train2014/`` and ``val2014/``.
        check_images: Check that every listed image file exists.

    Returns:
        A :class:`RawBenchmark` with splits ``train`` (train2014) and ``test`` (val2014).

    Raises:
        ValueError: a missing annotation file or image, or categories that differ between the two
            annotation files.
    """
    splits, reference = {}, None
    for ours, official in COCO_SPLITS.items():
        names, cat_ids, split = read_coco_split(root, official, check_images=check_images)
        if reference is None:
            reference = (names, cat_ids, split.source_files[0])
        elif names != reference[0] or not np.array_equal(cat_ids, reference[1]):
            raise ValueError(
                f"Class list mismatch: the 'categories' of {split.source_files[0]!r} differ from those of "
                f"{reference[2]!r}")
        splits[ours] = split
    return RawBenchmark(class_names=list(reference[0]), splits=splits)


@register_dataset("coco2014")
class COCO2014(SPMLBuilder):
    """COCO 2014 SPML benchmark builder (see the module docstring for the raw layout).

    Splits: ``train`` and ``validation`` (80% / 20% of the annotated train2014 images, ``split_seed``
    1200) and ``test`` (the annotated val2014 images). Images without any instance annotation are
    dropped and counted in the build report.

    Args:
        root: Folder holding ``annotations/``, ``train2014/`` and ``val2014/``.
        **kwargs: :class:`~spl_losses.data.builder.SPMLConfig` fields (``seed``, ``split_seed``, ...)
            and ``datasets.DatasetBuilder`` arguments (``cache_dir``).
    """

    expected_num_pos = 2.9
    num_classes = 80
    source_description = (
        "COCO 2014 (train2014 / val2014) as multi-label classification over its 80 object categories: an "
        "image has a class when it has at least one instance annotation of it. train2014 is the training "
        "set (20% held out for validation), val2014 the test set. Annotations under CC BY 4.0; the images "
        "come from Flickr and their use is subject to Flickr's terms of use.")
    source_license = "cc-by-4.0"
    source_homepage = "https://cocodataset.org"
    source_citation = _COCO_CITATION
    class_list_note = ("the object categories in the order of the annotation files' 'categories' list "
                       "(80 in the official release: person ... toothbrush)")

    def __init__(self, *args, **kwargs):
        self._category_ids: Dict[str, Tuple[str, np.ndarray]] = {}
        super().__init__(*args, **kwargs)

    def _load_raw_split(self, split: str) -> Optional[RawSplit]:
        if split not in COCO_SPLITS:
            return None
        names, cat_ids, dense = read_coco_split(self.root, COCO_SPLITS[split])
        self._category_ids[split] = (dense.source_files[0], cat_ids)
        for other, (other_file, other_ids) in self._category_ids.items():
            if other != split and not np.array_equal(other_ids, cat_ids):
                raise ValueError(
                    f"Class list mismatch: the category ids of {dense.source_files[0]!r} differ from those of "
                    f"{other_file!r}")
        return dense.to_raw_split(names)
