"""`/api/datasets` — not built yet."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/datasets", tags=["datasets"])
