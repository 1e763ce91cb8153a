"""An endpoint is `running` only once its URL reaches it (`serving.wait_routed`): behind HAProxy the new
route arrives a moment after Serve runs the replicas, and until then the request reaches the UI's app
(a 404 the Deploy page's "try it" box showed, found by tests/browser/test_deploy_page.py). The probe is
marked, so the endpoint's request and error figures leave it out (tests/ray_jobs/test_deployments.py
counts them)."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ray_jobs.serving import wait_routed


def _serve(routed_after_s: float):
    started = time.monotonic()
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.path)
            assert self.headers.get("X-AIStudio-Route-Probe") == "1"  # so the endpoint does not count it
            if time.monotonic() - started < routed_after_s:  # the UI's app: no such route
                status, body = 404, {"status": "error", "error": {"code": "NOT_FOUND", "message": "Not found"}}
            else:  # the endpoint: GET is not how to predict
                status, body = 405, {"status": "error", "error": {"code": "METHOD_NOT_ALLOWED",
                                                                  "message": "Use POST to predict"}}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


def test_waits_until_the_endpoint_itself_answers():
    server, seen = _serve(routed_after_s=0.8)
    try:
        start = time.monotonic()
        assert wait_routed("cats", f"http://127.0.0.1:{server.server_port}", timeout_s=10)
        assert time.monotonic() - start >= 0.8
        assert set(seen) == {"/models/cats/predict"} and len(seen) >= 2
    finally:
        server.shutdown()


def test_gives_up_at_its_timeout_and_on_stop():
    server, _ = _serve(routed_after_s=3600)
    try:
        start = time.monotonic()
        assert not wait_routed("cats", f"http://127.0.0.1:{server.server_port}", timeout_s=0.6)
        assert 0.6 <= time.monotonic() - start < 5
        assert not wait_routed("cats", f"http://127.0.0.1:{server.server_port}", timeout_s=30, stop=lambda: True)
    finally:
        server.shutdown()


def test_nothing_listening_is_not_waited_for():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    assert not wait_routed("cats", f"http://127.0.0.1:{port}", timeout_s=30)
    assert time.monotonic() - start < 5
