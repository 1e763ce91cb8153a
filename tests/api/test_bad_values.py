"""Bad values for every field of every request body, and for every constrained query parameter.

The cases are GENERATED from the app's OpenAPI schema (`create_app(settings).openapi()`), so a new
route, body model or field is covered without touching this file:

- JSON bodies: for each property, wrong JSON types, numbers just outside minimum / maximum /
  exclusive bounds, NaN and infinity, strings one character too short or too long or not matching
  the pattern, values outside an enum, too many list items, bad list items, null where the field
  is not nullable, the field missing when it is required; an unknown extra field (every body must
  forbid them); and whole-body garbage (not JSON, a list, null, nothing).
- Form bodies (uploads): values outside an enum or the bounds, required fields missing, a text
  field sent as a file and a file field sent as text.
- Query parameters with a constraint: out-of-range numbers (limit=0, limit=501, offset=-1),
  non-integers, values outside an enum, strings not matching a pattern.

Every case must get a 422 `{"status":"error","error":{"code":"VALIDATION_ERROR","message":…}}`
whose message names exactly the field that was made bad, and must write nothing: every row of
every table and every file in the workspace is the same before and after. The ids a request needs
(in its path or its body) point at a real project, split, experiment, import and image created
through the API first, so the request would otherwise get past validation — which each operation
proves once with a valid body before its bad cases run.

The generator refuses (`Unhandled`) what it cannot make a bad value for, and a guard test runs it
over every operation, so a new kind of body fails here instead of going untested.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import tempfile
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute

from appliance.config import Settings
from appliance.store.ids import PREFIXES, new_id
from appliance.store.paths import Workspace
from appliance.main import create_app
from tests.fixtures import create_project, import_and_wait, list_all_images, make_classification_folder, zip_dir
from tests.workflows import create_experiment, wait_for


class Unhandled(Exception):
    """The schema has something the generator cannot make bad values for: extend the generator."""


def _schema_and_routes() -> tuple[dict, list]:
    # Only the schema and the route table: the app's lifespan never runs, nothing is written.
    scratch = Path(tempfile.gettempdir()) / "aistudio-schema-only"
    app = create_app(Settings(workspace=scratch, import_roots=[scratch], api_token=None))
    return app.openapi(), app.routes


SCHEMA, ROUTES = _schema_and_routes()
MISSING = object()  # a case value meaning "leave the field out"
EXTRA_FIELD = "unexpected_field"
INVALID_PREFIX = "Invalid request — "  # how the envelope starts request-validation messages


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    spec: dict

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}"


OPERATIONS = [Operation(m.upper(), path, spec) for path, ops in SCHEMA["paths"].items() for m, spec in ops.items()]
BODY_OPS = [op for op in OPERATIONS if "requestBody" in op.spec]
QUERY_OPS = [op for op in OPERATIONS if any(p["in"] == "query" for p in op.spec.get("parameters", []))]


@dataclass(frozen=True)
class Case:
    field: str  # the field the error message must name ("body" for whole-body cases)
    what: str  # what is wrong, for the failure report
    value: Any = MISSING
    swap: bool = False  # form bodies: a text field sent as a file part, or a file field as text
    raw: str | None = None  # JSON bodies: the whole body, as sent

    def __str__(self) -> str:
        shown = "" if self.value is MISSING else f" = {_short(self.value)}"
        return f"{self.field}: {self.what}{shown}"


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ----------------------------------------------------------------------------- schema reading


def resolve(schema: dict) -> dict:
    while "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/components/schemas/"):
            raise Unhandled(f"reference {ref}")
        schema = SCHEMA["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return schema


def unwrap(prop: dict) -> tuple[dict, bool]:
    """(the schema of the value, whether null is allowed) — `X | None` is `anyOf: [X, null]`."""
    prop = resolve(prop)
    if "anyOf" in prop:
        options = [resolve(o) for o in prop["anyOf"]]
        rest = [o for o in options if o.get("type") != "null"]
        if len(rest) != 1:
            raise Unhandled(f"a union of {len(rest)} non-null types")
        return rest[0], len(rest) < len(options)
    if {"allOf", "oneOf", "not"} & set(prop):
        raise Unhandled(f"schema keywords {sorted({'allOf', 'oneOf', 'not'} & set(prop))}")
    return prop, False


def is_file(schema: dict) -> bool:
    return schema.get("type") == "string" and (
        schema.get("format") == "binary" or "contentMediaType" in schema
    )


def body_of(op: Operation) -> tuple[str, dict]:
    """('json' or 'form', the body's object schema)."""
    content = op.spec["requestBody"]["content"]
    if set(content) == {"application/json"}:
        kind = "json"
    elif set(content) in ({"multipart/form-data"}, {"application/x-www-form-urlencoded"}):
        kind = "form"
    else:
        raise Unhandled(f"{op.id}: a request body of type {sorted(content)}")
    schema = resolve(next(iter(content.values()))["schema"])
    if schema.get("type") != "object" or not schema.get("properties"):
        raise Unhandled(f"{op.id}: a body that is not an object with properties")
    return kind, schema


# ----------------------------------------------------------------------------- bad values


def bound_values(inner: dict, integer: bool) -> list[tuple[str, Any]]:
    step = 1 if integer else 1e-3
    num = int if integer else float
    out = []
    if "minimum" in inner:
        out.append((f"below the minimum {inner['minimum']:g}", num(inner["minimum"] - step)))
    if "exclusiveMinimum" in inner:
        out.append(("equal to the exclusive minimum", num(inner["exclusiveMinimum"])))
    if "maximum" in inner:
        out.append((f"above the maximum {inner['maximum']:g}", num(inner["maximum"] + step)))
    if "exclusiveMaximum" in inner:
        out.append(("equal to the exclusive maximum", num(inner["exclusiveMaximum"])))
    return out


def not_matching(pattern: str) -> str:
    for candidate in ("not matching!", "", "0", "a", "-", " ", "\n"):
        if not re.search(pattern, candidate):
            return candidate
    raise Unhandled(f"no string found that fails the pattern {pattern!r}")


def string_values(inner: dict) -> list[tuple[str, Any]]:
    out = []
    if inner.get("minLength"):
        out.append((f"shorter than {inner['minLength']}", "a" * (inner["minLength"] - 1)))
    if "maxLength" in inner:
        out.append((f"longer than {inner['maxLength']}", "a" * (inner["maxLength"] + 1)))
    if "pattern" in inner:
        out.append(("not matching the pattern", not_matching(inner["pattern"])))
    return out


def enum_values(inner: dict) -> list[tuple[str, Any]]:
    allowed = inner["enum"] if "enum" in inner else [inner["const"]]
    out = [("outside the enum", f"not-{allowed[0]}")]
    other_case = str(allowed[0]).swapcase()
    if other_case not in allowed and other_case != str(allowed[0]):
        out.append(("an enum value in the wrong case", other_case))
    return out


def json_bad_values(inner: dict, nullable: bool) -> list[tuple[str, Any]]:
    """Values a JSON body must refuse for a property with schema `inner`."""
    kind = inner.get("type")
    if "enum" in inner or "const" in inner:
        out = enum_values(inner) + [("a number instead of a string", 7)]
    elif kind == "string":
        if is_file(inner):
            raise Unhandled("a file inside a JSON body")
        out = [("a number", 12345), ("a boolean", True), ("a list", ["x"]), ("an object", {"x": "y"})]
        out += string_values(inner)
    elif kind == "integer":
        out = [("a string of digits", "5"), ("a boolean", True), ("a fraction", 1.5), ("a list", [1]),
               ("NaN", math.nan), ("infinity", math.inf)]
        out += bound_values(inner, integer=True)
        if "maximum" not in inner and "exclusiveMaximum" not in inner:
            out.append(("beyond 64 bits", 2**63))
    elif kind == "number":
        out = [("a numeric string", "0.5"), ("a boolean", True), ("a list", [0.5]), ("NaN", math.nan),
               ("infinity", math.inf), ("minus infinity", -math.inf)]
        out += bound_values(inner, integer=False)
    elif kind == "boolean":
        out = [("the string 'true'", "true"), ("the number 1", 1), ("a list", [True]), ("an empty string", "")]
    elif kind == "array":
        item, item_nullable = unwrap(inner.get("items", {}))
        ok = valid_value(item)
        out = [("a bare value instead of a list", ok), ("an object", {}), ("a number", 3)]
        out += [(f"an item that is {what}", [bad]) for what, bad in json_bad_values(item, item_nullable)]
        if "maxItems" in inner:
            out.append((f"more than {inner['maxItems']} items", [ok] * (inner["maxItems"] + 1)))
        if inner.get("minItems"):
            out.append((f"fewer than {inner['minItems']} items", [ok] * (inner["minItems"] - 1)))
    else:
        raise Unhandled(f"a property of type {kind!r}")
    if not nullable:
        out.append(("null", None))
    return out


def text_bad_values(inner: dict) -> list[tuple[str, str]]:
    """Values a form field or a query parameter (always text on the wire) must refuse."""
    kind = inner.get("type")
    if is_file(inner):
        return []  # a file field's bad value is text instead of a file (`swap`)
    if "enum" in inner or "const" in inner:
        return enum_values(inner)
    if kind == "string":
        return string_values(inner)
    if kind in ("integer", "number"):
        out = [("not a number", "abc")] + ([("a fraction", "1.5")] if kind == "integer" else [])
        return out + [(what, str(v)) for what, v in bound_values(inner, integer=kind == "integer")]
    if kind == "boolean":
        return [("not a boolean", "maybe")]
    raise Unhandled(f"a form or query value of type {kind!r}")


def valid_value(inner: dict) -> Any:
    """A value of `inner` that request validation accepts (ids and paths come from the World)."""
    if "enum" in inner:
        return inner["enum"][0]
    if "default" in inner:
        return inner["default"]
    kind = inner.get("type")
    if kind == "string":
        if "pattern" in inner:
            raise Unhandled("a string with a pattern and no World value")
        return "x" * max(inner.get("minLength", 1), 1)
    if kind in ("integer", "number"):
        low = inner.get("minimum", inner.get("exclusiveMinimum", 0) + 1)
        return int(low) if kind == "integer" else float(low)
    if kind == "boolean":
        return True
    if kind == "array":
        return [valid_value(unwrap(inner.get("items", {}))[0])] * inner.get("minItems", 0)
    raise Unhandled(f"no valid value for type {kind!r}")


def body_cases(op: Operation) -> tuple[str, dict, list[Case]]:
    kind, schema = body_of(op)
    props, required = schema["properties"], set(schema.get("required", []))
    cases: list[Case] = []
    for name, prop in props.items():
        inner, nullable = unwrap(prop)
        if kind == "json":
            cases += [Case(name, what, value) for what, value in json_bad_values(inner, nullable)]
        else:
            cases += [Case(name, what, value) for what, value in text_bad_values(inner)]
            cases.append(Case(name, "text instead of a file" if is_file(inner) else "a file instead of text", swap=True))
        if name in required:
            cases.append(Case(name, "missing"))
    if kind == "json":
        if schema.get("additionalProperties") is not False:
            raise Unhandled(f"{op.id}: the body accepts unknown fields (derive it from StrictBody)")
        assert EXTRA_FIELD not in props
        cases.append(Case(EXTRA_FIELD, "an unknown field", 1))
        cases += [Case("body", what, raw=raw) for what, raw in
                  (("not JSON", "{not json"), ("a JSON list", "[]"), ("JSON null", "null"), ("empty", ""))]
    return kind, schema, cases


def query_cases(op: Operation) -> list[Case]:
    cases = []
    for param in op.spec.get("parameters", []):
        if param["in"] == "query":
            inner, _ = unwrap(param["schema"])
            cases += [Case(param["name"], what, value) for what, value in text_bad_values(inner)]
    return cases


# ----------------------------------------------------------------------------- the world

# Body fields whose valid value the schema cannot give: ids of real objects, a real folder, a model
# that exists, ratios that sum to 1. The `world` fixture provides exactly these.
WORLD_FIELDS = ("project_id", "split_id", "experiment_id", "image_id", "source_path", "model", "train", "val", "test",
                "export_id", "name")
WORLD_PATH = ("project_id", "split_id", "experiment_id", "image_id", "import_id", "filename")


def needs_world(name: str, inner: dict) -> bool:
    if name.endswith(("_id", "_path")):
        return True
    try:
        valid_value(inner)
    except Unhandled:
        return True
    return False


def path_value(name: str, world_path: dict) -> str:
    if name in world_path:
        return world_path[name]
    kind = name.removesuffix("_id")
    if name.endswith("_id") and kind in PREFIXES:
        # No such object can be made without Ray (evaluations, exports): a well-formed id of nothing.
        # The parameters under test are validated before the route ever looks it up.
        return new_id(kind)
    raise Unhandled(f"no value for the path parameter {name}")


def url_of(op: Operation, world_path: dict) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: path_value(m.group(1), world_path), op.path)


