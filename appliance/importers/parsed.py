"""What an import source parses into, before anything touches the database.

Boxes are in pixels of the *oriented* image (EXIF rotation applied), which is what annotation
tools display and what `store_image` writes to disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from appliance.importers.images import ImageInfo


@dataclass
class ParsedBox:
    x1: float
    y1: float
    x2: float
    y2: float
    label: str
    difficult: bool = False  # Pascal VOC's `difficult` flag (stored as `boxes.difficult`)


@dataclass
class ParsedItem:
    source: Path  # the file to copy (inside the source root)
    relpath: str  # posix path of `source` relative to the source root
    label: str | None  # classification label; None for detection
    boxes: list[ParsedBox]  # detection boxes; [] for classification and background images
    subset_hint: str | None  # "train" / "val" / "test" when the source layout said so
    info: ImageInfo  # probed once while parsing; pass to store_image to skip a second decode


def utf8_text(text: str) -> str:
    """`text` made storable and sendable as UTF-8: a lone surrogate (a JSON `\\ud800` escape, or a
    file name that is not UTF-8) becomes its escape sequence instead of failing the database or
    the JSON response later."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def is_utf8_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass
class ImportWarning:  # noqa: A001 - the name the API uses; shadows the builtin only here
    file: str  # posix path relative to the source root (image or annotation file)
    reason: str

    def __post_init__(self) -> None:
        self.file, self.reason = utf8_text(self.file), utf8_text(self.reason)


@dataclass
class ParsedDataset:
    format: str  # folder | csv | coco | yolo | voc (what was actually parsed)
    task: str  # classification | detection
    classes: list[str]
    items: list[ParsedItem]
    warnings: list[ImportWarning] = field(default_factory=list)
    detected: str = ""  # one human sentence describing the layout that was read
