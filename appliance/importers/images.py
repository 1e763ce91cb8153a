"""Reading, storing and thumbnailing one image file.

Import speed is dominated by decoding, so each image is read and decoded exactly once:
`probe_image` hashes the bytes it read and fully decodes them (to catch corrupt files), and
`store_image` reuses that result and copies the bytes as they are unless EXIF says the image
must be rotated or its colour mode is one the rest of the appliance would misread.

Colour modes: everything downstream (training, evaluation, thumbnails, the exported `predict.py`)
reads images with Pillow's `convert("RGB")`. That is right for 1, L, LA, P, PA, RGB, RGBA and
YCbCr, so those are stored as they are. CMYK is converted to RGB once, here, so every consumer
sees the same pixels. 16-bit greyscale (I;16) would be clipped to white by `convert("RGB")`, so
it is scaled to 8 bits. 32-bit integer or float images (I, F) and other modes have no meaning
we can assume: they are refused, naming the mode.

Decompression bombs: an image's pixel count is read from its header and checked against
`max_pixels` (the `AISTUDIO_MAX_IMAGE_PIXELS` setting) before anything is decoded; a larger image
raises `ImageTooLarge`, so a 650 KB PNG of 13000 x 13000 never becomes 500 MB of pixels.
Thumbnails are made at import, from the stored file (JPEG decodes at reduced scale), so pages never
decode a full image.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFile, ImageOps

from appliance.store.errors import InvalidDataset

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
# Decoders Pillow may use. Content decides the decoder, not the extension, so without this list
# a file named x.jpg could reach e.g. the EPS plugin (which runs Ghostscript). JPEG also opens
# multi-picture JPEGs, which report the format "MPO".
_DECODERS = ("JPEG", "PNG", "BMP", "WEBP", "TIFF", "GIF")
_ORIENTATION_TAG = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # orientations that rotate by 90 degrees
_KEPT_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "YCbCr"})
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_CONVERTED_MODES = {"CMYK": "RGB", **dict.fromkeys(_SIXTEEN_BIT, "L")}
# The default of the AISTUDIO_MAX_IMAGE_PIXELS setting: any camera up to 61 MP fits, and one decode
# is at most 256 MB (RGBA). Pillow's own default only warns up to ~179 MP.
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
THUMBNAIL_SIZE = 256
# What exif_transpose does for each orientation, applied here to the (small) thumbnail.
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


@dataclass(frozen=True)
class ImageInfo:
    width: int  # after EXIF orientation
    height: int
    sha256: str  # of the source bytes: the duplicate-detection key
    format: str  # Pillow's name: JPEG, PNG, ...
    needs_transpose: bool  # EXIF orientation is not "upright"
    mode: str = "RGB"  # Pillow's colour mode of the source

    @property
    def needs_rewrite(self) -> bool:
        """The stored file can't be the source bytes: it must be rotated or converted."""
        return self.needs_transpose or self.mode in _CONVERTED_MODES


class UnreadableImage(InvalidDataset):
    """A file Pillow cannot fully decode: corrupt, truncated, or not an image."""

    def __init__(self, path: Path, reason: str):
        reason = reason.replace(str(path), path.name)  # Pillow's messages may quote the absolute path
        super().__init__(f"{path.name}: unreadable image ({reason})")
        self.reason = reason


class ImageTooLarge(UnreadableImage):
    """More pixels than `max_pixels`: refused from the header, before any decoding."""

    def __init__(self, path: Path, pixels: int, max_pixels: int, size: tuple[int, int] | None = None):
        shape = f"{size[0]}x{size[1]} = " if size else ""
        super().__init__(path, f"too large: {shape}{pixels:,} pixels, over the limit of {max_pixels:,} "
                               "(AISTUDIO_MAX_IMAGE_PIXELS)")
        self.message = f"{Path(path).name}: {self.reason}"
        self.pixels, self.size = pixels, size


def check_pixels(path: Path, size: tuple[int, int], max_pixels: int) -> None:
    if size[0] * size[1] > max_pixels:
        raise ImageTooLarge(Path(path), size[0] * size[1], max_pixels, size)


