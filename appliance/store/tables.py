"""Database tables (SQLAlchemy 2 ORM). Portable SQL only, so a PostgreSQL URL works too.

Job-like records (imports, experiments, evaluations, exports) carry their own `status`;
the job runner and Ray jobs update them, and pages poll or stream them.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, false,
)
from sqlalchemy import DateTime as _DateTime
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from appliance.store.status import JobStatus


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class DateTime(TypeDecorator):
    """Timestamps are UTC everywhere; SQLite forgets the offset, so put it back on load."""

    impl = _DateTime(timezone=True)
    cache_ok = True

    def __init__(self, timezone: bool = True):
        super().__init__()

    def process_bind_param(self, value, dialect):
        return value.astimezone(timezone.utc) if value is not None and value.tzinfo else value

    def process_result_value(self, value, dialect):
        return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


class Base(DeclarativeBase):
    pass


class SchemaVersion(Base):
    __tablename__ = "schema_version"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    applied_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Lock(Base):
    """A named, database-wide lock: INSERT wins or fails atomically on every backend."""

    __tablename__ = "locks"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    acquired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    task: Mapped[str] = mapped_column(String(20))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("project_id", "sha256", name="uq_image_content"),
        # Browsing at size (issue #14 item 2, revision 0003_browse): import order (keyset pages), by
        # class, and the size-based health flags (two ranges each, OR-ed).
        Index("ix_images_browse", "project_id", "created_at", "id"),
        Index("ix_images_browse_label", "project_id", "label", "created_at", "id"),
        Index("ix_images_project_width", "project_id", "width"),
        Index("ix_images_project_height", "project_id", "height"),
        # The dataset summary's aggregates read this index alone, never the wide rows (revision
        # 0005_summary_indexes): at 100k images ~10x less to read per query.
        Index("ix_images_summary", "project_id", "width", "height", "phash", "label", "created_at", "id"),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    original_name: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    label: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    subset_hint: Mapped[str | None] = mapped_column(String(10), nullable=True)
    import_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # 64-bit perceptual hash (imagehash.phash of the thumbnail) as 16 hex digits; null until computed.
    phash: Mapped[str | None] = mapped_column(String(16), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    boxes: Mapped[list["Box"]] = relationship(
        back_populates="image", cascade="all, delete-orphan", passive_deletes=True, order_by="Box.id"
    )


class Box(Base):
    __tablename__ = "boxes"
    __table_args__ = (
        Index("ix_boxes_label_image", "label", "image_id"),  # box-class filter (0003_browse)
        # The summary's box counts and degenerate-box check read this index alone (0005_summary_indexes).
        Index("ix_boxes_summary", "image_id", "label", "x1", "y1", "x2", "y2"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(200), index=True)
    x1: Mapped[float] = mapped_column(Float)
    y1: Mapped[float] = mapped_column(Float)
    x2: Mapped[float] = mapped_column(Float)
    y2: Mapped[float] = mapped_column(Float)
    # Pascal VOC's `difficult`: evaluation ignores the object (no miss, no false positive); training uses it
    difficult: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    image: Mapped[Image] = relationship(back_populates="boxes")


class ImportJob(Base):
    __tablename__ = "import_jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.QUEUED)
    format: Mapped[str] = mapped_column(String(20))
    source: Mapped[str] = mapped_column(Text)
    yaml_file: Mapped[str | None] = mapped_column(String(255), nullable=True)  # YOLO: the root YAML to read
    detected: Mapped[str] = mapped_column(Text, default="")
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    added: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    warnings: Mapped[list] = mapped_column(JSON, default=list)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)  # queued -> running
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Split(Base):
    __tablename__ = "splits"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    train: Mapped[float] = mapped_column(Float)
    val: Mapped[float] = mapped_column(Float)
    test: Mapped[float] = mapped_column(Float)
    seed: Mapped[int] = mapped_column(Integer)
    stratified: Mapped[bool] = mapped_column(Boolean, default=True)
    from_source: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())  # "as imported"
    counts: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SplitAssignment(Base):
    __tablename__ = "split_assignments"
    __table_args__ = (Index("ix_split_assignments_browse", "split_id", "subset", "image_id"),)  # 0003_browse
    split_id: Mapped[str] = mapped_column(ForeignKey("splits.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True, index=True)
    subset: Mapped[str] = mapped_column(String(10), index=True)


class Experiment(Base):
    __tablename__ = "experiments"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    split_id: Mapped[str] = mapped_column(ForeignKey("splits.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(100))
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    class_names: Mapped[list] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.CREATED, index=True)
    best_metric: Mapped[float | None] = mapped_column(Float, nullable=True)
    epochs_done: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # Set by each claim (`runs.claim`); the driver of that claim is the only one that may move the run on.
    claim_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Who drives the run in Ray, to ask Ray whether it still lives: `task:<task id>` or `driver:<job id>`.
    ray_driver: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # Written every few seconds by the process driving the run; a stale one means the run died.
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Seconds trained by the run's ended attempts (each end adds its attempt's; a fresh start resets it).
    run_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")


class EpochRecord(Base):
    __tablename__ = "epochs"
    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    metrics: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Evaluation(Base):
    __tablename__ = "evaluations"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    subset: Mapped[str] = mapped_column(String(10))
    checkpoint: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.QUEUED, index=True)
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class EvalSample(Base):
    __tablename__ = "eval_samples"
    __table_args__ = (Index("ix_eval_samples_by_rank", "evaluation_id", "rank"),
                      Index("ix_eval_samples_errors", "evaluation_id", "is_error", "rank"))  # 0003_browse
    evaluation_id: Mapped[str] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, index=True)
    is_error: Mapped[bool] = mapped_column(Boolean, default=False)
    label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    payload: Mapped[dict] = mapped_column(JSON)


class EvalSampleCell(Base):
    """The confusion-matrix cells (truth, prediction) of a sample, so the cell filter runs in SQL: one
    per classification sample, one per matched or unmatched box pair of a detection sample."""

    __tablename__ = "eval_sample_cells"
    evaluation_id: Mapped[str] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), primary_key=True)
    truth: Mapped[int] = mapped_column(Integer, primary_key=True)
    pred: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[str] = mapped_column(String(32), primary_key=True)


class EvalSampleClass(Base):
    """The classes (indices) of a detection sample's true and predicted boxes: the label filter in SQL."""

    __tablename__ = "eval_sample_classes"
    evaluation_id: Mapped[str] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), primary_key=True)
    class_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[str] = mapped_column(String(32), primary_key=True)


