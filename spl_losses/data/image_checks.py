"""Where listed image paths may point, and whether the listed files are images.

One rule for every builder: a path read from an annotation file or a listing is checked where it is
read, before any work.

- A relative path names a file inside the folder it is relative to (the image folder of a benchmark,
  the listing's folder for ``multilabel_files``): after normalisation (``a/../../x``) it must not leave
  that folder, so a row such as ``../../etc/passwd`` is refused, naming the row and the file it is
  listed in. This check is cheap and always on.
- Symbolic links may not lead out either: the real path of every relative row (``os.path.realpath``,
  links in any component resolved) must be inside the real path of its folder, whatever the split
  size, or the row is refused naming the link and its target. The folder itself may be a link (its
  real path is the reference). Images kept on another disk are listed by absolute path instead.
- Absolute paths are accepted only where a builder allows them (``multilabel_files`` listings).
- Verifying images (``PIL.Image.open`` + ``verify``: the header and structure are read, the pixels are
  not decoded, about 0.05 ms per cached JPEG) proves each listed file is an image, so a listing can
  never embed another kind of file into a dataset. It is the builders' ``verify_images`` option:
  ``True``, ``False``, or ``None`` (default) for "every image when a split lists at most
  :data:`VERIFY_AUTO_LIMIT` of them, and above that every row that is a symbolic link or absolute"
  (:func:`images_to_verify`).

Decoding: :func:`open_rgb` is the one rule for turning a stored image into pixels (the training decode,
teachers, anything that reads an image): the EXIF orientation applied (as ``datasets`` does), 16-bit
images scaled to 8 bits (``value / 257``, not clipped to white), then RGB; an image that cannot be decoded
(a decompression bomb included) raises :class:`ImageDecodeError`, a ``ValueError`` the caller names the
row and file in.
"""
import io
import os
from typing import Callable, List, Optional, Sequence, Union

__all__ = ["VERIFY_AUTO_LIMIT", "ImageDecodeError", "open_rgb", "join_inside", "should_verify", "images_to_verify",
           "verify_images"]

#: With ``verify_images=None``, splits listing at most this many images are verified.
VERIFY_AUTO_LIMIT = 20_000


def _entry_name(index: int) -> str:
    return f"row {index + 1}"


def join_inside(folder: str, names: Sequence[str], listed_in: str, allow_absolute: bool = False,
                entry_name: Callable[[int], str] = _entry_name) -> List[str]:
    """Join listed relative paths to ``folder``, refusing any that leaves it after normalisation.

    Args:
        folder: The folder the names are relative to.
        names: The paths as read (``"img/a.jpg"``).
        listed_in: The file the names were read from, for messages.
        allow_absolute: Accept absolute paths as they are (``multilabel_files`` listings).
        entry_name: Maps an entry's position to its name in messages (default ``"row N"``, 1-based).

    Returns:
        The absolute paths, in input order.

    Raises:
        ValueError: a name is not a non-empty string, holds a NUL byte, is absolute where that is not
            allowed, or leaves ``folder``; the message names the entry, the path and ``listed_in``.
    """
    folder = os.path.abspath(folder)
    prefix = folder.rstrip(os.sep) + os.sep
    real_folder = os.path.realpath(folder)
    real_dirs = {}  # the real path of each listed folder, resolved once
    out = []
    for index, name in enumerate(names):
        if isinstance(name, str) and name.strip() and name[0] != os.sep and ".." not in name and "\x00" not in name:
            path = prefix + name  # the common case: nothing to normalise
        else:
            path = _checked_path(prefix, name, allow_absolute,
                                 lambda why: f"{listed_in}, {entry_name(index)}: {why}")
            if os.path.isabs(name):
                out.append(path)  # absolute rows may point anywhere (and are always verified)
                continue
        _check_real_path(path, name, real_folder, real_dirs,
                         lambda why: f"{listed_in}, {entry_name(index)}: {why}")
        out.append(path)
    return out


def _inside(real: str, real_folder: str) -> bool:
    try:
        return os.path.commonpath([real, real_folder]) == real_folder
    except ValueError:  # different drives
        return False


def _check_real_path(path: str, name: str, real_folder: str, real_dirs: dict, where: Callable[[str], str]) -> None:
    """Refuse a row whose real path (symbolic links resolved) leaves ``real_folder``."""
    directory = os.path.dirname(path)
    real_dir = real_dirs.get(directory)
    if real_dir is None:
        real_dir = real_dirs[directory] = os.path.realpath(directory)
    real = os.path.realpath(path) if os.path.islink(path) else os.path.join(real_dir, os.path.basename(path))
    if not _inside(real, real_folder):
        raise ValueError(where(f"the image path {name!r} is a symbolic link (or lies in a linked folder) whose "
                               f"target {real} leaves the folder {real_folder}; a listed path must stay inside its "
                               "folder after links are resolved (list images kept elsewhere by absolute path)"))


