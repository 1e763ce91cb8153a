"""Issue #12 item 10 in the browser: deleting a project a job uses shows the 409 naming the job and
asks whether to stop it; declining keeps the project, accepting stops the job and deletes."""

from __future__ import annotations

import pytest

from appliance.store.db import session_scope
from appliance.store.tables import ImportJob
from tests.browser.conftest import screenshot

pytestmark = [pytest.mark.browser, pytest.mark.ray]


def test_delete_of_a_busy_project_asks_to_stop_its_job(page, server):
    pid = server.http.post("/api/projects", json={"name": "Busy project", "task": "classification"}).json()["data"]["id"]
    job_id = "imp-0123456789ff"
    with session_scope(server.settings.db_url) as s:  # an import waiting in the queue
        s.add(ImportJob(id=job_id, project_id=pid, status="queued", format="folder", source="x"))

    page.goto("/projects")
    row = page.locator("#projects-table tr", has_text="Busy project")
    dialogs: list[str] = []
    accept_force = [False]

    def answer(dialog):
        dialogs.append(dialog.message)
        forcing = dialog.message.endswith("Stop those jobs now and delete?")
        dialog.accept() if not forcing or accept_force[0] else dialog.dismiss()

    page.on("dialog", answer)
    row.locator("button.delete").click()
    page.locator(".toast", has_text=job_id).wait_for()
    assert len(dialogs) == 2 and dialogs[0].startswith("Delete project")
    assert f"import {job_id} (queued)" in dialogs[1] and dialogs[1].endswith("Stop those jobs now and delete?")
    screenshot(page, "project-delete-refused")
    assert server.http.get(f"/api/projects/{pid}").status_code == 200

    accept_force[0] = True
    row.locator("button.delete").click()
    row.wait_for(state="detached")
    assert server.http.get(f"/api/projects/{pid}").status_code == 404
    assert len(dialogs) == 4
