"""`loradock adapters ...`, `loradock keys ...` and `loradock gc`: the hub from the command line, with Rich tables."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from adapters.client import HubClient, open_client
from adapters.drift.sample import ProfileSample
from adapters.errors import HubError
from adapters.gc import DESCRIPTIONS, Finding, remove, scan
from adapters.hub import Hub
from adapters.records import AdapterView, AliasTarget
from adapters.settings import Settings

console = Console()
adapters_app = typer.Typer(help="Register, list and retire adapters; move aliases.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys (on the database directly).", no_args_is_help=True)

ServerOption = typer.Option(None, "--server", help="Work through a running server's API instead of the database.")
KeyOption = typer.Option(None, "--api-key", envvar="LORADOCK_API_KEY", help="Admin key for --server.")


def _client(server: str | None, api_key: str | None) -> HubClient:
    return open_client(Settings(), server, api_key)


def _fail(exc: Exception) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(1)


@adapters_app.command("register")
def register(
    name: str = typer.Argument(..., help="Adapter name; a new version is added if it exists."),
    source: str = typer.Argument(..., help="A peft adapter folder, a .zip/.tar.gz of one, or hf://org/repo[@rev]."),
    metadata: str = typer.Option("{}", help="Free-form JSON object stored with the version."),
    drift_sample: Path | None = typer.Option(  # noqa: B008
        None, help="Prompts the adapter is meant for (JSONL chat or prompt rows, or text lines): its drift reference."
    ),
    server: str | None = ServerOption,
    api_key: str | None = KeyOption,
) -> None:
    """Validate and register an adapter version."""
    try:
        details = json.loads(metadata)
        if not isinstance(details, dict):
            raise ValueError("--metadata must be a JSON object")
        sample = ProfileSample.from_file(drift_sample) if drift_sample is not None else None
        client = _client(server, api_key)
        version = client.register(name, source, details)
        console.print(f"registered [bold]{version.ref}[/bold] (sha256 {version.sha256[:12]}, rank {version.rank})")
        if sample is not None:
            with console.status(f"profiling {len(sample.prompts)} prompts for drift"):
                summary = client.set_drift_profile(name, version.version, sample)
            console.print(f"drift reference: {summary['prompts']} prompts, {summary['answers']} answers")
    except (HubError, ValueError) as exc:
        raise _fail(exc) from exc


@adapters_app.command("list")
def list_adapters(server: str | None = ServerOption, api_key: str | None = KeyOption) -> None:
    """Adapters with their versions and aliases."""
    try:
        adapters = _client(server, api_key).list_adapters()
    except HubError as exc:
        raise _fail(exc) from exc
    table = Table("name", "versions", "active", "aliases", "newest")
    for adapter in adapters:
        newest = adapter.versions[-1] if adapter.versions else None
        table.add_row(
            adapter.name,
            str(len(adapter.versions)),
            ", ".join(str(v.version) for v in adapter.active_versions) or "-",
            _aliases(adapter) or "-",
            f"v{newest.version} {newest.created_at:%Y-%m-%d %H:%M}" if newest else "-",
        )
    console.print(table)


@adapters_app.command("show")
def show(name: str, server: str | None = ServerOption, api_key: str | None = KeyOption) -> None:
    """One adapter: every version with its facts, and its aliases."""
    try:
        adapter = _client(server, api_key).get_adapter(name)
    except HubError as exc:
        raise _fail(exc) from exc
    table = Table("version", "status", "rank", "alpha", "size", "sha256", "source", "created", "metadata")
    for version in adapter.versions:
        table.add_row(
            str(version.version),
            version.status,
            str(version.rank),
            f"{version.alpha:g}",
            f"{version.size_bytes / 1e6:.1f} MB",
            version.sha256[:12],
            f"{version.source.kind}: {version.source.uri}",
            f"{version.created_at:%Y-%m-%d %H:%M} by {version.created_by}",
            _short(version.metadata),
        )
    console.print(f"[bold]{adapter.name}[/bold]  aliases: {_aliases(adapter) or 'none'}")
    console.print(table)
    exports = Table("version", "artifact", "label", "size", "quality kept", "tokens/s (1 / batched)", "from", "created")
    for version in adapter.versions:
        for artifact in version.artifacts:
            exports.add_row(
                str(version.version),
                artifact.id,
                artifact.label,
                f"{artifact.size_bytes / 1e6:.1f} MB",
                _quality(artifact.report),
                _speed(artifact.report),
                artifact.parent_id or f"v{version.version}",
                f"{artifact.created_at:%Y-%m-%d %H:%M} by {artifact.created_by}",
            )
    if exports.row_count:
        console.print(exports)


@adapters_app.command("alias")
def alias(
    name: str,
    alias_name: str = typer.Argument(..., metavar="ALIAS"),
    targets: list[str] = typer.Argument(  # noqa: B008 - Typer reads the default from here
        None, help="VERSION, or VERSION:WEIGHT pairs for a split (3:0.9 4:0.1)."
    ),
    delete: bool = typer.Option(False, "--delete", help="Remove the alias instead."),
    server: str | None = ServerOption,
    api_key: str | None = KeyOption,
) -> None:
    """Point an alias (prod, canary, ...) at a version, or split it by weight."""
    client = _client(server, api_key)
    try:
        if delete:
            client.delete_alias(name, alias_name)
            console.print(f"removed alias {name}:{alias_name}")
            return
        if not targets:
            raise ValueError("give the version(s) the alias points at")
        view = client.set_alias(name, alias_name, [_target(text) for text in targets])
    except (HubError, ValueError) as exc:
        raise _fail(exc) from exc
    split = ", ".join(f"v{t.version} ({t.weight:g})" for t in view.targets)
    console.print(f"{name}:{view.name} -> {split}")


@adapters_app.command("deprecate")
def deprecate(name: str, version: int, server: str | None = ServerOption, api_key: str | None = KeyOption) -> None:
    """Stop serving a version to new requests (they get 410); files are kept."""
    _retire(name, version, purge=False, server=server, api_key=api_key)


@adapters_app.command("purge")
def purge(name: str, version: int, server: str | None = ServerOption, api_key: str | None = KeyOption) -> None:
    """Deprecate a version and delete its files once nothing else references them."""
    _retire(name, version, purge=True, server=server, api_key=api_key)


def _retire(name: str, version: int, *, purge: bool, server: str | None, api_key: str | None) -> None:
    try:
        view = _client(server, api_key).retire(name, version, purge=purge)
    except HubError as exc:
        raise _fail(exc) from exc
    console.print(f"{view.ref} is now {view.status}")


@adapters_app.command("pull")
def pull(
    ref: str = typer.Argument(..., help="NAME@VERSION"),
    out: Path = typer.Option(..., "--out", help="Folder to write the adapter's files to."),  # noqa: B008
    server: str | None = ServerOption,
    api_key: str | None = KeyOption,
) -> None:
    """Download a version's files (a plain peft folder)."""
    name, _, version = ref.partition("@")
    if not version.isdigit():
        raise _fail(ValueError("give the reference as NAME@VERSION"))
    try:
        path = _client(server, api_key).pull(name, int(version), out)
    except HubError as exc:
        raise _fail(exc) from exc
    console.print(f"{ref} written to {path}")


