"""CUB-200-2011 as an SPML benchmark (312 binary attributes, Cole et al., CVPR 2021).

Raw layout under ``root`` (the official ``CUB_200_2011.tgz`` of
https://www.vision.caltech.edu/datasets/cub_200_2011/ unpacked, which ``spl-data download cub200
--data-dir ROOT`` does, checking its size and MD5; ``root`` may also be the ``CUB_200_2011`` folder
itself)::

    attributes.txt                                   "attribute_id name", 312 lines (the official
                                                     archive puts it next to CUB_200_2011/; it is
                                                     also looked for inside CUB_200_2011/ and
                                                     CUB_200_2011/attributes/)
    CUB_200_2011/images.txt                          "image_id relative/path.jpg"
    CUB_200_2011/train_test_split.txt                "image_id is_training_image"
    CUB_200_2011/attributes/image_attribute_labels.txt
                                                     "image_id attribute_id is_present certainty time"
    CUB_200_2011/images/{relative/path.jpg}

Rules of the reference (Cole et al.): the labels are the 312 attributes' ``is_present`` values used
as is (certainty ignored); rows follow ``images.txt``; ``is_training_image`` 1 is the training set,
0 the test set. Images with no attribute present are kept with an all-zero row. Some official lines
of ``image_attribute_labels.txt`` carry extra fields; only the first three are read. Rows keep the
order of ``images.txt``, the reference's formatted order, so ``sampling_rng="reference"`` reproduces
its draws (with the default ``drop_without_positive=False``); the reference reads the label lines
assuming they are grouped by image in that order, as in the official file, where this reader places
each line by its image id. Image paths must stay inside ``images/`` (one that leaves it is refused).
"""
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from .builder import SPMLBuilder, SPMLConfig
from .image_checks import join_inside
from .raw_files import RawSplit, check_images_exist, index_lists, require_dir, require_file
from .registry import register_dataset

__all__ = ["CUB200", "CUB200Config", "find_cub_dir", "find_attributes_file", "read_cub_attribute_names",
           "read_cub_image_attribute_labels", "read_cub200"]

_CUB_CITATION = """@techreport{wah2011caltech,
  title = {The {Caltech-UCSD} Birds-200-2011 Dataset},
  author = {Wah, Catherine and Branson, Steve and Welinder, Peter and Perona, Pietro and Belongie, Serge},
  institution = {California Institute of Technology},
  number = {CNS-TR-2011-001},
  year = {2011}
}"""



def find_cub_dir(root: str) -> str:
    """Return the folder holding ``images.txt``: ``root/CUB_200_2011`` or ``root`` itself.

    Args:
        root: The folder the user passed.
    """
    nested = os.path.join(root, "CUB_200_2011")
    if os.path.isfile(os.path.join(nested, "images.txt")):
        return nested
    if os.path.isfile(os.path.join(root, "images.txt")):
        return root
    raise ValueError(f"Incomplete raw tree: missing CUB image list {os.path.join(nested, 'images.txt')!r}")


def find_attributes_file(cub_dir: str) -> str:
    """Return ``attributes.txt``: next to ``CUB_200_2011/`` (official), inside it, or in ``attributes/``.

    Args:
        cub_dir: The ``CUB_200_2011`` folder.
    """
    candidates = [os.path.join(os.path.dirname(os.path.abspath(cub_dir)), "attributes.txt"),
                  os.path.join(cub_dir, "attributes.txt"),
                  os.path.join(cub_dir, "attributes", "attributes.txt")]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise ValueError(f"Incomplete raw tree: missing CUB attribute names file, looked for {candidates}")


