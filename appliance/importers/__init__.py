"""Dataset import, the pure part: ZIP safety, format parsing, image probing and storing.

No database and no web here. The import job is expected to run:
  root = extract_zip(upload, staging, max_total_bytes)        # ZIP uploads only
  parsed = parse_source(root, fmt, task, progress=on_progress)
  for item in parsed.items:                                    # skip known item.info.sha256
      store_image(item.source, dataset_dir / name, item.info)  # no second decode
"""

from appliance.importers.formats import FORMATS, TASKS, detect_format, parse_source
from appliance.importers.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    IMAGE_EXTENSIONS,
    THUMBNAIL_SIZE,
    ImageInfo,
    ImageTooLarge,
    UnreadableImage,
    apply_pixel_limit,
    make_thumbnail,
    probe_image,
    store_image,
)
from appliance.importers.parsed import ImportWarning, ParsedBox, ParsedDataset, ParsedItem
from appliance.importers.zipsafe import check_free_space, check_zip, extract_zip

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "TASKS",
    "THUMBNAIL_SIZE",
    "ImageInfo",
    "ImageTooLarge",
    "ImportWarning",
    "ParsedBox",
    "ParsedDataset",
    "ParsedItem",
    "UnreadableImage",
    "apply_pixel_limit",
    "check_free_space",
    "check_zip",
    "detect_format",
    "extract_zip",
    "make_thumbnail",
    "parse_source",
    "probe_image",
    "store_image",
]
