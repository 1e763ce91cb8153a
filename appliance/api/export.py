"""`/api/export` — not built yet."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/export", tags=["export"])
