"""Issue #15 item 5: the Helm chart as a scale-out install.

PostgreSQL by default (the chart's single-replica StatefulSet, or an external URL from a Secret),
SQLite refused with more than one pod unless overridden; the head runs the ingress and no training,
GPU workers scale from zero with the KubeRay autoscaler; every pod and container hardened (non-root,
no privilege escalation, seccomp RuntimeDefault, capabilities dropped, read-only root with emptyDirs
where Ray writes); the Ray dashboard not exposed outside the cluster by default; the appliance's
AISTUDIO_* settings on the head and every worker container.

Uses the helpers of test_docker_helm.py (helm from scripts/helm_tool.sh, kubernetes-validate, the
RayService schema helm/schemas/rayservice.ray.io_v1.json).
"""

from __future__ import annotations

import base64
import json
import subprocess

import pytest
import yaml

from tests.deploy.test_docker_helm import (
    CHART,
    K8S_VERSION,
    NAMESPACE,
    RELEASE,
    VALUE_SETS,
    _env_of,
    _exe,
    _kind,
    _one,
    _ray_pods,
    _rayservice_schema_errors,
    _render,
    _render_set,
    _run_helm,
)

EXTERNAL_URL = "postgresql+psycopg://ai:pw@db.example.com:5432/ai"
SQLITE_ONE_POD = ("--set", "postgresql.enabled=false", "--set", "cpuWorkers.enabled=false",
                  "--set", "ray.upgradeStrategy=None")
# Value sets rendered, linted and schema-validated here besides the default and GPU ones.
EXTRA_SETS = {
    "external-url": ("--set", f"database.url={EXTERNAL_URL}"),
    "sqlite-one-pod": SQLITE_ONE_POD,
    "dashboard-ingress": ("--set", "ray.dashboard.ingress.enabled=true",
                          "--set", "ray.dashboard.ingress.host=ray.example.com"),
}
ALL_SETS = {**{k: tuple(v) for k, v in VALUE_SETS.items()}, **EXTRA_SETS}


def _render_fails(*args: str) -> str:
    proc = _run_helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args, check=False)
    assert proc.returncode != 0, f"rendering with {args} should fail:\n{proc.stdout[:1000]}"
    return proc.stderr


def _secret_value(docs, name: str, key: str) -> str:
    (secret,) = [s for s in _kind(docs, "Secret") if s["metadata"]["name"] == name]
    return base64.b64decode(secret["data"][key]).decode()


def _ray_containers(docs):
    for group, template in _ray_pods(_one(docs, "RayService")):
        (container,) = template["spec"]["containers"]
        yield group, template["spec"], container


# --------------------------------------------------------------------------- database


