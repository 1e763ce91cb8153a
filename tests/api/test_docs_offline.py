"""Issue #13 item 9 (and the favicon of item 13): `/docs` works offline. Its HTML names only the
appliance's own URLs, each of which answers 200 with the right content type; ReDoc (CDN-only)
is off; `/favicon.ico` exists."""

from __future__ import annotations

import re

ASSET = re.compile(r"""(?:src|href)=["']([^"']+)["']|url:\s*['"]([^'"]+)['"]""")


def _asset_urls(html: str) -> list[str]:
    return [a or b for a, b in ASSET.findall(html)]


def test_docs_page_names_only_local_assets_that_exist(client):
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    urls = _asset_urls(r.text)
    assert urls, r.text
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), f"/docs loads {url} from elsewhere"
    wanted = {".js": "javascript", ".css": "text/css", ".svg": "image/svg+xml", ".json": "application/json"}
    checked = set()
    for url in urls:
        got = client.get(url)
        assert got.status_code == 200, url
        for suffix, kind in wanted.items():
            if url.endswith(suffix):
                assert kind in got.headers["content-type"], (url, got.headers["content-type"])
                checked.add(suffix)
    assert {".js", ".css", ".svg", ".json"} <= checked, urls
    bundle = next(u for u in urls if u.endswith("swagger-ui-bundle.js"))
    assert "SwaggerUIBundle" in client.get(bundle).text


def test_redoc_is_off_and_the_favicon_is_served(client):
    assert client.get("/redoc").status_code == 404
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/vnd.microsoft.icon"
    assert icon.content[:4] == b"\x00\x00\x01\x00"  # an ICO header


def test_pages_name_a_favicon_that_exists(client):
    html = client.get("/projects").text
    icon = re.search(r'<link rel="icon" href="([^"]+)"', html)
    assert icon, "base.html names no favicon"
    assert client.get(icon.group(1)).status_code == 200
