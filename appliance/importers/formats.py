"""Turn an import source folder into a `ParsedDataset`.

Two stages, so every format gets the same checks: a format reader (folder, csvfile, coco,
yolo, voc) reads annotations and lists files without decoding anything; then each image is probed
once (hash + full decode + EXIF size) and its boxes are scaled, clipped and filtered against the
image's real, oriented size. Problems with one image, box or row become warnings; only a
source that is malformed as a whole, or leaves nothing to import, raises `InvalidDataset`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.store.errors import InvalidDataset, ValidationFailed
from appliance.importers import coco, csvfile, folder, voc, yolo
from appliance.importers.images import DEFAULT_MAX_IMAGE_PIXELS, ImageInfo, ImageTooLarge, UnreadableImage, probe_image
from appliance.importers.parsed import ImportWarning, ParsedBox, ParsedDataset, ParsedItem, is_utf8_text, utf8_text
from appliance.importers.sources import (
    RawBox,
    RawDataset,
    RawItem,
    count,
    is_archive,
    list_files,
    preview,
    rel,
)

FORMATS = ("folder", "csv", "coco", "yolo", "voc")
TASKS = ("classification", "detection")
_READERS = {"folder": folder, "csv": csvfile, "coco": coco, "yolo": yolo, "voc": voc}
_ANNOTATED = ("coco", "yolo", "voc", "csv")  # formats auto-detection looks for before class folders
_ACCEPTS = {
    "classification": "class folders (folder) or a CSV of filename,label",
    "detection": "COCO JSON, YOLO labels, Pascal VOC XML, or a CSV of filename,xmin,ymin,xmax,ymax,label",
}
_CLIP_TOLERANCE = 1.0  # pixels; exports round coordinates, so smaller overshoots are clipped silently
NESTED_ARCHIVE = "an archive inside the dataset; archives are not extracted, so nothing in it was imported"

Progress = Callable[[int, int], None]


def parse_source(
    root: Path, fmt: str, task: str, *, progress: Progress | None = None,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, max_annotation_bytes: int | None = None,
    yaml_file: str | None = None,
) -> ParsedDataset:
    """Parse the dataset under `root` as `fmt` ('auto' detects it) for a `task` project.

    `progress(done, total)` is called after each image is probed: that is where the time goes.
    Images over `max_pixels` are skipped with a warning, undecoded. `max_annotation_bytes`: the
    most annotation content read (each file, and all of them together), checked from the files'
    sizes before any is read. `yaml_file`: the root YAML with the YOLO class names, when there
    are several (YOLO only).
    """
    root = Path(root)
    raw = _read(root, fmt, task, max_annotation_bytes, yaml_file)
    dataset = _validate(root, raw, progress, max_pixels)
    dataset.classes = [name for name in dataset.classes if is_utf8_text(name) and not _unstorable("", [name])]
    dataset.detected = utf8_text(dataset.detected)
    if fmt == "auto":
        dataset.detected = f"Auto-detected {dataset.detected}"
    return dataset


@dataclass
class Candidate:
    """An image the source lists that passed every check short of reading it."""
    raw: RawItem
    relpath: str


@dataclass
class SourcePlan:
    """`parse_source` without the probing: what the import job reads, decodes and stores itself
    (in a process pool), then completes item by item with `finish_item`."""
    format: str
    task: str
    classes: list[str]
    candidates: list[Candidate]
    warnings: list[ImportWarning]  # the source's own, then one per rejected candidate, in order
    detected: str
    described: str = ""  # the reader's own sentence (what "no usable image" errors start with)


def plan_source(
    root: Path, fmt: str, task: str, *, max_annotation_bytes: int | None = None, yaml_file: str | None = None,
) -> SourcePlan:
    """`parse_source` up to the images: the format read, and every listed image checked except its
    content. `finish_item` then takes each candidate's probed `ImageInfo` (or its problem)."""
    root = Path(root)
    raw = _read(root, fmt, task, max_annotation_bytes, yaml_file)
    warnings = list(raw.warnings)
    seen: set[str] = set()
    real_root = root.resolve()
    candidates = []
    _resolved_dir.cache_clear()  # links may have changed since the last import
    for raw_item in raw.items:
        relpath = _precheck(raw_item, root, real_root, seen, warnings)
        if relpath is not None:
            candidates.append(Candidate(raw_item, relpath))
    classes = [name for name in raw.classes if is_utf8_text(name) and not _unstorable("", [name])]
    detected = utf8_text(raw.detected)
    if fmt == "auto":
        detected = f"Auto-detected {detected}"
    return SourcePlan(raw.format, raw.task, classes, candidates, warnings, detected, raw.detected)


