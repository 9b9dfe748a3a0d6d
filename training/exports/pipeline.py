"""`loradock export merged|onnx` and `loradock distill`: build, measure against the teacher, register.

Everything is assembled in the store's staging area and handed to the hub whole at the end, so an interrupted
or failed export (Ctrl-C, SIGTERM, a builder crash) leaves neither files nor rows behind; the hub's artifact
registry writes the row and moves the folder into the content-addressed store together.
"""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from adapters.chat_template import render_chat
from adapters.hub import Hub
from adapters.records import ArtifactView
from adapters.settings import Settings
from training.exports.distill import DistillConfig
from training.exports.measure import Measurement, MeasureSpec, measure, start_vllm_measurements
from training.exports.report import build_report, side, token_agreement, write_report
from training.exports.source import ExportError, ExportOptions, ExportSource, Progress, open_source, train_split
from training.result_cache import ResultCache, base_identity

MEASURE_REVISION = 2
"""Part of the teacher cache key: 2 = measured in float32 on the CPU (1 measured in the model's bfloat16)."""


@dataclass
class Workspace:
    """An export in the making: the hub, its source, the folder that becomes the artifact, and scratch space."""

    hub: Hub
    source: ExportSource
    options: ExportOptions
    artifact: Path
    scratch: Path
    tokenizer: Any
    progress: Progress

    @functools.cached_property
    def prompts(self) -> list[list[int]]:
        return [
            list(
                self.tokenizer.encode(render_chat(self.tokenizer, ex.chat(with_answer=False)), add_special_tokens=False)
            )
            for ex in self.test
        ]

    @property
    def test(self) -> list[Any]:
        return self.source.test[: self.options.max_prompts]

    def measure(self, runtime: Literal["vllm", "onnx"], model: Path, adapter: Path | None = None) -> Measurement:
        stop_if_terminated()
        spec = MeasureSpec(
            runtime=runtime,
            model=str(model),
            adapter=str(adapter) if adapter is not None else None,
            lora_rank=self.source.version.rank,
            prompts=self.prompts,
            max_new_tokens=self.options.max_new_tokens,
        )
        return measure(spec, self.scratch)

    def teacher(self) -> Measurement:
        """Base + adapter in vLLM, measured once per adapter content, prompts and answer length (cached)."""
        cache, key = self._teacher_cache()
        with contextlib.suppress(ValidationError):
            return Measurement.model_validate(cache.get(key))
        self.progress("measuring the teacher (base + adapter in vLLM)")
        measured = self.measure("vllm", self.source.base_folder, self.source.adapter_dir)
        cache.put(key, measured.model_dump(mode="json"))
        return measured

    def prepare_vllm_measurements(self, *, export_in_vllm: bool) -> None:
        """Have vLLM imported for the measurements ahead while this export builds, if any lie ahead: the export's
        own in vLLM, or a teacher not measured yet."""
        cache, key = self._teacher_cache()
        if export_in_vllm or cache.get(key) is None:
            start_vllm_measurements()

    def _teacher_cache(self) -> tuple[ResultCache, str]:
        cache = ResultCache(self.hub.settings.cache_dir / "teachers")
        key = cache.key(
            MEASURE_REVISION,
            base_identity(self.source.base_folder),
            self.source.version.sha256,
            self.prompts,
            self.options.max_new_tokens,
        )
        return cache, key

    def answers(self, measured: Measurement) -> list[str]:
        return [self.tokenizer.decode(tokens, skip_special_tokens=True) for tokens in measured.tokens]

    def report(self, label: str, runtime: str, export: Measurement, **extra: Any) -> dict[str, Any]:
        teacher = self.teacher()
        teacher_size = _size(self.source.base_folder, "*.safetensors") + self.source.version.size_bytes
        ours, theirs = self.answers(teacher), self.answers(export)
        return build_report(
            label=label,
            source_ref=self.source.version.ref,
            runtime=runtime,
            test=self.test,
            teacher=side(teacher, ours, self.test, teacher_size),
            export=side(export, theirs, self.test, _size(self.artifact, "*")),
            agreement=token_agreement(teacher.tokens, export.tokens),
            answers=(ours, theirs),
            extra={"data": str(self.source.test_file), **extra},
        )


@contextlib.contextmanager
def workspace(settings: Settings, ref: str, options: ExportOptions, progress: Progress) -> Iterator[Workspace]:
    """Open the hub and the source; on any failure or interruption, remove everything staged.

    A kill -9 skips the clean-up: the staging folders stay in the store's `.incoming/` until `loradock gc` (or a
    server start) removes them. While the export runs they are kept fresh, so gc never takes them from it.
    """
    hub = Hub.open(settings)
    artifact, scratch = hub.store.staging(), hub.store.staging()
    TERMINATED.clear()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        source = open_source(hub, ref, base_model=options.base_model, data=options.data)
        from transformers import AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # one spinner says what runs; per-file bars would bury it
        tokenizer = AutoTokenizer.from_pretrained(source.base_folder)
        with hub.store.keep_alive(artifact, scratch):
            yield Workspace(hub, source, options, artifact, scratch, tokenizer, progress)
    finally:
        signal.signal(signal.SIGTERM, previous)
        hub.store.discard(artifact)  # already moved into the store when the export was registered
        hub.store.discard(scratch)
        hub.close()


