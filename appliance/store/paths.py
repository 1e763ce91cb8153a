"""Workspace layout and the one path-safety check.

    <workspace>/aistudio.db
    <workspace>/projects/<project_id>/dataset/images/<file>
    <workspace>/projects/<project_id>/dataset/.thumbs/<file>
    <workspace>/projects/<project_id>/experiments/<experiment_id>/...
    <workspace>/projects/<project_id>/experiments/<experiment_id>/cache/   (decoded images, ray_jobs.core.cache)
    <workspace>/projects/<project_id>/exports/<export_id>/...
    <workspace>/staging/<job_id>/          (imports are staged here, then committed)
    <workspace>/ray_results/               (Ray Train storage_path)
"""

from __future__ import annotations

from pathlib import Path

from appliance.store.errors import NotFound


def safe_join(base: Path, *parts: str) -> Path:
    """Join user-supplied parts under `base`; anything that escapes it (`..`, absolute paths,
    symlinks pointing outside) is a NotFound, so callers never touch a path outside `base`."""
    base = base.resolve()
    candidate = base.joinpath(*parts)
    resolved = candidate.resolve()
    if resolved != base and base not in resolved.parents:
        raise NotFound(f"File {'/'.join(parts)} not found")
    return resolved


def is_within(path: Path, roots: list[Path]) -> bool:
    """True when `path` (symlinks resolved) lies inside one of `roots`."""
    resolved = path.resolve()
    return any(resolved == r or r in resolved.parents for r in (root.resolve() for root in roots))


class Workspace:
    """Where each kind of file lives; the only place that spells out the layout."""

    def __init__(self, root: Path):
        self.root = root

    def ensure(self) -> None:
        for folder in (self.projects_dir, self.staging_dir, self.ray_results_dir):
            folder.mkdir(parents=True, exist_ok=True)

    @property
    def projects_dir(self) -> Path:
        return self.root / "projects"

    @property
    def staging_dir(self) -> Path:
        return self.root / "staging"

    @property
    def ray_results_dir(self) -> Path:
        return self.root / "ray_results"

    def project_dir(self, project_id: str) -> Path:
        return self.projects_dir / project_id

    def images_dir(self, project_id: str) -> Path:
        return self.project_dir(project_id) / "dataset" / "images"

    def thumbs_dir(self, project_id: str) -> Path:
        return self.project_dir(project_id) / "dataset" / ".thumbs"

    @staticmethod
    def thumb_name(filename: str) -> str:
        """The thumbnail file of a stored image (a JPEG whatever the image's format)."""
        return Path(filename).stem + ".jpg"

    def experiment_dir(self, project_id: str, experiment_id: str) -> Path:
        return self.project_dir(project_id) / "experiments" / experiment_id

    def decoded_cache_dir(self, project_id: str, experiment_id: str) -> Path:
        """The experiment's decoded-image cache (`ray_jobs.core.cache`): deleted with the experiment."""
        return self.experiment_dir(project_id, experiment_id) / "cache"

    def export_dir(self, project_id: str, export_id: str) -> Path:
        return self.project_dir(project_id) / "exports" / export_id

    def evaluation_dir(self, project_id: str, evaluation_id: str) -> Path:
        return self.project_dir(project_id) / "evaluations" / evaluation_id
