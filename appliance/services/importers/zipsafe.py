"""Safe extraction of uploaded ZIP archives.

Everything that can be judged from the central directory (paths, links, sizes, compression
ratios) is checked before the first byte is written, so a rejected archive leaves nothing
behind. Extraction then streams each member with bounded memory and still counts the bytes
actually produced, because the sizes in the directory are only claims.
"""

from __future__ import annotations

import re
import shutil
import stat
import zipfile
import zlib
from pathlib import Path

from appliance.core.errors import InvalidDataset, PayloadTooLarge

IGNORED_DIRS = frozenset({"__MACOSX"})  # Finder's resource forks
IGNORED_FILES = frozenset({".DS_Store", "Thumbs.db"})
_SUPPORTED = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
# Small files (label .txt, JSON) legitimately compress far better than images; only members
# this large are held to max_ratio. The total-size limit bounds everything else.
_RATIO_FLOOR = 1 << 20
_CHUNK = 1 << 20


def check_zip(
    zip_path: Path, max_total_bytes: int, max_ratio: float = 200, max_entries: int = 200_000
) -> list[zipfile.ZipInfo]:
    """Validate the archive's directory and return the members worth extracting."""
    with _open_zip(zip_path) as zf:
        return _check(zf, Path(zip_path).name, max_total_bytes, max_ratio, max_entries)


def extract_zip(
    zip_path: Path,
    dest: Path,
    max_total_bytes: int,
    max_ratio: float = 200,
    max_entries: int = 200_000,
) -> Path:
    """Extract into the empty or missing folder `dest`; return the dataset root.

    The root is the archive's single top-level folder when it has one (the usual "zip the
    folder" case), else `dest`. On failure `dest` is left empty.
    """
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ValueError(f"{dest} must be empty")
    name = Path(zip_path).name
    with _open_zip(zip_path) as zf:
        members = _check(zf, name, max_total_bytes, max_ratio, max_entries)
        dest.mkdir(parents=True, exist_ok=True)
        try:
            for info in members:
                _extract_member(zf, info, dest, name)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:  # e.g. a bad CRC
            _empty(dest)
            raise InvalidDataset(f"{name}: cannot extract {info.filename} ({exc})") from exc
        except BaseException:
            _empty(dest)
            raise
    return _dataset_root(dest, members)


def _open_zip(zip_path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise InvalidDataset(f"{Path(zip_path).name}: not a ZIP archive or corrupt ({exc})") from exc


def _check(
    zf: zipfile.ZipFile, name: str, max_total_bytes: int, max_ratio: float, max_entries: int
) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    if len(infos) > max_entries:
        raise InvalidDataset(f"{name}: {len(infos)} entries, more than the {max_entries} allowed")
    members, total, packed = [], 0, 0
    for info in infos:
        parts = _member_parts(info, name)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InvalidDataset(f"{name}: entry {info.filename} is a symbolic link")
        if info.flag_bits & 0x1:
            raise InvalidDataset(f"{name}: entry {info.filename} is encrypted")
        if info.compress_type not in _SUPPORTED:
            raise InvalidDataset(
                f"{name}: entry {info.filename} uses an unsupported compression method "
                f"({info.compress_type}); re-create the archive with standard Deflate"
            )
        if info.file_size >= _RATIO_FLOOR and info.file_size > max_ratio * max(info.compress_size, 1):
            raise InvalidDataset(
                f"{name}: entry {info.filename} expands {info.file_size // max(info.compress_size, 1)}x "
                f"({info.file_size} bytes); refusing a likely ZIP bomb"
            )
        total += info.file_size
        packed += info.compress_size
        if parts and not _ignored(parts):
            members.append(info)
    if total > max_total_bytes:
        raise PayloadTooLarge(
            f"{name}: uncompressed content is {total} bytes, over the {max_total_bytes}-byte limit"
        )
    if total >= _RATIO_FLOOR and total > max_ratio * max(packed, 1):
        ratio = total // max(packed, 1)
        raise InvalidDataset(f"{name}: content expands {ratio}x; refusing a likely ZIP bomb")
    return members


def _member_parts(info: zipfile.ZipInfo, name: str) -> tuple[str, ...]:
    """The member's path components; rejects absolute paths and '..' (zip slip)."""
    path = info.filename.replace("\\", "/")  # some Windows tools write backslashes
    if path.startswith("/") or re.match(r"[A-Za-z]:", path):
        raise InvalidDataset(f"{name}: entry {info.filename} has an absolute path")
    parts = tuple(p for p in path.split("/") if p not in ("", "."))
    if ".." in parts:
        raise InvalidDataset(f"{name}: entry {info.filename} points outside the archive ('..')")
    return parts


def _ignored(parts: tuple[str, ...]) -> bool:
    return parts[0] in IGNORED_DIRS or parts[-1] in IGNORED_FILES


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, name: str) -> None:
    target = dest.joinpath(*_member_parts(info, name))
    if info.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with zf.open(info) as src, open(target, "wb") as out:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > info.file_size:
                raise InvalidDataset(f"{name}: entry {info.filename} is larger than its header declares")
            out.write(chunk)


def _dataset_root(dest: Path, members: list[zipfile.ZipInfo]) -> Path:
    tops = {_member_parts(info, dest.name)[0] for info in members}
    if len(tops) == 1:
        top = dest / tops.pop()
        if top.is_dir():
            return top
    return dest


def _empty(folder: Path) -> None:
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
