"""``spl-data download``: fetch a benchmark's official archives, verify them, unpack them safely.

For each file of the dataset's entry in :data:`spl_losses.data.archives.ARCHIVES` (or of the
``table`` given), under the data folder ``DIR``:

1. If ``DIR/.spl_data/{file}.done.json`` records the expected checksum and every path the archive
   provides exists, nothing is done (no request is sent).
2. The transfer goes to ``DIR/.spl_data/downloads/{file}.part`` through ``huggingface_hub``'s HTTP
   client (``HF_HUB_OFFLINE`` refuses it, proxies and timeouts are the Hub client's): a HEAD request
   first checks that the server is reachable and reports the expected size, then the GET continues a
   partial file with an HTTP ``Range`` request (on the next call too, when a transfer was cut off).
3. The size and checksum are verified; a mismatch is an error naming the file, the expected and the
   got values, and the bad file is removed.
4. The archive is unpacked into a temporary folder under ``DIR/.spl_data`` (tar members through
   ``tarfile``'s ``"data"`` filter, zip members checked first: no member may leave the folder, be
   absolute, or be a link or device), the paths the builder reads are checked, and only then the
   top-level entries are moved into ``DIR`` and the marker written. A failure leaves no extracted
   file in ``DIR``.

Every failure is a :class:`DownloadError` with a one-line message.
"""
import concurrent.futures
import hashlib
import json
import os
import shutil
import stat
import sys
import tarfile
import zipfile
from typing import Dict, List, Mapping, Optional, Sequence, Union

from .archives import ARCHIVES, Archive, DatasetDownload

__all__ = ["DownloadError", "download", "download_archive", "check_external_files", "file_checksum",
           "STATE_DIR", "downloadable_datasets"]

#: Folder under the data folder holding partial downloads, extraction folders and markers.
STATE_DIR = ".spl_data"

_HEAD_TIMEOUT = 10.0


class DownloadError(RuntimeError):
    """A download, verification or extraction failure; ``str(err)`` is one line for the user."""


def downloadable_datasets(table: Optional[Mapping[str, DatasetDownload]] = None) -> List[str]:
    """The dataset names that have a download entry.

    Args:
        table: The download table (default :data:`ARCHIVES`).
    """
    return sorted(ARCHIVES if table is None else table)


def _entry(name: str, table: Optional[Mapping[str, Union[DatasetDownload, Sequence[Archive]]]]) -> DatasetDownload:
    table = ARCHIVES if table is None else table
    if name not in table:
        raise DownloadError(f"no download for dataset {name!r}: downloadable datasets are "
                            f"{', '.join(sorted(table))}")
    entry = table[name]
    if not isinstance(entry, DatasetDownload):
        entry = DatasetDownload(archives=tuple(entry))
    return entry


def _offline() -> bool:
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.upper() in {"1", "ON", "YES", "TRUE"} or constants.is_offline_mode()


def file_checksum(path: str, algorithm: str) -> str:
    """Hex digest of a file.

    Args:
        path: The file.
        algorithm: ``"md5"`` or ``"sha256"``.
    """
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _marker_path(data_dir: str, archive: Archive) -> str:
    return os.path.join(data_dir, STATE_DIR, f"{archive.filename}.done.json")