@keys_app.command("create")
def create_key(
    scope: str = typer.Option(..., help="admin (ops API) or inference (calling models)."),
    adapters: str | None = typer.Option(None, help="Comma-separated adapters an inference key may use."),
    tenant: str = typer.Option("default", help="The tenant the key belongs to."),
    description: str = typer.Option("", help="A note for ops."),
    rpm: int | None = typer.Option(
        None, "--rpm", min=1, help="Requests per minute [default: the server's LORADOCK_KEY_REQUESTS_PER_MINUTE]."
    ),
    max_concurrent: int | None = typer.Option(
        None, min=1, help="Generations in flight [default: the server's LORADOCK_KEY_MAX_CONCURRENT]."
    ),
) -> None:
    """Create a key; it is printed once and stored only as a hash."""
    from adapters.database import open_database
    from adapters.keys import create_key as create

    allowed = [name.strip() for name in adapters.split(",") if name.strip()] if adapters else None
    try:
        plaintext, view = create(
            open_database(Settings().database),
            scope=scope,
            tenant=tenant,
            adapters=allowed,
            description=description,
            requests_per_minute=rpm,
            max_concurrent=max_concurrent,
        )
    except (HubError, ValueError) as exc:
        raise _fail(exc) from exc
    console.print(f"key {view.id} ({view.scope}, tenant {view.tenant}); store it now, it is not shown again:")
    print(plaintext)


@keys_app.command("list")
def list_keys() -> None:
    """Keys with their scope, tenant and state (never the keys themselves)."""
    from adapters.database import open_database
    from adapters.keys import list_keys as all_keys

    table = Table("id", "prefix", "scope", "tenant", "adapters", "limits", "created", "revoked", "description")
    for key in all_keys(open_database(Settings().database)):
        table.add_row(
            str(key.id),
            key.prefix + "…",
            key.scope,
            key.tenant,
            ",".join(key.adapters) if key.adapters is not None else "all",
            f"{key.requests_per_minute or 'default'}/min, {key.max_concurrent or 'default'} at once",
            f"{key.created_at:%Y-%m-%d %H:%M}",
            f"{key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "-",
            key.description,
        )
    console.print(table)


@keys_app.command("revoke")
def revoke(key_id: int) -> None:
    """Revoke a key (servers stop accepting it within seconds)."""
    from adapters.database import open_database
    from adapters.keys import revoke_key

    try:
        view = revoke_key(open_database(Settings().database), key_id)
    except HubError as exc:
        raise _fail(exc) from exc
    console.print(f"key {view.id} revoked")


def _target(text: str) -> AliasTarget:
    version, _, weight = text.partition(":")
    if not version.isdigit():
        raise ValueError(f"{text!r}: give VERSION or VERSION:WEIGHT")
    return AliasTarget(version=int(version), weight=float(weight) if weight else 1.0)


