"""What the format readers share: the raw result they hand to `formats.parse_source`, and
helpers for walking a source folder and resolving the file names annotations mention.

Readers only read annotations and list files; they never decode an image. Probing images,
converting and clipping boxes happen once, for every format, in `formats.py`.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from appliance.importers.images import IMAGE_EXTENSIONS
from appliance.importers.parsed import ImportWarning

_SUBSETS = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}  # fmt: skip


# Archive formats a dataset folder (or an upload) may hold; they are never unpacked.
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".7z", ".rar")


@dataclass
class RawBox:
    x1: float
    y1: float
    x2: float
    y2: float
    label: str
    where: str  # "labels/a.txt line 3": names the annotation in warnings
    difficult: bool = False  # Pascal VOC's `difficult` flag


@dataclass
class RawItem:
    source: Path
    label: str | None = None
    boxes: list[RawBox] = field(default_factory=list)
    subset_hint: str | None = None
    normalized: bool = False  # box coordinates are fractions of width / height (YOLO)
    dropped: int = 0  # annotations of this image rejected while reading (unknown class, ...)


@dataclass
class RawDataset:
    format: str
    task: str
    classes: list[str]
    items: list[RawItem]
    warnings: list[ImportWarning]
    detected: str


def subset_of(name: str) -> str | None:
    """'train2017', 'valid', 'Test' -> 'train', 'val', 'test'; any other name -> None."""
    return _SUBSETS.get(name.lower().rstrip("0123456789-_"))


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def is_ignored(name: str) -> bool:
    """Hidden entries (.DS_Store, ._AppleDouble, .git) and Finder's __MACOSX."""
    return name.startswith(".") or name == "__MACOSX"


def list_files(top: Path) -> list[Path]:
    """Every file under `top`, in a stable order, skipping ignored entries."""
    found = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if not is_ignored(d))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if not is_ignored(f))
    return found


def list_images(top: Path) -> list[Path]:
    return [p for p in list_files(top) if is_image(p)]


def subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_ignored(p.name))


def rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def find_file(name: str, bases: list[Path]) -> Path | None:
    """The file an annotation calls `name`, looked up under each base folder in turn.

    Tries the path as written (backslashes accepted), then its bare file name, so exports whose
    paths point at the annotator's own disk still resolve. Absolute and '..' paths are only
    tried by bare name, so an annotation can never reach outside the source.
    """
    path = name.strip().replace("\\", "/")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts:
        return None
    tries = []
    if not path.startswith("/") and not re.match(r"[A-Za-z]:", path) and ".." not in parts:
        tries += [base.joinpath(*parts) for base in bases]
    tries += [base / parts[-1] for base in bases]
    return next((p for p in tries if _is_file(p)), None)


def _is_file(path: Path) -> bool:
    """is_file() that says no to a name the file system refuses (ENAMETOOLONG), as it does to NUL."""
    try:
        return path.is_file()
    except OSError:
        return False


def count(n: int, singular: str, plural: str | None = None) -> str:
    """'1 image', '3 images': messages are read by people."""
    return f"{n} {singular if n == 1 else plural or singular + 's'}"


def preview(names: list[str], limit: int = 5) -> str:
    """'a, b, c, … 4 more': keeps `detected` sentences short."""
    shown = ", ".join(names[:limit])
    return shown + (f", … {len(names) - limit} more" if len(names) > limit else "")


def number(text: str) -> float:
    """float() that rejects nan / inf, which would poison training silently."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value
