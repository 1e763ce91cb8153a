"""HTTP/1.1 over a raw socket, so a test controls exactly what is sent and when.

`exchange` sends a request head, then the body in two parts: `first` at once, and `rest` only
after the response has arrived or `hold_s` has passed without one. A server that answers before
reading the whole body therefore answers while the client provably still has bytes to send (the
`rest`), whatever the speed of the machine; one that waits for the whole body gets it after
`hold_s` and answers late (`answered_early` is then False). Bodies go chunked (no Content-Length)
unless the head declares a length. The benchmark `benchmarks/body_limits.py` uses it too.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Exchange:
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    sent_before_answer: int = 0  # body bytes (chunk framing excluded) sent when the answer arrived
    answered_early: bool = False  # the answer arrived before `rest` was sent
    seconds_to_answer: float | None = None  # from the first byte of the head to the complete answer
    send_error: str | None = None  # the server closed while the client was sending
    closed_after_answer: bool = False  # the server closed the connection within 5 s of its answer

    def json(self) -> dict:
        return json.loads(self.body)

    @property
    def error(self) -> dict:
        return self.json()["error"]


def request_head(method: str, path: str, host: str, headers: dict[str, str], length: int | None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _complete(buf: bytes) -> tuple[int, dict, bytes] | None:
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = buf[:head_end].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = buf[head_end + 4:]
    if status == 100:  # `Expect: 100-continue`: the real answer follows
        rest = _complete(body)
        return rest
    length = int(headers.get("content-length", "0"))
    if len(body) < length:
        return None
    return status, headers, body[:length]


def exchange(url: str, method: str, path: str, headers: dict[str, str], first: Iterable[bytes] = (),
             rest: Iterable[bytes] = (), *, length: int | None = None, hold_s: float = 60.0,
             timeout_s: float = 120.0, during: Callable[[], None] | None = None) -> Exchange:
    """See the module docstring. `length` declares a Content-Length (else the body is chunked).
    With `during`, it is called once `first` is sent, and `rest` follows right after it returns
    (no hold): for looking at the server in the middle of a body it must read to the end."""
    parts = urlsplit(url)
    result = Exchange()
    answered = threading.Event()
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sent = 0
    started = time.perf_counter()

    def read() -> None:
        buf = b""
        try:
            while True:
                data = sock.recv(1 << 16)
                if not data:
                    break
                buf += data
                done = _complete(buf)
                if done is not None:
                    result.status, result.headers, result.body = done
                    result.sent_before_answer = sent
                    result.seconds_to_answer = time.perf_counter() - started
                    break
        except OSError:
            pass
        finally:
            answered.set()
        if result.status is not None:  # does the server end the connection after answering?
            try:
                sock.settimeout(5)
                while sock.recv(1 << 16):
                    pass
                result.closed_after_answer = True
            except OSError as exc:  # a reset is a close too; a timeout is not
                result.closed_after_answer = not isinstance(exc, TimeoutError)

    def put(data: bytes) -> None:
        nonlocal sent
        sock.sendall(data if length is not None else f"{len(data):x}\r\n".encode() + data + b"\r\n")
        sent += len(data)

    reader = threading.Thread(target=read, daemon=True)
    try:
        sock.sendall(request_head(method, path, parts.netloc, headers, length))
        reader.start()
        try:
            for piece in first:
                if answered.is_set():
                    break
                put(piece)
            if during is not None:
                during()
            result.answered_early = answered.wait(0 if during is not None else hold_s)
            if not result.answered_early:
                for piece in rest:
                    put(piece)
                if length is None:
                    sock.sendall(b"0\r\n\r\n")
        except OSError as exc:
            result.send_error = f"{type(exc).__name__}: {exc}"
        answered.wait(timeout_s)
        reader.join(7)  # the reader waits up to 5 s after the answer to see the connection closed
    finally:
        sock.close()
    return result


def pieces(total: int, size: int = 1 << 20, byte: bytes = b"x") -> Iterable[bytes]:
    """`total` bytes in pieces of `size` (lazily: a GiB costs no memory)."""
    block = byte * size
    while total > 0:
        n = min(size, total)
        yield block if n == size else block[:n]
        total -= n


def multipart(boundary: str, fields: dict[str, str], file_field: str, filename: str,
              content_type: str = "application/zip") -> tuple[bytes, bytes]:
    """(everything before a file part's data, everything after it) of a multipart body."""
    head = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    )
    head += (f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{filename}"\r\n'
             f"Content-Type: {content_type}\r\n\r\n").encode()
    return head, f"\r\n--{boundary}--\r\n".encode()
