"""Request and response schemas shared by routes (names say their role: …Create, …Update, …Public)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Task = Literal["classification", "detection"]


class StrictBody(BaseModel):
    """Bodies refuse unknown fields so a typo is an error, not silently ignored, and take JSON types
    as they are: `true` is not 1, `"5"` is not 5 (the UI sends typed JSON); NaN and infinity are refused."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, strict=True, allow_inf_nan=False)


class ProjectCreate(StrictBody):
    name: str = Field(min_length=1, max_length=200)
    task: Task
    description: str = Field(default="", max_length=5000)


class ProjectUpdate(StrictBody):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=5000)


class ProjectPublic(BaseModel):
    id: str
    name: str
    task: Task
    description: str
    created_at: datetime
    updated_at: datetime
    image_count: int = 0
    experiment_count: int = 0
