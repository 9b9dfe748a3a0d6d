"""`loradock export merged|onnx`, `loradock distill` and `loradock run-onnx`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console

from adapters.errors import HubError
from adapters.records import ArtifactView
from adapters.settings import Settings
from training.exports.source import ExportOptions, Progress

export_app = typer.Typer(
    help="Export a registered adapter version: merged weights or an ONNX build.", no_args_is_help=True
)
console = Console(soft_wrap=True)

BaseOption = typer.Option(None, "--base-model", help="Base model folder or name [default: LORADOCK_BASE_MODEL].")
DataOption = typer.Option(None, "--data", help="Test prompts (JSONL) [default: the adapter's own test split].")
PromptsOption = typer.Option(20, "--max-prompts", help="How many test prompts the report measures.")
TokensOption = typer.Option(48, "--max-new-tokens", help="Longest greedy answer measured.")


def _options(base_model: str | None, data: Path | None, max_prompts: int, max_new_tokens: int) -> ExportOptions:
    return ExportOptions(base_model=base_model, data=data, max_prompts=max_prompts, max_new_tokens=max_new_tokens)


def _run(what: str, job: Callable[[Progress], ArtifactView]) -> ArtifactView:
    """Run an export under a progress spinner and turn its refusals into one clear line and exit code 1."""
    from training.exports.measure import MeasurementError
    from training.exports.onnx_build import OnnxBuildError
    from training.exports.source import ExportError

    with console.status(what) as status:
        progress: Progress = lambda step: status.update(step)  # noqa: E731
        try:
            artifact: ArtifactView = job(progress)
        except (ExportError, HubError, OnnxBuildError, MeasurementError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from exc
        except KeyboardInterrupt as exc:
            console.print("[yellow]interrupted: nothing was registered[/yellow]")
            raise typer.Exit(130) from exc
    _summary(artifact)
    return artifact


def _summary(artifact: ArtifactView) -> None:
    report = artifact.report
    main = report["main_metric"]
    console.print(
        f"registered [bold]{artifact.label}[/bold] ({artifact.id}) of {report['source']}: "
        f"{artifact.size_bytes / 1e6:.1f} MB, {main} {report['export']['task'].get(main, 0):.3f} "
        f"(teacher {report['teacher']['task'].get(main, 0):.3f}), greedy-token agreement "
        f"{report['greedy_token_agreement']:.3f}, {report['export']['tokens_per_s_single']:.1f} tokens/s single "
        f"({report['speedup_single']:.2f}x), {report['export']['tokens_per_s_batched']:.1f} batched "
        f"({report['speedup_batched']:.2f}x)"
    )


@export_app.command("merged")
def merged(
    adapter: str = typer.Argument(..., metavar="ADAPTER_REF", help="NAME, NAME@VERSION or NAME:ALIAS."),
    base_model: str | None = BaseOption,
    data: Path | None = DataOption,
    max_prompts: int = PromptsOption,
    max_new_tokens: int = TokensOption,
) -> None:
    """Base + adapter merged into one Hugging Face model, checked for logit parity and served by vLLM."""
    from training.exports.pipeline import export_merged

    options = _options(base_model, data, max_prompts, max_new_tokens)
    artifact = _run(
        f"exporting {adapter} merged", lambda progress: export_merged(Settings(), adapter, options, progress)
    )
    console.print(f"max logit difference against base + adapter: {artifact.report['max_logit_difference']:.4f}")


@export_app.command("onnx")
def onnx(
    adapter: str = typer.Argument(..., metavar="ADAPTER_REF", help="NAME, NAME@VERSION or NAME:ALIAS."),
    precision: str = typer.Option("int4", help="fp32, int8 or int4 (block-quantized weights)."),
    from_label: str | None = typer.Option(
        None, "--from", help="Build from an existing artifact of the version (e.g. distilled) instead of the merge."
    ),
    base_model: str | None = BaseOption,
    data: Path | None = DataOption,
    max_prompts: int = PromptsOption,
    max_new_tokens: int = TokensOption,
) -> None:
    """An optimized ONNX decoder with KV cache for onnxruntime-genai, measured against the teacher."""
    from training.exports.onnx_build import PRECISIONS
    from training.exports.pipeline import export_onnx

    if precision not in PRECISIONS:
        console.print(f"[red]error:[/red] --precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        raise typer.Exit(2)
    options = _options(base_model, data, max_prompts, max_new_tokens)
    _run(
        f"exporting {adapter} to ONNX ({precision})",
        lambda progress: export_onnx(Settings(), adapter, precision, options, progress, from_label=from_label),
    )


def distill(
    adapter: str = typer.Argument(..., metavar="ADAPTER_REF", help="NAME, NAME@VERSION or NAME:ALIAS (the teacher)."),
    student: str | None = typer.Option(
        None, help="A smaller model folder or name sharing the tokenizer [default: the base, every other layer]."
    ),
    train_data: Path | None = typer.Option(  # noqa: B008
        None, "--train-data", help="Training prompts and answers [default: the adapter run's training split]."
    ),
    steps: int = typer.Option(200, min=1, help="Optimizer steps."),
    batch_size: int = typer.Option(8, min=1),
    learning_rate: float = typer.Option(5e-4, "--learning-rate"),
    temperature: float = typer.Option(2.0, help="Softmax temperature of the KL term."),
    alpha: float = typer.Option(0.5, min=0.0, max=1.0, help="Weight of the KL term (the rest: cross-entropy)."),
    base_model: str | None = BaseOption,
    data: Path | None = DataOption,
    max_prompts: int = PromptsOption,
    max_new_tokens: int = TokensOption,
) -> None:
    """Distill base + adapter into a smaller student (KL on the teacher's logits + cross-entropy on the data)."""
    from training.exports.distill import DistillConfig
    from training.exports.pipeline import export_distilled

    config = DistillConfig(
        steps=steps, batch_size=batch_size, learning_rate=learning_rate, temperature=temperature, alpha=alpha
    )
    options = _options(base_model, data, max_prompts, max_new_tokens)
    artifact = _run(
        f"distilling {adapter}",
        lambda progress: export_distilled(
            Settings(), adapter, options, progress, student=student, train_data=train_data, config=config
        ),
    )
    before = artifact.report["student_before"].get(artifact.report["main_metric"], 0.0)
    console.print(f"the student scored {before:.3f} before distillation")


def run_onnx(
    target: str = typer.Argument(..., metavar="EXPORT", help="An ONNX export folder, or NAME@VERSION from the hub."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="The user message."),
    system: str | None = typer.Option(None, help="A system message."),
    label: str = typer.Option("onnx-int4", help="Which ONNX artifact of NAME@VERSION."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1),
) -> None:
    """Generate from an ONNX export with onnxruntime-genai (greedy, streamed)."""
    from training.exports.run_onnx import onnx_folder, stream_answer
    from training.exports.source import ExportError

    try:
        folder = onnx_folder(target, label, Settings())
    except (ExportError, HubError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    for piece in stream_answer(folder, messages, max_new_tokens):
        print(piece, end="", flush=True)
    print()


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
    app.command()(distill)
    app.command("run-onnx")(run_onnx)
