"""PASCAL VOC 2012 as an SPML benchmark (20 classes, Cole et al., CVPR 2021).

Raw layout under ``root`` (the official ``VOCtrainval_11-May-2012.tar`` of
http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ unpacked, which ``spl-data download voc2012 --data-dir
ROOT`` does, checking its size and MD5; ``root`` may also be the ``VOCdevkit`` or ``VOC2012`` folder
itself)::

    VOCdevkit/VOC2012/ImageSets/Main/{class}_train.txt   lines "image_id  1|0|-1"
    VOCdevkit/VOC2012/ImageSets/Main/{class}_val.txt
    VOCdevkit/VOC2012/JPEGImages/{image_id}.jpg

Rules of the reference (Cole et al.): an image is present in a class when its line says 1; 0 (the
"difficult" mark) and -1 count as absent; an image is kept when any class is 1; rows are sorted by
image file name (``{image_id}.jpg``), the row order of the reference's formatted label matrix, so
``sampling_rng="reference"`` reproduces its draws. Official ``train`` is our training set, official
``val`` our test set. Image ids must name files inside ``JPEGImages/`` (an id such as ``../x`` is
refused, naming the class list file).
"""
import os
from typing import List, Optional, Tuple

import numpy as np

from .builder import SPMLBuilder
from .image_checks import join_inside
from .raw_files import RawSplit, check_images_exist, index_lists, require_dir, require_file
from .registry import register_dataset

__all__ = ["VOC2012", "VOC2012_CLASSES", "VOC_SPLITS", "find_voc2012_dir", "read_voc_class_file", "read_voc_split"]

#: The 20 VOC classes, alphabetical (the reference's column order).
VOC2012_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]

#: Our split name -> the official image set it is read from.
VOC_SPLITS = {"train": "train", "test": "val"}

_VOC_CITATION = """@article{everingham2010pascal,
  title = {The {PASCAL} Visual Object Classes ({VOC}) Challenge},
  author = {Everingham, Mark and Van Gool, Luc and Williams, Christopher K. I. and Winn, John and Zisserman, Andrew},
  journal = {International Journal of Computer Vision},
  volume = {88},
  number = {2},
  pages = {303--338},
  year = {2010}
}"""


def find_voc2012_dir(root: str) -> str:
    """Return the ``VOC2012`` folder under ``root`` (``root``, ``root/VOC2012`` or ``root/VOCdevkit/VOC2012``).

    Args:
        root: The folder the user passed.

    Raises:
        ValueError: none of the three places holds ``ImageSets/Main``.
    """
    candidates = [os.path.join(root, "VOCdevkit", "VOC2012"), os.path.join(root, "VOC2012"), root]
    for candidate in candidates:
        if os.path.isdir(os.path.join(candidate, "ImageSets", "Main")):
            return candidate
    raise ValueError(
        f"Incomplete raw tree: no VOC 2012 folder with ImageSets/Main under {root!r} "
        f"(looked for {os.path.join(candidates[0], 'ImageSets', 'Main')!r})")