def _checked_path(prefix: str, name, allow_absolute: bool, where: Callable[[str], str]) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(where(f"the image path must be a non-empty string, got {name!r}"))
    if "\x00" in name:
        raise ValueError(where(f"the image path {name!r} holds a NUL byte"))
    if os.path.isabs(name):
        if not allow_absolute:
            raise ValueError(where(f"the image path {name!r} is absolute; it must be relative to {prefix}"))
        return os.path.normpath(name)
    path = os.path.normpath(prefix + name)
    if not path.startswith(prefix):
        raise ValueError(where(f"the image path {name!r} leaves the folder {prefix.rstrip(os.sep)} (it resolves to "
                               f"{path}); relative paths must stay inside the folder they are relative to"))
    return path


def should_verify(option: Optional[bool], num_images: int) -> bool:
    """Whether ``verify_images=option`` verifies a split of ``num_images`` images.

    Args:
        option: ``True``, ``False`` or ``None`` (at most :data:`VERIFY_AUTO_LIMIT` images).
        num_images: Images listed in the split.
    """
    if option is None:
        return num_images <= VERIFY_AUTO_LIMIT
    return bool(option)


def images_to_verify(option: Optional[bool], paths: Sequence[str]) -> List[str]:
    """The files of a split that ``verify_images=option`` opens.

    All of them when :func:`should_verify` says so; with ``option=None`` above :data:`VERIFY_AUTO_LIMIT`,
    still every symbolic link (one ``lstat`` per row): a link is the one kind of listed file whose
    content the folder's layout does not vouch for. ``option=False`` opens nothing.

    Args:
        option: The builder's ``verify_images``.
        paths: The split's listed image files.
    """
    if should_verify(option, len(paths)):
        return list(paths)
    if option is None:
        return [p for p in paths if os.path.islink(p)]
    return []


def verify_images(paths: Sequence[str], listed_in: str) -> None:
    """Check that every file decodes as an image (``PIL.Image.open`` then ``verify``).

    Args:
        paths: Image files (they exist: the existence check runs first).
        listed_in: The file(s) that list them, for the message.

    Raises:
        ValueError: naming the first file that is not a readable image, the reason and ``listed_in``.
    """
    from PIL import Image

    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as err:  # PIL raises many types for a file that is not an image
            raise ValueError(f"{path} (listed in {listed_in}) is not a readable image: {type(err).__name__}: "
                             f"{err}. Every listed file must be an image (set verify_images=False to skip "
                             "this check)") from None


class ImageDecodeError(ValueError):
    """An image cannot be decoded (unreadable, truncated, not an image, or a decompression bomb)."""


_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _to_rgb8(image):
    """RGB with 8 bits per channel; 16-bit (and 32-bit integer) grayscale scaled by 1/257, not clipped."""
    from PIL import Image
    import numpy as np

    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "I":
        values = np.asarray(image).astype(np.int64)
        if image.mode in _SIXTEEN_BIT_MODES or values.max(initial=0) > 255:
            values = (np.clip(values, 0, 65535) + 128) // 257
        image = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), mode="L")
    return image if image.mode == "RGB" else image.convert("RGB")


def open_rgb(source: Union[str, os.PathLike, bytes, bytearray, memoryview, io.IOBase]):
    """Decode an image file or its bytes into an RGB PIL image, by the package's one decode rule.

    The EXIF orientation is applied (``PIL.ImageOps.exif_transpose``, as ``datasets`` decodes), 16-bit
    grayscale (PNG ``I;16``) is scaled to 8 bits (``round(value / 257)``), everything else is converted
    with ``Image.convert("RGB")`` (alpha dropped, palettes expanded).

    Args:
        source: A path, the encoded bytes, or a binary file object.

    Returns:
        A loaded ``PIL.Image.Image`` in mode ``RGB`` (the file is closed).

    Raises:
        ImageDecodeError: (a ``ValueError``) the image cannot be decoded: unreadable or truncated, not an
            image, or over PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``); the message
            says why (``"a decompression bomb (...)"``, ``"UnidentifiedImageError: ..."``), the caller
            adds the row and file.
    """
    from PIL import Image, ImageOps

    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    try:
        with Image.open(source) as image:
            image.load()
            return _to_rgb8(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(f"a decompression bomb ({err})") from None
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, struct.error, ...) for a bad file
        raise ImageDecodeError(f"{type(err).__name__}: {err}") from None
