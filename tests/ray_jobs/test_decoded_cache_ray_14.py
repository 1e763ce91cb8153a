"""Issue #14 item 4: the decoded-image cache through the real Ray training path, and its deletion.

Reuses the session's shared `trained_classifier` (no extra training): its run, on Ray Train, must
have built the experiment's train and val caches once, whose val images are exactly what the eval
transform makes of the files. Deleting an experiment or a project deletes its cache.
"""

from __future__ import annotations

import pytest
import torch

from appliance.store.paths import Workspace
from appliance.store.runs import run_inputs
from ray_jobs.core import cache as cache_module
from ray_jobs.core.data import eval_transform, load_rgb
from tests.fixtures import create_project
from tests.workflows import create_experiment

pytestmark = pytest.mark.ray


def _caches(folder) -> dict[str, list]:
    found: dict[str, list] = {}
    for path in folder.glob("*.npy"):
        if not path.name.endswith(".sizes.npy"):
            found.setdefault(path.name.split("-")[0], []).append(path)
    return found


def test_ray_training_built_the_decoded_cache_once(server, trained_classifier, monkeypatch):
    pid, _, eid = trained_classifier
    workspace = Workspace(server.settings.workspace)
    folder = workspace.decoded_cache_dir(pid, eid)
    caches = _caches(folder)
    assert {role: len(paths) for role, paths in caches.items()} == {"train": 1, "val": 1}
    log = server.http.get(f"/api/training/{pid}/experiments/{eid}/logs").text
    assert log.count("decoded cache for train:") == 1 and log.count("decoded cache for val:") == 1, log

    def no_decode(path):
        raise AssertionError(f"decoded {path}: the cache should have been read")

    train, val = run_inputs(server.settings.db_url, workspace, eid)
    assert all(len(s["sha256"]) == 64 for s in train + val)  # the key follows the images' bytes
    monkeypatch.setattr(cache_module, "load_rgb", no_decode)
    cached = cache_module.open_or_build(val, "classification", 32, folder, "val")
    assert cached is not None and cached.path == caches["val"][0]
    transform = eval_transform("classification", 32)
    for i, sample in enumerate(val):
        expected = transform(load_rgb(sample["path"])).as_subclass(torch.Tensor)
        assert torch.allclose(cached.eval_tensor(i), expected, atol=1e-6)


def test_deleting_an_experiment_or_project_deletes_its_cache(server, trained_classifier):
    pid, sid, _ = trained_classifier
    workspace = Workspace(server.settings.workspace)
    eid = create_experiment(server.http, pid, sid, name="cache-deletion")
    folder = workspace.decoded_cache_dir(pid, eid)
    folder.mkdir(parents=True)
    (folder / "val-classification-32-x.npy").write_bytes(b"cache")
    assert server.http.delete(f"/api/training/{pid}/experiments/{eid}").status_code in (200, 204)
    assert not folder.exists()

    other = create_project(server.http)
    folder = workspace.decoded_cache_dir(other, "exp-any")
    folder.mkdir(parents=True)
    (folder / "train-classification-32-x.npy").write_bytes(b"cache")
    assert server.http.delete(f"/api/projects/{other}").status_code in (200, 204)
    assert not folder.exists()