def _aliases(adapter: AdapterView) -> str:
    return "  ".join(
        f"{a.name}->" + "/".join(f"v{t.version}" + (f"({t.weight:g})" if len(a.targets) > 1 else "") for t in a.targets)
        for a in adapter.aliases
    )


def _short(metadata: dict[str, Any], limit: int = 60) -> str:
    text = json.dumps(metadata) if metadata else ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def gc(
    yes: bool = typer.Option(False, "--yes", "-y", help="Remove without asking."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only show what would be removed; never remove."),
    grace: str = typer.Option(
        "15m",
        help="Leave alone anything changed within this long (30s, 15m, 2h, 0): an upload, registration, training "
        "run or export in progress on any replica sharing the store.",
    ),
    verify: bool = typer.Option(
        True, "--verify/--no-verify", help="Re-hash every referenced artifact and dataset file (reads them all)."
    ),
    allow_empty_database: bool = typer.Option(
        False, "--allow-empty-database", help="Remove unreferenced content even though the database holds no row."
    ),
) -> None:
    """Find what crashes left behind (staging leftovers, stored content no row references, half-written uploads
    and training outputs) and remove it; report rows whose files are missing or corrupt (exit code 1)."""
    from adapters.database import redacted_url

    try:
        grace_s = _duration(grace)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--grace") from exc
    settings = Settings()
    hub = Hub.open(settings)
    try:
        console.print(f"checking {settings.home} against {redacted_url(settings.database)}")
        findings = scan(hub, grace_s=grace_s, verify=verify, allow_empty_database=allow_empty_database)
        removable = [finding for finding in findings if finding.removable]
        problems = [finding for finding in findings if not finding.removable]
        _show_findings(findings, settings.home)
        what = f"{len(removable)} item{'s' if len(removable) != 1 else ''}"
        what += f" ({sum(finding.size_bytes for finding in removable) / 1e6:.1f} MB)"
        if not removable:
            console.print("nothing to remove")
        elif dry_run:
            console.print(f"would remove {what}; run without --dry-run to remove")
        elif not yes and not sys.stdin.isatty():
            console.print(f"{what} to remove: run again with --yes to remove them")
        elif yes or typer.confirm(f"Remove {what}?", default=False):
            removed = remove(hub, removable, grace_s=grace_s)
            console.print(f"removed {len(removed)} of {what}")
            if len(removed) < len(removable):
                console.print("the others changed since the scan (in use again); they were kept")
    finally:
        hub.close()
    if problems:
        console.print(f"[red]error:[/red] {len(problems)} inconsistencies gc cannot repair (listed above)")
        raise typer.Exit(1)


def _show_findings(findings: list[Finding], home: Path) -> None:
    if not findings:
        return
    table = Table("kind", "path", "size", "idle", "detail")
    for finding in findings:
        table.add_row(
            finding.kind,
            _relative(finding.path, home),
            f"{finding.size_bytes / 1e6:.1f} MB",
            _idle(finding.age_s),
            finding.detail,
            style="" if finding.removable else "red",
        )
    console.print(table)
    for kind in dict.fromkeys(finding.kind for finding in findings):
        console.print(f"  [bold]{kind}[/bold]: {DESCRIPTIONS[kind]}")


def _duration(text: str) -> float:
    """Seconds in `90`, `90s`, `15m`, `2h` or `1d`."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise ValueError(f"{text!r} is not a duration such as 30s, 15m, 2h or 0") from None
    if seconds < 0:
        raise ValueError(f"{text!r}: a duration cannot be negative")
    return seconds


def _relative(path: Path, home: Path) -> str:
    return str(path.relative_to(home)) if path.is_relative_to(home) else str(path)


def _idle(age_s: float | None) -> str:
    if age_s is None:
        return "-"
    for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60)):
        if age_s >= seconds:
            return f"{age_s / seconds:.0f}{unit}"
    return f"{age_s:.0f}s"


def register_commands(app: typer.Typer) -> None:
    from adapters.drift.commands import register_drift_command
    from adapters.loop_commands import register_loop_commands

    app.add_typer(adapters_app, name="adapters")
    app.add_typer(keys_app, name="keys")
    app.command("gc")(gc)
    register_loop_commands(app)
    register_drift_command(app)


def _quality(report: dict[str, Any]) -> str:
    """The export's task metric against the teacher's, from its report."""
    export, teacher = report.get("export", {}), report.get("teacher", {})
    metric = report.get("main_metric", "")
    if metric not in export.get("task", {}):
        return "-"
    return f"{metric} {export['task'][metric]:.3f} (teacher {teacher.get('task', {}).get(metric, float('nan')):.3f})"


def _speed(report: dict[str, Any]) -> str:
    export = report.get("export", {})
    if "tokens_per_s_single" not in export:
        return "-"
    return f"{export['tokens_per_s_single']:.0f} / {export['tokens_per_s_batched']:.0f}"
