"""A multipart form read straight off the request stream, its one file part written to a given path.

Starlette's `request.form()` spools every file part to a temporary file before the route runs;
an upload route that calls `receive_file_form` instead writes the file part to its final place
(the import's staging file) as the bytes arrive, with no second copy and nothing in the temp
dir. Text fields are kept in memory, each at most `MAX_FIELD_BYTES`; file parts other than the
expected one are counted and dropped. On any failure — a limit, a malformed body, the client
going away — the partial file is removed before the error propagates.
"""

from __future__ import annotations

import codecs
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from appliance.store.errors import ValidationFailed

MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 32
_FLUSH_BYTES = 1 << 20


@dataclass
class StreamedForm:
    fields: dict[str, str] = field(default_factory=dict)  # text parts (the last one of a name wins)
    file_parts: set[str] = field(default_factory=set)  # names of parts sent as files, the expected one included
    filename: str | None = None  # the expected file part's filename; None when it never came
    size: int = 0  # bytes written to the destination


class _Parts:
    """python-multipart callbacks; the data of the file part is queued for the async writer."""

    def __init__(self, file_field: str, charset: str):
        self.file_field = file_field
        self.charset = charset
        self.form = StreamedForm()
        self.pending = bytearray()  # file bytes not yet written
        self.count = 0
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name: str | None = None
        self._is_file = False
        self._to_file = False
        self._text = bytearray()
        self.ended = False

    def _decode(self, raw: bytes) -> str:
        try:
            return raw.decode(self.charset)
        except UnicodeDecodeError:
            return raw.decode("latin-1")

    def on_part_begin(self) -> None:
        self.count += 1
        if self.count > MAX_PARTS:
            raise ValidationFailed(f"body: more than {MAX_PARTS} form parts")
        self._disposition, self._name, self._is_file, self._to_file = b"", None, False, False
        self._text = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise ValidationFailed('body: a form part has no name (Content-Disposition "name")')
        self._name = self._decode(options[b"name"])
        self._is_file = b"filename" in options
        if self._is_file:
            self.form.file_parts.add(self._name)
            if self._name == self.file_field:
                if self.form.filename is not None:
                    raise ValidationFailed(f"{self.file_field}: send one file, not several")
                self.form.filename = self._decode(options[b"filename"])
                self._to_file = True

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._to_file:
            self.pending += data[start:end]
            self.form.size += end - start
        elif not self._is_file:
            self._text += data[start:end]
            if len(self._text) > MAX_FIELD_BYTES:
                raise ValidationFailed(f"{self._name}: longer than {MAX_FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        if self._name is not None and not self._is_file:
            self.form.fields[self._name] = self._decode(bytes(self._text))

    def on_end(self) -> None:
        self.ended = True


async def receive_file_form(
    request: Request, file_field: str, dest: Path, max_file_bytes: int, too_large: Callable[[], Exception],
    before_file: Callable[[dict[str, str]], Awaitable[None]] | None = None,
) -> StreamedForm:
    """Parse the request's multipart body as it streams; write part `file_field` to `dest`.

    More than `max_file_bytes` in that part raises `too_large()` at once. `before_file`, when
    given, is awaited with the text fields that came before the file part, as that part begins
    and before any of it is written: it may refuse the request before the bulk of the body. A body that is not
    `multipart/form-data` reads as an empty form (the caller's field checks then name what is
    missing). The caller owns `dest`'s folder; `dest` itself is removed here on any failure.
    """
    content_type = request.headers.get("content-type", "")
    media, params = parse_options_header(content_type)
    if media == b"application/x-www-form-urlencoded":  # text fields only: the file is then missing
        return await _urlencoded(request)
    if media != b"multipart/form-data" or b"boundary" not in params:
        return StreamedForm()
    charset = params.get(b"charset", b"utf-8").decode("latin-1")
    try:
        charset = codecs.lookup(charset).name
    except LookupError:
        charset = "latin-1"
    parts = _Parts(file_field, charset)
    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": parts.on_part_begin, "on_part_data": parts.on_part_data,
        "on_part_end": parts.on_part_end, "on_header_field": parts.on_header_field,
        "on_header_value": parts.on_header_value, "on_header_end": parts.on_header_end,
        "on_headers_finished": parts.on_headers_finished, "on_end": parts.on_end,
    })
    out = None
    checked = before_file is None
    try:
        out = await run_in_threadpool(dest.open, "wb")
        async for chunk in request.stream():
            try:
                parser.write(chunk)
            except FormParserError as exc:
                raise ValidationFailed(f"body: malformed multipart form ({exc})") from None
            if not checked and parts.form.filename is not None:
                checked = True
                await before_file(dict(parts.form.fields))
            if parts.form.size > max_file_bytes:
                raise too_large()
            if len(parts.pending) >= _FLUSH_BYTES:
                data, parts.pending = bytes(parts.pending), bytearray()
                await run_in_threadpool(out.write, data)
        try:
            parser.finalize()
        except FormParserError as exc:
            raise ValidationFailed(f"body: malformed multipart form ({exc})") from None
        if not parts.ended and parts.count:
            raise ValidationFailed("body: the multipart form ends before its closing boundary")
        if parts.pending:
            await run_in_threadpool(out.write, bytes(parts.pending))
        await run_in_threadpool(out.close)
        return parts.form
    except BaseException as exc:
        if out is not None:
            out.close()
        dest.unlink(missing_ok=True)
        if isinstance(exc, ClientDisconnect):
            raise ValidationFailed("body: the client went away before the upload was complete") from None
        raise


async def _urlencoded(request: Request) -> StreamedForm:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_PARTS * MAX_FIELD_BYTES:
            raise ValidationFailed(f"body: a form without a file is limited to {MAX_PARTS * MAX_FIELD_BYTES} bytes")
    return StreamedForm(fields=dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)))
