"""ZIP safety at its boundaries: the ratio and size limits exactly at and one past the line, the
flags and methods the directory is judged by, odd member names, and clean-up on failure.

Sizes and flags are judged from the central directory alone, so `claiming` writes a real archive
and then edits what its directory claims (each record: flags +8, method +10, compressed size +20,
size +24) — the way a hostile upload would."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from appliance.store.errors import InvalidDataset, PayloadTooLarge
from appliance.importers import check_zip, extract_zip

MIB = 1 << 20
BIG = 1 << 40  # a total-size limit that never applies


def claiming(path: Path, members: list[tuple]) -> Path:
    """members: (name, size, compressed size[, method[, flags]]) as the central directory claims."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, *_ in members:
            zf.writestr(name, b"")
    data = bytearray(path.read_bytes())
    at = data.index(b"PK\x01\x02")
    for name, size, packed, *rest in members:
        method, flags = (list(rest) + [0, 0])[:2] if rest else (0, 0)
        assert data[at:at + 4] == b"PK\x01\x02" and data[at + 46:at + 46 + len(name)] == name.encode()
        data[at + 8:at + 10] = flags.to_bytes(2, "little")
        data[at + 10:at + 12] = method.to_bytes(2, "little")
        data[at + 20:at + 24] = packed.to_bytes(4, "little")
        data[at + 24:at + 28] = size.to_bytes(4, "little")
        at += 46 + len(name)
    path.write_bytes(bytes(data))
    return path


def names(infos) -> list[str]:
    return [i.filename for i in infos]


# --------------------------------------------------------------------------- per-member ratio


def test_member_ratio_exactly_at_the_default_limit_passes(tmp_path):
    archive = claiming(tmp_path / "up.zip", [("a.bin", 200 * 8192, 8192)])
    assert names(check_zip(archive, BIG)) == ["a.bin"]


def test_member_one_byte_past_the_default_ratio_is_a_bomb(tmp_path):
    archive = claiming(tmp_path / "up.zip", [("a.bin", 200 * 8192 + 1, 8192)])
    message = "up.zip: entry a.bin expands 200x (1638401 bytes); refusing a likely ZIP bomb"
    with pytest.raises(InvalidDataset) as caught:
        check_zip(archive, BIG)
    assert caught.value.message.startswith(message)
    with pytest.raises(InvalidDataset) as caught:
        extract_zip(archive, tmp_path / "dest", BIG)
    assert caught.value.message.startswith(message)


def test_member_ratio_uses_the_given_limit(tmp_path):
    archive = claiming(tmp_path / "up.zip", [("a.bin", 200 * 8192 + 1, 8192)])
    assert names(check_zip(archive, BIG, max_ratio=201)) == ["a.bin"]
    with pytest.raises(InvalidDataset, match="expands 100x"):
        check_zip(claiming(tmp_path / "b.zip", [("b.bin", 100 * MIB + 1, MIB)]), BIG, max_ratio=100)


def test_member_ratio_applies_from_one_mib(tmp_path):
    below = claiming(tmp_path / "below.zip", [("a.bin", MIB - 1, 1)])
    assert names(check_zip(below, BIG)) == ["a.bin"]
    at = claiming(tmp_path / "at.zip", [("a.bin", MIB, 1)])
    with pytest.raises(InvalidDataset) as caught:
        check_zip(at, BIG)
    assert caught.value.message.startswith(f"at.zip: entry a.bin expands {MIB}x ({MIB} bytes); refusing a likely ZIP bomb")


def test_member_with_zero_compressed_bytes_counts_as_one(tmp_path):
    archive = claiming(tmp_path / "up.zip", [("a.bin", 2 * MIB, 0)])
    with pytest.raises(InvalidDataset, match=rf"expands {2 * MIB}x \({2 * MIB} bytes\)"):
        check_zip(archive, BIG)


# --------------------------------------------------------------------------- whole-archive ratio


def test_total_ratio_exactly_at_the_limit_passes(tmp_path):
    # two members under 1 MiB each (never judged alone); together 1,048,600 bytes from 5,243
    archive = claiming(tmp_path / "up.zip", [("a", 524300, 2621), ("b", 524300, 2622)])
    assert names(check_zip(archive, BIG)) == ["a", "b"]


