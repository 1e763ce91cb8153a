"""Dataset import, the pure part: ZIP safety, format parsing, image probing and storing.

No database and no web here. The import job is expected to run:
  root = extract_zip(upload, staging, max_total_bytes)        # ZIP uploads only
  parsed = parse_source(root, fmt, task, progress=on_progress)
  for item in parsed.items:                                    # skip known item.info.sha256
      store_image(item.source, dataset_dir / name, item.info)  # no second decode
"""

from appliance.importers.formats import FORMATS, TASKS, detect_format, parse_source
from appliance.importers.images import (
    IMAGE_EXTENSIONS,
    ImageInfo,
    UnreadableImage,
    make_thumbnail,
    probe_image,
    store_image,
)
from appliance.importers.parsed import ImportWarning, ParsedBox, ParsedDataset, ParsedItem
from appliance.importers.zipsafe import check_free_space, check_zip, extract_zip

__all__ = [
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "TASKS",
    "ImageInfo",
    "ImportWarning",
    "ParsedBox",
    "ParsedDataset",
    "ParsedItem",
    "UnreadableImage",
    "check_free_space",
    "check_zip",
    "detect_format",
    "extract_zip",
    "make_thumbnail",
    "parse_source",
    "probe_image",
    "store_image",
]