def finish_item(candidate: Candidate, info: ImageInfo | None, problem: str | None,
                warnings: list[ImportWarning]) -> ParsedItem | None:
    """The candidate as `parse_source` would list it, from its probe's `info`, or None with a warning:
    the probe's `problem` (`problem_warning(...).reason`), or no valid box left."""
    if problem is not None:
        warnings.append(ImportWarning(candidate.relpath, problem))
        return None
    return _fit_item(candidate.raw, candidate.relpath, info, warnings)


def no_usable_image(detected: str, warnings: list[ImportWarning]) -> InvalidDataset:
    problems = "none found"
    if warnings:
        problems = f"{count(len(warnings), 'problem')}, first: {warnings[0].file}: {warnings[0].reason}"
    return InvalidDataset(f"{detected}: no usable image ({problems})")


def _read(root: Path, fmt: str, task: str, max_annotation_bytes: int | None, yaml_file: str | None) -> RawDataset:
    if fmt != "auto" and fmt not in FORMATS:
        raise ValidationFailed(f"format must be auto, {', '.join(FORMATS)} (got {fmt!r})")
    if task not in TASKS:
        raise ValidationFailed(f"task must be {' or '.join(TASKS)} (got {task!r})")
    if not root.is_dir():
        raise InvalidDataset(f"{root.name}: not a folder")
    chosen = detect_format(root)[0] if fmt == "auto" else fmt
    options = {"yaml_file": yaml_file} if chosen == "yolo" and yaml_file else {}
    if max_annotation_bytes is not None:
        check_annotation_size(root, chosen, max_annotation_bytes, **options)
    raw = _READERS[chosen].read(root, **options)
    raw.warnings += [ImportWarning(rel(p, root), NESTED_ARCHIVE) for p in _archives(root)]
    if raw.task != task:
        raise InvalidDataset(
            f"{raw.detected}: that is a {raw.task} dataset, but this is a {task} project, "
            f"which imports {_ACCEPTS[task]}"
        )
    return raw


def detect_format(root: Path) -> tuple[str, list[str]]:
    """The format of `root` and the files that show it. Annotation files (COCO, YOLO, VOC, CSV) win
    over plain class folders, since their image folders look like class folders too."""
    found = {fmt: evidence for fmt in _ANNOTATED if (evidence := _READERS[fmt].find(root))}
    if len(found) > 1:
        listed = "; ".join(f"{fmt}: {preview(evidence, 3)}" for fmt, evidence in found.items())
        raise InvalidDataset(f"{root.name}: ambiguous layout ({listed}); choose the format explicitly")
    if not found and (evidence := folder.find(root)):
        found = {"folder": evidence}
    if not found:
        looked_for = "; ".join(_READERS[fmt].LOOKED_FOR for fmt in (*_ANNOTATED, "folder"))
        archives = _archives(root)
        hint = ""
        if archives:
            names = preview([rel(p, root) for p in archives], 3)
            hint = f"; it holds archives ({names}), which are not extracted: unpack them first"
        raise InvalidDataset(f"{root.name}: no known dataset layout (looked for {looked_for}){hint}")
    return next(iter(found.items()))


def check_annotation_size(root: Path, fmt: str, limit: int, **options: str) -> None:
    """Refuse, naming the file, annotation files over `limit` bytes alone or together: they are
    read whole, and parsed they take many times their size in memory."""
    files = getattr(_READERS[fmt], "annotation_files", lambda _root, **_: [])(root, **options)
    total = 0
    for path in files:
        size = path.stat().st_size
        if size > limit:
            raise InvalidDataset(
                f"{rel(path, root)}: the annotation file holds {size} bytes, over the limit of {limit} bytes "
                "(AISTUDIO_MAX_ANNOTATION_BYTES)"
            )
        total += size
        if total > limit:
            raise InvalidDataset(
                f"{rel(path, root)}: with it the {fmt} annotation files hold {total} bytes together, over the "
                f"limit of {limit} bytes (AISTUDIO_MAX_ANNOTATION_BYTES)"
            )


def _archives(root: Path) -> list[Path]:
    return [p for p in list_files(root) if is_archive(p.name)]