@dataclass
class World:
    values: dict[str, Any]
    path: dict[str, str]
    zip_bytes: bytes
    image_bytes: bytes


@pytest.fixture
def world(client, settings, monkeypatch, tmp_path) -> World:
    # The valid-body checks must never start work on a Ray that another test left up in this process.
    for module in ("training", "evaluation", "export"):
        monkeypatch.setattr(f"appliance.api.{module}.ray_is_up", lambda: False)
    pid = create_project(client, "classification", name="bad values")
    source = settings.allowed_import_roots[0] / "colours"
    generated = make_classification_folder(source, per_class=4, size=16)
    job = import_and_wait(client, pid, source)
    assert (job["status"], job["added"]) == ("completed", generated.count), job
    r = client.post(f"/api/splits/{pid}", json={"name": "s", "train": 0.5, "val": 0.25, "test": 0.25, "seed": 1})
    assert r.status_code == 201, r.text
    sid = r.json()["data"]["id"]
    eid = create_experiment(client, pid, sid, batch_size=2)
    image = list_all_images(client, pid)[0]
    values = {"project_id": pid, "split_id": sid, "experiment_id": eid, "image_id": image["id"],
              "source_path": str(source), "model": "resnet18", "train": 0.5, "val": 0.25, "test": 0.25,
              # no export can be made without Ray: a well-formed id of nothing (a deployment's fields are
              # validated before it is looked up); `name`: a deployment's slug
              "export_id": new_id("export"), "name": "an-endpoint"}
    assert set(values) == set(WORLD_FIELDS)
    path = {"project_id": pid, "split_id": sid, "experiment_id": eid, "image_id": image["id"],
            "import_id": job["id"], "filename": image["filename"]}
    assert set(path) == set(WORLD_PATH)
    archive = zip_dir(source, tmp_path / "colours.zip")
    return World(values, path, archive.read_bytes(), (source / generated.items[0].relpath).read_bytes())


