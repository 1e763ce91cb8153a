"""CSV annotations: `filename,label` (classification) or `filename,xmin,ymin,xmax,ymax,label`
(detection, one row per box, pixels).

The CSV sits at the source root, or one per subset folder (`train/_annotations.csv` as
Roboflow's "TensorFlow CSV" export writes; several root CSVs must be named train/val/test).
The header is optional; with one, columns are found by name, so extra columns such as
width/height are ignored. File names are relative to the CSV's folder or its `images/`.
A detection row with empty coordinates and label lists a background image (no boxes).
Structural problems (column count, a coordinate that is not a number) reject the file with
its line number; a missing image or an empty label is a per-row warning.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from appliance.store.errors import InvalidDataset
from appliance.importers.parsed import ImportWarning
from appliance.importers.sources import (
    RawBox,
    RawDataset,
    RawItem,
    count,
    find_file,
    is_ignored,
    number,
    preview,
    rel,
    subdirs,
    subset_of,
)

_FILENAME = ("filename", "file_name", "file", "image", "image_name", "image_path", "image_id", "path")
_LABEL = ("label", "class", "class_name", "category", "name")
_BOX = {
    "xmin": ("xmin", "x_min", "x1"),
    "ymin": ("ymin", "y_min", "y1"),
    "xmax": ("xmax", "x_max", "x2"),
    "ymax": ("ymax", "y_max", "y2"),
}
_CLASSIFICATION = "filename,label"
_DETECTION = "filename,xmin,ymin,xmax,ymax,label"
_POSITIONAL = {
    2: {"filename": 0, "label": 1},
    6: {"filename": 0, "xmin": 1, "ymin": 2, "xmax": 3, "ymax": 4, "label": 5},
}


@dataclass
class _Table:
    name: str
    task: str
    rows: int
    items: list[RawItem]
    warnings: list[ImportWarning]


LOOKED_FOR = "a *.csv file at the root or in train/ val/ test/"


def find(root: Path) -> list[str]:
    return [rel(p, root) for p in _csv_files(root)]


def read(root: Path) -> RawDataset:
    files = _csv_files(root)
    if not files:
        raise InvalidDataset(f"{root.name}: no CSV file (looked for {LOOKED_FOR})")
    at_root = [p for p in files if p.parent == root]
    if len(at_root) > 1 and not all(subset_of(p.stem) for p in at_root):
        raise InvalidDataset(
            f"several CSV files at the root ({', '.join(p.name for p in at_root)}): keep one, "
            "or name them train.csv, val.csv, test.csv"
        )
    tables = [_read_table(p, root) for p in files]
    tasks = {t.task for t in tables}
    if len(tasks) > 1:
        names = ", ".join(t.name for t in tables)
        raise InvalidDataset(f"{names}: mix {_CLASSIFICATION} and {_DETECTION} files")
    task = tasks.pop()
    items = [item for t in tables for item in t.items]
    warnings = [w for t in tables for w in t.warnings]
    labels = {item.label for item in items} | {box.label for item in items for box in item.boxes}
    classes = sorted(labels - {None})
    spec = _DETECTION if task == "detection" else _CLASSIFICATION
    rows = count(sum(t.rows for t in tables), "row")
    detected = (
        f"CSV: {', '.join(t.name for t in tables)} with {rows} of {spec} "
        f"({task}, {count(len(classes), 'class', 'classes')}: {preview(classes)})"
    )
    return RawDataset("csv", task, classes, items, warnings, detected)


def _csv_files(root: Path) -> list[Path]:
    folders = [root] + [d for d in subdirs(root) if subset_of(d.name)]
    return [
        p
        for folder in folders
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() == ".csv" and not is_ignored(p.name)
    ]


def _read_table(path: Path, root: Path) -> _Table:
    name = rel(path, root)
    rows = _rows(path, name)
    if not rows:
        raise InvalidDataset(f"{name}: the CSV file is empty")
    first_line, first = rows[0]
    width = len(first)
    columns = _header_columns(first, name, first_line)
    if columns:
        rows = rows[1:]
        layout = f"as in the header on line {first_line}"
    else:
        columns = _POSITIONAL.get(width)
        if columns is None:
            raise InvalidDataset(
                f"{name} line {first_line}: expected 2 columns ({_CLASSIFICATION}) "
                f"or 6 ({_DETECTION}), got {width}"
            )
        layout = _DETECTION if width == 6 else _CLASSIFICATION
    task = "detection" if "xmin" in columns else "classification"
    hint = subset_of(path.stem) or (subset_of(path.parent.name) if path.parent != root else None)
    bases = [path.parent, path.parent / "images"]
    by_file: dict[str, RawItem | None] = {}  # None: the image is missing (warned once)
    warnings: list[ImportWarning] = []
    for line, cells in rows:
        if len(cells) != width:
            raise InvalidDataset(f"{name} line {line}: expected {width} columns ({layout}), got {len(cells)}")
        filename, label = cells[columns["filename"]].strip(), cells[columns["label"]].strip()
        box = _box(cells, columns, name, line) if task == "detection" else None
        if not filename or (task == "classification" and not label):
            missing = "label" if filename else "file name"
            warnings.append(ImportWarning(name, f"line {line}: no {missing}; skipped"))
            continue
        if filename not in by_file:
            source = find_file(filename, bases)
            if source is None:
                warnings.append(ImportWarning(name, f"line {line}: missing image file {filename}"))
            by_file[filename] = RawItem(source, subset_hint=hint) if source else None
        item = by_file[filename]
        if item is None:
            continue
        if task == "detection":
            if box and label:
                item.boxes.append(RawBox(*box, label=label, where=f"{name} line {line}"))
            elif box:
                warnings.append(ImportWarning(name, f"line {line}: box without a label; skipped"))
                item.dropped += 1
            # no box: a background image, nothing to add
        elif item.label is None:
            item.label = label
        elif item.label != label:
            reason = f"line {line}: {filename} is already labelled {item.label!r}; kept that"
            warnings.append(ImportWarning(name, reason))
    items = [item for item in by_file.values() if item is not None]
    return _Table(name, task, len(rows), items, warnings)


def _header_columns(cells: list[str], name: str, line: int) -> dict[str, int] | None:
    """Column positions when `cells` is a header row (it names a file and a label column)."""
    header = [c.strip().lower() for c in cells]
    filename, label = _index(header, _FILENAME), _index(header, _LABEL)
    if filename is None or label is None:
        return None
    box = {key: _index(header, aliases) for key, aliases in _BOX.items()}
    found = [key for key, index in box.items() if index is not None]
    if 0 < len(found) < len(_BOX):
        raise InvalidDataset(
            f"{name} line {line}: the header has {', '.join(found)} but needs all of xmin, ymin, xmax, ymax"
        )
    return {"filename": filename, "label": label, **(box if found else {})}


def _index(header: list[str], aliases: tuple[str, ...]) -> int | None:
    return next((i for i, column in enumerate(header) if column in aliases), None)


def _box(cells: list[str], columns: dict[str, int], name: str, line: int) -> tuple[float, ...] | None:
    """xmin, ymin, xmax, ymax of a detection row; None when all four are empty (background)."""
    values = [cells[columns[key]].strip() for key in _BOX]
    if not any(values):
        return None
    coords = []
    for key, value in zip(_BOX, values):
        try:
            coords.append(number(value))
        except ValueError:
            what = "a finite number" if _parses_as_float(value) else "a number"  # nan, inf, 1e999
            raise InvalidDataset(f"{name} line {line}: {key} {value!r} is not {what}") from None
    return tuple(coords)


def _parses_as_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _rows(path: Path, name: str) -> list[tuple[int, list[str]]]:
    """Non-blank rows with their line numbers."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidDataset(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = []
    try:
        for cells in reader:
            if any(c.strip() for c in cells):
                rows.append((reader.line_num, cells))
    except csv.Error as exc:
        raise InvalidDataset(f"{name} line {reader.line_num}: {exc}") from exc
    return rows


def annotation_files(root: Path) -> list[Path]:
    """The files `read` loads whole (held to the annotation size limit before reading)."""
    return _csv_files(root)