def _validate(root: Path, raw: RawDataset, progress: Progress | None,
              max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> ParsedDataset:
    warnings = list(raw.warnings)
    items: list[ParsedItem] = []
    seen: set[str] = set()
    real_root = root.resolve()
    _resolved_dir.cache_clear()
    for done, raw_item in enumerate(raw.items, 1):
        item = _validate_item(raw_item, root, real_root, seen, warnings, max_pixels)
        if item is not None:
            items.append(item)
        if progress:
            progress(done, len(raw.items))
    if not items:
        raise no_usable_image(raw.detected, warnings)
    return ParsedDataset(raw.format, raw.task, raw.classes, items, warnings, raw.detected)


# What the store's columns hold (images.original_name, images.label / boxes.label), on every backend:
# SQLite would take more, PostgreSQL refuses it (issue #15 item 3).
MAX_PATH_CHARS = 1024
MAX_LABEL_CHARS = 200


def _unstorable(relpath: str, labels: list[str]) -> str | None:
    if len(relpath) > MAX_PATH_CHARS:
        return f"its path is longer than {MAX_PATH_CHARS} characters"
    if any("\x00" in label for label in labels):
        return "a label contains a NUL character (\\u0000)"
    if any(len(label) > MAX_LABEL_CHARS for label in labels):
        return f"a label is longer than {MAX_LABEL_CHARS} characters"
    return None


def _validate_item(
    raw: RawItem, root: Path, real_root: Path, seen: set[str], warnings: list[ImportWarning],
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> ParsedItem | None:
    relpath = _precheck(raw, root, real_root, seen, warnings)
    if relpath is None:
        return None
    try:
        info = probe_image(raw.source, max_pixels)
    except (UnreadableImage, OSError) as exc:
        warnings.append(problem_warning(relpath, exc))
        return None
    return _fit_item(raw, relpath, info, warnings)


def _precheck(raw: RawItem, root: Path, real_root: Path, seen: set[str], warnings: list[ImportWarning]) -> str | None:
    """The item's relative path if it passes every check short of reading the file, else None (warned)."""
    relpath = rel(raw.source, root)
    if relpath in seen:
        warnings.append(ImportWarning(relpath, "listed more than once; kept the first"))
        return None
    seen.add(relpath)
    if not all(map(is_utf8_text, (relpath, raw.label or "", *(b.label for b in raw.boxes)))):
        # A file name that is not UTF-8, or a label with a lone `\ud800` escape: neither can be stored.
        warnings.append(ImportWarning(relpath, "its name or a label is not valid UTF-8 text; skipped"))
        return None
    if problem := _unstorable(relpath, [raw.label or "", *(b.label for b in raw.boxes)]):
        warnings.append(ImportWarning(relpath, f"{problem}; skipped"))
        return None
    if not _resolved(raw.source).is_relative_to(real_root):
        warnings.append(ImportWarning(relpath, "a link to outside the dataset folder; skipped"))
        return None
    return relpath


@functools.lru_cache(maxsize=4096)
def _resolved_dir(folder: Path) -> Path:
    return folder.resolve()


def _resolved(path: Path) -> Path:
    """`path.resolve()`, resolving each folder once per import instead of once per file in it: a
    file that is not itself a link resolves to its resolved folder plus its name."""
    try:
        if not path.is_symlink():
            return _resolved_dir(path.parent) / path.name
    except OSError:
        pass
    return path.resolve()


def problem_warning(relpath: str, exc: Exception) -> ImportWarning:
    if isinstance(exc, ImageTooLarge):
        return ImportWarning(relpath, f"{exc.reason}; skipped")
    if isinstance(exc, UnreadableImage):
        return ImportWarning(relpath, f"unreadable image ({exc.reason}); skipped")
    return ImportWarning(relpath, f"cannot read the file ({getattr(exc, 'strerror', None) or exc}); skipped")


def _fit_item(raw: RawItem, relpath: str, info: ImageInfo, warnings: list[ImportWarning]) -> ParsedItem | None:
    scale = (info.width, info.height) if raw.normalized else (1, 1)
    fitted = (_fit_box(b, scale, info.width, info.height, relpath, warnings) for b in raw.boxes)
    boxes = [box for box in fitted if box is not None]
    if (raw.boxes or raw.dropped) and not boxes:
        # Keeping it as a background image would teach the model that its objects are background.
        warnings.append(ImportWarning(relpath, "no valid box left; image skipped"))
        return None
    return ParsedItem(raw.source, relpath, raw.label, boxes, raw.subset_hint, info)


def _fit_box(
    b: RawBox, scale: tuple[int, int], width: int, height: int, relpath: str, warnings: list[ImportWarning]
) -> ParsedBox | None:
    """Box in pixels clipped to the image, or None (with a warning) when nothing of it remains."""
    x1, y1, x2, y2 = b.x1 * scale[0], b.y1 * scale[1], b.x2 * scale[0], b.y2 * scale[1]
    if x2 <= x1 or y2 <= y1:
        reason = "zero-area box"
    elif x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        reason = "box outside the image"
    else:
        clipped = ParsedBox(max(x1, 0), max(y1, 0), min(x2, width), min(y2, height), b.label, b.difficult)
        overshoot = max(clipped.x1 - x1, clipped.y1 - y1, x2 - clipped.x2, y2 - clipped.y2)
        if overshoot > _CLIP_TOLERANCE:
            warnings.append(ImportWarning(relpath, f"box clipped to the image ({b.where})"))
        return clipped
    warnings.append(ImportWarning(relpath, f"{reason} ({b.where}); box skipped"))
    return None
