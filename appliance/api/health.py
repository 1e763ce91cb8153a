"""Dataset health (issue 13, item 7): near-duplicate groups, split leaks, and the page listing the groups."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from appliance.http.deps import LimitQ, OffsetQ, ProjectId, SessionDep, SettingsDep
from appliance.http.envelope import Envelope, Page, ok
from appliance.schemas import NearDuplicateGroup, SplitLeaks
from appliance.services import health as service
from appliance.services import projects as project_service
from appliance.web import render, wants_fragment

router = APIRouter(tags=["datasets"])
DistanceQ = Annotated[int | None, Query(
    ge=0, le=service.MAX_DISTANCE,
    description="Hamming threshold in bits of the 64-bit perceptual hash; default AISTUDIO_NEAR_DUPLICATE_DISTANCE",
)]
GROUPS_PAGE = 50


@router.get("/api/datasets/{project_id}/near-duplicates", response_model=Envelope[Page[NearDuplicateGroup]])
def near_duplicates(project_id: ProjectId, session: SessionDep, settings: SettingsDep, distance: DistanceQ = None,
                    offset: OffsetQ = 0, limit: LimitQ = GROUPS_PAGE):
    """Groups of near-duplicate images (perceptual hashes within `distance` bits, linked transitively),
    largest first."""
    project_service.get_project(session, project_id)
    d = settings.near_duplicate_distance if distance is None else distance
    items, total = service.near_duplicate_groups(session, project_id, d, offset, limit)
    return ok(Page(items=items, total=total, offset=offset, limit=limit))


@router.get("/api/splits/{project_id}/{split_id}/leaks", response_model=Envelope[SplitLeaks])
def split_leaks(request: Request, project_id: ProjectId, split_id: str, session: SessionDep, settings: SettingsDep,
                distance: DistanceQ = None):
    """Near-duplicate pairs that straddle train and val/test: the count (per subset) and the first pairs."""
    d = settings.near_duplicate_distance if distance is None else distance
    data = service.split_leaks(session, project_id, split_id, d)
    if wants_fragment(request):
        return render(request, "fragments/split_leaks.html", leaks=data, project_id=project_id)
    return ok(data)


@router.get("/projects/{project_id}/dataset/near-duplicates", include_in_schema=False)
def near_duplicates_page(request: Request, project_id: ProjectId, session: SessionDep, settings: SettingsDep,
                         distance: DistanceQ = None, offset: OffsetQ = 0):
    from appliance.api.pages import SECTIONS

    project = project_service.get_project(session, project_id)
    d = settings.near_duplicate_distance if distance is None else distance
    groups, total = service.near_duplicate_groups(session, project_id, d, offset, GROUPS_PAGE)
    return render(request, "pages/near_duplicates.html", project=project, section="dataset", sections=SECTIONS,
                  project_id=project_id, groups=groups, total=total, offset=offset, limit=GROUPS_PAGE, distance=d,
                  default_distance=settings.near_duplicate_distance, max_distance=service.MAX_DISTANCE)
