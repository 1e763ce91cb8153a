"""Hostile and unusual import files: each ends in a clear outcome — imported correctly with exact
counts, a warning naming the file, or a clean INVALID_DATASET — never a 500, an exception or a
half-written dataset.

- ZIP: encrypted members (real ZipCrypto), unknown and unsupported compression methods, patch
  data, duplicate names (also once paths are normalised), a file where a folder must be, a
  local header that disagrees with the directory, nested archives, bzip2 and LZMA (supported).
- Images in colour modes L, RGBA, CMYK, P, I;16 (imported; CMYK and 16-bit converted so training
  reads the right pixels) and I / F (refused with a warning naming the file).
- CSV, COCO, YOLO files with a UTF-8 BOM (and CRLF line ends).
- NaN, infinite and negative box coordinates in CSV, COCO and YOLO.

The importer functions are tested directly, and the import API in-process (`client`), where
"nothing written" is checked on every table and every file of the workspace.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import struct
import sys
import zipfile
import zlib
from contextlib import closing
from pathlib import Path

import pytest
from PIL import Image

from appliance.store.errors import InvalidDataset
from appliance.store.paths import Workspace
from appliance.importers import check_zip, extract_zip, parse_source, zipsafe
from appliance.importers.formats import NESTED_ARCHIVE
from tests.fixtures import (
    create_project,
    import_and_wait,
    list_all_images,
    make_classification_folder,
    start_zip_import,
    zip_dir,
)
from tests.workflows import wait_for

W, H = 24, 16  # not square, so swapped dimensions show


# ----------------------------------------------------------------------------- ZIP builders


def _crc_step(key: int, byte: int) -> int:
    """One step of the CRC-32 register (what ZipCrypto's key schedule uses)."""
    return zlib.crc32(bytes([byte]), key ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def zipcrypto(data: bytes, password: bytes, crc: int) -> bytes:
    """`data` encrypted with traditional PKWARE encryption, with its 12-byte header."""
    keys = [0x12345678, 0x23456789, 0x34567890]

    def update(byte: int) -> None:
        keys[0] = _crc_step(keys[0], byte)
        keys[1] = ((keys[1] + (keys[0] & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        keys[2] = _crc_step(keys[2], keys[1] >> 24)

    for byte in password:
        update(byte)
    out = bytearray()
    for plain in bytes(11) + bytes([crc >> 24]) + data:
        temp = (keys[2] | 2) & 0xFFFF
        out.append(plain ^ (((temp * (temp ^ 1)) >> 8) & 0xFF))
        update(plain)
    return bytes(out)


def raw_zip(path: Path, entries: list[dict]) -> Path:
    """A ZIP written byte by byte, for what `zipfile` refuses to write. Each entry: name, data,
    and optionally method (stored payload, whatever the id says), flags, password, local_name."""
    body, central = bytearray(), bytearray()
    for e in entries:
        name, data = e["name"].encode(), e["data"]
        crc = zlib.crc32(data)
        flags = e.get("flags", 0)
        payload = data
        if "password" in e:
            flags |= 0x1
            payload = zipcrypto(data, e["password"], crc)
        method = e.get("method", zipfile.ZIP_STORED)
        local_name = e.get("local_name", e["name"]).encode()
        offset = len(body)
        body += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, flags, method, 0, 0x21, crc, len(payload), len(data),
                            len(local_name), 0) + local_name + payload
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, flags, method, 0, 0x21, crc, len(payload),
                               len(data), len(name), 0, 0, 0, 0, 0, offset) + name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), len(body), 0)
    path.write_bytes(bytes(body + central + end))
    return path


def jpeg(colour=(200, 40, 40), size=(W, H)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def two_class_entries(prefix: str = "ds/") -> list[dict]:
    return [{"name": f"{prefix}red/a.jpg", "data": jpeg((220, 40, 40))},
            {"name": f"{prefix}blue/b.jpg", "data": jpeg((40, 70, 220))}]


# ----------------------------------------------------------------------------- image builders


def save(path: Path, im: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)
    return path


def palette_image() -> Image.Image:
    im = Image.new("P", (W, H), 1)
    im.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    return im


# Class folder / file → (how it is made, the mode stored, the RGB that training reads back)
MODES = {
    "alpha/a.png": (lambda p: save(p, Image.new("RGBA", (W, H), (200, 40, 40, 128))), "RGBA", (200, 40, 40)),
    "cmyk/a.jpg": (lambda p: save(p, Image.new("CMYK", (W, H), (0, 255, 255, 0)), quality=95), "RGB", (255, 0, 0)),
    "deep/a.png": (lambda p: save(p, Image.new("I;16", (W, H), 40000)), "L", (156, 156, 156)),  # 40000/256
    "deep/b.tif": (lambda p: save(p, Image.new("I;16", (W, H), 1000)), "L", (3, 3, 3)),  # 1000/256
    "grey/a.png": (lambda p: save(p, Image.new("L", (W, H), 90)), "L", (90, 90, 90)),
    "grey/b.jpg": (lambda p: save(p, Image.new("L", (W, H), 60), quality=95), "L", (60, 60, 60)),
    "palette/a.png": (lambda p: save(p, palette_image()), "P", (10, 200, 30)),
    "palette/b.gif": (lambda p: save(p, palette_image()), "P", (10, 200, 30)),
}
REFUSED_MODES = {  # 32-bit integer and float images: no meaning to assume
    "deep/c.tif": (lambda p: save(p, Image.new("I", (W, H), 300)), "I"),
    "grey/c.tif": (lambda p: save(p, Image.new("F", (W, H), 0.5)), "F"),
}


def modes_folder(root: Path) -> Path:
    for rel, (make, *_) in {**MODES, **REFUSED_MODES}.items():
        make(root / rel)
    return root


def refused_warning(rel: str, mode: str) -> dict:
    return {"file": rel, "reason": f"unreadable image (unsupported colour mode {mode}; save it as 8-bit RGB or "
                                   "greyscale); skipped"}


# ----------------------------------------------------------------------------- checks


def snapshot(settings) -> tuple[dict, list]:
    """Every row of every table and every file of the workspace (but the database's own)."""
    db = Path(settings.db_url.removeprefix("sqlite:///"))
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        tables = [r[0] for r in con.execute("select name from sqlite_master where type = 'table'")]
        rows = {t: sorted(map(repr, con.execute(f'select * from "{t}"'))) for t in tables}
    files = sorted(p.relative_to(settings.workspace).as_posix()
                   for p in settings.workspace.rglob("*") if p.is_file() and not p.name.startswith(db.name))
    return rows, files


def settle(client, settings) -> None:
    staging = Workspace(settings.workspace).staging_dir
    wait_for(lambda: (client.get("/api/system/jobs").json()["data"], list(staging.glob("*"))),
             lambda state: state == ([], []), timeout=60, every=0.05)


def assert_error(r, status: int, code: str, *parts: str) -> str:
    body = r.json()
    assert r.status_code == status, r.text
    assert set(body) == {"status", "error"} and body["status"] == "error" and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code, body
    for part in parts:
        assert part in body["error"]["message"], (part, body["error"]["message"])
    return body["error"]["message"]


def dataset_files(settings, pid: str) -> list[str]:
    images = Workspace(settings.workspace).images_dir(pid)
    return sorted(p.name for p in images.glob("*")) if images.exists() else []


# ----------------------------------------------------------------------------- ZIP: refused up front

REFUSED_ZIPS = {
    "encrypted": (lambda p: raw_zip(p, [two_class_entries()[0], {**two_class_entries()[1], "password": b"secret"}]),
                  ["entry ds/blue/b.jpg is encrypted"]),
    "strong-encryption-flag": (lambda p: raw_zip(p, [{**two_class_entries()[0], "flags": 0x40}]),
                               ["entry ds/red/a.jpg is encrypted"]),
    "made-up-method": (lambda p: raw_zip(p, [{**two_class_entries()[0], "method": 77}, two_class_entries()[1]]),
                       ["entry ds/red/a.jpg uses an unsupported compression method (77)"]),
    "zstandard": (lambda p: raw_zip(p, [{**two_class_entries()[0], "method": 93}]),
                  ["entry ds/red/a.jpg uses an unsupported compression method (93)"]),
    "patch-data": (lambda p: raw_zip(p, [{**two_class_entries()[0], "flags": 0x20}]),
                   ["entry ds/red/a.jpg holds patch data"]),
    "duplicate-name": (lambda p: raw_zip(p, [*two_class_entries(), {"name": "ds/red/a.jpg", "data": jpeg((1, 2, 3))}]),
                       ["entry ds/red/a.jpg appears twice"]),
    "duplicate-once-normalised": (
        lambda p: raw_zip(p, [*two_class_entries(), {"name": "ds\\red\\a.jpg", "data": jpeg((1, 2, 3))}]),
        ["entry ds\\red\\a.jpg appears twice (also as ds/red/a.jpg)"]),
    "duplicate-dot-slash": (
        lambda p: raw_zip(p, [*two_class_entries(), {"name": "./ds//red/a.jpg", "data": jpeg((1, 2, 3))}]),
        ["entry ./ds//red/a.jpg appears twice (also as ds/red/a.jpg)"]),
    "file-then-folder": (lambda p: raw_zip(p, [{"name": "ds/red", "data": b"a file"}, *two_class_entries()]),
                         ["entries ds/red and ds/red/a.jpg", "as a file and as a folder"]),
    "folder-then-file": (lambda p: raw_zip(p, [*two_class_entries(), {"name": "ds/red", "data": b"a file"}]),
                         ["entries ds/red/a.jpg and ds/red", "as a file and as a folder"]),
    "only-nested-archives": (lambda p: raw_zip(p, [{"name": "inner.zip", "data": b"PK\x05\x06" + bytes(18)},
                                                   {"name": "more.tar.gz", "data": b"\x1f\x8b"}]),
                             ["holds only archives (inner.zip, more.tar.gz)"]),
}


@pytest.mark.parametrize("name", REFUSED_ZIPS)
def test_hostile_zip_is_refused_before_anything_is_written(tmp_path, name):
    build, parts = REFUSED_ZIPS[name]
    archive = build(tmp_path / "upload.zip")
    for check in (lambda: check_zip(archive, max_total_bytes=1 << 20),
                  lambda: extract_zip(archive, tmp_path / "dest", max_total_bytes=1 << 20)):
        with pytest.raises(InvalidDataset) as caught:
            check()
        assert caught.value.message.startswith("upload.zip: ")
        assert all(part in caught.value.message for part in parts), caught.value.message
    assert not (tmp_path / "dest").exists()


def test_the_encrypted_fixture_is_really_encrypted(tmp_path):
    """The ZipCrypto writer above is real: zipfile wants the password and decrypts with it."""
    archive = REFUSED_ZIPS["encrypted"][0](tmp_path / "e.zip")
    with zipfile.ZipFile(archive) as zf:
        with pytest.raises(RuntimeError, match="password required"):
            zf.read("ds/blue/b.jpg")
        assert zf.read("ds/blue/b.jpg", pwd=b"secret") == two_class_entries()[1]["data"]
        assert zf.read("ds/red/a.jpg") == two_class_entries()[0]["data"]


@pytest.mark.parametrize("name", REFUSED_ZIPS)
def test_hostile_zip_upload_is_a_clean_400_and_writes_nothing(client, settings, tmp_path, name):
    build, parts = REFUSED_ZIPS[name]
    pid = create_project(client)
    archive = build(tmp_path / "upload.zip")
    before = snapshot(settings)
    r = start_zip_import(client, pid, archive, filename="hostile.zip")
    assert_error(r, 400, "INVALID_DATASET", "hostile.zip: ", *parts)
    assert snapshot(settings) == before  # no import job, no staged upload, no image


def test_bzip2_and_lzma_members_import_with_exact_counts(client, settings, tmp_path):
    """Not hostile, but the other methods a ZIP may use: both are supported."""
    pid = create_project(client)
    source = make_classification_folder(tmp_path / "colours", per_class=3, size=16)
    archive = tmp_path / "mixed.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, item in enumerate(source.items):
            method = (zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA, zipfile.ZIP_DEFLATED)[i % 3]
            zf.write(source.root / item.relpath, f"colours/{item.relpath}", compress_type=method)
    job = import_and_wait(client, pid, archive)
    assert (job["status"], job["added"], job["skipped"], job["warnings"]) == ("completed", 6, 0, [])
    images = list_all_images(client, pid)
    assert sorted((i["original_name"], i["label"]) for i in images) == sorted((i.relpath, i.label) for i in source.items)
    expected = {item.relpath: hashlib.sha256((source.root / item.relpath).read_bytes()).hexdigest() for item in source.items}
    assert {i["original_name"]: i["sha256"] for i in images} == expected


def test_decompressor_missing_from_this_python_is_unsupported(monkeypatch):
    monkeypatch.setitem(sys.modules, "bz2", None)  # `import bz2` now raises ImportError
    methods = zipsafe._supported_methods()
    assert zipfile.ZIP_BZIP2 not in methods
    assert {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_LZMA} <= methods


# ----------------------------------------------------------------------------- ZIP: found while extracting


def test_local_header_disagreeing_with_directory_fails_the_job_and_writes_no_image(client, settings, tmp_path):
    """The directory (checked up front) says ds/red/a.jpg; the local header says ../../evil.jpg."""
    entries = two_class_entries()
    entries[0] = {**entries[0], "local_name": "../../evil.jpg"}
    archive = raw_zip(tmp_path / "liar.zip", entries)
    with pytest.raises(InvalidDataset, match="liar.zip: cannot extract ds/red/a.jpg"):
        extract_zip(archive, tmp_path / "dest", max_total_bytes=1 << 20)
    assert list((tmp_path / "dest").iterdir()) == [] and not (tmp_path.parent / "evil.jpg").exists()
    pid = create_project(client)
    job = import_and_wait(client, pid, archive)
    assert job["status"] == "failed" and job["error"].startswith("liar.zip: cannot extract ds/red/a.jpg"), job
    settle(client, settings)
    assert list_all_images(client, pid) == [] and dataset_files(settings, pid) == []


def test_nested_archive_is_not_extracted_and_is_named_in_a_warning(client, settings, tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("green/c.jpg", jpeg((40, 180, 60)))
    archive = tmp_path / "outer.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for entry in two_class_entries():
            zf.writestr(entry["name"], entry["data"])
        zf.writestr("ds/red/more.zip", inner.getvalue())
        zf.writestr("ds/extras.tar.gz", b"\x1f\x8b\x08\x00")
    pid = create_project(client)
    job = import_and_wait(client, pid, archive)
    assert (job["status"], job["added"], job["skipped"]) == ("completed", 2, 2), job
    assert job["warnings"] == [{"file": "extras.tar.gz", "reason": NESTED_ARCHIVE},
                               {"file": "red/more.zip", "reason": NESTED_ARCHIVE}]
    assert sorted(i["original_name"] for i in list_all_images(client, pid)) == ["blue/b.jpg", "red/a.jpg"]


def test_local_folder_of_archives_only_says_so(client, settings):
    folder = settings.allowed_import_roots[0] / "zipped"
    folder.mkdir()
    (folder / "dataset.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    pid = create_project(client)
    job = import_and_wait(client, pid, folder)
    assert job["status"] == "failed"
    assert job["error"].startswith("zipped: no known dataset layout")
    assert job["error"].endswith("it holds archives (dataset.zip), which are not extracted: unpack them first")


# ----------------------------------------------------------------------------- image colour modes


def test_probe_and_store_every_colour_mode(tmp_path):
    from appliance.importers import probe_image, store_image

    root = modes_folder(tmp_path / "src")
    for rel, (_, stored_mode, rgb) in MODES.items():
        info = probe_image(root / rel)
        assert (info.width, info.height) == (W, H), rel
        assert info.sha256 == hashlib.sha256((root / rel).read_bytes()).hexdigest()
        dst = tmp_path / "out" / rel
        assert store_image(root / rel, dst, info) == info
        with Image.open(dst) as im:
            assert (im.mode, im.size, im.format) == (stored_mode, (W, H), info.format), rel
            assert_close(im.convert("RGB").getpixel((W // 2, H // 2)), rgb, rel)
        if stored_mode == info.mode:  # nothing to convert: the very same bytes
            assert dst.read_bytes() == (root / rel).read_bytes(), rel
    for rel, (_, mode) in REFUSED_MODES.items():
        with pytest.raises(InvalidDataset, match=f"{Path(rel).name}: unreadable image \\(unsupported colour mode {mode};"):
            probe_image(root / rel)


def test_moved_upload_files_are_still_converted(tmp_path):
    """`move` (an extracted upload) renames the file only when it needs no conversion."""
    from appliance.importers import probe_image, store_image

    src = MODES["cmyk/a.jpg"][0](tmp_path / "a.jpg")
    store_image(src, tmp_path / "out.jpg", probe_image(src), move=True)
    with Image.open(tmp_path / "out.jpg") as im:
        assert im.mode == "RGB"
    grey = MODES["grey/a.png"][0](tmp_path / "g.png")
    data = grey.read_bytes()
    store_image(grey, tmp_path / "g-out.png", probe_image(grey), move=True)
    assert not grey.exists() and (tmp_path / "g-out.png").read_bytes() == data


def assert_close(got, want, what, tolerance: int = 4) -> None:
    assert len(got) == len(want) and all(abs(g - w) <= tolerance for g, w in zip(got, want)), (what, got, want)


@pytest.mark.parametrize("via", ["path", "upload"])
def test_every_colour_mode_through_the_import_api(client, settings, tmp_path, via):
    """Counts, warnings naming the refused files, stored files that training reads correctly."""
    from ray_jobs.core.data import load_rgb

    folder = modes_folder(settings.allowed_import_roots[0] / "modes")
    source = zip_dir(folder, tmp_path / "modes.zip") if via == "upload" else folder
    pid = create_project(client)
    job = import_and_wait(client, pid, source)
    assert (job["status"], job["added"], job["skipped"], job["duplicates"]) == ("completed", len(MODES), 2, 0), job
    assert job["warnings"] == [refused_warning("deep/c.tif", "I"), refused_warning("grey/c.tif", "F")]
    images = {i["original_name"]: i for i in list_all_images(client, pid)}
    assert sorted(images) == sorted(MODES)
    for rel, (_, stored_mode, rgb) in MODES.items():
        image = images[rel]
        assert (image["label"], image["width"], image["height"]) == (rel.split("/")[0], W, H)
        assert image["sha256"] == hashlib.sha256((folder / rel).read_bytes()).hexdigest()
        r = client.get(image["url"])
        assert r.status_code == 200, r.text
        stored = tmp_path / "stored" / image["filename"]
        stored.parent.mkdir(exist_ok=True)
        stored.write_bytes(r.content)
        with Image.open(stored) as im:
            assert im.mode == stored_mode, rel
        assert_close(load_rgb(str(stored)).getpixel((W // 2, H // 2)), rgb, rel)  # what training sees
        thumb = client.get(image["thumbnail_url"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(thumb.content)) as im:
            assert_close(im.convert("RGB").getpixel((im.width // 2, im.height // 2)), rgb, f"thumbnail of {rel}", 6)


# ----------------------------------------------------------------------------- UTF-8 BOM


BOM = "\ufeff"


def write(path: Path, text: str, newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


def jpeg_file(path: Path, colour=(200, 40, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg(colour))
    return path


@pytest.mark.parametrize("header", [True, False], ids=["header", "no-header"])
def test_csv_with_bom_and_crlf(tmp_path, header):
    jpeg_file(tmp_path / "images" / "a.jpg", (200, 40, 40))
    jpeg_file(tmp_path / "images" / "b.jpg", (40, 40, 200))
    text = ("filename,label\n" if header else "") + "a.jpg,cat\nb.jpg,dog\n"
    write(tmp_path / "labels.csv", BOM + text, newline="\r\n")
    parsed = parse_source(tmp_path, "auto", "classification")
    assert [(i.relpath, i.label) for i in parsed.items] == [("images/a.jpg", "cat"), ("images/b.jpg", "dog")]
    assert (parsed.classes, parsed.warnings) == (["cat", "dog"], [])


def test_detection_csv_coco_and_yolo_with_bom(tmp_path):
    csv_root = tmp_path / "csv"
    jpeg_file(csv_root / "a.jpg")
    write(csv_root / "boxes.csv", BOM + "a.jpg,1,2,11,12,cat\n", newline="\r\n")
    parsed = parse_source(csv_root, "auto", "detection")
    assert [(b.x1, b.y1, b.x2, b.y2, b.label) for b in parsed.items[0].boxes] == [(1, 2, 11, 12, "cat")]

    coco_root = tmp_path / "coco"
    jpeg_file(coco_root / "images" / "a.jpg")
    doc = {"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 3, "name": "cat"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 10]}]}
    write(coco_root / "annotations.json", BOM + json.dumps(doc))
    parsed = parse_source(coco_root, "auto", "detection")
    assert [(b.x1, b.y1, b.x2, b.y2, b.label) for b in parsed.items[0].boxes] == [(1, 2, 11, 12, "cat")]

    for names_file, text in (("data.yaml", "names: [cat, dog]\n"), ("classes.txt", "cat\ndog\n")):
        yolo_root = tmp_path / names_file
        jpeg_file(yolo_root / "images" / "a.jpg")
        write(yolo_root / names_file, BOM + text, newline="\r\n")
        write(yolo_root / "labels" / "a.txt", BOM + "1 0.5 0.5 0.5 0.5\n", newline="\r\n")
        parsed = parse_source(yolo_root, "yolo", "detection")
        assert parsed.classes == ["cat", "dog"], names_file
        assert [(b.x1, b.y1, b.x2, b.y2, b.label) for b in parsed.items[0].boxes] == [(6, 4, 18, 12, "dog")]
        assert parsed.warnings == []


def test_csv_with_bom_through_the_import_api(client, settings):
    folder = settings.allowed_import_roots[0] / "bom"
    jpeg_file(folder / "a.jpg", (200, 40, 40))
    jpeg_file(folder / "b.jpg", (40, 40, 200))
    write(folder / "labels.csv", BOM + "filename,label\na.jpg,cat\nb.jpg,dog\n", newline="\r\n")
    pid = create_project(client)
    job = import_and_wait(client, pid, folder)
    assert (job["status"], job["added"], job["warnings"]) == ("completed", 2, []), job
    assert sorted((i["original_name"], i["label"]) for i in list_all_images(client, pid)) == [("a.jpg", "cat"),
                                                                                             ("b.jpg", "dog")]


# ----------------------------------------------------------------------------- NaN, inf, negative boxes


@pytest.mark.parametrize("value,what", [("nan", "a finite number"), ("NaN", "a finite number"),
                                        ("inf", "a finite number"), ("-Infinity", "a finite number"),
                                        ("1e999", "a finite number"), ("ten", "a number")])
def test_csv_non_finite_coordinate_rejects_the_file_naming_line_and_column(tmp_path, value, what):
    jpeg_file(tmp_path / "a.jpg")
    write(tmp_path / "boxes.csv", f"filename,xmin,ymin,xmax,ymax,label\na.jpg,1,2,11,12,cat\na.jpg,1,{value},11,12,cat\n")
    with pytest.raises(InvalidDataset) as caught:
        parse_source(tmp_path, "csv", "detection")
    assert caught.value.message == f"boxes.csv line 3: ymin {value!r} is not {what}"


def test_csv_negative_coordinates_are_clipped_or_skipped(tmp_path):
    jpeg_file(tmp_path / "a.jpg")
    jpeg_file(tmp_path / "b.jpg", (1, 2, 3))
    write(tmp_path / "boxes.csv", "a.jpg,-5,-3,10,10,cat\nb.jpg,-20,-20,-5,-5,cat\n")
    parsed = parse_source(tmp_path, "csv", "detection")
    assert [(i.relpath, [(b.x1, b.y1, b.x2, b.y2) for b in i.boxes]) for i in parsed.items] == [("a.jpg", [(0, 0, 10, 10)])]
    assert [(w.file, w.reason) for w in parsed.warnings] == [
        ("a.jpg", "box clipped to the image (boxes.csv line 1)"),
        ("b.jpg", "box outside the image (boxes.csv line 2); box skipped"),
        ("b.jpg", "no valid box left; image skipped"),
    ]


def test_coco_non_finite_and_negative_boxes_are_warnings(tmp_path):
    boxes = {"nan": "[NaN, 1, 5, 5]", "inf": "[1, 1, Infinity, 5]", "big": "[1, 1, 1e999, 5]",
             "neg": "[-5, -4, 10, 10]", "negw": "[5, 5, -3, 4]", "ok": "[1, 1, 5, 5]"}  # as JSON text
    for i, name in enumerate(boxes):
        jpeg_file(tmp_path / "images" / f"{name}.jpg", (i * 30, 40, 40))
    images = ", ".join(f'{{"id": {i}, "file_name": "{name}.jpg"}}' for i, name in enumerate(boxes, 1))
    anns = ", ".join(f'{{"id": {i}, "image_id": {i}, "category_id": 1, "bbox": {bbox}}}'
                     for i, bbox in enumerate(boxes.values(), 1))
    write(tmp_path / "annotations.json",
          f'{{"images": [{images}], "annotations": [{anns}], "categories": [{{"id": 1, "name": "cat"}}]}}')
    parsed = parse_source(tmp_path, "coco", "detection")
    assert {i.relpath: [(b.x1, b.y1, b.x2, b.y2) for b in i.boxes] for i in parsed.items} == {
        "images/neg.jpg": [(0, 0, 5, 6)], "images/ok.jpg": [(1, 1, 6, 6)],
    }
    assert [(w.file, w.reason) for w in parsed.warnings] == [
        ("annotations.json", "annotation 1: bbox [nan, 1, 5, 5] is not [x, y, width, height]; skipped"),
        ("annotations.json", "annotation 2: bbox [1, 1, inf, 5] is not [x, y, width, height]; skipped"),
        ("annotations.json", "annotation 3: bbox [1, 1, inf, 5] is not [x, y, width, height]; skipped"),
        ("images/nan.jpg", "no valid box left; image skipped"),
        ("images/inf.jpg", "no valid box left; image skipped"),
        ("images/big.jpg", "no valid box left; image skipped"),
        ("images/neg.jpg", "box clipped to the image (annotations.json annotation 4)"),
        ("images/negw.jpg", "zero-area box (annotations.json annotation 5); box skipped"),
        ("images/negw.jpg", "no valid box left; image skipped"),
    ]


@pytest.mark.parametrize("line", ["0 nan 0.5 0.2 0.2", "0 0.5 inf 0.2 0.2", "0 0.5 0.5 1e999 0.2", "-1 0.5 0.5 0.2 0.2",
                                  "nan 0.5 0.5 0.2 0.2"])
def test_yolo_non_finite_values_or_negative_class_reject_the_file(tmp_path, line):
    jpeg_file(tmp_path / "images" / "a.jpg")
    write(tmp_path / "data.yaml", "names: [cat]\n")
    write(tmp_path / "labels" / "a.txt", f"0 0.5 0.5 0.2 0.2\n{line}\n")
    with pytest.raises(InvalidDataset) as caught:
        parse_source(tmp_path, "yolo", "detection")
    assert caught.value.message == f"labels/a.txt line 2: expected 'class cx cy w h' numbers, got {line!r}"


def test_yolo_negative_coordinates_are_clipped_or_skipped(tmp_path):
    jpeg_file(tmp_path / "images" / "a.jpg")
    write(tmp_path / "data.yaml", "names: [cat]\n")
    # W=24, H=16: cx=-0.1 w=0.5 → x -8.4..3.6 (clipped); cx=-0.5 w=0.2 → x -14.4..-9.6 (outside)
    write(tmp_path / "labels" / "a.txt", "0 -0.1 0.5 0.5 0.5\n0 -0.5 0.5 0.2 0.2\n")
    parsed = parse_source(tmp_path, "yolo", "detection")
    [item] = parsed.items
    assert [(b.x1, b.y1, b.x2, b.y2) for b in item.boxes] == [(0, 4, pytest.approx(3.6), 12)]
    assert [(w.file, w.reason) for w in parsed.warnings] == [
        ("images/a.jpg", "box clipped to the image (labels/a.txt line 1)"),
        ("images/a.jpg", "box outside the image (labels/a.txt line 2); box skipped"),
    ]


def test_non_finite_csv_through_the_api_fails_the_job_and_writes_no_image(client, settings):
    folder = settings.allowed_import_roots[0] / "nan"
    jpeg_file(folder / "a.jpg")
    jpeg_file(folder / "b.jpg", (1, 2, 3))
    write(folder / "boxes.csv", "a.jpg,1,2,11,12,cat\nb.jpg,nan,2,11,12,cat\n")
    pid = create_project(client, "detection")
    job = import_and_wait(client, pid, folder)
    assert (job["status"], job["error"]) == ("failed", "boxes.csv line 2: xmin 'nan' is not a finite number"), job
    settle(client, settings)
    assert list_all_images(client, pid) == [] and dataset_files(settings, pid) == []
    assert client.get(f"/api/datasets/{pid}").json()["data"]["box_count"] == 0


def test_non_finite_coco_through_the_api_imports_the_rest(client, settings):
    folder = settings.allowed_import_roots[0] / "coco-nan"
    jpeg_file(folder / "images" / "a.jpg")
    jpeg_file(folder / "images" / "b.jpg", (1, 2, 3))
    doc = ('{"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],'
           ' "categories": [{"id": 1, "name": "cat"}],'
           ' "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 10]},'
           ' {"id": 2, "image_id": 2, "category_id": 1, "bbox": [NaN, 2, 10, 10]}]}')
    write(folder / "annotations.json", doc)
    pid = create_project(client, "detection")
    job = import_and_wait(client, pid, folder)
    assert (job["status"], job["added"], job["skipped"]) == ("completed", 1, 2), job
    assert job["warnings"] == [
        {"file": "annotations.json", "reason": "annotation 2: bbox [nan, 2, 10, 10] is not [x, y, width, height]; skipped"},
        {"file": "images/b.jpg", "reason": "no valid box left; image skipped"},
    ]
    [image] = list_all_images(client, pid)
    assert (image["original_name"], image["boxes"]) == ("images/a.jpg", [{"label": "cat", "x1": 1, "y1": 2, "x2": 11, "y2": 12, "difficult": False}])