def base_body(op: Operation, kind: str, schema: dict, world: World) -> dict[str, Any]:
    """The required fields with valid values: what each case then breaks one field of."""
    body = {}
    for name in schema.get("required", []):
        inner, _ = unwrap(schema["properties"][name])
        if name in world.values:
            body[name] = world.values[name]
        elif is_file(inner):
            body[name] = MISSING  # filled in by `send`
        elif needs_world(name, inner):
            raise Unhandled(f"{op.id}: required field {name} needs a real value: add it to World")
        else:
            body[name] = valid_value(inner)
    # Optional in the schema, yet needed for a valid body: a split's ratios (unless `from_source`, #13).
    for name in ("train", "val", "test"):
        if name in schema["properties"] and name not in body:
            body[name] = world.values[name]
    return body


# ----------------------------------------------------------------------------- sending and checking


def send(client, op: Operation, url: str, kind: str, schema: dict, body: dict, world: World, case: Case | None):
    body = dict(body)
    if case is not None and case.raw is None:
        if case.value is MISSING and not case.swap:
            body.pop(case.field, None)
        elif not case.swap:
            body[case.field] = case.value
    if kind == "json":
        content = case.raw if case is not None and case.raw is not None else json.dumps(body)
        return client.request(op.method, url, content=content, headers={"content-type": "application/json"})
    data, files = {}, {}
    for name, prop in schema["properties"].items():
        inner, _ = unwrap(prop)
        swapped = case is not None and case.swap and case.field == name
        if is_file(inner):
            present = name in body or swapped
            if not present:
                continue
            if swapped:
                data[name] = "text, not a file"
            else:
                files[name] = ("colours.zip", world.zip_bytes, "application/zip") if "import" in op.path \
                    else ("image.jpg", world.image_bytes, "image/jpeg")
        elif swapped:
            files[name] = ("value.txt", str(body.get(name, valid_value(inner))).encode(), "text/plain")
        elif name in body:
            data[name] = str(body[name])
    return client.request(op.method, url, data=data, files=files or None)


