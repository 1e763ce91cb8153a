"""Request-body limits, enforced while the body streams in (issue #12, item 1).

One pure-ASGI guard in front of the whole app. Every request belongs to a route class with a
byte limit:

- `POST /login`: at most 16 KiB, and `application/x-www-form-urlencoded` only (415 otherwise), so
  no multipart parser ever spools a file part for an anonymous client;
- `POST /api/datasets/import/upload`: `AISTUDIO_MAX_UPLOAD_BYTES` (+ a little form overhead); the
  route streams the file part itself straight to the import's staging file;
- `POST /api/evaluation/{project_id}/predict`: `AISTUDIO_MAX_PREDICT_IMAGE_BYTES` (+ overhead);
- any other request that carries a body (JSON routes, and any route not named here):
  `AISTUDIO_MAX_JSON_BODY_BYTES`.

A declared `Content-Length` over the limit is answered 413 at once, before a byte is read. A body
without one (chunked) or with a false one is counted as it arrives, and the 413 goes out as soon as
the count crosses the limit: the read that crossed it raises `BodyTooLarge` inside the app, and
whatever the app then tries to answer is replaced by the 413 envelope. The 413 carries
`Connection: close`, so the server stops reading the rest of the body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance.config import Settings
from appliance.http.envelope import error_response

LOGIN_MAX_BYTES = 16 * 1024
# Room for the multipart framing and the small text fields around an upload's file part.
FORM_OVERHEAD_BYTES = 64 * 1024
UPLOAD_PATH = "/api/datasets/import/upload"
_PREDICT_PATH = re.compile(r"^/api/evaluation/[^/]+/predict/?$")
URLENCODED = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class BodyRule:
    limit: int  # bytes of body accepted
    what: str  # names the body and the setting in the 413 message
    form_only: bool = False  # urlencoded bodies only (login)

    def message(self) -> str:
        return f"Request body too large: {self.what}"


class BodyTooLarge(HTTPException):
    """Raised from `receive` inside the app when the streamed body crosses its limit."""

    def __init__(self, rule: BodyRule):
        super().__init__(413, rule.message())
        self.rule = rule


def rules(settings: Settings) -> tuple[BodyRule, BodyRule, BodyRule, BodyRule]:
    """(login, upload, predict, default)."""
    upload = settings.max_upload_bytes
    predict = settings.max_predict_image_bytes
    json_limit = settings.max_json_body_bytes
    return (
        BodyRule(LOGIN_MAX_BYTES, f"the login form is limited to {LOGIN_MAX_BYTES} bytes", form_only=True),
        BodyRule(upload + FORM_OVERHEAD_BYTES,
                 f"the upload is larger than the limit of {upload} bytes (AISTUDIO_MAX_UPLOAD_BYTES)"),
        BodyRule(predict + FORM_OVERHEAD_BYTES,
                 f"the image is larger than the limit of {predict} bytes (AISTUDIO_MAX_PREDICT_IMAGE_BYTES)"),
        BodyRule(json_limit, f"bodies of this route are limited to {json_limit} bytes (AISTUDIO_MAX_JSON_BODY_BYTES)"),
    )


class BodyLimitMiddleware:
    """Counts request-body bytes as they stream; see the module docstring."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.login, self.upload, self.predict, self.default = rules(settings)

    def rule_for(self, method: str, path: str) -> BodyRule:
        if method == "POST":
            if path == "/login":
                return self.login
            if path == UPLOAD_PATH:
                return self.upload
            if _PREDICT_PATH.match(path):
                return self.predict
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rule = self.rule_for(scope["method"], scope["path"])
        headers = Headers(scope=scope)
        if rule.form_only:
            media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if media != URLENCODED:
                await _refuse(scope, receive, send, 415, "UNSUPPORTED_MEDIA_TYPE",
                              f"This form takes {URLENCODED} only (got {media or 'no content type'})")
                return
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await _refuse(scope, receive, send, 400, "VALIDATION_ERROR", "Content-Length: not a number")
                return
            if int(declared) > rule.limit:
                await _refuse(scope, receive, send, 413, "PAYLOAD_TOO_LARGE", rule.message())
                return

        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:  # the app asks again after the limit: it gets the same answer
                raise BodyTooLarge(rule)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > rule.limit:
                    exceeded = True
                    raise BodyTooLarge(rule)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # the app's own answer to the cut-off body; ours goes out instead
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not exceeded or started:
                raise
        if exceeded and not started:
            await _refuse(scope, receive, send, 413, "PAYLOAD_TOO_LARGE", rule.message())


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str) -> None:
    """The error envelope, with `Connection: close`: the rest of the body is never read."""
    response = error_response(status, code, message, headers={"Connection": "close"})
    await response(scope, receive, send)