def _is_done(data_dir: str, archive: Archive) -> bool:
    try:
        with open(_marker_path(data_dir, archive), "r", encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return False
    expected = archive.checksum
    if expected is not None and marker.get("checksum") != list(expected):
        return False
    if archive.size is not None and marker.get("size") != archive.size:
        return False
    paths = list(archive.provides) + list(marker.get("entries", []))
    return all(os.path.lexists(os.path.join(data_dir, *p.split("/"))) for p in paths)


def _describe_http_error(err: BaseException, url: str) -> str:
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    if status is not None:
        return f"the server answered HTTP {status} for {url}"
    return f"cannot reach {url}: {type(err).__name__}: {' '.join(str(err).split()) or 'no answer'}"


def _remote_size(url: str) -> Optional[int]:
    """HEAD ``url``: its Content-Length, None where the server does not say; errors as DownloadError."""
    from huggingface_hub.errors import OfflineModeIsEnabled
    from huggingface_hub.utils import get_session
    from huggingface_hub.utils import httpx as httpx2  # the Hub client's HTTP library, whatever its version

    try:
        response = get_session().head(url, follow_redirects=True, timeout=_HEAD_TIMEOUT,
                                      headers={"Accept-Encoding": "identity"})
    except OfflineModeIsEnabled:
        raise DownloadError(f"HF_HUB_OFFLINE is set: cannot download {url}; unset it, or place the files "
                            "in the data folder yourself") from None
    except httpx2.HTTPError as err:
        raise DownloadError(_describe_http_error(err, url)) from None
    if response.status_code in (404, 410):
        raise DownloadError(f"the server answered HTTP {response.status_code} (not found) for {url}")
    if response.status_code >= 400:  # HEAD refused (405, or 403 from signed-URL hosts): the GET tells
        return None
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


class _QuietTqdm:
    """A tqdm class that never draws (``progress=False``)."""

    def __new__(cls, *args, **kwargs):
        from tqdm.auto import tqdm

        kwargs["disable"] = True
        return tqdm(*args, **kwargs)


def _transfer(archive: Archive, url: str, part: str, expected_size: Optional[int], progress: bool) -> None:
    from huggingface_hub.errors import OfflineModeIsEnabled
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import httpx as httpx2

    have = os.path.getsize(part) if os.path.exists(part) else 0
    if expected_size is not None and have > expected_size:  # not a prefix of this file
        os.remove(part)
        have = 0
    if expected_size is not None and have == expected_size:
        return
    os.makedirs(os.path.dirname(part), exist_ok=True)
    try:
        with open(part, "ab") as f:
            http_get(url, f, resume_size=have, expected_size=expected_size, displayed_filename=archive.filename,
                     headers={"Accept-Encoding": "identity"}, tqdm_class=None if progress else _QuietTqdm)
    except OfflineModeIsEnabled:
        raise DownloadError(f"HF_HUB_OFFLINE is set: cannot download {url}") from None
    except (httpx2.HTTPError, OSError) as err:
        if not isinstance(err, httpx2.HTTPError) and "Consistency check" not in str(err):
            raise  # a local failure (disk full): described by the caller
        got = os.path.getsize(part) if os.path.exists(part) else 0
        total = f"{expected_size:,}" if expected_size is not None else "?"
        raise DownloadError(
            f"download of {archive.filename} failed after {got:,} of {total} bytes "
            f"({_describe_http_error(err, url)}); the partial file {part} is kept: run the command again to "
            "resume it") from None


def _check_free_space(archive: Archive, folder: str, size: int, log) -> None:
    """DownloadError when the rest of the transfer does not fit; a warning when unpacking may not."""
    part = os.path.join(folder, archive.filename + ".part")
    remaining = size - (os.path.getsize(part) if os.path.exists(part) else 0)
    free = shutil.disk_usage(folder).free
    if remaining > free:
        raise DownloadError(f"not enough space for {archive.filename} in {folder}: {remaining:,} bytes to download, "
                            f"{free:,} free (unpacking needs about as much again); free some space or choose "
                            "another --data-dir")
    if archive.extract and remaining + size > free:
        log(f"warning: {archive.filename}: {free:,} bytes free may not be enough to download ({remaining:,}) and "
            f"unpack (about {size:,}) it")


def _check_member_name(name: str, archive: Archive, where: str) -> str:
    """The member's path relative to the extraction folder, or DownloadError if it would leave it."""
    normalized = name.replace("\\", "/")
    parts = [p for p in normalized.split("/") if p not in ("", ".")]
    if normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":") or ".." in parts:
        raise DownloadError(f"refused to extract {archive.filename}: member {name!r} would be written outside "
                            f"{where}")
    return "/".join(parts)


def _extract(path: str, archive: Archive, dest: str, data_dir: str) -> None:
    lower = archive.filename.lower()
    is_zip = lower.endswith(".zip") if lower.endswith((".zip", ".tar", ".tgz", ".tar.gz")) else zipfile.is_zipfile(path)
    if is_zip:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                _check_member_name(info.filename, archive, data_dir)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise DownloadError(f"refused to extract {archive.filename}: member {info.filename!r} is a "
                                        "symbolic link")
            zf.extractall(dest)
        return
    if not tarfile.is_tarfile(path):
        raise DownloadError(f"{archive.filename} is neither a tar nor a zip archive ({lower})")

    def member_filter(member: tarfile.TarInfo, target: str) -> Optional[tarfile.TarInfo]:
        _check_member_name(member.name, archive, data_dir)
        try:
            return tarfile.data_filter(member, target)
        except tarfile.FilterError as err:
            raise DownloadError(f"refused to extract {archive.filename}: member {member.name!r}: {err}") from None

    with tarfile.open(path) as tf:
        tf.extractall(dest, filter=member_filter)


def _merge_into(src: str, dst: str) -> None:
    """Move ``src`` to ``dst``, merging folders that both have."""
    if os.path.isdir(src) and not os.path.islink(src) and os.path.isdir(dst) and not os.path.islink(dst):
        for name in os.listdir(src):
            _merge_into(os.path.join(src, name), os.path.join(dst, name))
        os.rmdir(src)
    else:
        if os.path.isdir(dst) and not os.path.islink(dst):
            shutil.rmtree(dst)
        elif os.path.lexists(dst) and os.path.isdir(src):
            os.remove(dst)
        os.replace(src, dst)