TERMINATED = threading.Event()
"""Set by SIGTERM. Python runs a signal handler between any two bytecodes, finalizers included, and an exception
raised inside a `__del__` is printed and dropped: the export then checks this before each long step and before
registering, so a termination is never lost."""


def _interrupt(*_: Any) -> None:
    TERMINATED.set()
    raise KeyboardInterrupt("terminated")


def stop_if_terminated() -> None:
    if TERMINATED.is_set():
        raise KeyboardInterrupt("terminated")


def register(
    work: Workspace, kind: str, label: str, report: dict[str, Any], parent_id: str | None = None
) -> ArtifactView:
    stop_if_terminated()
    write_report(work.artifact, report)
    version = work.source.version
    return work.hub.registry.artifacts.add(
        version.name,
        version.version,
        work.artifact,
        kind=kind,
        label=label,
        report=report,
        created_by=f"export:{label}",
        parent_id=parent_id,
    )


def export_merged(settings: Settings, ref: str, options: ExportOptions, progress: Progress) -> ArtifactView:
    from training.exports.merge import max_logit_difference, merge_adapter

    with workspace(settings, ref, options, progress) as work:
        work.prepare_vllm_measurements(export_in_vllm=True)
        progress("merging the adapter into the base (float32, saved in the base's dtype)")
        merge_adapter(work.source.base_folder, work.source.adapter_dir, work.artifact)
        progress("parity: logits of base + adapter against the saved merged model")
        parity = max_logit_difference(
            work.source.base_folder, work.source.adapter_dir, work.artifact, work.tokenizer, work.test
        )
        work.teacher()
        progress("serving the merged model with vLLM and measuring it")
        merged = work.measure("vllm", work.artifact)
        report = work.report("merged", "vllm", merged, max_logit_difference=parity)
        progress("registering the export")
        return register(work, "merged", "merged", report)


def export_onnx(
    settings: Settings, ref: str, precision: str, options: ExportOptions, progress: Progress, *, from_label: str | None
) -> ArtifactView:
    from training.exports.merge import merge_adapter
    from training.exports.onnx_build import build_onnx

    with workspace(settings, ref, options, progress) as work:
        work.prepare_vllm_measurements(export_in_vllm=False)
        version = work.source.version
        parent = None
        if from_label is None:
            progress("merging the adapter into the base")
            model_dir = work.scratch / "merged"
            merge_adapter(work.source.base_folder, work.source.adapter_dir, model_dir)
        else:
            found = work.hub.registry.artifacts.by_label(version.name, version.version, from_label)
            if found is None:
                raise ExportError(f"{version.ref} has no artifact labelled {from_label!r} to build from")
            parent, model_dir = found
        progress(f"building the {precision} ONNX decoder (onnxruntime-genai model builder)")
        build_scratch = work.scratch / "builder"
        build_scratch.mkdir()
        build_onnx(model_dir, work.artifact, precision, build_scratch)
        work.teacher()
        progress("running the ONNX model with onnxruntime-genai and measuring it")
        measured = work.measure("onnx", work.artifact)
        label = f"{from_label}-onnx-{precision}" if from_label else f"onnx-{precision}"
        report = work.report(label, "onnxruntime-genai", measured, precision=precision)
        progress("registering the export")
        return register(work, "onnx", label, report, parent.id if parent else None)


def _size(folder: Path, pattern: str) -> int:
    return sum(path.stat().st_size for path in folder.rglob(pattern) if path.is_file())


def export_distilled(
    settings: Settings,
    ref: str,
    options: ExportOptions,
    progress: Progress,
    *,
    student: str | None,
    train_data: Path | None,
    config: DistillConfig,
) -> ArtifactView:
    from adapters.base_models import local_model_folder, resolve_base_model
    from training.exports.distill import distill, layer_dropped_student, named_student
    from training.exports.merge import merge_adapter
    from training.report import plot_curves

    with workspace(settings, ref, options, progress) as work:
        work.prepare_vllm_measurements(export_in_vllm=True)
        train = train_split(work.source, train_data)
        if student is None:
            progress("building the student: the base with every other layer dropped")
            kept = layer_dropped_student(work.source.base_folder, work.artifact)
            origin = f"{work.source.base_folder.name}, layers {kept}"
        else:
            try:
                folder = local_model_folder(resolve_base_model(student, settings.models_dir))
            except (OSError, ValueError) as exc:
                raise ExportError(f"student {student!r}: {exc}") from exc
            named_student(folder, work.source.base_folder, work.artifact)
            origin = str(folder)
        work.teacher()
        progress("measuring the student before distillation (vLLM)")
        before = work.measure("vllm", work.artifact)
        progress("merging the teacher (base + adapter) for its logits")
        merge_adapter(work.source.base_folder, work.source.adapter_dir, work.scratch / "teacher")
        log = distill(work.scratch / "teacher", work.artifact, work.tokenizer, train, config, progress)
        (work.artifact / "distill_log.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in log))
        plot_curves(log, work.artifact / "distill_curve.png")
        progress("serving the distilled student with vLLM and measuring it")
        after = work.measure("vllm", work.artifact)
        report = work.report(
            "distilled",
            "vllm",
            after,
            student=origin,
            student_layers=json.loads((work.artifact / "config.json").read_text())["num_hidden_layers"],
            student_before=side(before, work.answers(before), work.test, 0)["task"],
            distillation={**config.__dict__, "train_examples": len(train), "final_loss": log[-1]["loss"]},
        )
        progress("registering the export")
        return register(work, "distilled", "distilled", report)
