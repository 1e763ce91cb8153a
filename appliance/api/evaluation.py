"""`/api/evaluation` — not built yet."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/evaluation", tags=["evaluation"])