def named_fields(message: str) -> set[str] | None:
    if not message.startswith(INVALID_PREFIX):
        return None
    return {part.split(":", 1)[0].split(".", 1)[0] for part in message[len(INVALID_PREFIX):].split("; ")}


def snapshot(settings: Settings) -> tuple[dict, list]:
    """Every row of every table, and every file of the workspace (but the database's own)."""
    assert settings.db_url.startswith("sqlite:///")
    db = Path(settings.db_url.removeprefix("sqlite:///"))
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        tables = [row[0] for row in con.execute("select name from sqlite_master where type = 'table' order by name")]
        rows = {t: sorted(map(repr, con.execute(f'select * from "{t}"'))) for t in tables}
    files = sorted(
        (p.relative_to(settings.workspace).as_posix(), p.stat().st_size)
        for p in settings.workspace.rglob("*") if p.is_file() and not p.name.startswith(db.name)
    )
    return rows, files


def changes(before: tuple[dict, list], after: tuple[dict, list]) -> str:
    (rows0, files0), (rows1, files1) = before, after
    tables = sorted(t for t in set(rows0) | set(rows1) if rows0.get(t) != rows1.get(t))
    new_files = sorted(set(files1) ^ set(files0))
    return ", ".join([f"table {t}" for t in tables] + [f"file {f}" for f, _ in new_files])


