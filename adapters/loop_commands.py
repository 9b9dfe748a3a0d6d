"""The production loop from the command line: `loradock feedback export`, `loradock interactions policy|forget`,
`loradock promote` and `loradock rollback` (`loradock retrain` lives in training/). They work on the hub's
database directly, which every server replica reads, so an alias moved here is served within the resolution cache
time (2 s by default)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from adapters.errors import HubError
from adapters.feedback_export import EXPORT_FORMATS, FeedbackExport, export_feedback
from adapters.hub import Hub
from adapters.promotion import Promotion, promote, rollback
from adapters.settings import Settings

console = Console(soft_wrap=True)
feedback_app = typer.Typer(help="Export feedback as training data.", no_args_is_help=True)
interactions_app = typer.Typer(
    help="The interaction log: per-adapter policies, deletion requests.", no_args_is_help=True
)


@contextmanager
def _hub() -> Iterator[Hub]:
    hub = Hub.open(Settings())
    try:
        yield hub
    except (HubError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    finally:
        hub.close()


@feedback_app.command("export")
def export(
    adapter: str = typer.Argument(..., help="Adapter name (feedback on any of its versions)."),
    fmt: str = typer.Option("sft", "--format", help="sft (messages rows) or dpo (prompt, chosen, rejected)."),
    out: Path = typer.Option(..., "--out", "-o", help="JSONL file to write (what `loradock train --data` reads)."),  # noqa: B008
    since: datetime | None = typer.Option(None, help="Only feedback given or updated at or after this time."),  # noqa: B008
    min_score: float = typer.Option(0.5, help="SFT: answers without a correction need every rating at least this."),
    version: int | None = typer.Option(None, help="Only completions served by this version."),
) -> None:
    """Write feedback on ADAPTER's completions as SFT or DPO rows, with counts of what was kept and why not."""
    if fmt not in EXPORT_FORMATS:
        raise typer.BadParameter(f"--format must be one of {', '.join(EXPORT_FORMATS)}")
    with _hub() as hub:
        result = export_feedback(hub.database, adapter, fmt=fmt, since=since, min_score=min_score, version=version)  # type: ignore[arg-type]
    result.write(out)
    show_export(result, out)


def show_export(result: FeedbackExport, out: Path) -> None:
    table = Table("rows", "completions", title=f"feedback export -> {out}")
    for kind, count in sorted(result.kept.items()):
        table.add_row(f"[green]kept[/green]: {kind}", str(count))
    for reason, count in sorted(result.skipped.items()):
        table.add_row(f"[yellow]left out[/yellow]: {reason}", str(count))
    console.print(table)
    console.print(f"{len(result.rows)} rows written to {out}")


@interactions_app.command("policy")
def policy(
    adapter: str = typer.Argument(..., help="Adapter name."),
    sample_rate: float = typer.Option(..., min=0, max=1, help="Share of its completions to log (0 to 1)."),
    retention_days: float = typer.Option(..., min=0, help="Days its interactions (and their feedback) are kept."),
) -> None:
    """Set how much of an adapter's traffic is logged and for how long (servers apply it within seconds)."""
    with _hub() as hub:
        hub.interactions.set_policy(adapter, sample_rate, retention_days, updated_by="cli")
    console.print(f"{adapter}: logging {sample_rate:.0%} of completions, kept {retention_days:g} days")


@interactions_app.command("forget")
def forget(completion_id: str = typer.Argument(..., help="The completion's id (a deletion request).")) -> None:
    """Delete one logged completion and its feedback, and name the versions that learned from it."""
    with _hub() as hub:
        feedback_ids, versions = hub.interactions.forget(completion_id)
    console.print(f"deleted {completion_id} and {len(feedback_ids)} feedback record(s)")
    if versions:
        console.print(
            f"[yellow]trained on it:[/yellow] {', '.join(versions)}; retrain them without it "
            "(`loradock retrain`) and deprecate them to complete the deletion"
        )
    else:
        console.print("no version was trained on it")


def promote_command(
    adapter: str = typer.Argument(..., help="Adapter name."),
    margin: float = typer.Option(0.02, min=0, help="How much worse than prod any metric may be."),
    canary: float | None = typer.Option(None, help="Give the candidate this share of prod first (e.g. 0.1)."),
    shadow_min_requests: int = typer.Option(
        0, "--shadow", min=0, help="First let the candidate answer copies of this many live requests (not returned)."
    ),
    shadow_min_agreement: float = typer.Option(
        0.0, min=0, max=1, help="With --shadow: the least share of live requests it must answer as prod did."
    ),
) -> None:
    """Move prod to the candidate of `loradock retrain` if no metric is worse than prod's by more than --margin."""
    with _hub() as hub:
        result = promote(
            hub,
            adapter,
            margin=margin,
            canary=canary,
            shadow_min_requests=shadow_min_requests,
            shadow_min_agreement=shadow_min_agreement,
        )
    show_promotion(adapter, result)
    if result.outcome == "refused":
        raise typer.Exit(1)


def show_promotion(adapter: str, result: Promotion) -> None:
    table = Table("evaluation set", "metric", "items", f"prod (v{result.prod_before})", result.candidate.ref, "gate")
    for gate in result.gates:
        verdict = "[green]pass[/green]" if gate.passed else "[red]fail[/red]"
        table.add_row(
            gate.evaluation_set, gate.metric, str(gate.count), f"{gate.prod:.3f}", f"{gate.candidate:.3f}", verdict
        )
    console.print(table)
    if result.shadow is not None:
        shadow = result.shadow
        console.print(
            f"shadow: {shadow.compared} live requests compared, {shadow.agreement:.0%} answered as prod did, "
            f"{shadow.fixes} corrected answers fixed; median latency {shadow.prod_latency_ms:.0f} ms (prod) vs "
            f"{shadow.candidate_latency_ms:.0f} ms (candidate)"
        )
    messages = {
        "promoted": f"[green]promoted[/green]: {adapter}:prod is now {result.candidate.ref}",
        "canary": f"[green]canary[/green]: {result.candidate.ref} has a share of {adapter}:prod; promote again for all",
        "shadow_started": f"shadow started: {result.candidate.ref} answers copies of live traffic; promote later",
        "shadow_waiting": f"still in shadow ({result.reason}); prod unchanged",
        "refused": f"[red]refused[/red]: {result.reason}; prod unchanged",
    }
    console.print(messages[result.outcome])


def rollback_command(adapter: str = typer.Argument(..., help="Adapter name.")) -> None:
    """Move prod back to the version(s) it served before its last move."""
    with _hub() as hub:
        view = rollback(hub, adapter)
    console.print(f"{adapter}:prod is back on " + ", ".join(f"v{target.version}" for target in view.targets))


def register_loop_commands(app: typer.Typer) -> None:
    app.add_typer(feedback_app, name="feedback")
    app.add_typer(interactions_app, name="interactions")
    app.command("promote")(promote_command)
    app.command("rollback")(rollback_command)