class Export(Base):
    __tablename__ = "exports"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    format: Mapped[str] = mapped_column(String(20))
    precision: Mapped[str] = mapped_column(String(10))
    dynamic_batch: Mapped[bool] = mapped_column(Boolean, default=True)
    opset: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.QUEUED, index=True)
    # 64-bit on PostgreSQL (a bundle may pass 2 GiB); SQLite's INTEGER is 64-bit already
    size_bytes: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), nullable=True)
    info: Mapped[dict] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class LoginSession(Base):
    """A browser sign-in (token mode). Only the SHA-256 of the session id is stored: the cookie holds
    the id and its HMAC signature, so neither a database copy nor a log of rows signs anyone in."""

    __tablename__ = "login_sessions"
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class Deployment(Base):
    """A live prediction endpoint (issue #16): one Ray Serve application serving a completed export at
    `/models/<name>`. Only the SHA-256 of its API key is stored; the key itself is shown once."""

    __tablename__ = "deployments"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    export_id: Mapped[str] = mapped_column(ForeignKey("exports.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    # deploying | running | failed | stopped
    status: Mapped[str] = mapped_column(String(20), default="deploying", index=True)
    min_replicas: Mapped[int] = mapped_column(Integer, default=1)
    max_replicas: Mapped[int] = mapped_column(Integer, default=1)
    gpu_fraction: Mapped[float] = mapped_column(Float, default=0.0)
    max_batch_size: Mapped[int] = mapped_column(Integer, default=8)
    batch_wait_ms: Mapped[float] = mapped_column(Float, default=5.0)
    auth: Mapped[str] = mapped_column(String(10), default="key")
    api_key_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