def _read_id_value_file(path: str, what: str) -> Tuple[np.ndarray, List[str]]:
    ids, values = [], []
    with open(path, "r", encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split(None, 1)
            if len(parts) != 2 or not parts[0].isdigit():
                raise ValueError(f"{path!r} line {line_number} is malformed: expected '{what}'")
            ids.append(int(parts[0]))
            values.append(parts[1].strip())
    return np.asarray(ids, dtype=np.int64), values


def read_cub_attribute_names(path: str) -> List[str]:
    """Read ``attributes.txt`` (lines ``attribute_id name``; ids 1..A in order).

    Args:
        path: The file.

    Returns:
        The A attribute names, in id order.
    """
    ids, names = _read_id_value_file(path, "attribute_id name")
    if not np.array_equal(ids, np.arange(1, len(ids) + 1)):
        raise ValueError(f"{path!r}: attribute ids must run 1..{len(ids)} in order")
    return names


def read_cub_image_attribute_labels(path: str) -> np.ndarray:
    """Read ``image_attribute_labels.txt`` into an (L, 3) int64 array (image_id, attribute_id, is_present).

    Lines normally hold five space-separated fields (``image_id attribute_id is_present certainty
    time``). pyarrow's CSV reader parses those; the few lines with another number of fields (some
    official lines carry extra ones) are handed back by it and read here from their first three
    fields. Row order is the file's, except that such irregular lines come last.

    Args:
        path: The file.
    """
    irregular: List[str] = []

    def keep_aside(row) -> str:
        irregular.append(row.text)
        return "skip"

    int_columns = ["image_id", "attribute_id", "is_present"]
    try:
        table = pa_csv.read_csv(
            path,
            read_options=pa_csv.ReadOptions(column_names=int_columns + ["certainty_id", "time"]),
            parse_options=pa_csv.ParseOptions(delimiter=" ", invalid_row_handler=keep_aside),
            convert_options=pa_csv.ConvertOptions(include_columns=int_columns,
                                                  column_types={c: pa.int64() for c in int_columns}),
        )
    except pa.ArrowException as err:
        raise ValueError(
            f"{path!r} is malformed: every line must start with 'image_id attribute_id is_present' ({err})") from None
    regular = np.stack([table.column(c).to_numpy() for c in int_columns], axis=1) if table.num_rows else \
        np.zeros((0, 3), dtype=np.int64)
    if not irregular:
        return regular.astype(np.int64)
    extra = []
    for text in irregular:
        fields = text.split()
        if len(fields) < 3 or not all(f.isdigit() for f in fields[:3]):
            raise ValueError(f"{path!r} is malformed: line {text!r} does not start with "
                             "'image_id attribute_id is_present'")
        extra.append([int(f) for f in fields[:3]])
    return np.concatenate([regular.astype(np.int64), np.asarray(extra, dtype=np.int64)])


def read_cub200(root: str, check_images: bool = True) -> Dict[str, RawSplit]:
    """Read CUB-200-2011 attributes from the official raw layout (see the module docstring).

    Args:
        root: The folder holding ``CUB_200_2011/`` (or that folder itself).
        check_images: Check that every listed image file exists.

    Returns:
        ``{"train": RawSplit, "test": RawSplit}``: is_training_image 1 and 0, in ``images.txt`` order.

    Raises:
        ValueError: a missing file or image, ids that disagree between the files, an image without
            exactly one ``is_present`` value per attribute, or an image path leaving ``images/``.
    """
    cub_dir = find_cub_dir(root)
    images_file = os.path.join(cub_dir, "images.txt")
    split_file = require_file(os.path.join(cub_dir, "train_test_split.txt"), "CUB train/test split file")
    labels_file = require_file(os.path.join(cub_dir, "attributes", "image_attribute_labels.txt"),
                               "CUB attribute label file")
    attributes_file = find_attributes_file(cub_dir)

    image_ids, rel_paths = _read_id_value_file(images_file, "image_id path")
    split_ids, split_values = _read_id_value_file(split_file, "image_id is_training_image")
    if not np.array_equal(np.sort(split_ids), np.sort(image_ids)):
        raise ValueError(f"{split_file!r} lists other image ids than {images_file!r}")
    if not set(split_values) <= {"0", "1"}:
        raise ValueError(f"{split_file!r}: is_training_image must be 0 or 1, found {sorted(set(split_values))[:5]}")
    names = read_cub_attribute_names(attributes_file)

    table = read_cub_image_attribute_labels(labels_file)
    num_images, num_attributes = len(image_ids), len(names)
    # image id -> row in images.txt order
    order = np.argsort(image_ids)
    pos = np.minimum(np.searchsorted(image_ids, table[:, 0], sorter=order), max(num_images - 1, 0))
    rows = order[pos]
    if num_images == 0 or (image_ids[rows] != table[:, 0]).any():
        raise ValueError(f"{labels_file!r} refers to image ids that are not in {images_file!r}")
    columns = table[:, 1] - 1
    if (columns < 0).any() or (columns >= num_attributes).any():
        raise ValueError(
            f"{labels_file!r} has attribute ids outside 1..{num_attributes}, the attributes named in "
            f"{attributes_file!r}")
    if not np.isin(table[:, 2], (0, 1)).all():
        raise ValueError(f"{labels_file!r}: is_present must be 0 or 1")
    cell = rows * num_attributes + columns
    if len(np.unique(cell)) != len(cell):
        duplicated = np.sort(cell)[np.flatnonzero(np.diff(np.sort(cell)) == 0)[0]]
        raise ValueError(
            f"{labels_file!r} gives image id {int(image_ids[duplicated // num_attributes])} attribute "
            f"{int(duplicated % num_attributes) + 1} twice")
    per_image = np.bincount(rows, minlength=num_images)
    if (per_image != num_attributes).any():
        bad = int(np.flatnonzero(per_image != num_attributes)[0])
        raise ValueError(
            f"Incomplete raw tree: {labels_file!r} must give each image one is_present value per attribute "
            f"({num_attributes}); image id {int(image_ids[bad])} has {int(per_image[bad])}")
    labels = np.zeros((num_images, num_attributes), dtype=np.uint8)
    labels[rows, columns] = table[:, 2]

    split_of = dict(zip(split_ids.tolist(), split_values))
    is_train = np.asarray([split_of[i] == "1" for i in image_ids.tolist()], dtype=bool)
    image_dir = os.path.join(cub_dir, "images")
    paths = np.asarray(join_inside(image_dir, rel_paths, images_file,
                                   entry_name=lambda i: f"image id {int(image_ids[i])}"), dtype=object)
    if check_images:
        require_dir(image_dir, "CUB image")
        check_images_exist(paths.tolist(), images_file)
    source = ", ".join([images_file, split_file, labels_file, attributes_file])
    return {ours: RawSplit(class_names=names, labels=index_lists(labels[mask]), images=paths[mask].tolist(),
                           source=source)
            for ours, mask in (("train", is_train), ("test", ~is_train))}


@dataclass
class CUB200Config(SPMLConfig):
    """CUB-200-2011 builder configuration.

    Args:
        drop_without_positive: Images without any attribute present are kept by default (all-zero
            labels, no observed positive); set True to drop them.
    """

    drop_without_positive: bool = False


@register_dataset("cub200")
class CUB200(SPMLBuilder):
    """CUB-200-2011 attribute (312 classes) SPML benchmark builder (see the module docstring).

    Splits: ``train`` and ``validation`` (80% / 20% of the official training images, ``split_seed``
    1200) and ``test`` (the official test images). Images without any attribute present are kept
    (empty ``observed_labels``) and counted in the build report.

    Args:
        root: Folder holding ``CUB_200_2011/`` (and, as in the official archive, ``attributes.txt``).
        **kwargs: :class:`CUB200Config` fields (``seed``, ``split_seed``, ...) and
            ``datasets.DatasetBuilder`` arguments (``cache_dir``).
    """

    BUILDER_CONFIG_CLASS = CUB200Config
    expected_num_pos = 31.4
    num_classes = 312
    source_description = (
        "CUB-200-2011 birds with its 312 binary attributes as the labels (is_present as annotated). The "
        "official training images are the training set (20% held out for validation), the official test "
        "images the test set. CUB-200-2011 is provided for research purposes; the images come from Flickr "
        "and their use is subject to Flickr's terms of use.")
    source_license = "other"
    source_homepage = "https://www.vision.caltech.edu/datasets/cub_200_2011/"
    source_citation = _CUB_CITATION
    class_list_note = ("the binary attributes of attributes.txt in id order (312 in the official release: "
                       "has_bill_shape::curved_(up_or_down) ... has_wing_pattern::multi-colored)")

    def __init__(self, *args, **kwargs):
        self._splits: Optional[Dict[str, RawSplit]] = None
        super().__init__(*args, **kwargs)

    def _load_class_names(self) -> List[str]:
        return read_cub_attribute_names(find_attributes_file(find_cub_dir(self.root)))

    def _load_raw_split(self, split: str) -> Optional[RawSplit]:
        if self._splits is None:  # one file holds both splits: parse it once
            self._splits = read_cub200(self.root, check_images=False)
        return self._splits.get(split)