def test_total_ratio_past_the_limit_is_a_bomb(tmp_path):
    archive = claiming(tmp_path / "up.zip", [("a", 524300, 2621), ("b", 524300, 2621)])
    with pytest.raises(InvalidDataset) as caught:
        check_zip(archive, BIG)
    assert caught.value.message.startswith("up.zip: content expands 200x; refusing a likely ZIP bomb")  # 1048600 // 5242


def test_total_ratio_with_nothing_compressed(tmp_path):
    archive = claiming(tmp_path / "up.zip", [("a", 600000, 0), ("b", 600000, 0)])
    with pytest.raises(InvalidDataset) as caught:
        check_zip(archive, BIG)
    assert caught.value.message.startswith("up.zip: content expands 1200000x; refusing a likely ZIP bomb")


def test_total_ratio_applies_from_one_mib(tmp_path):
    below = claiming(tmp_path / "below.zip", [("a", MIB // 2, 1), ("b", MIB // 2 - 1, 1)])
    assert names(check_zip(below, BIG)) == ["a", "b"]
    at = claiming(tmp_path / "at.zip", [("a", MIB // 2, 1), ("b", MIB // 2, 1)])
    with pytest.raises(InvalidDataset, match=f"content expands {MIB // 2}x"):
        check_zip(at, BIG)


# --------------------------------------------------------------------------- size, count, flags


def test_total_size_limit_is_inclusive(tmp_path):
    archive = claiming(tmp_path / "up.zip", [("a", 3000, 3000), ("b", 1096, 1096)])
    assert names(check_zip(archive, 4096)) == ["a", "b"]
    with pytest.raises(PayloadTooLarge) as caught:
        check_zip(archive, 4095)
    assert caught.value.message.startswith("up.zip: uncompressed content is 4096 bytes, over the 4095-byte limit")


def test_entry_count_limit_is_inclusive(tmp_path):
    archive = claiming(tmp_path / "up.zip", [(f"f{i}", 1, 1) for i in range(5)])
    assert len(check_zip(archive, BIG, max_entries=5)) == 5
    with pytest.raises(InvalidDataset) as caught:
        extract_zip(archive, tmp_path / "dest", BIG, max_entries=4)
    assert caught.value.message.startswith("up.zip: 5 entries, more than the 4 allowed")


def test_encrypted_member_is_refused(tmp_path):
    archive = claiming(tmp_path / "up.zip", [("ok", 1, 1), ("secret.jpg", 10, 10, 0, 0x1)])
    with pytest.raises(InvalidDataset) as caught:
        check_zip(archive, BIG)
    assert caught.value.message.startswith("up.zip: entry secret.jpg is encrypted")


def test_other_flag_bits_are_not_encryption(tmp_path):
    archive = claiming(tmp_path / "up.zip", [("a", 1, 1, 0, 0x2), ("b", 1, 1, 0, 0x8)])
    assert names(check_zip(archive, BIG)) == ["a", "b"]


def test_unsupported_compression_is_refused(tmp_path):
    archive = claiming(tmp_path / "up.zip", [("a.jpg", 10, 10, 99)])  # 99: WinZip AES
    with pytest.raises(InvalidDataset) as caught:
        check_zip(archive, BIG)
    assert caught.value.message.startswith((
        "up.zip: entry a.jpg uses an unsupported compression method (99); "
        "re-create the archive with standard Deflate"
    ))


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_standard_methods_extract(tmp_path, method):
    with zipfile.ZipFile(tmp_path / "up.zip", "w", method) as zf:
        zf.writestr("ds/a.txt", b"hello " * 100)
    root = extract_zip(tmp_path / "up.zip", tmp_path / "dest", BIG)
    assert (root / "a.txt").read_bytes() == b"hello " * 100


# --------------------------------------------------------------------------- names


def zip_of(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def test_lowercase_drive_letter_is_absolute(tmp_path):
    with pytest.raises(InvalidDataset) as caught:
        check_zip(zip_of(tmp_path / "up.zip", {"c:evil.txt": b"x"}), BIG)
    assert caught.value.message.startswith("up.zip: entry c:evil.txt has an absolute path")


def test_backslashes_dots_and_empty_parts(tmp_path):
    archive = zip_of(tmp_path / "up.zip", {
        "./": b"", "ds\\cat\\a.txt": b"a", "ds/./dog//b.txt": b"b", "./__MACOSX/._a.txt": b"junk",
    })
    assert names(check_zip(archive, BIG)) == ["ds\\cat\\a.txt", "ds/./dog//b.txt"]
    root = extract_zip(archive, tmp_path / "dest", BIG)
    assert root == tmp_path / "dest" / "ds"
    assert sorted(p.relative_to(tmp_path / "dest").as_posix() for p in (tmp_path / "dest").rglob("*")) == [
        "ds", "ds/cat", "ds/cat/a.txt", "ds/dog", "ds/dog/b.txt",
    ]


def test_directories_without_their_parents_and_after_their_files(tmp_path):
    archive = zip_of(tmp_path / "up.zip", {"x/y/z/": b"", "deep/er/f.txt": b"f", "deep/": b"", "deep/er/": b""})
    root = extract_zip(archive, tmp_path / "dest", BIG)
    assert root == tmp_path / "dest"
    assert (root / "x" / "y" / "z").is_dir() and (root / "deep" / "er" / "f.txt").read_bytes() == b"f"


# --------------------------------------------------------------------------- destination and clean-up


def test_destination_must_be_empty(tmp_path):
    archive = zip_of(tmp_path / "up.zip", {"a.txt": b"a"})
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ValueError, match="full must be empty"):
        extract_zip(archive, tmp_path / "full", BIG)
    (tmp_path / "empty").mkdir()
    assert extract_zip(archive, tmp_path / "empty", BIG) == tmp_path / "empty"
    assert extract_zip(archive, tmp_path / "not" / "yet" / "there", BIG) == tmp_path / "not" / "yet" / "there"
    assert (tmp_path / "not" / "yet" / "there" / "a.txt").read_bytes() == b"a"


def test_failed_extraction_empties_nested_folders_and_names_the_archive(tmp_path):
    with zipfile.ZipFile(tmp_path / "up.zip", "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("ds/sub/a.txt", b"first")
        zf.writestr("ds/sub/b.txt", b"y" * 100)
    data = bytearray((tmp_path / "up.zip").read_bytes())
    header = data.rindex(b"PK\x01\x02")
    data[header + 24:header + 28] = (10).to_bytes(4, "little")  # b.txt claims 10 bytes, holds 100
    (tmp_path / "up.zip").write_bytes(bytes(data))
    dest = tmp_path / "dest"
    with pytest.raises(InvalidDataset) as caught:
        extract_zip(tmp_path / "up.zip", dest, BIG)
    assert caught.value.message.startswith("up.zip: cannot extract ds/sub/b.txt (")
    assert dest.is_dir() and list(dest.iterdir()) == []


def corrupt_lzma(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_LZMA) as zf:
        zf.writestr("ds/sub/a.txt", b"hello" * 1000)
        zf.writestr("ds/sub/b.txt", b"world" * 1000)
    data = bytearray(path.read_bytes())
    start = data.index(b"ds/sub/b.txt") + len("ds/sub/b.txt") + 4  # LZMA properties of b.txt
    data[start:start + 5] = b"\xff" * 5
    path.write_bytes(bytes(data))
    return path


def test_any_failure_while_extracting_empties_the_destination(tmp_path):
    dest = tmp_path / "dest"
    with pytest.raises(InvalidDataset):
        extract_zip(corrupt_lzma(tmp_path / "up.zip"), dest, BIG)
    assert dest.is_dir() and list(dest.iterdir()) == []


def test_corrupt_lzma_member_is_an_invalid_dataset(tmp_path):
    with pytest.raises(InvalidDataset, match="up.zip: cannot extract ds/sub/b.txt"):
        extract_zip(corrupt_lzma(tmp_path / "up.zip"), tmp_path / "dest", BIG)
