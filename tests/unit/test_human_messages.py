"""Issue #13 item 13: a request-validation error reads as plain words ("name: must not be empty"),
not pydantic's wording ("String should have at least 1 character", "Value error, …"); the
envelope keeps its code, the "Invalid request — " opening and each field's name."""

from __future__ import annotations

from typing import Literal

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict, Field, field_validator

from appliance.http.envelope import install_error_handlers, ok
from appliance.schemas import StoredText


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(min_length=1, max_length=5)
    code: str = Field(default="abc", min_length=3)
    epochs: int = Field(default=1, ge=1, le=10)
    rate: float = Field(default=0.1, gt=0, lt=1)
    kind: Literal["a", "b"] = "a"
    flag: bool = False
    tags: list[str] = Field(default_factory=list, max_length=2)
    ratio: float = 0.5
    # an optional text type with a validator of its own: pydantic reports its lengths as a collection's
    title: StoredText | None = Field(default=None, min_length=1, max_length=4)

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, v):
        if v == 0.25:
            raise ValueError("ratio 0.25 is reserved; pick another")
        return v


@pytest.fixture(scope="module")
def client():
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/b")
    def post(body: Body):
        return ok(body.model_dump())

    return TestClient(app)


@pytest.mark.parametrize("extra, expected", [
    ({"name": ""}, "name: must not be empty"),
    ({"name": "abcdefg"}, "name: must be at most 5 characters"),
    ({"code": "x"}, "code: must be at least 3 characters"),
    ({"epochs": 0}, "epochs: must be at least 1"),
    ({"epochs": 11}, "epochs: must be at most 10"),
    ({"epochs": "3"}, "epochs: must be a whole number"),
    ({"rate": 0}, "rate: must be more than 0"),
    ({"rate": 1}, "rate: must be less than 1"),
    ({"rate": "fast"}, "rate: must be a number"),
    ({"kind": "c"}, "kind: must be 'a' or 'b'"),
    ({"flag": "yes"}, "flag: must be true or false"),
    ({"tags": ["a", "b", "c"]}, "tags: must have at most 2 items"),
    ({"tags": "a"}, "tags: must be a list"),
    ({"title": "abcde"}, "title: must be at most 4 characters"),
    ({"title": ""}, "title: must not be empty"),
    ({"ratio": 0.25}, "ratio: ratio 0.25 is reserved; pick another"),
    ({"surprise": 1}, "surprise: is not a field of this request"),
])
def test_each_problem_in_plain_words(client, extra, expected):
    body = {"name": "ok", **extra}
    if "name" in extra and extra["name"] is None:
        body.pop("name")
    r = client.post("/b", json=body)
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "VALIDATION_ERROR"
    assert err["message"] == f"Invalid request — {expected}"
    assert "should" not in err["message"] and "Value error" not in err["message"]


def test_missing_fields_and_body(client):
    assert client.post("/b", json={}).json()["error"]["message"] == "Invalid request — name: is required"
    assert client.post("/b", json=[1]).json()["error"]["message"] == "Invalid request — body: must be an object"