def _bomb(path: Path, exc: Image.DecompressionBombError, max_pixels: int) -> ImageTooLarge:
    """Pillow's own guard fired first (at twice `Image.MAX_IMAGE_PIXELS`): same error, from its count."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return ImageTooLarge(path, int(found.group(1)) if found else 0, max_pixels)


def apply_pixel_limit(max_pixels: int) -> None:
    """Pillow's own guard for this process, at the same limit (it errors at twice `MAX_IMAGE_PIXELS`
    and only warns above it, so every decode here also checks `max_pixels` itself)."""
    Image.MAX_IMAGE_PIXELS = max_pixels


def probe_image(path: Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> ImageInfo:
    """Hash and fully decode `path` (one read), so corrupt files fail here and not in training.
    An image over `max_pixels` raises `ImageTooLarge` without being decoded."""
    path = Path(path)
    return _probe_bytes(path, path.read_bytes(), max_pixels)


def store_image(src: Path, dst: Path, info: ImageInfo | None = None, move: bool = False) -> ImageInfo:
    """Write `src` to `dst` upright, atomically, and return its info.

    Pass the `info` that `parse_source` already probed to skip decoding a second time. Without
    rotation or colour conversion the bytes are copied unchanged — or, with `move` (a file we own,
    e.g. extracted from an upload, on the same filesystem), renamed; otherwise the image is
    re-encoded in its own format, without EXIF. The returned sha256 is always that of the source
    bytes.
    """
    src, dst = Path(src), Path(dst)
    data = None
    if info is None:
        data = src.read_bytes()
        info = _probe_bytes(src, data)
    if move and not info.needs_rewrite:
        os.replace(src, dst)
        return info
    with _atomic_target(dst) as tmp:
        if info.needs_rewrite:
            _save_like(_storable(_decode_upright(src)), tmp, info.format)
        elif data is not None:
            tmp.write_bytes(data)
        else:
            shutil.copyfile(src, tmp)
    return info


def make_thumbnail(src: Path, dst: Path, size: int = THUMBNAIL_SIZE, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Write a JPEG thumbnail that fits in size x size, atomically (concurrent requests race);
    return it (RGB), so the import can hash it in the same pass.

    Memory stays near one decode of the source: its size is checked against `max_pixels` from the
    header, a JPEG decodes at 1/2..1/8 scale (`draft`), the image is reduced in its own mode, and
    only the small result is rotated (EXIF) and converted to RGB."""
    src, dst = Path(src), Path(dst)
    try:
        with Image.open(src, formats=_DECODERS) as im:
            check_pixels(src, im.size, max_pixels)
            orientation = _orientation(im)
            im.draft("RGB", (size, size))
            im.load()
            thumb = thumbnail_of(im, orientation, size)
    except UnreadableImage:
        raise
    except Image.DecompressionBombError as exc:
        raise _bomb(src, exc, max_pixels) from exc
    except Exception as exc:  # Pillow raises many exception types on bad input
        raise UnreadableImage(src, str(exc) or type(exc).__name__) from exc
    with _atomic_target(dst) as tmp:
        thumb.save(tmp, format="JPEG", quality=85)
    return thumb


def thumbnail_of(im: Image.Image, orientation: int, size: int = THUMBNAIL_SIZE) -> Image.Image:
    """The RGB thumbnail (fits in size x size, upright) of a decoded image; `im` may be resized in place."""
    thumb = _storable(im) if im.mode in _SIXTEEN_BIT else im
    if thumb.mode in ("1", "P"):  # resized with NEAREST only: get close first, then convert
        thumb.thumbnail((size * 4, size * 4))
        thumb = thumb.convert("RGBA" if "transparency" in thumb.info else "RGB")
    thumb.thumbnail((size, size), reducing_gap=2.0)
    if orientation in _TRANSPOSE:
        thumb = thumb.transpose(_TRANSPOSE[orientation])
    return thumb.convert("RGB")


