"""`loradock drift ADAPTER`: an adapter's drift from the hub's stored snapshots, as a Rich table or an HTML report,
and its reference profile built from a sample file (`--profile-from`)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from adapters.drift.reports import AdapterDrift, Status
from adapters.drift.summary import adapter_drift
from adapters.errors import HubError
from adapters.hub import Hub
from adapters.settings import Settings

console = Console(soft_wrap=True)
STYLES = {Status.OK: "green", Status.WARN: "yellow", Status.ALERT: "bold red", Status.INSUFFICIENT: "dim"}


def drift(
    adapter: str = typer.Argument(..., help="Adapter name."),
    html: Path | None = typer.Option(None, "--html", help="Also write an HTML report with history charts here."),  # noqa: B008
    hours: float = typer.Option(24.0, min=0, help="History to include, in hours."),
    profile_from: Path | None = typer.Option(  # noqa: B008
        None,
        "--profile-from",
        help="Build the reference profile of --version from this sample (JSONL chat or prompt rows, or text lines).",
    ),
    version: int | None = typer.Option(None, help="With --profile-from: the version (default: the newest)."),
    replace: bool = typer.Option(False, help="With --profile-from: replace the profile the version has."),
) -> None:
    """Show ADAPTER's drift against its reference profiles: per version and window, every test's score,
    thresholds and status, the most drifted prompts, and the history."""
    hub = Hub.open(Settings())
    try:
        if profile_from is not None:
            _profile(hub, adapter, profile_from, version, replace)
            return
        view = adapter_drift(hub.drift, hub.registry.get_adapter(adapter), history=timedelta(hours=hours))
    except HubError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    finally:
        hub.close()
    show(view)
    if html is not None:
        from adapters.drift.report import write_html

        console.print(f"report: {write_html(view, html, datetime.now(UTC))}")


def _profile(hub: Hub, adapter: str, path: Path, number: int | None, replace: bool) -> None:
    from adapters.drift.features import Embedder
    from adapters.drift.sample import ProfileSample, store_sample_profile

    record = hub.registry.get_adapter(adapter)
    if not record.versions:
        raise HubError(f"{adapter} has no versions")
    target = hub.registry.get_version(adapter, number) if number is not None else record.versions[-1]
    sample = ProfileSample.from_file(path, replace=replace)
    with console.status(f"profiling {len(sample.prompts)} prompts of {path} with the embedding model"):
        summary = store_sample_profile(hub.drift, target, sample, Embedder(), "cli")
    console.print(
        f"{target.ref}: reference profile from {path} ({summary['prompts']} prompts, {summary['answers']} answers); "
        "servers use it within 30 s"
    )


def show(view: AdapterDrift) -> None:
    console.print(
        f"[bold]{view.adapter}[/bold]: [{STYLES[view.status]}]{view.status.value}[/] ({view.source} snapshots)"
    )
    if not view.versions:
        console.print("no drift data yet: no version has a profile or served traffic")
    for version in view.versions:
        profile = version.profile or {}
        table = Table(
            "window",
            "test",
            "n",
            "score",
            "warn at",
            "alert at",
            "p",
            "status",
            title=f"version {version.version} (profile: {profile.get('source', 'none yet')}, "
            f"{profile.get('prompts', '-')} prompts)",
        )
        for window in version.windows:
            for check in window.checks:
                table.add_row(
                    window.window,
                    check.test,
                    str(check.n),
                    _number(check.score),
                    _number(check.warn_at),
                    _number(check.alert_at),
                    _number(check.p_value),
                    f"[{STYLES[check.status]}]{check.status.value}[/]",
                )
        console.print(table)
        for window in version.windows:
            for example in window.examples:
                console.print(f"  drifted ({window.window}, similarity {example.similarity:.2f}): {example.prompt}")
    changes = sum(1 for a, b in itertools.pairwise(view.history) if a.status != b.status)
    console.print(f"history: {len(view.history)} snapshots, {changes} status changes")


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def register_drift_command(app: typer.Typer) -> None:
    app.command("drift")(drift)
