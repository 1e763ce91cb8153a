"""Short, prefixed, URL-safe ids. An id that does not match its pattern is a 404, never a path."""

from __future__ import annotations

import re
import secrets

from appliance.store.errors import NotFound

PREFIXES = {
    "project": "proj",
    "image": "img",
    "split": "split",
    "experiment": "exp",
    "evaluation": "eval",
    "export": "export",
    "import": "imp",
    "deployment": "dep",
}
_SUFFIX = r"[0-9a-f]{12}"
PATTERNS = {kind: re.compile(rf"^{prefix}-{_SUFFIX}$") for kind, prefix in PREFIXES.items()}


def new_id(kind: str) -> str:
    return f"{PREFIXES[kind]}-{secrets.token_hex(6)}"


def check_id(kind: str, value: str) -> str:
    """Return `value` if it is a well-formed id of `kind`, else raise NotFound naming it."""
    if not PATTERNS[kind].fullmatch(value or ""):
        raise NotFound(f"{kind.capitalize()} {value} not found")
    return value
