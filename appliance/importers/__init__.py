"""Dataset import, the pure part: ZIP safety, format parsing, image probing and storing.

No database and no web here. The import job is expected to run:
  root = extract_zip(upload, staging, max_total_bytes)        # ZIP uploads only
  parsed = parse_source(root, fmt, task, progress=on_progress)
  for item in parsed.items:                                    # skip known item.info.sha256
      store_image(item.source, dataset_dir / name, item.info)  # no second decode
"""

from appliance.importers.formats import (
    FORMATS, TASKS, Candidate, SourcePlan, detect_format, finish_item, no_usable_image, parse_source, plan_source,
    problem_warning,
)
from appliance.importers.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    IMAGE_EXTENSIONS,
    THUMBNAIL_SIZE,
    ImageInfo,
    ImageTooLarge,
    Ingested,
    SourceUnreadable,
    UnreadableImage,
    apply_pixel_limit,
    ingest_file,
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
    "Candidate",
    "ImageInfo",
    "Ingested",
    "SourcePlan",
    "SourceUnreadable",
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
    "finish_item",
    "ingest_file",
    "make_thumbnail",
    "no_usable_image",
    "parse_source",
    "plan_source",
    "problem_warning",
    "probe_image",
    "store_image",
]
