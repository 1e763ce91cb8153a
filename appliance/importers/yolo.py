"""YOLO labels (detection): one `*.txt` per image, a line `class cx cy w h` per box, in
fractions of the image's width and height.

A label file's path is the image's with its last `images` folder replaced by `labels` and the
extension by `.txt` (ultralytics' rule), or beside the image when there is no `images` folder
(CVAT "YOLO 1.1"). That covers `images/` + `labels/`, ultralytics' `images/train` +
`labels/train`, and Roboflow's `train/images` + `train/labels`; a `train` / `val` / `valid` /
`test` folder on the way sets the subset hint.

Class names come from `data.yaml` (`names` as a list or an `{id: name}` mapping; also
`data.yml`, `dataset.yaml`) or else `classes.txt` / `obj.names` (one name per line), at the
root; without them the import is refused rather than inventing names.

An image without a label file is skipped with a warning; an empty label file is a background
image (kept, no boxes). Segment lines (`class x1 y1 x2 y2 x3 y3 ...`) become the polygon's
bounding box. A line that is not numbers rejects the file with its line number; an unknown
class id only skips that box.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from appliance.store.errors import InvalidDataset
from appliance.importers.parsed import ImportWarning
from appliance.importers.sources import (
    RawBox,
    RawDataset,
    RawItem,
    count,
    list_images,
    number,
    preview,
    rel,
    subdirs,
    subset_of,
)

_YAML_FILES = ("data.yaml", "data.yml", "dataset.yaml")
_TEXT_FILES = ("classes.txt", "obj.names")
LOOKED_FOR = "YOLO labels/ folders, data.yaml or obj.names"


def find(root: Path) -> list[str]:
    """Evidence for auto-detection: a names file (other than the generic classes.txt) or a
    `labels/` folder at the root or one level down."""
    evidence = [name for name in (*_YAML_FILES, "obj.names") if (root / name).is_file()]
    label_dirs = [root / "labels", *(d / "labels" for d in subdirs(root))]
    return evidence + [f"{rel(d, root)}/" for d in label_dirs if d.is_dir()]


def read(root: Path) -> RawDataset:
    names, names_file = _class_names(root)
    items: list[RawItem] = []
    warnings: list[ImportWarning] = []
    folders: dict[str, None] = {}
    for image in list_images(root):
        label_file = _label_path(image, root)
        if not label_file.is_file():
            reason = f"missing label file {rel(label_file, root)}; skipped"
            warnings.append(ImportWarning(rel(image, root), reason))
            continue
        item = _read_labels(image, label_file, rel(label_file, root), names, warnings)
        item.subset_hint = next(filter(None, map(subset_of, image.relative_to(root).parts[:-1])), None)
        items.append(item)
        folders[rel(image.parent, root) + "/"] = None
    classes = list(dict.fromkeys(names[i] for i in sorted(names)))
    where = " + ".join(folders) if len(folders) <= 4 else preview(list(folders), 4)
    n_classes = count(len(classes), "class", "classes")
    detected = f"YOLO layout: {names_file} with {n_classes}, {where or 'no labelled image'}"
    return RawDataset("yolo", "detection", classes, items, warnings, detected)


def _label_path(image: Path, root: Path) -> Path:
    parts = list(image.relative_to(root).parts)
    folders = parts[:-1]
    if "images" in folders:
        parts[len(folders) - 1 - folders[::-1].index("images")] = "labels"
    return root.joinpath(*parts).with_suffix(".txt")


def _class_names(root: Path) -> tuple[dict[int, str], str]:
    for name in _YAML_FILES:
        if (root / name).is_file():
            return _yaml_names(root / name, name), name
    for name in _TEXT_FILES:
        if (root / name).is_file():
            return _text_names(root / name, name), name
    raise InvalidDataset(
        f"{root.name}: no YOLO class names (looked for {', '.join(_YAML_FILES + _TEXT_FILES)} at the root)"
    )


def _yaml_names(path: Path, name: str) -> dict[int, str]:
    try:
        doc = yaml.safe_load(_text(path, name))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise InvalidDataset(f"{name}{where}: invalid YAML ({getattr(exc, 'problem', None) or exc})") from exc
    except (ValueError, RecursionError) as exc:  # an integer of more than 4300 digits; nesting too deep
        raise InvalidDataset(f"{name}: invalid YAML ({type(exc).__name__})") from exc
    names = doc.get("names") if isinstance(doc, dict) else None
    if isinstance(names, list):
        pairs = enumerate(names)
    elif isinstance(names, dict):
        pairs = names.items()
    else:
        raise InvalidDataset(f"{name}: 'names' must be a list of class names or an {{id: name}} mapping")
    result = {}
    for key, value in pairs:
        # Scalars only: str() of a nested (alias-expanded) structure could be enormous.
        # ASCII digits only: '²'.isdigit() is true, but int('²') fails.
        if not _is_id(key) or not isinstance(value, (str, int, float)) or not str(value).strip():
            raise InvalidDataset(f"{name}: names entry {key!r:.40}: {str(value)[:40]!r} is not an id and a name")
        result[int(key)] = str(value).strip()
    if not result:
        raise InvalidDataset(f"{name}: 'names' is empty")
    return result


def _is_id(key: object) -> bool:
    """A class id: a non-negative integer, or its ASCII digits (at most 9)."""
    if isinstance(key, bool):
        return False
    text = str(key) if isinstance(key, (int, str)) else ""
    return 0 < len(text) <= 9 and text.isascii() and text.isdigit()


def _text_names(path: Path, name: str) -> dict[int, str]:
    lines = _text(path, name).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise InvalidDataset(f"{name}: no class names")
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            raise InvalidDataset(f"{name} line {line_no}: empty class name (it would shift the ids after it)")
    return {i: line.strip() for i, line in enumerate(lines)}


def _read_labels(
    image: Path, path: Path, name: str, names: dict[int, str], warnings: list[ImportWarning]
) -> RawItem:
    item = RawItem(image, normalized=True)
    for line_no, line in enumerate(_text(path, name).splitlines(), 1):
        values = line.split()
        if not values:
            continue
        try:
            class_id, coords = _class_id(values[0]), [number(v) for v in values[1:]]
        except ValueError:
            got = line.strip()[:80]
            raise InvalidDataset(f"{name} line {line_no}: expected 'class cx cy w h' numbers, got {got!r}") from None
        if len(coords) == 4:
            cx, cy, w, h = coords
            corners = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        elif len(coords) >= 6 and len(coords) % 2 == 0:
            xs, ys = coords[0::2], coords[1::2]
            corners = (min(xs), min(ys), max(xs), max(ys))
        else:
            raise InvalidDataset(
                f"{name} line {line_no}: {len(values)} values; expected 5 (class cx cy w h) "
                "or a polygon (class x1 y1 x2 y2 x3 y3 ...)"
            )
        if class_id not in names:
            warnings.append(ImportWarning(name, f"line {line_no}: unknown class id {class_id}; box skipped"))
            item.dropped += 1
            continue
        item.boxes.append(RawBox(*corners, label=names[class_id], where=f"{name} line {line_no}"))
    return item


def _class_id(text: str) -> int:
    """'3' or '3.0' (some exporters write floats)."""
    value = number(text)
    if value < 0 or not value.is_integer():
        raise ValueError(text)
    return int(value)


def _text(path: Path, name: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidDataset(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def annotation_files(root: Path) -> list[Path]:
    """The names file and the label files `read` loads (held to the annotation size limit together)."""
    names = [root / n for n in (*_YAML_FILES, *_TEXT_FILES) if (root / n).is_file()][:1]
    return names + [p for p in (_label_path(image, root) for image in list_images(root)) if p.is_file()]
