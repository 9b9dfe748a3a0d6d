"""Files and fine-tuning jobs in the hub's database, in the shapes of OpenAI's Files and fine-tuning APIs.

The server creates, lists and cancels; `loradock worker` claims jobs (row locks with SKIP LOCKED on PostgreSQL,
so several workers never take one job twice), reports heartbeats, events and checkpoints, and finishes them.
Everything a tenant sees is filtered by its tenant; another tenant's ids answer "not found".
"""

from __future__ import annotations

import hashlib
import math
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, Literal

from pydantic import BaseModel, Field
from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from adapters.database import Database
from adapters.datafiles import DataError, check_file
from adapters.errors import ConflictError, InvalidAdapterError, NotFoundError, TooLargeError
from adapters.tables import DataFile, FineTuningCheckpoint, FineTuningEvent, FineTuningJob, utcnow

ACTIVE_STATUSES = ("validating_files", "queued", "running")
FINAL_STATUSES = ("succeeded", "failed", "cancelled")
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def _id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def _unix(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


# --- OpenAI wire objects ---------------------------------------------------------------------------------


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    status_details: str | None = None

    @classmethod
    def of(cls, row: DataFile) -> FileObject:
        return cls(
            id=row.id,
            bytes=row.bytes,
            created_at=_unix(row.created_at) or 0,
            filename=row.filename,
            purpose=row.purpose,
            status=row.status,
            status_details=row.status_details,
        )


class Hyperparameters(BaseModel):
    n_epochs: int | Literal["auto"] = "auto"
    batch_size: int | Literal["auto"] = "auto"
    learning_rate_multiplier: float | Literal["auto"] = "auto"
    beta: float | Literal["auto"] | None = None
    """DPO only: the strength of the KL penalty."""


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None
    model: str
    fine_tuned_model: str | None
    organization_id: str
    status: str
    hyperparameters: dict[str, Any]
    method: dict[str, Any]
    training_file: str
    validation_file: str | None
    result_files: list[str] = Field(default_factory=list)
    trained_tokens: int | None
    error: JobError | None
    seed: int
    suffix: str | None
    metadata: dict[str, Any] | None
    estimated_finish: int | None = None
    integrations: list[Any] = Field(default_factory=list)
    loradock: dict[str, Any] = Field(default_factory=dict)
    """Our extension: LoRA settings, the hub adapter version, attempts."""

    @classmethod
    def of(cls, row: FineTuningJob) -> JobObject:
        return cls(
            id=row.id,
            created_at=_unix(row.created_at) or 0,
            finished_at=_unix(row.finished_at),
            model=row.model,
            fine_tuned_model=row.fine_tuned_model,
            organization_id=row.tenant,
            status=row.status,
            hyperparameters=dict(row.hyperparameters),
            method={"type": row.method, row.method: {"hyperparameters": dict(row.hyperparameters)}},
            training_file=row.training_file,
            validation_file=row.validation_file,
            trained_tokens=row.trained_tokens,
            error=JobError(**row.error) if row.error else None,
            seed=row.seed,
            suffix=row.suffix,
            metadata=dict(row.meta) if row.meta else None,
            loradock={"lora": dict(row.lora), "adapter": row.adapter_ref, "attempts": row.attempts},
        )


class EventObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: str
    data: dict[str, Any] | None = None


class CheckpointObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, Any]
    step_number: int


class Page(BaseModel):
    object: Literal["list"] = "list"
    data: list[Any]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None

    @classmethod
    def of(cls, data: list[Any], has_more: bool) -> Page:
        """A page of objects that have an `id`, in the order given."""
        return cls(
            data=data,
            has_more=has_more,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
        )


class JobRequest(BaseModel):
    """What a client asks for, already checked by the server (model resolved, files owned by the tenant)."""

    model: str
    training_file: str
    validation_file: str | None = None
    method: Literal["supervised", "dpo"] = "supervised"
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    lora: dict[str, Any] = Field(default_factory=dict)
    suffix: str | None = None
    seed: int | None = None
    metadata: dict[str, str] | None = None


# --- the store -------------------------------------------------------------------------------------------


