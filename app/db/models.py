"""Database tables (SQLAlchemy 2.0). Times are naive UTC, the same on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = "queued", "running", "succeeded", "failed", "canceled"
FINAL = (SUCCEEDED, FAILED, CANCELED)
STATUSES = (QUEUED, RUNNING, *FINAL)
META_TRAIN, META_TEST, SWEEP = "meta-train", "meta-test", "sweep"
MAX_ID = 2**31 - 1  # ids and versions are INTEGER columns; PostgreSQL's hold no more (a larger one: 4xx)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def iso(t) -> str | None:
    """A stored (naive UTC) time as the API shows it: ISO 8601, milliseconds, ``Z``."""
    return None if t is None else t.isoformat(timespec="milliseconds") + "Z"


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=QUEUED, index=True)
    spec: Mapped[dict] = mapped_column(JSON)  # as submitted
    plan: Mapped[dict] = mapped_column(JSON)  # fully defaulted: what runs
    register_as: Mapped[str | None] = mapped_column(String(64))
    loss_version_id: Mapped[int | None] = mapped_column(  # meta-test target
        ForeignKey("loss_versions.id", use_alter=True, name="fk_jobs_loss_version_id"))
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))
    progress_completed: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    progress_unit: Mapped[str] = mapped_column(String(32), default="iterations")
    metrics: Mapped[dict | None] = mapped_column(JSON)  # latest
    error: Mapped[dict | None] = mapped_column(JSON)  # {code, detail}
    result: Mapped[dict | None] = mapped_column(JSON)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # the lease: a runner owns the job while it heartbeats; an expired lease may be taken over
    owner: Mapped[str | None] = mapped_column(String(128))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # the Celery runner: when the job's latest message was handed to the broker (None: it has none)
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime)
    # the API key that submitted the job (None: an open server): its concurrent-jobs limit
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", name="fk_jobs_api_key_id"),
                                                   index=True)
    # a sweep's trial: the sweep job it belongs to (a trial's loss is registered by its sweep, not by itself)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", name="fk_jobs_parent_id", ondelete="CASCADE"),
                                                  index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class JobEvent(Base):
    """Progress, metrics and status changes of a job, in order: the SSE stream and metric history."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(16))  # progress | metrics | status
    data: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Checkpoint(Base):
    """The latest resumable state of a job (older ones are replaced)."""

    __tablename__ = "checkpoints"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    iteration: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class JobFile(Base):
    """A finished job's report (report.json) and figures (PNG)."""

    __tablename__ = "job_files"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    media_type: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Loss(Base):
    __tablename__ = "losses"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    versions: Mapped[list[LossVersion]] = relationship(back_populates="loss", order_by="LossVersion.version")
    aliases: Mapped[list[LossAlias]] = relationship(order_by="LossAlias.alias")


class LossVersion(Base):
    __tablename__ = "loss_versions"
    __table_args__ = (UniqueConstraint("loss_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    loss_id: Mapped[int] = mapped_column(ForeignKey("losses.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    # lineage; unique, so a job can register its loss only once whatever happens to its runner
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), unique=True)
    sha256: Mapped[str] = mapped_column(String(64))  # of the weights
    weights: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)  # loss.safetensors
    spec: Mapped[dict] = mapped_column(JSON)  # loss.json
    metrics: Mapped[dict | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="ready")
    family: Mapped[str | None] = mapped_column(String(64), index=True)  # the spec's task_family, for filters
    description: Mapped[str | None] = mapped_column(Text)  # markdown: what the loss is for, how it was judged
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    loss: Mapped[Loss] = relationship(back_populates="versions")
    tags: Mapped[list[LossTag]] = relationship(order_by="LossTag.key", cascade="all, delete-orphan")


class LossAlias(Base):
    __tablename__ = "loss_aliases"

    loss_id: Mapped[int] = mapped_column(ForeignKey("losses.id", ondelete="CASCADE"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("loss_versions.id", ondelete="CASCADE"))


class LossTag(Base):
    __tablename__ = "loss_tags"

    version_id: Mapped[int] = mapped_column(ForeignKey("loss_versions.id", ondelete="CASCADE"),
                                            primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class ApiKey(Base):
    """A bearer token ``ml3_<prefix>_<secret>``: only its sha256 is kept; the prefix names it."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(16))  # read | submit | admin, each including the ones before
    name: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)


class Dataset(Base):
    """An uploaded set of regression tasks, normalised to ml3core's TaskData bytes: Celery workers
    on other machines share only the database, so the arrays live in it."""

    __tablename__ = "datasets"
    __table_args__ = {"sqlite_autoincrement": True}  # ids are never reused: specs and losses name them

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    filename: Mapped[str | None] = mapped_column(String(256))
    format: Mapped[str] = mapped_column(String(16))  # what was uploaded: csv | npz
    sha256: Mapped[str] = mapped_column(String(64))  # of ``data``
    size: Mapped[int] = mapped_column(Integer)  # bytes of ``data``
    summary: Mapped[dict] = mapped_column(JSON)  # TaskData.summary(): shapes, rows per task, statistics
    data: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