def check_case(client, settings, op, url, kind, schema, body, world, case) -> str | None:
    """None when `case` is refused as it must be, else what went wrong."""
    before = snapshot(settings)
    r = send(client, op, url, kind, schema, body, world, case)
    wrote = changes(before, snapshot(settings))
    try:
        envelope = r.json()
    except ValueError:
        return f"{r.status_code}, not JSON: {r.text[:120]!r}"
    if r.status_code != 422 or set(envelope) != {"status", "error"} or envelope["status"] != "error" \
            or set(envelope["error"]) != {"code", "message"} or envelope["error"]["code"] != "VALIDATION_ERROR":
        return f"{r.status_code} {json.dumps(envelope)[:300]}"
    named = named_fields(envelope["error"]["message"])
    if named != {case.field}:
        return f"the message names {named}, not {{{case.field!r}}}: {envelope['error']['message'][:200]}"
    if wrote:
        return f"refused, but wrote: {wrote}"
    return None


def settle(client, settings: Settings) -> None:
    """Wait until no job is queued or running (a valid import started by a baseline) and the
    import's staging folder is gone: the job removes it just after recording that it completed."""
    staging = Workspace(settings.workspace).staging_dir
    wait_for(lambda: (client.get("/api/system/jobs").json()["data"], list(staging.glob("*"))),
             lambda state: state == ([], []), timeout=60, every=0.05)


def run_cases(client, settings, op, url, kind, schema, body, world, cases) -> None:
    failures = [f"  {case}: {problem}" for case in cases
                if (problem := check_case(client, settings, op, url, kind, schema, body, world, case))]
    assert not failures, f"{op.id}: {len(failures)} of {len(cases)} bad values not refused cleanly:\n" + "\n".join(failures)


# ----------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("op", BODY_OPS, ids=[op.id for op in BODY_OPS])
def test_every_body_field_refuses_bad_values(client, settings, world, op):
    kind, schema, cases = body_cases(op)
    url = url_of(op, world.path)
    body = base_body(op, kind, schema, world)
    # The valid body gets past request validation (the route may still refuse it for its own
    # reasons: no Ray here, an untrained experiment): so each bad case is refused for its field.
    r = send(client, op, url, kind, schema, body, world, None)
    assert r.status_code != 500 and not r.json().get("error", {}).get("message", "").startswith(INVALID_PREFIX), r.text
    settle(client, settings)
    run_cases(client, settings, op, url, kind, schema, body, world, cases)


@pytest.mark.parametrize("op", QUERY_OPS, ids=[op.id for op in QUERY_OPS])
def test_every_constrained_query_parameter_refuses_bad_values(client, settings, world, op):
    url = url_of(op, world.path)
    cases = query_cases(op)
    settle(client, settings)
    failures = []
    for case in cases:
        before = snapshot(settings)
        r = client.request(op.method, url, params={case.field: case.value})
        envelope = r.json()
        if r.status_code != 422 or envelope.get("status") != "error" or envelope["error"]["code"] != "VALIDATION_ERROR":
            failures.append(f"  {case}: {r.status_code} {r.text[:200]}")
        elif named_fields(envelope["error"]["message"]) != {case.field}:
            failures.append(f"  {case}: the message does not name it: {envelope['error']['message']}")
        elif wrote := changes(before, snapshot(settings)):
            failures.append(f"  {case}: refused, but wrote: {wrote}")
    assert not failures, f"{op.id}:\n" + "\n".join(failures)


# ----------------------------------------------------------------------------- guards