def test_default_database_is_the_charts_postgresql():
    docs = _render_set("default")
    sts = _one(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == 1
    (pg,) = sts["spec"]["template"]["spec"]["containers"]
    assert pg["image"].startswith("postgres:")
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]  # block storage, not the RWX share
    (svc,) = [s for s in _kind(docs, "Service") if s["metadata"]["name"] == sts["spec"]["serviceName"]]
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert [p["port"] for p in svc["spec"]["ports"]] == [5432]

    pg_env = _env_of(pg)
    ref = pg_env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
    password = _secret_value(docs, ref["name"], ref["key"])
    assert len(password) >= 20
    user, db = pg_env["POSTGRES_USER"]["value"], pg_env["POSTGRES_DB"]["value"]
    for group, _, container in _ray_containers(docs):
        ref = _env_of(container)["AISTUDIO_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        url = _secret_value(docs, ref["name"], ref["key"])
        assert url == (f"postgresql+psycopg://{user}:{password}@"
                       f"{svc['metadata']['name']}.{NAMESPACE}.svc:5432/{db}"), group


@pytest.mark.parametrize("args, ref", [
    (("--set", "database.existingSecret=ext-db"), ("ext-db", "database-url")),
    (("--set", "database.existingSecret=ext-db", "--set", "database.existingSecretKey=url"), ("ext-db", "url")),
    (("--set", f"database.url={EXTERNAL_URL}"), ("aistudio-secrets", "database-url")),
])
def test_external_database_replaces_the_statefulset(args, ref):
    docs = _render(*args)
    assert not _kind(docs, "StatefulSet"), "an external database needs no chart PostgreSQL"
    assert not any("postgres-password" in s["data"] for s in _kind(docs, "Secret"))
    for _, _, container in _ray_containers(docs):
        got = _env_of(container)["AISTUDIO_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert (got["name"], got["key"]) == ref
    if "database.url" in args[1]:
        assert _secret_value(docs, *ref) == EXTERNAL_URL


def test_gpu_values_use_an_external_database_from_a_secret():
    docs = _render_set("gpu")
    assert not _kind(docs, "StatefulSet")
    for _, _, container in _ray_containers(docs):
        assert _env_of(container)["AISTUDIO_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "aistudio-db"


@pytest.mark.parametrize("args", [
    ("--set", "postgresql.enabled=false"),  # head + CPU workers
    ("--set", "postgresql.enabled=false", "--set", "cpuWorkers.enabled=false"),  # NewCluster: 2 heads
    ("--set", "postgresql.enabled=false", "--set", "cpuWorkers.enabled=false",
     "--set", "ray.upgradeStrategy=None", "--set", "gpuWorkers.enabled=true"),  # autoscaled GPU group
    ("--set", "database.url=sqlite:////workspace/aistudio.db"),
], ids=["cpu-workers", "new-cluster-upgrade", "gpu-autoscaled", "sqlite-url"])
def test_sqlite_with_more_than_one_pod_is_refused(args):
    err = _render_fails(*args)
    assert "SQLite with more than one pod is refused" in err, err
    assert "database.allowSqliteWithMultiplePods=true" in err and "postgresql.enabled=true" in err, err


def test_sqlite_renders_for_one_pod_or_with_the_override():
    docs = _render(*SQLITE_ONE_POD)
    assert not _kind(docs, "StatefulSet")
    for _, _, container in _ray_containers(docs):
        assert "AISTUDIO_DATABASE_URL" not in _env_of(container)  # SQLite in the workspace
    docs = _render("--set", "postgresql.enabled=false", "--set", "database.allowSqliteWithMultiplePods=true")
    assert len(_ray_pods(_one(docs, "RayService"))) == 2 and not _kind(docs, "StatefulSet")


# --------------------------------------------------------------------------- head, GPU workers, workspace


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_head_runs_no_training_and_workers_autoscale(name):
    cluster = _one(_render_set(name), "RayService")["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    assert cluster["enableInTreeAutoscaling"] is True
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] == 0, f"{group['groupName']} must be able to scale to zero"
        assert group["maxReplicas"] >= 1
    if name == "gpu":
        (gpu,) = [g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu"]
        assert gpu["replicas"] == 0, "GPU workers start from zero; the autoscaler adds them"


def test_gpu_group_enabled_on_defaults_starts_from_zero():
    cluster = _one(_render("--set", "gpuWorkers.enabled=true"), "RayService")["spec"]["rayClusterConfig"]
    (gpu,) = [g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert (gpu["replicas"], gpu["minReplicas"]) == (0, 0) and cluster["enableInTreeAutoscaling"] is True


def _head_resources(docs) -> dict:
    params = _one(docs, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]
    return json.loads(params["resources"].strip("'"))


def test_gpus_on_demand_are_announced_by_the_head():
    """With GPU workers at zero the cluster has no GPU yet; without the head's marker resource the app
    would train and evaluate on the CPU and the autoscaler would never add a GPU pod."""
    from ray_jobs.gpus import ON_DEMAND_RESOURCE, schedulable_gpus

    docs = _render_set("gpu")
    resources = _head_resources(docs)
    assert resources[ON_DEMAND_RESOURCE] == yaml.safe_load((CHART.parent / "ci-values-gpu.yaml").read_text())[
        "gpuWorkers"]["gpusPerWorker"]
    # What the app computes on that cluster before any GPU pod is up: the head's resources only.
    assert schedulable_gpus({"CPU": 4.0, **resources}) >= 1
    for group in _one(docs, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        assert ON_DEMAND_RESOURCE not in group["rayStartParams"].get("resources", "")
    for args in ((), ("--set", "gpuWorkers.enabled=true", "--set", "ray.enableAutoscaling=false")):
        assert ON_DEMAND_RESOURCE not in _head_resources(_render(*args)), args


def test_schedulable_gpus():
    from ray_jobs.gpus import ON_DEMAND_RESOURCE, schedulable_gpus

    assert schedulable_gpus({}) == 0
    assert schedulable_gpus({"CPU": 8.0, "GPU": 2.0}) == 2
    assert schedulable_gpus({"CPU": 8.0, ON_DEMAND_RESOURCE: 1.0}) == 1
    assert schedulable_gpus({"GPU": 4.0, ON_DEMAND_RESOURCE: 1.0}) == 4


def test_head_gpus_cannot_be_turned_on():
    err = _render_fails("--set-string", "head.rayStartParams.num-gpus=1")
    assert "head.rayStartParams.num-gpus" in err, err


@pytest.mark.parametrize("name", list(ALL_SETS))
def test_workspace_is_one_rwx_claim_on_every_ray_pod(name):
    docs = _render(*ALL_SETS[name])
    claims, paths = set(), set()
    for group, pod, container in _ray_containers(docs):
        volumes = {v["name"]: v for v in pod["volumes"]}
        claims.add(volumes["workspace"]["persistentVolumeClaim"]["claimName"])
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        paths.add(mounts["workspace"])
        assert _env_of(container)["AISTUDIO_WORKSPACE"]["value"] == mounts["workspace"], group
    assert len(claims) == 1 and len(paths) == 1
    (pvc,) = [p for p in _kind(docs, "PersistentVolumeClaim") if p["metadata"]["name"] in claims]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


# --------------------------------------------------------------------------- security


def _effective(pod_ctx: dict, ctx: dict, key: str):
    return ctx.get(key, pod_ctx.get(key))


def _assert_hardened(where: str, pod_ctx: dict, ctx: dict) -> None:
    assert _effective(pod_ctx, ctx, "runAsNonRoot") is True, where
    assert _effective(pod_ctx, ctx, "runAsUser") not in (0, None), where
    assert ctx.get("allowPrivilegeEscalation") is False, where
    assert _effective(pod_ctx, ctx, "seccompProfile") == {"type": "RuntimeDefault"}, where
    assert ctx.get("capabilities", {}).get("drop") == ["ALL"], where
    assert ctx.get("readOnlyRootFilesystem") is True, where


def _all_pods(docs):
    """(where, pod spec) of every pod the release makes: Ray pods, PostgreSQL, the helm test pod."""
    pods = [(f"ray/{g}", t["spec"]) for g, t in _ray_pods(_one(docs, "RayService"))]
    pods += [(f"statefulset/{s['metadata']['name']}", s["spec"]["template"]["spec"]) for s in _kind(docs, "StatefulSet")]
    pods += [(f"pod/{p['metadata']['name']}", p["spec"]) for p in _kind(docs, "Pod")]
    return pods


@pytest.mark.parametrize("name", list(ALL_SETS))
def test_every_pod_and_container_is_hardened(name):
    docs = _render(*ALL_SETS[name])
    pods = _all_pods(docs)
    assert any(w.startswith("pod/") for w, _ in pods)
    for where, pod in pods:
        pod_ctx = pod.get("securityContext", {})
        assert pod_ctx.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        for container in pod["containers"] + pod.get("initContainers", []):
            _assert_hardened(f"{where}/{container['name']}", pod_ctx, container.get("securityContext", {}))
    cluster = _one(docs, "RayService")["spec"]["rayClusterConfig"]
    head_ctx = cluster["headGroupSpec"]["template"]["spec"]["securityContext"]
    # KubeRay adds the autoscaler container to the head pod with autoscalerOptions' securityContext.
    _assert_hardened("autoscaler", head_ctx, cluster["autoscalerOptions"]["securityContext"])


@pytest.mark.parametrize("name", list(ALL_SETS))
def test_ray_writes_to_emptydirs_not_the_root_filesystem(name):
    docs = _render(*ALL_SETS[name])
    for group, pod, container in _ray_containers(docs):
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert "/tmp" in mounts, f"{group}: Ray writes /tmp/ray; it needs a writable /tmp"
        for path, volume in mounts.items():
            if path in ("/tmp", "/home/ray/.cache", "/home/ray/.ray"):
                assert volumes[volume]["emptyDir"] == {}, (group, path)
    cluster = _one(docs, "RayService")["spec"]["rayClusterConfig"]
    head_volumes = {v["name"] for v in cluster["headGroupSpec"]["template"]["spec"]["volumes"]}
    (tmp,) = [m for m in cluster["autoscalerOptions"]["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert tmp["name"] in head_volumes
    for where, pod in _all_pods(docs):
        if where.startswith("statefulset/"):  # PostgreSQL: data, socket dir and /tmp are writable
            (container,) = pod["containers"]
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/var/lib/postgresql/data", "/var/run/postgresql", "/tmp"} <= mounts, where


def test_values_comment_names_the_writable_paths():
    text = (CHART / "values.yaml").read_text()
    comment = text[:text.index("\nwritablePaths:")].rsplit("\n\n", 1)[-1]
    for path in ("/tmp/ray", "/home/ray/.cache", "/home/ray/.ray"):
        assert path in comment, f"the writablePaths comment must say why {path} is writable"


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_dashboard_stays_inside_the_cluster_by_default(name):
    docs = _render_set(name)
    rs = _one(docs, "RayService")
    assert rs["spec"]["rayClusterConfig"]["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert [p["port"] for p in rs["spec"]["serveService"]["spec"]["ports"]] == [8000]
    for ingress in _kind(docs, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                service = path["backend"]["service"]
                assert service["port"]["number"] != 8265 and not service["name"].endswith("-head-svc"), ingress
    for svc in _kind(docs, "Service"):
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
        assert 8265 not in [p["port"] for p in svc["spec"]["ports"]]


def test_dashboard_ingress_only_when_enabled():
    docs = _render(*EXTRA_SETS["dashboard-ingress"])
    (dash,) = [i for i in _kind(docs, "Ingress") if i["metadata"]["name"].endswith("-dashboard")]
    (rule,) = dash["spec"]["rules"]
    assert rule["host"] == "ray.example.com"
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": f"{RELEASE}-head-svc", "port": {"number": 8265}}
    err = _render_fails("--set", "ray.dashboard.ingress.enabled=true")
    assert "ray.dashboard.ingress.host" in err, err
    err = _render_fails("--set", "ray.dashboard.serviceType=ExternalName")
    assert "ray.dashboard.serviceType" in err, err


# --------------------------------------------------------------------------- settings on every Ray process


@pytest.mark.parametrize("name", list(ALL_SETS))
def test_appliance_settings_on_head_and_every_worker(name):
    """serveConfigV2 runs appliance.serve:app_builder in the Serve controller (on the head) and the
    replica's runtime_env carries the settings from there; Train workers and tasks on worker pods
    get them too. So the head and every worker container carry the same AISTUDIO_* variables, and
    each one is a real setting."""
    from appliance.config import Settings, settings_env

    known = set(settings_env(Settings())) | {f"AISTUDIO_{f.upper()}" for f in Settings.model_fields}
    docs = _render(*ALL_SETS[name])
    groups = {}
    for group, _, container in _ray_containers(docs):
        env = _env_of(container)
        aistudio = {k: v for k, v in env.items() if k.startswith("AISTUDIO_")}
        unknown = set(aistudio) - known
        assert not unknown, f"{group}: {unknown} are not appliance settings"
        groups[group] = aistudio
    assert "head" in groups and (len(groups) >= 2 or name == "sqlite-one-pod"), groups.keys()
    first = next(iter(groups.values()))
    for needed in ("AISTUDIO_WORKSPACE", "AISTUDIO_RAY_ADDRESS", "AISTUDIO_TRAIN_GPU_FRACTION",
                   "AISTUDIO_EVAL_GPU_FRACTION", "AISTUDIO_ALLOWED_HOSTS"):
        assert needed in first, needed
    assert all(g == first for g in groups.values()), "head and workers must carry the same settings"


# --------------------------------------------------------------------------- lint and schemas


@pytest.mark.parametrize("name", list(EXTRA_SETS))
def test_helm_lint_extra_value_sets(name):
    _run_helm("lint", "--strict", str(CHART), *EXTRA_SETS[name])


@pytest.mark.parametrize("name", list(ALL_SETS))
def test_new_objects_pass_kubernetes_schema(name, tmp_path):
    """The StatefulSet, its Service, the dashboard Ingress and the Secrets against the Kubernetes 1.35
    schemas, strictly; the RayService (the autoscaler sidecar's options included, checked in place as
    core SecurityContext and VolumeMounts) against helm/schemas/rayservice.ray.io_v1.json."""
    docs = _render(*ALL_SETS[name])
    rayservice = _one(docs, "RayService")
    errors = _rayservice_schema_errors(rayservice)
    assert not errors, "\n".join(errors)
    assert rayservice["spec"]["rayClusterConfig"]["autoscalerOptions"]["securityContext"]
    to_check = [d for d in docs if d["kind"] in ("StatefulSet", "Service", "Ingress", "Secret")]
    target = tmp_path / f"{name}.yaml"
    target.write_text(yaml.safe_dump_all(to_check, sort_keys=False))
    proc = subprocess.run([_exe("kubernetes-validate"), "-k", K8S_VERSION, "--strict", str(target)],
                          capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert output.count(" passed for resource ") == len(to_check), output


# --------------------------------------------------------------------------- docs


def test_readme_has_a_scale_out_section():
    readme = (CHART.parents[1] / "README.md").read_text()
    section = readme.split("\n## Scale out\n", 1)[1].split("\n## ", 1)[0]
    for needed in ("head", "event bus", "GPU workers", "PostgreSQL", "ReadWriteMany", "AISTUDIO_DATABASE_URL",
                   "AISTUDIO_TRAIN_GPU_FRACTION", "AISTUDIO_EVAL_GPU_FRACTION", "helm/aistudio/README.md",
                   "aistudio_gpus_on_demand"):
        assert needed in section, f"README's Scale out section does not mention {needed}"
    # Joining a cluster is linked, not repeated: the paragraph lives under the linked heading.
    assert "](#settings)" in section
    settings = readme.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    assert "**Joining an existing Ray cluster.**" in settings
    assert "**Joining an existing Ray cluster.**" not in section
