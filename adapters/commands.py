"""`loradock adapters ...` and `loradock keys ...`: the hub from the command line, with Rich tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from adapters.client import HubClient, open_client
from adapters.drift.sample import ProfileSample
from adapters.errors import HubError
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
) -> None:
    """Create a key; it is printed once and stored only as a hash."""
    from adapters.database import open_database
    from adapters.keys import create_key as create

    allowed = [name.strip() for name in adapters.split(",") if name.strip()] if adapters else None
    try:
        plaintext, view = create(
            open_database(Settings().database), scope=scope, tenant=tenant, adapters=allowed, description=description
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

    table = Table("id", "prefix", "scope", "tenant", "adapters", "created", "revoked", "description")
    for key in all_keys(open_database(Settings().database)):
        table.add_row(
            str(key.id),
            key.prefix + "…",
            key.scope,
            key.tenant,
            ",".join(key.adapters) if key.adapters is not None else "all",
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


def register_commands(app: typer.Typer) -> None:
    from adapters.drift.commands import register_drift_command
    from adapters.loop_commands import register_loop_commands

    app.add_typer(adapters_app, name="adapters")
    app.add_typer(keys_app, name="keys")
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
