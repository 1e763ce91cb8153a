"""Every JSON route documents what it returns: no untyped `dict` in a 200/201/202 response.

The check walks the OpenAPI schema of the real app (`create_app`): each success response with a JSON
body must resolve to objects that name their properties, all the way down. A free-form object
(an object without properties, or `{}` / Any) is allowed only for the fields listed in FREE_FORM,
which say so in their description. A new route declaring `Envelope[dict]` fails here.
"""

from __future__ import annotations

import pytest

from appliance.main import create_app

# (schema name, field) whose value is free-form on purpose (task-specific metrics, raw job records).
FREE_FORM = {
    ("EvaluationDetailPublic", "metrics"),
    ("ExportPublic", "parity"),
    ("ExportPublic", "latency"),
    ("ExportPublic", "info"),
}
SUCCESS = ("200", "201", "202")


@pytest.fixture
def openapi(settings) -> dict:
    return create_app(settings).openapi()


def _untyped(schema: dict, components: dict, where: str, seen: set[str]) -> list[str]:
    """The paths (`Model.field[]…`) under `schema` whose value is an object or Any without properties."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name in seen:
            return []
        return _untyped(components[name], components, name, seen | {name})
    problems = []
    for key in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(key, []):
            problems += _untyped(option, components, where, seen)
    if any(key in schema for key in ("anyOf", "oneOf", "allOf", "const", "enum")):
        return problems
    kind = schema.get("type")
    if kind is None:
        return [f"{where}: any value (no type)"]
    if kind == "array":
        return problems + _untyped(schema.get("items", {}), components, f"{where}[]", seen)
    if kind != "object":
        return problems
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    if not properties and extra in (None, True, {}):
        return problems + [f"{where}: object without properties"]
    if isinstance(extra, dict) and extra:
        problems += _untyped(extra, components, f"{where}{{}}", seen)
    model = schema.get("title", where)
    for field, sub in properties.items():
        if (model, field) in FREE_FORM:
            continue
        problems += _untyped(sub, components, f"{model}.{field}", seen)
    return problems


def _json_success_responses(openapi: dict):
    for path, methods in openapi["paths"].items():
        for method, operation in methods.items():
            for code in SUCCESS:
                response = operation.get("responses", {}).get(code)
                if response is None:
                    continue
                body = response.get("content", {}).get("application/json")
                if body is not None:
                    yield f"{method.upper()} {path} {code}", body.get("schema", {})


def test_every_json_success_response_is_typed(openapi):
    components = openapi["components"]["schemas"]
    routes = list(_json_success_responses(openapi))
    assert len(routes) >= 38  # every JSON route of the API is walked, not an empty list
    problems = {route: found for route, schema in routes if (found := _untyped(schema, components, route, set()))}
    assert problems == {}


def test_free_form_fields_exist_and_say_so(openapi):
    components = openapi["components"]["schemas"]
    for model, field in FREE_FORM:
        description = components[model]["properties"][field].get("description", "")
        assert "Free-form" in description, (model, field)


def test_the_walker_flags_an_untyped_envelope(openapi):
    """The check itself can fail: `Envelope[dict]` and a bare `{}` are reported, a typed model is not."""
    components = openapi["components"]["schemas"]
    untyped = {"type": "object", "properties": {"status": {"type": "string"},
                                                "data": {"type": "object", "additionalProperties": True}},
               "title": "Envelope[dict]"}
    assert _untyped(untyped, components, "GET /x 200", set()) == ["Envelope[dict].data: object without properties"]
    assert _untyped({}, components, "GET /y 200", set()) == ["GET /y 200: any value (no type)"]
    assert _untyped({"$ref": "#/components/schemas/ExperimentDetailPublic"}, components, "GET /z 200", set()) == []


def test_routes_declare_their_models(openapi):
    """Spot checks: the documented shape is the resource's model, not a dict."""
    def data_ref(path: str, method: str, code: str = "200") -> str:
        schema = openapi["paths"][path][method]["responses"][code]["content"]["application/json"]["schema"]
        envelope = openapi["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
        return envelope["properties"]["data"].get("$ref", str(envelope["properties"]["data"]))

    assert data_ref("/api/training/{project_id}/experiments/{experiment_id}", "get").endswith("ExperimentDetailPublic")
    assert data_ref("/api/training/run", "post", "202").endswith("/ExperimentPublic")
    assert data_ref("/api/evaluation/{project_id}/{evaluation_id}", "get").endswith("EvaluationDetailPublic")
    assert data_ref("/api/export/run", "post", "202").endswith("ExportPublic")
    assert data_ref("/api/datasets/{project_id}", "get").endswith("DatasetSummaryPublic")
    assert data_ref("/api/system/health", "get").endswith("HealthPublic")
    assert data_ref("/api/splits/{project_id}/{split_id}", "delete").endswith("Deleted")