class FineTuningStore:
    def __init__(self, database: Database, files_dir: Path, max_file_bytes: int) -> None:
        self.db = database
        self.files_dir = files_dir
        self.max_file_bytes = max_file_bytes
        files_dir.mkdir(parents=True, exist_ok=True)

    # files ----------------------------------------------------------------------------------------------

    def create_file(self, tenant: str, filename: str, purpose: str, stream: BinaryIO) -> FileObject:
        """Store an upload and check it; a file with bad rows is kept (status `error`) with the reasons."""
        if not filename.lower().endswith(FILE_SUFFIXES):
            raise InvalidAdapterError(f"{filename!r}: upload a {', '.join(FILE_SUFFIXES)} file")
        file_id = _id("file")
        suffix = Path(filename).suffix.lower()
        path = self.files_dir / f"{file_id}{suffix}"  # readers pick the format by suffix
        partial = self.files_dir / f".{file_id}.partial"
        digest = hashlib.sha256()
        size = 0
        try:
            with partial.open("wb") as sink:
                while block := stream.read(1 << 20):
                    size += len(block)
                    if size > self.max_file_bytes:
                        raise TooLargeError(f"the file is larger than {self.max_file_bytes} bytes")
                    digest.update(block)
                    sink.write(block)
            readable = partial.with_suffix(suffix)
            partial.rename(readable)
            status, details, shape, rows = self._check(readable, filename)
            readable.rename(path)
        except BaseException:
            for leftover in self.files_dir.glob(f".{file_id}.*"):
                leftover.unlink(missing_ok=True)
            raise
        with self.db.session() as session:
            row = DataFile(
                id=file_id,
                tenant=tenant,
                filename=filename[:256],
                purpose=purpose,
                bytes=size,
                sha256=digest.hexdigest(),
                status=status,
                status_details=details,
                shape=shape,
                rows=rows,
            )
            session.add(row)
            session.flush()
            return FileObject.of(row)

    @staticmethod
    def _check(path: Path, filename: str) -> tuple[str, str | None, str | None, int]:
        try:
            check = check_file(path)
        except DataError as exc:
            return "error", str(exc).replace(str(path), filename), None, 0
        if check.ok:
            return "processed", None, check.shape, check.rows
        return "error", check.summary(filename)[:4096], check.shape, check.rows

    def list_files(self, tenant: str | None, purpose: str | None = None) -> list[FileObject]:
        with self.db.read() as session:
            query = select(DataFile).order_by(DataFile.created_at.desc())
            if tenant is not None:
                query = query.where(DataFile.tenant == tenant)
            if purpose:
                query = query.where(DataFile.purpose == purpose)
            return [FileObject.of(row) for row in session.scalars(query)]

    def get_file(self, file_id: str, tenant: str | None) -> FileObject:
        with self.db.read() as session:
            return FileObject.of(self._file(session, file_id, tenant))

    def file_path(self, file_id: str, tenant: str | None) -> tuple[Path, str]:
        """The stored bytes and the original name (for downloads and the worker, which reads by suffix)."""
        with self.db.read() as session:
            row = self._file(session, file_id, tenant)
            return self.files_dir / f"{row.id}{Path(row.filename).suffix.lower()}", row.filename

    def delete_file(self, file_id: str, tenant: str | None) -> None:
        with self.db.session() as session:
            row = self._file(session, file_id, tenant)
            busy = session.scalar(
                select(func.count())
                .select_from(FineTuningJob)
                .where(
                    or_(FineTuningJob.training_file == file_id, FineTuningJob.validation_file == file_id),
                    FineTuningJob.status.in_(ACTIVE_STATUSES),
                )
            )
            if busy:
                raise ConflictError(f"{file_id} is used by a fine-tuning job that has not finished")
            session.delete(row)
            stored = self.files_dir / f"{row.id}{Path(row.filename).suffix.lower()}"
        stored.unlink(missing_ok=True)

    @staticmethod
    def _file(session: Session, file_id: str, tenant: str | None) -> DataFile:
        row = session.get(DataFile, file_id)
        if row is None or (tenant is not None and row.tenant != tenant):
            raise NotFoundError(f"No such File object: {file_id}")
        return row

    # jobs -----------------------------------------------------------------------------------------------

    def create_job(self, tenant: str, request: JobRequest, lora: dict[str, Any]) -> JobObject:
        with self.db.session() as session:
            for param, file_id in (
                ("training_file", request.training_file),
                ("validation_file", request.validation_file),
            ):
                if file_id is not None:
                    try:
                        self._file(session, file_id, tenant)
                    except NotFoundError as exc:
                        raise NotFoundError(f"{param}: no such File object: {file_id}") from exc
            seq = (session.scalar(select(func.max(FineTuningJob.seq))) or 0) + 1
            row = FineTuningJob(
                id=_id("ftjob"),
                seq=seq,
                tenant=tenant,
                model=request.model,
                training_file=request.training_file,
                validation_file=request.validation_file,
                method=request.method,
                hyperparameters=request.hyperparameters.model_dump(exclude_none=True),
                lora=lora,
                suffix=request.suffix,
                seed=request.seed if request.seed is not None else secrets.randbelow(2**31),
                meta=request.metadata or {},
                status="validating_files",
                attempts=0,
                cancel_requested=False,
            )
            session.add(row)
            session.flush()
            self._event(session, row.id, "info", f"Created fine-tuning job: {row.id}")
            return JobObject.of(row)

    def list_jobs(self, tenant: str | None, after: str | None, limit: int) -> Page:
        with self.db.read() as session:
            query = select(FineTuningJob).order_by(FineTuningJob.seq.desc())
            if tenant is not None:
                query = query.where(FineTuningJob.tenant == tenant)
            if after is not None:
                cursor = self._job(session, after, tenant)
                query = query.where(FineTuningJob.seq < cursor.seq)
            rows = list(session.scalars(query.limit(limit + 1)))
            data = [JobObject.of(row) for row in rows[:limit]]
            return Page.of(data, len(rows) > limit)

    def get_job(self, job_id: str, tenant: str | None) -> JobObject:
        with self.db.read() as session:
            return JobObject.of(self._job(session, job_id, tenant))

    def cancel_job(self, job_id: str, tenant: str | None) -> JobObject:
        """Queued jobs stop at once; a running one is stopped by its worker within seconds."""
        with self.db.session() as session:
            row = self._job(session, job_id, tenant, lock=True)
            if row.status in FINAL_STATUSES:
                raise ConflictError(f"Job {job_id} has already {row.status}")
            if row.status == "running":
                row.cancel_requested = True
                self._event(session, row.id, "info", "Cancellation requested")
            else:
                row.status = "cancelled"
                row.finished_at = utcnow()
                self._event(session, row.id, "info", "Job cancelled")
            session.flush()
            return JobObject.of(row)

    def list_events(self, job_id: str, tenant: str | None, after: str | None, limit: int) -> Page:
        with self.db.read() as session:
            self._job(session, job_id, tenant)
            query = select(FineTuningEvent).where(FineTuningEvent.job_id == job_id).order_by(FineTuningEvent.seq.desc())
            if after is not None:
                cursor = session.scalar(select(FineTuningEvent.seq).where(FineTuningEvent.id == after))
                if cursor is None:
                    raise NotFoundError(f"No such event: {after}")
                query = query.where(FineTuningEvent.seq < cursor)
            rows = list(session.scalars(query.limit(limit + 1)))
            data = [
                EventObject(
                    id=row.id,
                    created_at=_unix(row.created_at) or 0,
                    level=row.level,
                    message=row.message,
                    type=row.type,
                    data=row.data,
                )
                for row in rows[:limit]
            ]
            return Page.of(data, len(rows) > limit)

    def list_checkpoints(self, job_id: str, tenant: str | None, after: str | None, limit: int) -> Page:
        with self.db.read() as session:
            job = self._job(session, job_id, tenant)
            query = (
                select(FineTuningCheckpoint)
                .where(FineTuningCheckpoint.job_id == job_id)
                .order_by(FineTuningCheckpoint.step.desc())
            )
            if after is not None:
                cursor = session.get(FineTuningCheckpoint, after)
                if cursor is None:
                    raise NotFoundError(f"No such checkpoint: {after}")
                query = query.where(FineTuningCheckpoint.step < cursor.step)
            rows = list(session.scalars(query.limit(limit + 1)))
            base_name = job.fine_tuned_model or f"ft:{job.model}:{job.suffix or ''}:{job.id}"
            data = [
                CheckpointObject(
                    id=row.id,
                    created_at=_unix(row.created_at) or 0,
                    fine_tuned_model_checkpoint=f"{base_name}:ckpt-step-{row.step}",
                    fine_tuning_job_id=job_id,
                    metrics={"step": row.step, **row.metrics},
                    step_number=row.step,
                )
                for row in rows[:limit]
            ]
            return Page.of(data, len(rows) > limit)

    def adapter_for(self, fine_tuned_model: str) -> str | None:
        """The hub version (NAME@VERSION) a `ft:...` model name stands for."""
        with self.db.read() as session:
            return session.scalar(
                select(FineTuningJob.adapter_ref).where(FineTuningJob.fine_tuned_model == fine_tuned_model)
            )

    # the worker's side ----------------------------------------------------------------------------------

    def claim(self, worker: str) -> JobObject | None:
        """Take the oldest job waiting for validation or training, marking it as this worker's."""
        with self.db.session() as session:
            query = (
                select(FineTuningJob)
                .where(
                    or_(
                        FineTuningJob.status == "queued",
                        and_(FineTuningJob.status == "validating_files", FineTuningJob.worker.is_(None)),
                    )
                )
                .order_by(FineTuningJob.seq)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            row = session.scalar(query)
            if row is None:
                return None
            row.worker = worker
            row.heartbeat_at = utcnow()
            if row.status == "queued":
                row.status = "running"
                row.started_at = row.started_at or utcnow()
                row.attempts += 1
            session.flush()
            return JobObject.of(row)

    def mark(self, job_id: str, status: str, message: str, **fields: Any) -> JobObject:
        """Move a job to `status` (with an event); `fields` set columns such as error or fine_tuned_model."""
        with self.db.session() as session:
            row = self._job(session, job_id, None, lock=True)
            row.status = status
            for name, value in fields.items():
                setattr(row, name, value)
            if status in FINAL_STATUSES:
                row.finished_at = utcnow()
            self._event(session, row.id, "error" if status == "failed" else "info", message)
            session.flush()
            return JobObject.of(row)

    def heartbeat(self, job_id: str, worker: str) -> Literal["run", "cancel", "lost"]:
        """Record that `worker` still runs the job. Answers "cancel" when cancellation was requested, and "lost"
        when the job is no longer this worker's (another took it over after this one went silent)."""
        with self.db.session() as session:
            row = self._job(session, job_id, None, lock=True)
            if row.worker != worker or row.status != "running":
                return "lost"
            row.heartbeat_at = utcnow()
            return "cancel" if row.cancel_requested else "run"

    def add_event(self, job_id: str, message: str, *, data: dict[str, Any] | None = None, level: str = "info") -> None:
        with self.db.session() as session:
            self._event(session, job_id, level, message, data)

    def add_checkpoint(self, job_id: str, step: int, metrics: dict[str, Any]) -> bool:
        """Record a checkpoint once; returns False when it was already recorded."""
        with self.db.session() as session:
            exists = session.scalar(
                select(FineTuningCheckpoint.id).where(
                    FineTuningCheckpoint.job_id == job_id, FineTuningCheckpoint.step == step
                )
            )
            if exists:
                return False
            session.add(FineTuningCheckpoint(id=_id("ftckpt"), job_id=job_id, step=step, metrics=metrics))
            return True

    def recover_stale(self, stale_after_s: float, max_attempts: int) -> list[str]:
        """Running jobs whose worker stopped reporting: back to the queue (resumed from their last checkpoint)
        while attempts remain, else failed with the reason. Returns the ids it changed. Jobs whose worker died
        while validating their files are released for another worker to validate."""
        cutoff = utcnow() - timedelta(seconds=stale_after_s)
        changed = []
        with self.db.session() as session:
            validating = session.scalars(
                select(FineTuningJob)
                .where(FineTuningJob.status == "validating_files", FineTuningJob.heartbeat_at < cutoff)
                .with_for_update(skip_locked=True)
            )
            for row in validating:
                row.worker = None
            stale = session.scalars(
                select(FineTuningJob)
                .where(FineTuningJob.status == "running", FineTuningJob.heartbeat_at < cutoff)
                .with_for_update(skip_locked=True)
            )
            for row in stale:
                changed.append(row.id)
                if row.cancel_requested:
                    row.status, row.finished_at = "cancelled", utcnow()
                    self._event(session, row.id, "info", "Job cancelled (its worker had stopped)")
                elif row.attempts >= max_attempts:
                    row.status, row.finished_at = "failed", utcnow()
                    row.error = {
                        "code": "worker_lost",
                        "message": f"The worker running this job stopped {row.attempts} times; giving up.",
                        "param": None,
                    }
                    self._event(session, row.id, "error", row.error["message"])
                else:
                    row.status = "queued"
                    self._event(
                        session,
                        row.id,
                        "warn",
                        f"Worker {row.worker} stopped; the job will resume from its last checkpoint",
                    )
        return changed

    @staticmethod
    def _job(session: Session, job_id: str, tenant: str | None, *, lock: bool = False) -> FineTuningJob:
        query = select(FineTuningJob).where(FineTuningJob.id == job_id)
        row = session.scalar(query.with_for_update() if lock else query)
        if row is None or (tenant is not None and row.tenant != tenant):
            raise NotFoundError(f"No such fine-tuning job: {job_id}")
        return row

    @staticmethod
    def _event(session: Session, job_id: str, level: str, message: str, data: dict[str, Any] | None = None) -> None:
        kind = "metrics" if data else "message"
        session.add(
            FineTuningEvent(id=_id("ftevent"), job_id=job_id, level=level, message=message[:2048], type=kind, data=data)
        )


def auto_epochs(rows: int) -> int:
    """OpenAI-like "auto": more passes over small datasets, one over large ones."""
    if rows <= 0:
        return 1
    return max(1, min(10, math.ceil(600 / rows)))
