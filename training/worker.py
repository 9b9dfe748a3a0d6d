"""`loradock worker`: runs the fine-tuning jobs the server queues, one at a time, crash-safe.

Each job trains in a child process (`loradock train`, forked from a forkserver that has imported the training
libraries: `training/job_process.py`), so that cancelling it is a signal away and a crash in training cannot take
the worker down. The child dies with the worker, and the worker's heartbeat in the database is what other workers
watch: a job whose worker went silent goes back to the queue and resumes from its last checkpoint, or fails with the
reason after too many losses. Several workers can share PostgreSQL; a job is claimed under a SKIP LOCKED row lock,
so none is run twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import threading
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from adapters.database import redacted_url
from adapters.datafiles import DataError, check_file
from adapters.fine_tuning import FineTuningStore, JobObject, auto_epochs
from adapters.hub import Hub
from adapters.settings import Settings
from training.job_process import start_forkserver, start_training

logger = logging.getLogger(__name__)

BASE_LEARNING_RATE = 2e-4
DEFAULT_BATCH = 8
CHECKS_PER_S = 1.0
STOP_GRACE_S = 10.0


def fine_tuned_name(job: JobObject) -> str:
    return f"ft:{job.model}:{job.suffix or ''}:{job.id}"


def hub_name(job: JobObject) -> str:
    return f"ft-{job.suffix or 'model'}-{job.id.removeprefix('ftjob-')[:10]}"


class Worker:
    def __init__(self, settings: Settings, console: Console) -> None:
        self.settings = settings
        self.console = console
        self.hub = Hub.open(settings)
        self.store = self.hub.fine_tuning
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.child: BaseProcess | None = None
        self.stopping = False

    def run(self, *, once: bool = False) -> None:
        """Work until SIGTERM/SIGINT (or, with `once`, until no job is waiting)."""
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.console.print(f"worker {self.name} on {redacted_url(self.settings.database)}")
        if not once:
            start_forkserver()  # its imports run while the worker waits for its first job
        try:
            while not self.stopping:
                for job_id in self.store.recover_stale(self.settings.worker_stale_s, self.settings.worker_max_attempts):
                    self.console.print(f"recovered {job_id} from a silent worker")
                job = self.store.claim(self.name)
                if job is None:
                    if once:
                        return
                    time.sleep(self.settings.worker_poll_s)
                    continue
                if job.status == "validating_files":
                    self._validate(job)
                else:
                    self._train(job)
        finally:
            self.hub.close()

    def _stop(self, *_: Any) -> None:
        self.stopping = True
        if self.child is not None and self.child.is_alive():
            self.child.terminate()

    # --- validating_files -> queued | failed -----------------------------------------------------------------

    def _validate(self, job: JobObject) -> None:
        for param, file_id in (("training_file", job.training_file), ("validation_file", job.validation_file)):
            if file_id is None:
                continue
            path, filename = self.store.file_path(file_id, None)
            try:
                check = check_file(path)
                problem = None if check.ok else check.summary(filename)
            except DataError as exc:
                problem = f"{filename}: {str(exc).replace(str(path), filename)}"
            if problem is None and job.method["type"] == "dpo" and check.shape != "preference":
                problem = f"{filename}: a dpo job needs prompt/chosen/rejected rows, found {check.shape} rows"
            if problem is not None:
                error = {"code": f"invalid_{param}", "message": problem, "param": param}
                self.store.mark(job.id, "failed", f"Validation of {filename} failed: {problem}", error=error)
                self.console.print(f"[red]{job.id} failed[/red]: {problem}")
                return
        self.store.mark(job.id, "queued", "Files validated; the job is queued")

    # --- running -> succeeded | failed | cancelled ---------------------------------------------------------

    def _train(self, job: JobObject) -> None:
        run_dir = self.settings.jobs_dir / job.id
        resume = any((run_dir / "checkpoints").glob("checkpoint-*"))
        if resume:
            self.store.add_event(job.id, "Resuming from the last checkpoint")
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "job.yaml").write_text(yaml.safe_dump(self._config(job), sort_keys=False))
            self.store.add_event(job.id, "Fine-tuning job started")
        self.console.print(f"running {job.id} ({'resuming' if resume else 'new'}) in {run_dir}")
        arguments = ["train", "--output-dir", str(run_dir)]
        arguments += ["--resume"] if resume else ["--config", str(run_dir / "job.yaml")]
        self.child = start_training(arguments, run_dir / "train.log")
        outcome = self._watch(job, run_dir)
        self.child = None
        if outcome == "lost":
            self.console.print(f"[yellow]{job.id} was taken over by another worker; stopped this copy[/yellow]")
        elif outcome == "cancelled":
            self.store.mark(job.id, "cancelled", "Job cancelled")
        elif outcome == "stopped":
            self.store.mark(
                job.id, "queued", f"Worker {self.name} stopped; the job will resume from its last checkpoint"
            )
        elif outcome == 0:
            self._succeed(job, run_dir)
        else:
            message = _last_error(run_dir / "train.log") or f"training exited with status {outcome}"
            error = {"code": "training_failed", "message": message, "param": None}
            self.store.mark(job.id, "failed", f"Training failed: {message}", error=error)

    def _watch(self, job: JobObject, run_dir: Path) -> int | str:
        """Relay metrics and checkpoints and honour cancellation until the child exits.

        The heartbeat runs in its own thread, so that relaying or a loaded machine never makes a live worker look
        silent; if the job was taken over anyway, this worker stops its copy at once instead of finishing it.
        """
        assert self.child is not None
        beat = _Heartbeat(self.store, job.id, self.name)
        beat.start()
        relayed = 0
        try:
            while True:
                self.child.join(timeout=1 / CHECKS_PER_S)
                code = self.child.exitcode
                if beat.verdict == "lost":
                    self._end_child()
                    return "lost"
                relayed = self._relay(job, run_dir, relayed)
                if code is not None:
                    return code
                if self.stopping:
                    self._end_child()
                    return "stopped"
                if beat.verdict == "cancel":
                    self._end_child()
                    return "cancelled"
        finally:
            beat.stop()

    def _end_child(self) -> None:
        assert self.child is not None
        self.child.terminate()
        self.child.join(timeout=STOP_GRACE_S)
        if self.child.exitcode is None:
            self.child.kill()
            self.child.join()

    def _relay(self, job: JobObject, run_dir: Path, relayed: int) -> int:
        """New metrics.jsonl lines become events; new checkpoint folders become checkpoints."""
        log = run_dir / "metrics.jsonl"
        lines = log.read_text().splitlines() if log.is_file() else []
        latest: dict[str, Any] = {}
        for line in lines[relayed:]:
            entry = json.loads(line)
            step = entry.get("step")
            if "loss" in entry:
                latest["train_loss"] = entry["loss"]
                self.store.add_event(
                    job.id, f"Step {step}: training loss={entry['loss']:.4f}", data={"step": step, **entry}
                )
            elif "eval_loss" in entry:
                latest["valid_loss"] = entry["eval_loss"]
                self.store.add_event(
                    job.id, f"Step {step}: validation loss={entry['eval_loss']:.4f}", data={"step": step, **entry}
                )
        for checkpoint in sorted((run_dir / "checkpoints").glob("checkpoint-*")):
            state = checkpoint / "trainer_state.json"
            if state.is_file():
                step = int(checkpoint.name.rsplit("-", 1)[1])
                history = json.loads(state.read_text()).get("log_history", [])
                metrics = {"train_loss": next((h["loss"] for h in reversed(history) if "loss" in h), None)}
                if self.store.add_checkpoint(job.id, step, metrics):
                    self.store.add_event(job.id, f"Checkpoint created at step {step}")
        return len(lines)

    def _succeed(self, job: JobObject, run_dir: Path) -> None:
        record = json.loads((run_dir / "run.json").read_text())
        self.store.mark(
            job.id,
            "succeeded",
            f"The job has successfully completed: {fine_tuned_name(job)} ({record['registered']})",
            fine_tuned_model=fine_tuned_name(job),
            adapter_ref=record["registered"],
            trained_tokens=record.get("trained_tokens"),
            run_dir=str(run_dir),
        )
        self.console.print(f"[green]{job.id} succeeded[/green]: {fine_tuned_name(job)} = {record['registered']}")

    def _config(self, job: JobObject) -> dict[str, Any]:
        """The `loradock train` configuration for a job (OpenAI hyperparameters mapped onto ours)."""
        train_path, _ = self.store.file_path(job.training_file, None)
        validation_path = self.store.file_path(job.validation_file, None)[0] if job.validation_file else None
        rows = check_file(train_path).rows
        hyper = job.hyperparameters
        batch = DEFAULT_BATCH if hyper.get("batch_size", "auto") == "auto" else int(hyper["batch_size"])
        epochs = auto_epochs(rows) if hyper.get("n_epochs", "auto") == "auto" else int(hyper["n_epochs"])
        multiplier = hyper.get("learning_rate_multiplier", "auto")
        learning_rate = BASE_LEARNING_RATE * (1.0 if multiplier == "auto" else float(multiplier))
        train_rows = rows if validation_path else math.ceil(rows * 0.9)
        total_steps = max(1, math.ceil(train_rows / batch) * epochs)
        every = max(1, total_steps // 4)
        lora = {key: value for key, value in job.loradock["lora"].items() if key not in ("evaluate", "init_from")}
        return {
            "base_model": self.settings.base_model,
            "data": {
                "train_file": str(train_path),
                "validation_file": str(validation_path) if validation_path else None,
                "split": [1.0, 0.0, 0.0] if validation_path else [0.9, 0.1, 0.0],
                "seed": job.seed,
            },
            "lora": lora,
            "method": job.method["type"],
            "epochs": epochs,
            "batch_size": batch,
            "learning_rate": learning_rate,
            **({"dpo_beta": float(hyper["beta"])} if hyper.get("beta") not in (None, "auto") else {}),
            "eval_every": every,
            "save_every": every,
            "early_stopping_patience": None,
            "seed": job.seed,
            "evaluate": bool(job.loradock["lora"].get("evaluate", False)),
            "init_from": job.loradock["lora"].get("init_from"),
            "register_as": hub_name(job),
            "owner_tenant": job.organization_id,
        }


class _Heartbeat(threading.Thread):
    """Tells the database every second that this worker still runs the job, and remembers the answer."""

    def __init__(self, store: FineTuningStore, job_id: str, worker: str) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.store, self.job_id, self.worker = store, job_id, worker
        self.verdict = "run"
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set() and self.verdict == "run":
            try:
                self.verdict = self.store.heartbeat(self.job_id, self.worker)
            except Exception:  # the database may be briefly unreachable: keep beating, the job is still ours
                logger.exception("heartbeat for %s failed; retrying", self.job_id)
            self._done.wait(1 / CHECKS_PER_S)

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=5)


def _last_error(log: Path) -> str | None:
    """The last `error:` line `loradock train` printed (its refusals name the file, line and reason)."""
    if not log.is_file():
        return None
    lines = log.read_text(errors="replace").splitlines()
    errors = [line.split("error:", 1)[1].strip() for line in lines if "error:" in line]
    if errors:
        return errors[-1][:2000]
    tail = [line for line in lines[-5:] if line.strip()]
    return " | ".join(tail)[-2000:] if tail else None


def run_worker(settings: Settings, console: Console, *, once: bool = False) -> None:
    worker = Worker(settings, console)
    with contextlib.suppress(KeyboardInterrupt):
        worker.run(once=once)