@dataclass(frozen=True)
class Ingested:
    """What `ingest_file` wrote: the stored file's name and size, whether a thumbnail was written,
    and the thumbnail's fingerprint (`fingerprint(thumbnail)`, None when either failed)."""
    info: ImageInfo
    filename: str
    size_bytes: int
    thumbnail: bool
    fingerprint: str | None = None


class SourceUnreadable(OSError):
    """The source file could not be read (its reason in `strerror`); nothing was written."""


def ingest_file(src: Path, image_id: str, images_dir: Path, thumbs_dir: Path,
                thumb_name: Callable[[str], str] = lambda filename: Path(filename).stem + ".jpg",
                max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, move: bool = False, size: int = THUMBNAIL_SIZE,
                fingerprint: Callable[[Image.Image], str] | None = None) -> Ingested:
    """Everything the import does to one file, reading and decoding it once: hash the bytes, fully
    decode them (corrupt files fail here, naming the file), write the image to `images_dir` as
    `<image_id><ext>` (the bytes as read, or renamed with `move`, or re-encoded upright when EXIF or
    the colour mode ask for it) and its thumbnail to `thumbs_dir/thumb_name(filename)` from the same decode.

    Each file is written once, to its final place: no temporary name, no second read. A failure
    mid-write leaves a file without an image row, which the import's own clean-up (or start-up's
    sweep of unrecorded files) removes. A small upright RGB JPEG is its own thumbnail: linked, not
    re-encoded. A thumbnail problem never fails the file (`thumbnail` is then False).
    Raises `SourceUnreadable` (cannot read), `UnreadableImage` / `ImageTooLarge` (nothing written);
    other OS errors are the destination's (a full disk)."""
    src = Path(src)
    try:
        data = src.read_bytes()
    except OSError as exc:
        raise SourceUnreadable(exc.errno, exc.strerror or type(exc).__name__) from exc
    info, im, orientation = _decode_bytes(src, data, max_pixels)
    filename = image_id + _EXTENSIONS.get(info.format, src.suffix.lower())
    dst = Path(images_dir) / filename
    thumb_path = Path(thumbs_dir) / thumb_name(filename)
    with im:
        if info.needs_rewrite:
            _save_like(_storable(ImageOps.exif_transpose(im)), dst, info.format)
            if move:
                src.unlink(missing_ok=True)
        elif move:
            os.replace(src, dst)
        else:
            with open(dst, "xb") as f:
                f.write(data)
        stored = dst.stat().st_size if info.needs_rewrite else len(data)
        try:
            if (info.format == "JPEG" and im.mode == "RGB" and not info.needs_rewrite
                    and max(im.size) <= size and thumb_path.suffix == ".jpg"):
                thumb = im  # already a small upright RGB JPEG: the stored file is its thumbnail
                try:
                    os.link(dst, thumb_path)
                except OSError:
                    thumb_path.write_bytes(data)
            else:
                thumb = thumbnail_of(im, orientation, size)
                thumb.save(thumb_path, format="JPEG", quality=85)
        except Exception:  # the image passed its checks; the thumbnail is left to the lazy path
            thumb_path.unlink(missing_ok=True)
            return Ingested(info, filename, stored, False)
        try:
            mark = fingerprint(thumb) if fingerprint else None
        except Exception:  # left to the start-up backfill
            mark = None
    return Ingested(info, filename, stored, True, mark)


_NO_CHECK = (Image.Image.verify, ImageFile.ImageFile.verify)  # verify()s that check nothing
# The stored file's extension by Pillow's format name (MPO: a multi-picture JPEG).
_EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "BMP": ".bmp", "WEBP": ".webp", "TIFF": ".tif", "GIF": ".gif"}