def test_generator_covers_every_body_field_and_every_operation():
    assert len(BODY_OPS) >= 10 and len(QUERY_OPS) >= 4, "the schema lost its request bodies or queries?"
    for op in BODY_OPS:
        kind, schema, cases = body_cases(op)  # raises Unhandled for what it cannot cover
        per_field = {name: [c for c in cases if c.field == name] for name in schema["properties"]}
        assert all(per_field.values()), f"{op.id}: no bad value for {[n for n, c in per_field.items() if not c]}"
        for name in schema.get("required", []):
            inner, _ = unwrap(schema["properties"][name])
            assert not needs_world(name, inner) or name in WORLD_FIELDS or is_file(inner), \
                f"{op.id}: required {name} must point at something real: add it to WORLD_FIELDS and the world"
        url_of(op, dict.fromkeys(WORLD_PATH, "x"))  # every path parameter can be filled
    for op in QUERY_OPS:
        url_of(op, dict.fromkeys(WORLD_PATH, "x"))
        for param in op.spec["parameters"]:
            inner, _ = unwrap(param["schema"])
            constrained = {"enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "pattern",
                           "minLength", "maxLength"} & set(inner) or inner.get("type") in ("integer", "number", "boolean")
            if param["in"] == "query" and constrained:
                assert [c for c in query_cases(op) if c.field == param["name"]], f"{op.id}: {param['name']} uncovered"


def test_every_api_route_is_in_the_schema():
    """A route hidden from the schema would escape the generator."""
    hidden = [r.path for r in ROUTES if isinstance(r, APIRoute) and r.path.startswith("/api") and not r.include_in_schema]
    assert hidden == []


def _values(cases: list[Case], name: str) -> list:
    return [c.value for c in cases if c.field == name]


def test_generator_derives_the_bounds_it_claims():
    """Checked against values written out by hand from the request models, not from the schema."""
    by_id = {op.id: op for op in OPERATIONS}
    projects = query_cases(by_id["GET /api/projects"])
    assert {"0", "501", "abc", "1.5"} <= set(_values(projects, "limit"))
    assert {"-1", "abc", "1.5"} <= set(_values(projects, "offset"))
    _, _, experiment = body_cases(by_id["POST /api/training/{project_id}/experiments"])
    assert all(v in _values(experiment, "epochs") for v in (0, 1001, None, "5", 1.5))
    assert any(v is True for v in _values(experiment, "epochs"))
    assert 0.0 in _values(experiment, "learning_rate")
    assert pytest.approx(10.001) in _values(experiment, "learning_rate")
    assert 31 in _values(experiment, "image_size") and 2049 in _values(experiment, "image_size")
    assert None not in _values(experiment, "image_size")  # nullable: null is a valid value
    assert ["x"] * 11 in _values(experiment, "augmentations")
    assert "a" * 201 in _values(experiment, "name") and "" in _values(experiment, "name")
    assert MISSING in _values(experiment, "split_id") and MISSING not in _values(experiment, "epochs")
    assert "not-sgd" in _values(experiment, "optimizer")
    _, _, split = body_cases(by_id["POST /api/splits/{project_id}"])
    assert pytest.approx(-0.001) in _values(split, "train") and pytest.approx(1.001) in _values(split, "train")
    assert any(isinstance(v, float) and math.isnan(v) for v in _values(split, "val"))
    _, _, export = body_cases(by_id["POST /api/export/run"])
    assert 12 in _values(export, "opset") and 24 in _values(export, "opset")
    kind, _, upload = body_cases(by_id["POST /api/datasets/import/upload"])
    assert kind == "form" and [c.what for c in upload if c.field == "file"] == ["text instead of a file", "missing"]
    samples = query_cases(by_id["GET /api/evaluation/{project_id}/{evaluation_id}/samples"])
    assert _values(samples, "cell") == ["not matching!"]


@pytest.mark.parametrize("schema,message", [
    ({"type": "object", "properties": {"a": {"type": "object"}}, "additionalProperties": False}, "type 'object'"),
    ({"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
      "additionalProperties": False}, "union of 2"),
    ({"type": "object", "properties": {"a": {"type": "string"}}}, "accepts unknown fields"),
], ids=["nested-object", "union", "extra-allowed"])
def test_generator_refuses_what_it_cannot_cover(schema, message):
    op = Operation("POST", "/api/x", {"requestBody": {"content": {"application/json": {"schema": schema}}}})
    with pytest.raises(Unhandled, match=message):
        body_cases(op)
    xml = Operation("POST", "/api/x", {"requestBody": {"content": {"application/xml": {"schema": schema}}}})
    with pytest.raises(Unhandled, match="application/xml"):
        body_cases(xml)


def test_snapshot_sees_writes(client, settings):
    """The "nothing was written" check can fail: a row or a file written is seen."""
    before = snapshot(settings)
    create_project(client, "detection", name="written")
    (settings.workspace / "stray.txt").write_text("x")
    assert changes(before, snapshot(settings)) == "table projects, file stray.txt"
