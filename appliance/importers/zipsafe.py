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

from appliance.store.errors import InsufficientStorage, InvalidDataset, PayloadTooLarge

try:  # an LZMA member's broken stream; Pythons built without lzma cannot open such members at all
    from lzma import LZMAError
except ImportError:  # pragma: no cover
    LZMAError = OSError
from appliance.importers.sources import is_archive

IGNORED_DIRS = frozenset({"__MACOSX"})  # Finder's resource forks
IGNORED_FILES = frozenset({".DS_Store", "Thumbs.db"})
_ENCRYPTED = 0x1 | 0x40  # general purpose flag bits: traditional and strong encryption
_PATCHED = 0x20  # "compressed patched data": PKWARE's delta format, which nothing here can read
# Small files (label .txt, JSON) legitimately compress far better than images; only members
# this large are held to max_ratio on their own. Smaller ones are judged together, twice: all
# members, and the members that compress at all (more than _INCOMPRESSIBLE times), so one big
# incompressible member (a JPEG, random bytes) cannot dilute a pile of small bombs. The
# total-size limit and the free-disk check bound everything else.
_RATIO_FLOOR = 1 << 20
_INCOMPRESSIBLE = 2
_CHUNK = 1 << 20


def _supported_methods() -> frozenset[int]:
    """Stored and Deflate always; bzip2 and LZMA only when this Python was built with them."""
    methods = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
    for method, module in ((zipfile.ZIP_BZIP2, "bz2"), (zipfile.ZIP_LZMA, "lzma")):
        try:
            __import__(module)
        except ImportError:
            continue
        methods.add(method)
    return frozenset(methods)


_SUPPORTED = _supported_methods()


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
    free_margin: int | None = None,
) -> Path:
    """Extract into the empty or missing folder `dest`; return the dataset root.

    The root is the archive's single top-level folder when it has one (the usual "zip the
    folder" case), else `dest`. On failure `dest` is left empty. With `free_margin`, the disk
    holding `dest` must have the uncompressed size plus that margin free before anything is written.
    """
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ValueError(f"{dest} must be empty")
    name = Path(zip_path).name
    with _open_zip(zip_path) as zf:
        members = _check(zf, name, max_total_bytes, max_ratio, max_entries)
        if free_margin is not None:
            check_free_space(dest, sum(info.file_size for info in members), free_margin, f"{name}: extracting it")
        dest.mkdir(parents=True, exist_ok=True)
        try:
            for info in members:
                _extract_member(zf, info, dest, name)
        # e.g. a bad CRC, a local header that disagrees with the directory, an unreadable stream
        except (zipfile.BadZipFile, zlib.error, LZMAError, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
            _empty(dest)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc  # no staging path
            raise InvalidDataset(f"{name}: cannot extract {info.filename} ({reason})") from exc
        except BaseException:
            _empty(dest)
            raise
    return _dataset_root(dest, members)


def check_free_space(folder: Path, needed: int, margin: int, what: str) -> None:
    """Refuse when the disk holding `folder` (or its nearest existing parent) has less than
    `needed + margin` bytes free. `what` starts the message ("big.zip: extracting it")."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed + margin > free:
        raise InsufficientStorage(
            f"{what} needs {needed} bytes plus a margin of {margin} bytes (AISTUDIO_DISK_FREE_MARGIN_BYTES), "
            f"but the workspace disk has only {free} bytes free"
        )


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
    squeezed, squeezed_packed = 0, 0  # members that compress more than _INCOMPRESSIBLE times
    seen: dict[tuple[str, ...], zipfile.ZipInfo] = {}  # where each member lands, to find clashes
    folders: dict[tuple[str, ...], zipfile.ZipInfo] = {}
    for info in infos:
        parts = _member_parts(info, name)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InvalidDataset(f"{name}: entry {info.filename} is a symbolic link")
        if info.flag_bits & _ENCRYPTED:
            raise InvalidDataset(
                f"{name}: entry {info.filename} is encrypted; re-create the archive without a password"
            )
        if info.flag_bits & _PATCHED:
            raise InvalidDataset(f"{name}: entry {info.filename} holds patch data, which cannot be extracted")
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
        if info.file_size > _INCOMPRESSIBLE * info.compress_size:
            squeezed += info.file_size
            squeezed_packed += info.compress_size
        if parts and not _ignored(parts):
            _check_clash(info, parts, seen, folders, name)
            members.append(info)
    if total > max_total_bytes:
        raise PayloadTooLarge(
            f"{name}: uncompressed content is {total} bytes, over the {max_total_bytes}-byte limit"
        )
    if total >= _RATIO_FLOOR and total > max_ratio * max(packed, 1):
        ratio = total // max(packed, 1)
        raise InvalidDataset(f"{name}: content expands {ratio}x; refusing a likely ZIP bomb")
    if squeezed >= _RATIO_FLOOR and squeezed > max_ratio * max(squeezed_packed, 1):
        ratio = squeezed // max(squeezed_packed, 1)
        raise InvalidDataset(
            f"{name}: its compressed members expand {ratio}x together ({squeezed} bytes from {squeezed_packed}); "
            "refusing a likely ZIP bomb"
        )
    files = [info for info in members if not info.is_dir()]
    if files and all(is_archive(info.filename) for info in files):
        listed = ", ".join(info.filename for info in files[:3]) + (", …" if len(files) > 3 else "")
        raise InvalidDataset(
            f"{name}: holds only archives ({listed}); archives inside the upload are not extracted, "
            "so upload one ZIP of the dataset folder"
        )
    return members


def _check_clash(info: zipfile.ZipInfo, parts: tuple[str, ...], seen: dict, folders: dict, name: str) -> None:
    """Refuse two members that land on the same path (a duplicate name, also once `\\`, `//` and
    `./` are normalised) and a file where another member needs a folder: tools disagree on which
    member such an archive means, so it is refused rather than guessed.

    `seen`: path -> the first member there; `folders`: path -> a member that needs it as a folder.
    """
    earlier = seen.get(parts)
    if earlier is not None and not (earlier.is_dir() and info.is_dir()):
        if earlier.is_dir() == info.is_dir():
            also = "" if earlier.filename == info.filename else f" (also as {earlier.filename})"
            raise InvalidDataset(f"{name}: entry {info.filename} appears twice{also}; re-create the archive")
        raise _file_and_folder(name, info, earlier)
    if not info.is_dir() and parts in folders:
        raise _file_and_folder(name, info, folders[parts])
    for depth in range(1, len(parts)):
        above = seen.get(parts[:depth])
        if above is not None and not above.is_dir():
            raise _file_and_folder(name, info, above)
        folders.setdefault(parts[:depth], info)
    seen.setdefault(parts, info)


def _file_and_folder(name: str, info: zipfile.ZipInfo, other: zipfile.ZipInfo) -> InvalidDataset:
    return InvalidDataset(
        f"{name}: entries {other.filename} and {info.filename} need the same path as a file and as a folder; "
        "re-create the archive"
    )


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