def _decode_bytes(path: Path, data: bytes, max_pixels: int) -> tuple[ImageInfo, Image.Image, int]:
    """`_probe_bytes`, keeping the decoded image (and its EXIF orientation) for the caller."""
    sha256 = hashlib.sha256(data).hexdigest()
    im = None
    try:
        im = Image.open(io.BytesIO(data), formats=_DECODERS)
        check_pixels(path, im.size, max_pixels)  # from the header: nothing decoded yet
        if type(im).verify not in _NO_CHECK:  # a real check (PNG's checksums); JPEG's only closes the file
            im.verify()  # verify() leaves the image unusable, hence the reopen
            im.close()
            im = Image.open(io.BytesIO(data), formats=_DECODERS)
        fmt = im.format or "unknown"
        orientation = _orientation(im)
        im.load()
        width, height, mode = *im.size, im.mode
    except Exception as exc:
        if im is not None:
            im.close()
        if isinstance(exc, UnreadableImage):
            raise
        if isinstance(exc, Image.DecompressionBombError):
            raise _bomb(path, exc, max_pixels) from exc
        raise UnreadableImage(path, str(exc) or type(exc).__name__) from exc  # Pillow raises many types
    if mode not in _KEPT_MODES and mode not in _CONVERTED_MODES:
        im.close()
        raise UnreadableImage(path, f"unsupported colour mode {mode}; save it as 8-bit RGB or greyscale")
    if orientation in _SWAPS_AXES:
        width, height = height, width
    info = ImageInfo(width, height, sha256, fmt, needs_transpose=orientation in range(2, 9), mode=mode)
    return info, im, orientation


def _probe_bytes(path: Path, data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> ImageInfo:
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data), formats=_DECODERS) as im:
            check_pixels(path, im.size, max_pixels)  # from the header: nothing decoded yet
            im.verify()  # checksums (PNG); verify() leaves the image unusable, hence the reopen
        with Image.open(io.BytesIO(data), formats=_DECODERS) as im:
            fmt = im.format or "unknown"
            orientation = _orientation(im)
            im.load()
            width, height, mode = *im.size, im.mode
    except UnreadableImage:
        raise
    except Image.DecompressionBombError as exc:
        raise _bomb(path, exc, max_pixels) from exc
    except Exception as exc:  # Pillow raises many exception types on bad input
        raise UnreadableImage(path, str(exc) or type(exc).__name__) from exc
    if mode not in _KEPT_MODES and mode not in _CONVERTED_MODES:
        raise UnreadableImage(path, f"unsupported colour mode {mode}; save it as 8-bit RGB or greyscale")
    if orientation in _SWAPS_AXES:
        width, height = height, width
    return ImageInfo(width, height, sha256, fmt, needs_transpose=orientation in range(2, 9), mode=mode)


def _storable(im: Image.Image) -> Image.Image:
    """`im` in a mode every consumer reads correctly with `convert("RGB")` (see the module doc)."""
    if im.mode in _SIXTEEN_BIT:
        return im.convert("I").point(lambda v: v / 256).convert("L")  # 0..65535 -> 0..255
    if im.mode in _CONVERTED_MODES:
        return im.convert(_CONVERTED_MODES[im.mode])
    return im


def _orientation(im: Image.Image) -> int:
    """EXIF orientation, 1 (upright) when absent or unreadable: bad EXIF is no reason to reject."""
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) else 1


def _decode_upright(path: Path, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode `path` with EXIF orientation applied; `draft` lets JPEG decode at reduced scale."""
    try:
        with Image.open(path, formats=_DECODERS) as im:
            if draft:
                im.draft("RGB", draft)
            upright = ImageOps.exif_transpose(im)
            upright.load()
            return upright
    except Exception as exc:  # Pillow raises many exception types on bad input
        raise UnreadableImage(path, str(exc) or type(exc).__name__) from exc


def _save_like(im: Image.Image, dst: Path, fmt: str) -> None:
    if fmt in ("JPEG", "MPO"):
        if im.mode not in ("RGB", "L", "CMYK"):
            im = im.convert("RGB")
        im.save(dst, format="JPEG", quality=95)
    else:
        im.save(dst, format=fmt)


@contextmanager
def _atomic_target(dst: Path) -> Iterator[Path]:
    """Yield a temp path beside `dst`; rename it over `dst` only if the block succeeds."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