def read_voc_class_file(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Parse one ``{class}_{split}.txt`` file.

    Args:
        path: The file; each line is ``image_id`` then ``1``, ``0`` or ``-1``.

    Returns:
        ``(image_ids, marks)``: arrays of str and int8, one entry per line.
    """
    with open(path, "r", encoding="utf-8") as f:
        tokens = f.read().split()
    if len(tokens) % 2:
        raise ValueError(f"{path!r} is malformed: expected lines 'image_id  1|0|-1'")
    table = np.array(tokens, dtype=object).reshape(-1, 2)
    try:
        marks = table[:, 1].astype(np.int8)
    except ValueError as err:
        raise ValueError(f"{path!r} is malformed: expected lines 'image_id  1|0|-1' ({err})") from None
    if not np.isin(marks, (-1, 0, 1)).all():
        raise ValueError(f"{path!r} is malformed: marks must be 1, 0 or -1, found {sorted(set(marks.tolist()))}")
    return table[:, 0].astype(str), marks


def read_voc_split(voc_dir: str, image_set: str, class_names: List[str] = VOC2012_CLASSES,
                   check_images: bool = True) -> RawSplit:
    """Read one official VOC image set (``train`` or ``val``).

    Args:
        voc_dir: The ``VOC2012`` folder.
        image_set: ``"train"`` or ``"val"``.
        class_names: Classes whose ``{class}_{image_set}.txt`` files are read, in column order.
        check_images: Check that every listed ``JPEGImages/{id}.jpg`` exists.

    Returns:
        The split: every listed image, rows sorted by image file name; images with no class marked 1
        have an empty label list (the builder drops them, as the reference does).
    """
    main_dir = os.path.join(voc_dir, "ImageSets", "Main")
    files = [require_file(os.path.join(main_dir, f"{name}_{image_set}.txt"), "VOC class list file")
             for name in class_names]
    parsed = [read_voc_class_file(path) for path in files]
    listed = np.unique(parsed[0][0])
    for path, (ids, _) in zip(files[1:], parsed[1:]):
        if not np.array_equal(np.unique(ids), listed):
            raise ValueError(
                f"Class list files disagree: {path!r} lists other images than {files[0]!r} "
                "(every class file of an image set lists the same images)")
    labels = np.zeros((len(listed), len(class_names)), dtype=np.uint8)
    for column, (ids, marks) in enumerate(parsed):
        positive = ids[marks == 1]
        labels[np.searchsorted(listed, positive), column] = 1
    file_names = np.char.add(listed.astype(str), ".jpg")
    order = np.argsort(file_names, kind="stable")  # the reference sorts file names, not ids
    source = os.path.join(main_dir, f"*_{image_set}.txt")
    image_dir = os.path.join(voc_dir, "JPEGImages")
    paths = join_inside(image_dir, file_names[order].tolist(), source,
                        entry_name=lambda i: f"image id {str(listed[order[i]])!r}")
    if check_images:
        require_dir(image_dir, "VOC JPEGImages")
        check_images_exist(paths, source)
    return RawSplit(class_names=list(class_names), labels=index_lists(labels[order]), images=paths, source=source)


@register_dataset("voc2012")
class VOC2012(SPMLBuilder):
    """PASCAL VOC 2012 SPML benchmark builder (see the module docstring for the raw layout).

    Splits: ``train`` and ``validation`` (80% / 20% of the official train image set, ``split_seed``
    1200) and ``test`` (the official val image set). Images without any class marked 1 are dropped
    and counted in the build report.

    Args:
        root: Folder holding ``VOCdevkit/`` (or the ``VOCdevkit`` / ``VOC2012`` folder itself).
        **kwargs: :class:`~spl_losses.data.builder.SPMLConfig` fields (``seed``, ``split_seed``, ...)
            and ``datasets.DatasetBuilder`` arguments (``cache_dir``).
    """

    expected_num_pos = 1.5
    num_classes = len(VOC2012_CLASSES)
    source_description = (
        "PASCAL VOC 2012 classification (trainval release): 20 object classes. Official train is the "
        "training set (20% held out for validation), official val is the test set. Annotations by the "
        "PASCAL VOC project; the images come from Flickr and their use is subject to Flickr's terms of use.")
    source_license = "other"
    source_homepage = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/"
    source_citation = _VOC_CITATION
    class_list_note = "the 20 PASCAL VOC classes in alphabetical order (aeroplane ... tvmonitor)"

    def _load_class_names(self) -> List[str]:
        return list(VOC2012_CLASSES)

    def _load_raw_split(self, split: str) -> Optional[RawSplit]:
        if split not in VOC_SPLITS:
            return None
        return read_voc_split(find_voc2012_dir(self.root), VOC_SPLITS[split], check_images=False)
