"""Class folders: `cat/*.jpg`, `dog/*.jpg` (classification).

Also `train/`, `val/` (or `valid/`), `test/` trees of class folders, which set the subset hint.
A subset-named folder counts as a subset only when it holds class folders; one holding images
directly is a class (a class may be called "test"). Images deeper inside a class folder belong
to that class. Images outside any class folder are skipped with a warning.
"""

from __future__ import annotations

from pathlib import Path

from appliance.store.errors import InvalidDataset
from appliance.importers.parsed import ImportWarning
from appliance.importers.sources import (
    RawDataset,
    RawItem,
    count,
    is_ignored,
    is_image,
    list_images,
    preview,
    rel,
    subdirs,
    subset_of,
)


LOOKED_FOR = "one sub-folder of images per class (optionally inside train/ val/ test/)"


def find(root: Path) -> list[str]:
    """Evidence for auto-detection: top-level folders that contain images."""
    return [f"{d.name}/" for d in subdirs(root) if list_images(d)]


def read(root: Path) -> RawDataset:
    items: list[RawItem] = []
    warnings: list[ImportWarning] = []
    subsets: list[str] = []
    _warn_stray(root, root, warnings)
    for top in subdirs(root):
        hint = subset_of(top.name)
        nested = {d: list_images(d) for d in subdirs(top)} if hint else {}
        if any(nested.values()):
            subsets.append(f"{top.name}/")
            _warn_stray(top, root, warnings)
            for class_dir, images in nested.items():
                items += [RawItem(p, label=class_dir.name, subset_hint=hint) for p in images]
        else:
            items += [RawItem(p, label=top.name) for p in list_images(top)]
    classes = sorted({item.label for item in items})
    if not classes:
        raise InvalidDataset(
            f"{root.name}: no class folders with images (expected one sub-folder per class, "
            "optionally inside train/, val/, test/)"
        )
    where = f" in {' + '.join(subsets)}" if subsets else ""
    detected = f"Folder layout: {count(len(classes), 'class folder')}{where} ({preview(classes)})"
    return RawDataset("folder", "classification", classes, items, warnings, detected)


def _warn_stray(folder: Path, root: Path, warnings: list[ImportWarning]) -> None:
    for path in sorted(folder.iterdir()):
        if path.is_file() and is_image(path) and not is_ignored(path.name):
            warnings.append(ImportWarning(rel(path, root), "not inside a class folder; skipped"))
