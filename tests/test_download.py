"""`spl-data download`: archives served from 127.0.0.1, verified, resumed, unpacked safely, then built.

A tiny raw tree of each benchmark (tests/raw_trees.py) is packed into archives with the member paths
of the official ones (``VOCdevkit/VOC2012/...`` in ``VOCtrainval_11-May-2012.tar``,
``annotations/instances_*2014.json`` in ``annotations_trainval2014.zip``, ``CUB_200_2011/...`` and
``attributes.txt`` in ``CUB_200_2011.tgz``), served by a loopback server in a thread, downloaded with
the package's table entries (same file names and ``provides``; URL, size and hash of the test's
archives), and the builder then builds from the download folder.
"""
import dataclasses
import hashlib
import io
import os
import socket
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import datasets
import pytest

from raw_trees import write_coco_tree, write_cub_tree, write_voc_tree
from spl_losses.data import build_dataset
from spl_losses.data.__main__ import main
from spl_losses.data.archives import ARCHIVES, Archive, DatasetDownload
from spl_losses.data.download import STATE_DIR, DownloadError, download

datasets.disable_progress_bars()


class ArchiveServer:
    """Serves ``files`` ({name: bytes}) on 127.0.0.1 with Range support; records every request."""

    def __init__(self, files):
        self.files = dict(files)
        self.requests = []  # (method, path, Range header, Authorization header)
        self.cut_once = set()  # names whose first full GET is cut halfway
        self.cut_always = set()  # names whose every GET is cut halfway
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _serve(self, head: bool):
                name = self.path.lstrip("/").split("?")[0]
                range_header = self.headers.get("Range")
                with outer.lock:
                    outer.requests.append((self.command, name, range_header, self.headers.get("Authorization")))
                    cut = not head and ((range_header is None and name in outer.cut_once)
                                        or name in outer.cut_always)
                    if cut:
                        outer.cut_once.discard(name)
                data = outer.files.get(name)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                if range_header and not head:
                    start = int(range_header.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if head:
                    return
                body = data[start:]
                if cut:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

            def do_HEAD(self):
                self._serve(head=True)

            def do_GET(self):
                self._serve(head=False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def gets(self, name=None):
        return [r for r in self.requests if r[0] == "GET" and (name is None or r[1] == name)]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = ArchiveServer({})
    yield srv
    srv.close()


def _tar_bytes(root, top_names, mode="w"):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name in top_names:
            tf.add(os.path.join(root, name), arcname=name)
    return buf.getvalue()


def _zip_bytes(root, top_name):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for folder, _, files in os.walk(os.path.join(root, top_name)):
            rel = os.path.relpath(folder, root).replace(os.sep, "/")
            zf.writestr(rel + "/", b"")
            for f in sorted(files):
                zf.write(os.path.join(folder, f), f"{rel}/{f}")
    return buf.getvalue()


def _archives_of(name, src):
    """{official file name: bytes} for the raw tree written under ``src``, in the official archives' layout."""
    if name == "voc2012":
        return {"VOCtrainval_11-May-2012.tar": _tar_bytes(src, ["VOCdevkit"])}
    if name == "coco2014":
        return {"annotations_trainval2014.zip": _zip_bytes(src, "annotations"),
                "train2014.zip": _zip_bytes(src, "train2014"), "val2014.zip": _zip_bytes(src, "val2014")}
    if name == "cub200":
        return {"CUB_200_2011.tgz": _tar_bytes(src, ["CUB_200_2011", "attributes.txt"], mode="w:gz")}
    raise KeyError(name)


def _table_for(name, files, base_url, hash_kind="md5"):
    """The package's entry for ``name`` with the URL, size and checksum of the test's archives."""
    archives = []
    for official in ARCHIVES[name].archives:
        data = files[official.filename]
        digest = hashlib.new(hash_kind, data).hexdigest()
        archives.append(dataclasses.replace(official, url=f"{base_url}/{official.filename}", size=len(data),
                                            md5=digest if hash_kind == "md5" else None,
                                            sha256=digest if hash_kind == "sha256" else None))
    return {name: DatasetDownload(archives=tuple(archives))}


WRITERS = {"voc2012": write_voc_tree, "coco2014": write_coco_tree, "cub200": write_cub_tree}


def _rel_paths(split, root):
    paths = [row["path"] for row in split.cast_column("image", datasets.Image(decode=False))["image"]]
    return sorted(os.path.relpath(p, root) for p in paths)


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_download_then_build_from_the_official_layout(tmp_path, server, name):
    src = tmp_path / "src"
    expected = WRITERS[name](str(src))
    server.files.update(_archives_of(name, str(src)))
    assert set(server.files) == {a.filename for a in ARCHIVES[name].archives}  # every official file is served
    data_dir = tmp_path / "data"
    table = _table_for(name, server.files, server.url, hash_kind="sha256" if name == "coco2014" else "md5")
    done = download(name, str(data_dir), table=table, jobs=2, progress=False, log=lambda m: None)
    assert all(done.values()) and set(done) == set(server.files)
    assert all(r[3] is None for r in server.requests)  # no Hub token sent to a dataset host
    leftovers = os.listdir(data_dir / STATE_DIR)
    assert all(f.endswith(".done.json") for f in leftovers if f != "downloads")
    downloads = [f for f in os.listdir(data_dir / STATE_DIR / "downloads") if not f.endswith(".lock")]
    assert downloads == []  # archives removed after unpacking
    for archive in ARCHIVES[name].archives:  # what the builder reads is what the archives hold
        for path in archive.provides:
            assert os.path.lexists(data_dir / path), path
    built = build_dataset(name, root=str(data_dir), cache_dir=str(tmp_path / "cache"))
    got = sorted(_rel_paths(built["train"], str(data_dir)) + _rel_paths(built["validation"], str(data_dir)))
    assert got == sorted(os.path.relpath(p, str(src)) for p in expected.positives["train"])
    assert _rel_paths(built["test"], str(data_dir)) == sorted(
        os.path.relpath(p, str(src)) for p in expected.positives["test"])
    assert built["train"].features["labels"].feature.names == expected.class_names

    # idempotent: a second call checks its markers and sends nothing
    before = len(server.requests)
    again = download(name, str(data_dir), table=table, progress=False, log=lambda m: None)
    assert not any(again.values()) and len(server.requests) == before


def _one_file_table(server, name="files.tgz", data=None, **overrides):
    if data is None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tf:
            payload = os.urandom(200_000)  # incompressible: the cut lands inside the body
            info = tarfile.TarInfo("top/blob.bin")
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
        data = buf.getvalue()
    server.files[name] = data
    fields = dict(filename=name, url=f"{server.url}/{name}", size=len(data), md5=hashlib.md5(data).hexdigest(),
                  provides=("top/blob.bin",))
    fields.update(overrides)
    return {"toy": [Archive(**fields)]}, data


def test_cut_connection_resumes_with_range_and_verifies(tmp_path, server, monkeypatch):
    from huggingface_hub import constants

    # the client writes what it received in chunks of DOWNLOAD_CHUNK_SIZE (10 MB) and resumes from the last
    # chunk written: smaller chunks let a 200 kB archive show it
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    table, data = _one_file_table(server)
    server.cut_once.add("files.tgz")
    download("toy", str(tmp_path / "d"), table=table, progress=False, log=lambda m: None)
    gets = server.gets("files.tgz")
    assert len(gets) == 2 and gets[0][2] is None
    resumed_at = int(gets[1][2].split("=")[1].rstrip("-"))
    assert 0 < resumed_at <= len(data) // 2
    assert (tmp_path / "d" / "top" / "blob.bin").stat().st_size == 200_000


def test_a_transfer_that_keeps_failing_keeps_its_part_for_the_next_call(tmp_path, server, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # the client's pause between its retries
    table, data = _one_file_table(server)
    server.cut_always.add("files.tgz")
    with pytest.raises(DownloadError, match=r"download of files.tgz failed after [\d,]+ of [\d,]+ bytes .*run the "
                                            r"command again to resume it") as info:
        download("toy", str(tmp_path / "d"), table=table, progress=False, log=lambda m: None)
    assert "\n" not in str(info.value)
    part = tmp_path / "d" / STATE_DIR / "downloads" / "files.tgz.part"
    kept = part.stat().st_size
    assert 0 < kept < len(data) and not (tmp_path / "d" / "top").exists()
    server.cut_always.clear()
    before = len(server.gets())
    download("toy", str(tmp_path / "d"), table=table, progress=False, log=lambda m: None)
    assert [g[2] for g in server.gets()[before:]] == [f"bytes={kept}-"]
    assert (tmp_path / "d" / "top" / "blob.bin").stat().st_size == 200_000


def test_existing_partial_file_is_continued(tmp_path, server):
    table, data = _one_file_table(server)
    part = tmp_path / "d" / STATE_DIR / "downloads" / "files.tgz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1000])
    download("toy", str(tmp_path / "d"), table=table, progress=False, log=lambda m: None)
    assert [g[2] for g in server.gets()] == ["bytes=1000-"]
    assert (tmp_path / "d" / "top" / "blob.bin").exists() and not part.exists()


def test_checksum_mismatch_names_file_expected_got_and_extracts_nothing(tmp_path, server):
    table, data = _one_file_table(server, md5="0" * 32)
    with pytest.raises(DownloadError) as info:
        download("toy", str(tmp_path / "d"), table=table, progress=False, log=lambda m: None)
    message = str(info.value)
    assert "files.tgz" in message and "0" * 32 in message and hashlib.md5(data).hexdigest() in message
    assert "\n" not in message
    assert sorted(os.listdir(tmp_path / "d")) == [STATE_DIR]  # nothing extracted
    assert [f for f in os.listdir(tmp_path / "d" / STATE_DIR / "downloads") if not f.endswith(".lock")] == []
    assert not any(f.endswith(".done.json") for f in os.listdir(tmp_path / "d" / STATE_DIR))


def test_wrong_size_is_refused_before_the_transfer(tmp_path, server, capsys):
    table, data = _one_file_table(server)
    table["toy"][0] = dataclasses.replace(table["toy"][0], size=len(data) + 5)
    with pytest.raises(DownloadError, match=rf"wrong size for files.tgz.*{len(data):,} bytes, expected "
                                            rf"{len(data) + 5:,}"):
        download("toy", str(tmp_path / "d"), table=table, progress=False, log=lambda m: None)
    assert server.gets() == []  # HEAD only: no byte transferred
    assert sorted(os.listdir(tmp_path / "d")) == [STATE_DIR]


def test_size_checked_after_transfer_when_the_server_does_not_say(tmp_path, server):
    table, data = _one_file_table(server)
    part = tmp_path / "d" / STATE_DIR / "downloads" / "files.tgz"  # a complete-looking file of the wrong size
    part.parent.mkdir(parents=True)
    part.write_bytes(data + b"xx")
    with pytest.raises(DownloadError, match="wrong size for files.tgz: expected"):
        download("toy", str(tmp_path / "d"), table=table, progress=False, log=lambda m: None)
    assert not part.exists() and sorted(os.listdir(tmp_path / "d")) == [STATE_DIR]


def test_not_enough_space_is_an_error_before_the_transfer(tmp_path, server, monkeypatch):
    import collections

    from spl_losses.data import download as download_module

    table, data = _one_file_table(server)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(download_module.shutil, "disk_usage", lambda path: usage(10 ** 9, 10 ** 9, 100))
    with pytest.raises(DownloadError, match=rf"not enough space for files.tgz .*{len(data):,} bytes to download, "
                                            "100 free"):
        download("toy", str(tmp_path / "d"), table=table, progress=False, log=lambda m: None)
    assert server.gets() == []


def test_cli_offline_is_one_error_line(tmp_path, server, monkeypatch, capsys):
    table, _ = _one_file_table(server)
    monkeypatch.setitem(ARCHIVES, "toy", DatasetDownload(archives=tuple(table["toy"])))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["download", "toy", "--data-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: HF_HUB_OFFLINE is set: cannot download files.tgz")
    assert server.requests == []


def _evil_tar(member_name, linkname=None):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        ok = tarfile.TarInfo("top/ok.txt")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
        info = tarfile.TarInfo(member_name)
        if linkname is not None:
            info.type, info.linkname = tarfile.SYMTYPE, linkname
        else:
            info.size = 4
        tf.addfile(info, io.BytesIO(b"evil") if linkname is None else None)
    return buf.getvalue()


def _evil_zip(member_name):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("top/ok.txt", b"ok")
        zf.writestr(member_name, b"evil")
    return buf.getvalue()


@pytest.mark.parametrize("kind,member,linkname", [
    ("tar", "../evil", None), ("tar", "top/../../evil", None), ("tar", "/tmp/spl_losses_evil_abs", None),
    ("tar", "top/link", "/etc/passwd"), ("tar", "top/link", "../../outside"),
    ("zip", "../evil", None), ("zip", "top/../../evil", None), ("zip", "/tmp/spl_losses_evil_abs", None),
])
def test_members_leaving_the_folder_are_refused(tmp_path, server, kind, member, linkname):
    name = "bad.tar" if kind == "tar" else "bad.zip"
    data = _evil_tar(member, linkname) if kind == "tar" else _evil_zip(member)
    table, _ = _one_file_table(server, name=name, data=data, provides=("top/ok.txt",))
    data_dir = tmp_path / "sub" / "d"
    with pytest.raises(DownloadError, match=rf"refused to extract {name}: member"):
        download("toy", str(data_dir), table=table, progress=False, log=lambda m: None)
    assert sorted(os.listdir(data_dir)) == [STATE_DIR]  # not even the harmless member is left
    assert not (tmp_path / "sub" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not os.path.exists("/tmp/spl_losses_evil_abs")
    assert [f for f in os.listdir(data_dir / STATE_DIR) if f.startswith("extract-")] == []


def test_a_second_process_on_the_same_file_is_refused(tmp_path, server):
    from filelock import FileLock

    table, _ = _one_file_table(server)
    downloads = tmp_path / "d" / STATE_DIR / "downloads"
    downloads.mkdir(parents=True)
    with FileLock(str(downloads / "files.tgz.lock")):
        errors = []

        def run():
            try:
                download("toy", str(tmp_path / "d"), table=table, progress=False, log=lambda m: None)
            except DownloadError as err:
                errors.append(str(err))

        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
    assert errors and errors[0].startswith("another process is downloading files.tgz")
    assert server.requests == []


def test_archive_without_what_the_builder_reads_is_an_error(tmp_path, server):
    table, _ = _one_file_table(server, provides=("top/blob.bin", "annotations/instances_train2014.json"))
    with pytest.raises(DownloadError, match="does not hold annotations/instances_train2014.json"):
        download("toy", str(tmp_path / "d"), table=table, progress=False, log=lambda m: None)
    assert sorted(os.listdir(tmp_path / "d")) == [STATE_DIR]


def test_unreachable_server_is_one_fast_error(tmp_path):
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    table = {"toy": [Archive("x.zip", f"http://127.0.0.1:{port}/x.zip", size=10, md5="0" * 32)]}
    start = time.monotonic()
    with pytest.raises(DownloadError, match=rf"cannot reach http://127.0.0.1:{port}/x.zip") as info:
        download("toy", str(tmp_path / "d"), table=table, progress=False, log=lambda m: None)
    assert time.monotonic() - start < 10 and "\n" not in str(info.value)


def test_offline_mode_is_one_error_and_no_request(tmp_path, server, monkeypatch):
    table, _ = _one_file_table(server)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE is set: cannot download files.tgz"):
        download("toy", str(tmp_path / "d"), table=table, progress=False, log=lambda m: None)
    assert server.requests == []


def test_offline_mode_after_a_complete_download_does_nothing(tmp_path, server, monkeypatch):
    table, _ = _one_file_table(server)
    download("toy", str(tmp_path / "d"), table=table, progress=False, log=lambda m: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(server.requests)
    assert download("toy", str(tmp_path / "d"), table=table, progress=False, log=lambda m: None) == {"files.tgz": False}
    assert len(server.requests) == before


def test_mirror_serves_the_same_file_names(tmp_path, server):
    table, _ = _one_file_table(server, url="http://192.0.2.1/never/files.tgz")  # the official URL is not used
    download("toy", str(tmp_path / "d"), table=table, mirror=server.url + "/", progress=False, log=lambda m: None)
    assert [r[1] for r in server.requests] == ["files.tgz", "files.tgz"]  # HEAD, GET
    assert (tmp_path / "d" / "top" / "blob.bin").exists()


def test_cli_download_and_build_download(tmp_path, server, capsys, monkeypatch):
    src = tmp_path / "src"
    write_voc_tree(str(src))
    server.files.update(_archives_of("voc2012", str(src)))
    # the CLI reads the package table: point its entry at the test's archive for this test
    table = _table_for("voc2012", server.files, server.url)
    monkeypatch.setitem(ARCHIVES, "voc2012", table["voc2012"])
    data_dir, out = tmp_path / "data", tmp_path / "out"
    rc = main(["build", "voc2012", "--download", "--data-dir", str(data_dir), "--output", str(out),
               "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0, capsys.readouterr().err
    assert datasets.load_from_disk(str(out))["test"].num_rows > 0
    before = len(server.requests)
    assert main(["download", "voc2012", "--data-dir", str(data_dir)]) == 0
    assert len(server.requests) == before and "already in place" in capsys.readouterr().err

    bad = DatasetDownload(archives=(dataclasses.replace(table["voc2012"].archives[0], md5="1" * 32),))
    monkeypatch.setitem(ARCHIVES, "voc2012", bad)
    rc = main(["download", "voc2012", "--data-dir", str(tmp_path / "other"), "--jobs", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: checksum mismatch for VOCtrainval_11-May-2012.tar: expected md5 "
                                          + "1" * 32)


def test_cli_errors(tmp_path, capsys):
    assert main(["download", "digits_mosaic", "--data-dir", str(tmp_path / "d")]) == 2
    assert "error: no download for dataset 'digits_mosaic'" in capsys.readouterr().err
    # nuswide: what no official archive holds is named before any transfer
    assert main(["build", "nuswide", "--download", "--data-dir", str(tmp_path / "n"), "--output",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: nuswide needs formatted_train_images.npy") and "not its images" in err
    assert not (tmp_path / "n").exists() and not (tmp_path / "o").exists()


def test_package_table_is_complete():
    for name in ("voc2012", "coco2014", "cub200", "nuswide"):
        for archive in ARCHIVES[name].archives:
            assert archive.url.startswith(("http://", "https://")) and archive.url.split("?")[0].endswith(
                archive.filename)
            if name != "nuswide":  # NUS-WIDE publishes no checksum
                assert archive.size and archive.checksum and archive.provides