def download_archive(archive: Archive, data_dir: str, *, mirror: Optional[str] = None, progress: bool = True,
                     keep_archive: bool = False, log=None) -> bool:
    """Download, verify and unpack one archive into ``data_dir``, holding a lock on its partial file.

    See :func:`_download_archive` (the same arguments). Another process downloading the same file into the
    same folder is an error, not a second writer of the partial file.
    """
    from filelock import FileLock, Timeout

    state = os.path.join(os.path.abspath(data_dir), STATE_DIR, "downloads")
    os.makedirs(state, exist_ok=True)
    lock = FileLock(os.path.join(state, f"{archive.filename}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise DownloadError(f"another process is downloading {archive.filename} into {data_dir} "
                            f"(lock {lock.lock_file}); wait for it, or stop it") from None
    try:
        return _download_archive(archive, data_dir, mirror=mirror, progress=progress, keep_archive=keep_archive,
                                 log=log)
    finally:
        lock.release()


def _download_archive(archive: Archive, data_dir: str, *, mirror: Optional[str] = None, progress: bool = True,
                      keep_archive: bool = False, log=None) -> bool:
    """Download, verify and unpack one archive into ``data_dir`` (see the module docstring).

    Args:
        archive: The file.
        data_dir: The data folder (created).
        mirror: Base URL serving the same file names instead of the official URL.
        progress: Show a progress bar.
        keep_archive: Keep the verified archive under ``DIR/.spl_data/downloads`` after unpacking.
        log: Function printing one status line (default: to stderr).

    Returns:
        True if work was done, False if the marker showed the archive already in place.

    Raises:
        DownloadError: unreachable server, ``HF_HUB_OFFLINE``, wrong size, checksum mismatch, an unsafe
            member, or an archive missing a path the builder reads.
    """
    log = log or (lambda message: print(message, file=sys.stderr))
    data_dir = os.path.abspath(data_dir)
    if _is_done(data_dir, archive):
        log(f"{archive.filename}: already in place (verified before), nothing to do")
        return False
    if _offline():
        raise DownloadError(f"HF_HUB_OFFLINE is set: cannot download {archive.filename}; unset HF_HUB_OFFLINE, "
                            f"or place the unpacked files in {data_dir} yourself")
    url = f"{mirror.rstrip('/')}/{archive.filename}" if mirror else archive.url
    state = os.path.join(data_dir, STATE_DIR)
    downloads = os.path.join(state, "downloads")
    os.makedirs(downloads, exist_ok=True)
    final = os.path.join(downloads, archive.filename)
    part = final + ".part"
    if not os.path.exists(final):
        remote = _remote_size(url)
        if archive.size is not None and remote is not None and remote != archive.size:
            raise DownloadError(f"wrong size for {archive.filename}: the server at {url} reports {remote:,} bytes, "
                                f"expected {archive.size:,} (a different file; check --mirror)")
        expected_size = archive.size if archive.size is not None else remote
        if expected_size is not None:
            _check_free_space(archive, downloads, expected_size, log)
        _transfer(archive, url, part, expected_size, progress)
        os.replace(part, final)
    got_size = os.path.getsize(final)
    if archive.size is not None and got_size != archive.size:
        os.remove(final)
        raise DownloadError(f"wrong size for {archive.filename}: expected {archive.size:,} bytes, got {got_size:,} "
                            "(the file is removed)")
    checksums = [(a, h.lower()) for a, h in (("md5", archive.md5), ("sha256", archive.sha256)) if h]
    for algorithm, expected in checksums:
        log(f"{archive.filename}: checking its {algorithm}")
        got = file_checksum(final, algorithm)
        if got != expected:
            os.remove(final)
            raise DownloadError(f"checksum mismatch for {archive.filename}: expected {algorithm} {expected}, got "
                                f"{got} (the file is removed; nothing was extracted)")
    recorded = archive.checksum or ("sha256", file_checksum(final, "sha256"))
    if not checksums:
        log(f"warning: {archive.filename} has no published checksum; it is unverified "
            f"(sha256 {recorded[1]}, {got_size:,} bytes)")
    entries: List[str] = []
    if archive.extract:
        tmp = os.path.join(state, f"extract-{archive.filename}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            log(f"{archive.filename}: extracting")
            _extract(final, archive, tmp, data_dir)
            missing = [p for p in archive.provides if not os.path.lexists(os.path.join(tmp, *p.split("/")))]
            if missing:
                raise DownloadError(f"{archive.filename} does not hold {', '.join(missing)}, which the builder "
                                    "reads (a different archive?); nothing was extracted")
            entries = sorted(os.listdir(tmp))
            for entry in entries:
                _merge_into(os.path.join(tmp, entry), os.path.join(data_dir, entry))
        except (tarfile.TarError, zipfile.BadZipFile, EOFError) as err:
            raise DownloadError(f"cannot unpack {archive.filename}: {err}; nothing was extracted") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        entries = [archive.filename]
        shutil.copyfile(final, os.path.join(data_dir, archive.filename))
    marker = {"filename": archive.filename, "url": url, "size": got_size, "checksum": list(recorded),
              "verified": bool(checksums), "entries": entries}
    with open(_marker_path(data_dir, archive) + ".tmp", "w", encoding="utf-8") as f:
        json.dump(marker, f, indent=2)
    os.replace(_marker_path(data_dir, archive) + ".tmp", _marker_path(data_dir, archive))
    if not keep_archive:
        os.remove(final)
    log(f"{archive.filename}: done ({', '.join(entries)})")
    return True


def check_external_files(name: str, data_dir: str,
                         table: Optional[Mapping[str, Union[DatasetDownload, Sequence[Archive]]]] = None) -> None:
    """Raise DownloadError when a file the builder needs, which no official archive holds, is missing.

    Args:
        name: Dataset name.
        data_dir: The data folder.
        table: The download table (default :data:`ARCHIVES`).
    """
    entry = _entry(name, table)
    missing = [p for p in entry.external if not os.path.lexists(os.path.join(data_dir, *p.split("/")))]
    if missing:
        raise DownloadError(f"{name} needs {', '.join(missing)} in {data_dir}, which no official archive holds: "
                            f"{entry.note}")


def download(name: str, data_dir: str, *,
             table: Optional[Mapping[str, Union[DatasetDownload, Sequence[Archive]]]] = None,
             mirror: Optional[str] = None, jobs: int = 1, progress: bool = True, keep_archives: bool = False,
             log=None) -> Dict[str, bool]:
    """Download, verify and unpack every archive of dataset ``name`` into ``data_dir``.

    Args:
        name: Dataset name (``voc2012``, ``coco2014``, ``cub200``, ``nuswide``).
        data_dir: The data folder, then ``--data-dir`` of ``spl-data build``.
        table: ``{name: DatasetDownload or list of Archive}`` (default :data:`ARCHIVES`); tests pass
            their own.
        mirror: Base URL serving the same file names.
        jobs: Files transferred in parallel.
        progress: Show progress bars.
        keep_archives: Keep the verified archives after unpacking.
        log: Function printing one status line (default: to stderr).

    Returns:
        ``{filename: whether work was done}``.

    Raises:
        DownloadError: the first failure (the other files still complete; their work is kept).
    """
    entry = _entry(name, table)
    if not isinstance(jobs, int) or jobs < 1:
        raise DownloadError(f"--jobs must be a positive integer, got {jobs!r}")
    if mirror is not None and not mirror.startswith(("http://", "https://")):
        raise DownloadError(f"--mirror must be an http:// or https:// base URL, got {mirror!r}")
    log = log or (lambda message: print(message, file=sys.stderr))
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise DownloadError(f"--data-dir {data_dir} exists and is not a folder")
    os.makedirs(data_dir, exist_ok=True)
    pending = [a for a in entry.archives if not _is_done(os.path.abspath(data_dir), a)]
    if pending and _offline():
        raise DownloadError(f"HF_HUB_OFFLINE is set: cannot download {', '.join(a.filename for a in pending)}; "
                            f"unset HF_HUB_OFFLINE, or place the unpacked files in {data_dir} yourself")
    results: Dict[str, bool] = {}
    errors: List[BaseException] = []

    def one(archive: Archive) -> bool:
        return download_archive(archive, data_dir, mirror=mirror, progress=progress, keep_archive=keep_archives,
                                log=log)

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(jobs, max(1, len(entry.archives)))) as pool:
        futures = {pool.submit(one, archive): archive for archive in entry.archives}
        for future in concurrent.futures.as_completed(futures):
            try:
                results[futures[future].filename] = future.result()
            except BaseException as err:  # noqa: B902 - reported below, after the other files finish
                errors.append(err)
    if errors:
        first = next((e for e in errors if isinstance(e, DownloadError)), errors[0])
        if len(errors) > 1 and isinstance(first, DownloadError):
            raise DownloadError(f"{first} (and {len(errors) - 1} more failed file(s))") from None
        raise first
    if entry.note:
        log(f"note: {entry.note}")
    return results
