"""kill -9 in the middle of writes: a registration, an upload, a training run and an export leave the hub
consistent (every row's files present and hashing to their address), nothing half-written under a final name,
and `loradock gc` finds what is left under temporary names, removes it, and leaves a hub that works as before."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import typer
from safetensors.numpy import load_file
from sqlalchemy import select
from typer.testing import CliRunner

from adapters import gc
from adapters.commands import gc as gc_command
from adapters.fingerprint import BaseModelSpec
from adapters.hub import Hub
from adapters.settings import Settings
from adapters.sources import stage_source
from adapters.store import content_sha256
from adapters.tables import PURGED, AdapterVersion, Artifact
from tests.adapter_factory import write_adapter
from tests.adapters.synthetic import synthetic_base
from tests.helpers import LORADOCK, ServerProcess, still_running

EVERY_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QUICK_TRAINING = ["--set", "lora.r=8", "--set", "data.max_seq_len=256", "--set", "batch_size=4"]


# --- helpers -------------------------------------------------------------------------------------------------


def environment(home: Path, url: str | None = None, **extra: str) -> dict[str, str]:
    env = {**os.environ, "LORADOCK_HOME": str(home), "COLUMNS": "200", **extra}
    if url is not None:
        env["LORADOCK_DATABASE_URL"] = url
    return env


def loradock(home: Path, *args: str, url: str | None = None, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LORADOCK), *args], env=environment(home, url, **extra), capture_output=True, text=True, timeout=600
    )


def start(home: Path, *args: str, url: str | None = None, **extra: str) -> subprocess.Popen[bytes]:
    """A `loradock` command in a process group of its own, so that one SIGKILL takes its children too."""
    return subprocess.Popen(
        [str(LORADOCK), *args],
        env=environment(home, url, **extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[bytes], timeout_s: float = 120) -> bool:
    """Poll `condition` every millisecond or so; False if the process exited first."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process.poll() is not None:
            return False
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)
    return True


def open_hub(home: Path, url: str | None = None) -> Hub:
    return Hub.open(Settings(home=home, database_url=url))


def check_consistent(home: Path, url: str | None = None) -> tuple[set[str], set[str]]:
    """The invariant: every live version's and export's files are in the store and hash to their address.
    Returns (referenced, stored) content hashes."""
    hub = open_hub(home, url)
    try:
        with hub.database.read() as session:
            rows = session.execute(select(AdapterVersion.sha256, AdapterVersion.status)).all()
            referenced = {sha256 for sha256, status in rows if status != PURGED}
            referenced |= set(session.scalars(select(Artifact.sha256)))
        for sha256 in referenced:
            folder = hub.store.path(sha256)
            assert folder.is_dir(), f"a row references {sha256}, which is not in the store"
            assert content_sha256(folder) == sha256, f"{sha256} no longer hashes to its address"
        return referenced, hub.store.stored()
    finally:
        hub.close()


def temporary_names(home: Path) -> list[Path]:
    """What only a crash leaves: staging folders, files under temporary names, incomplete checkpoints."""
    found = list((home / "artifacts" / ".incoming").iterdir())
    found += [
        path
        for path in home.rglob("*")
        if path.name.endswith(".partial")
        or path.name.startswith(".adapter.")
        or (path.name.startswith("checkpoint-") and not (path / "trainer_state.json").is_file())
    ]
    return found


def collect_and_check_clean(home: Path, url: str | None = None) -> None:
    """`loradock gc --yes` leaves the store holding exactly what rows reference, and nothing temporary."""
    done = loradock(home, "gc", "--grace", "0", "--yes", url=url)
    assert done.returncode == 0, done.stdout + done.stderr
    referenced, stored = check_consistent(home, url)
    assert stored == referenced, f"unreferenced content is left: {stored - referenced}"
    assert not temporary_names(home)
    again = loradock(home, "gc", "--grace", "0", "--dry-run", url=url)
    assert again.returncode == 0 and "nothing to remove" in again.stdout, again.stdout


# --- gc itself (in-process, quick) -----------------------------------------------------------------------------

BASE = synthetic_base()


def make_old(*paths: Path, age_s: float = 3600) -> None:
    then = time.time() - age_s
    for path in paths:
        for inner in [path, *path.rglob("*")] if path.is_dir() else [path]:
            os.utime(inner, (then, then))


@pytest.fixture
def hub(tmp_path: Path, database_url: str) -> Iterator[Hub]:
    opened = Hub.open(Settings(home=tmp_path / "home", database_url=database_url))
    yield opened
    opened.close()


def register(hub: Hub, name: str, folder: Path) -> str:
    staged = stage_source(hub.store, str(folder), hub.registry.limits)
    return hub.registry.register(name, staged, BASE, created_by="test").sha256


def test_gc_removes_stale_leftovers_of_every_kind_and_never_fresh_ones(hub: Hub, tmp_path: Path) -> None:
    kept = register(hub, "kept", write_adapter(tmp_path / "a", BASE, seed=1))
    home = hub.settings.home
    staging = hub.store.staging()
    (staging / "adapter_model.safetensors").write_bytes(b"half")
    orphan_source = hub.store.staging()
    write_adapter(orphan_source, BASE, seed=2)
    orphan = hub.store.commit(orphan_source).path  # stored, but the registration died before its row
    partial_upload = hub.settings.files_dir / ".file-abc.partial"
    partial_upload.write_bytes(b'{"messages": [')
    unreferenced_file = hub.settings.files_dir / "file-def.jsonl"
    unreferenced_file.write_text("{}\n")
    run = home / "runs" / "run-1"
    (run / ".adapter.partial").mkdir(parents=True)
    (run / ".adapter.partial" / "adapter_model.safetensors").write_bytes(b"half")
    (run / ".run.json.x1.partial").write_text("{")
    cut_short = run / "checkpoints" / "checkpoint-4"
    cut_short.mkdir(parents=True)
    (cut_short / "optimizer.pt").write_bytes(b"half")
    finished = run / "checkpoints" / "checkpoint-2"
    finished.mkdir()
    (finished / "trainer_state.json").write_text("{}")
    teacher = home / "cache" / "teachers" / ".abc.json.x2.partial"
    teacher.parent.mkdir(parents=True)
    teacher.write_text("{")
    answers = home / "cache" / "answers" / ".def.json.x3.partial"
    answers.parent.mkdir(parents=True)
    answers.write_text('["half')
    leftovers = [
        staging,
        orphan,
        partial_upload,
        unreferenced_file,
        run / ".adapter.partial",
        cut_short,
        teacher,
        answers,
    ]

    assert gc.scan(hub, grace_s=600) == []  # all fresh: maybe a live upload, registration or training run
    make_old(*leftovers, finished, run / ".run.json.x1.partial")
    found = gc.scan(hub, grace_s=600)
    assert {(f.kind, f.path) for f in found} == {
        (gc.STAGING, staging),
        (gc.UNREFERENCED, orphan),
        (gc.PARTIAL_UPLOAD, partial_upload),
        (gc.UNREFERENCED_FILE, unreferenced_file),
        (gc.PARTIAL_OUTPUT, run / ".adapter.partial"),
        (gc.PARTIAL_OUTPUT, run / ".run.json.x1.partial"),
        (gc.PARTIAL_OUTPUT, cut_short),
        (gc.PARTIAL_OUTPUT, teacher),
        (gc.PARTIAL_OUTPUT, answers),
    }
    assert all(f.removable for f in found)
    assert len(gc.remove(hub, found, grace_s=600)) == len(found)
    assert not any(path.exists() for path in leftovers)
    assert hub.store.stored() == {kept} and finished.is_dir()
    assert gc.scan(hub, grace_s=0) == []


def test_content_reused_by_a_registration_during_gc_is_kept(hub: Hub, tmp_path: Path) -> None:
    register(hub, "other", write_adapter(tmp_path / "b", BASE, seed=2))
    source = write_adapter(tmp_path / "a", BASE, seed=1)
    staged = hub.store.staging()
    shutil.copytree(source, staged, dirs_exist_ok=True)
    orphan = hub.store.commit(staged)
    make_old(orphan.path)
    found = gc.scan(hub, grace_s=600)
    assert [f.path for f in found] == [orphan.path]
    # A registration of the same content commits (touching the stored folder) before gc removes it...
    sha256 = register(hub, "same", source)
    assert sha256 == orphan.sha256
    # ...so the folder is no longer stale when gc gets to it, and the new row keeps its files.
    assert gc.remove(hub, found, grace_s=600) == []
    check_consistent(hub.settings.home, hub.settings.database_url)


def run_gc_command(home: Path, url: str, *args: str) -> tuple[int, str]:
    app = typer.Typer()
    app.command()(gc_command)
    result = CliRunner().invoke(app, list(args), env=environment(home, url))
    return result.exit_code, result.output


def test_missing_and_corrupt_files_are_reported_and_exit_1(hub: Hub, tmp_path: Path) -> None:
    first = register(hub, "first", write_adapter(tmp_path / "a", BASE, seed=1))
    second = register(hub, "second", write_adapter(tmp_path / "b", BASE, seed=2))
    with (hub.store.path(first) / "adapter_model.safetensors").open("ab") as stream:
        stream.write(b"bit rot")
    shutil.rmtree(hub.store.path(second))
    code, output = run_gc_command(hub.settings.home, hub.settings.database, "--grace", "0", "--yes")
    assert code == 1 and "corrupt" in output and "missing" in output, output
    found = {(f.kind, f.path.name, f.detail.rsplit(" ", 1)[-1]) for f in gc.scan(hub, grace_s=0)}
    assert found == {(gc.CORRUPT, first, "first@1"), (gc.MISSING, second, "second@1")}
    assert hub.store.path(first).is_dir()  # reported, never deleted: the row still points at it
    quick = {f.kind for f in gc.scan(hub, grace_s=0, verify=False)}
    assert quick == {gc.MISSING}  # without --verify only presence is checked


def test_an_empty_database_keeps_the_store_unless_told_otherwise(hub: Hub, tmp_path: Path) -> None:
    staged = hub.store.staging()
    write_adapter(staged, BASE, seed=1)
    stored = hub.store.commit(staged)
    home, url = hub.settings.home, hub.settings.database
    code, output = run_gc_command(home, url, "--grace", "0", "--yes")
    assert code == 1 and "kept" in output and "LORADOCK_DATABASE_URL" in output, output
    assert stored.path.is_dir()
    code, output = run_gc_command(home, url, "--grace", "0", "--yes", "--allow-empty-database")
    assert code == 0, output
    assert not stored.path.exists()


def test_without_yes_or_a_terminal_gc_only_reports(hub: Hub) -> None:
    leftover = hub.store.staging()
    code, output = run_gc_command(hub.settings.home, hub.settings.database, "--grace", "0")
    assert code == 0 and "--yes" in output and leftover.is_dir(), output
    code, output = run_gc_command(hub.settings.home, hub.settings.database, "--grace", "0", "--dry-run")
    assert code == 0 and "would remove 1 item" in output and leftover.is_dir(), output
    code, output = run_gc_command(hub.settings.home, hub.settings.database, "--grace", "soon")
    assert code == 2 and "duration" in output, output


def test_a_rerun_replaces_the_published_adapter_whole(tmp_path: Path) -> None:
    from training.finetune import _publish

    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "README.md").write_text("old")
    partial = run / ".adapter.partial"
    partial.mkdir()
    (partial / "README.md").write_text("new")
    _publish(partial, run / "adapter")
    assert sorted(path.name for path in run.iterdir()) == ["adapter"]
    assert (run / "adapter" / "README.md").read_text() == "new"


# --- kill -9 of a registration ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_registrations_killed_at_random_moments_leave_the_registry_consistent(
    database_url: str, demo_model: Path, demo_base: BaseModelSpec, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    incoming = home / "artifacts" / ".incoming"
    extra = {"LORADOCK_BASE_MODEL": str(demo_model)}
    rng = random.Random(7)

    def source(seed: int) -> Path:
        # rank 32 on every linear layer of the demo model, about 20 MB: copying, hashing and syncing it takes
        # long enough for kills to land in the middle of each step
        return write_adapter(tmp_path / f"src-{seed}", demo_base, seed=seed, rank=32, modules=EVERY_LINEAR)

    def register_killed(seed: int, delay: float | None) -> tuple[int, float]:
        """`loradock adapters register`, SIGKILLed `delay` s after it starts staging (None: not killed).
        Returns its exit code and the seconds from staging to its end."""
        before = set(incoming.iterdir()) if incoming.is_dir() else set()
        process = start(home, "adapters", "register", "crashy", str(source(seed)), url=database_url, **extra)
        wait_for(lambda: incoming.is_dir() and bool(set(incoming.iterdir()) - before), process)
        staged_at = time.monotonic()
        if delay is None:
            process.wait()
        else:
            time.sleep(delay)
            kill_group(process)
        return process.returncode, time.monotonic() - staged_at

    code, window = register_killed(0, None)
    assert code == 0
    killed = 0
    for seed in range(1, 6):
        code, took = register_killed(seed, rng.uniform(0, window * 1.2))
        killed += code == -signal.SIGKILL
        if code == 0:  # it finished before its kill: the first one's time was long (a busy machine), draw from this
            window = min(window, took)
        check_consistent(home, database_url)  # after every kill, not only at the end
    referenced, stored = check_consistent(home, database_url)
    assert killed >= 1 and (stored - referenced or list(incoming.iterdir())), "no kill landed mid-write"

    collect_and_check_clean(home, database_url)
    code, _ = register_killed(9, None)
    assert code == 0
    hub = open_hub(home, database_url)
    try:
        numbers = [version.version for version in hub.registry.get_adapter("crashy").versions]
    finally:
        hub.close()
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 2  # no gaps: no half-written rows


# --- kill -9 of a server receiving an upload ---------------------------------------------------------------------

CHUNK = 16 << 10
PAUSE_S = 0.02


def upload_body(url: str, name: str, folder: Path) -> tuple[str, bytes, dict[str, str]]:
    request = httpx.Request(
        "POST",
        f"{url}/v1/adapters",
        data={"name": name},
        files=[("file", (path.name, path.read_bytes())) for path in sorted(folder.iterdir())],
    )
    body = request.read()
    return str(request.url), body, {"content-type": request.headers["content-type"]}


def slow_upload(url: str, name: str, folder: Path, at_chunk: Callable[[int, int], None]) -> httpx.Response | None:
    """POST the adapter as multipart in small chunks with pauses, calling `at_chunk(index, count)` before each
    chunk and once after the last; None when the connection broke."""
    target, body, headers = upload_body(url, name, folder)
    chunks = [body[start : start + CHUNK] for start in range(0, len(body), CHUNK)]

    def stream() -> Iterator[bytes]:
        for index, chunk in enumerate(chunks):
            at_chunk(index, len(chunks))
            yield chunk
            time.sleep(PAUSE_S)
        at_chunk(len(chunks), len(chunks))

    try:
        return httpx.post(target, content=stream(), headers={**headers, "content-length": str(len(body))}, timeout=60)
    except httpx.TransportError:
        return None


def start_server(home: Path, tiny_model: Path, spool: Path) -> ServerProcess:
    """A server that takes uploads: registration needs the hub and the base's shapes, not the engine."""
    server = ServerProcess(home, ["--base-model", str(tiny_model)], env={"TMPDIR": str(spool)})
    deadline = time.monotonic() + 120
    while True:
        assert server.process.poll() is None, server.log_tail()
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return server
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.1)


def kill_server(server: ServerProcess) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()


def killer(server: ServerProcess, moment: str, *, fraction: float, delay_s: float) -> Callable[[int, int], None]:
    """A `slow_upload` callback: SIGKILL the server's process group at `fraction` of the body ("body"), or
    `delay_s` after its last byte ("after"), while the server stages and registers the upload."""

    def at_chunk(index: int, count: int) -> None:
        if moment == "body" and index == max(1, int(count * fraction)):
            kill_server(server)
        elif moment == "after" and index == count:
            threading.Timer(delay_s, kill_server, [server]).start()

    return at_chunk


@pytest.mark.integration
def test_a_server_killed_during_uploads_leaves_no_files_and_a_consistent_registry(
    tiny_model: Path, tmp_path: Path
) -> None:
    home, spool = tmp_path / "home", tmp_path / "spool"
    spool.mkdir()
    base = BaseModelSpec.from_folder(tiny_model)
    rng = random.Random(11)

    def adapter(seed: int) -> Path:
        return write_adapter(tmp_path / f"src-{seed}", base, seed=seed, rank=64, modules=EVERY_LINEAR)

    server = start_server(home, tiny_model, spool)
    try:
        first = slow_upload(server.url, "uploaded", adapter(0), lambda index, count: None)
        assert first is not None and first.status_code == 201, first.text if first else "connection broke"
        # killed in the middle of the body, then just after it (while the server stages and registers), then
        # in the middle again
        for seed, moment in ((1, "body"), (2, "after"), (3, "body")):
            kill_at = killer(server, moment, fraction=rng.uniform(0.2, 0.9), delay_s=rng.uniform(0, 0.1))
            response = slow_upload(server.url, "uploaded", adapter(seed), kill_at)
            assert response is None or response.status_code == 201
            server.process.wait(timeout=30)
            check_consistent(home)
            server = start_server(home, tiny_model, spool)

        # restarted: registration works, gc (beside the live server) leaves exactly what rows reference
        again = slow_upload(server.url, "uploaded", adapter(4), lambda index, count: None)
        assert again is not None and again.status_code == 201, again.text if again else "connection broke"
        collect_and_check_clean(home)
        # the multipart spool files are anonymous (O_TMPFILE): nothing of the uploads is left outside the hub. A
        # server killed before its engine core was forked leaves only its forkserver's socket folder
        # (server/engine_process.py).
        assert not [path for path in spool.iterdir() if not path.name.startswith("pymp-")]
    finally:
        kill_server(server)


# --- kill -9 of a training run and of an export --------------------------------------------------------------------


def complete_adapter(folder: Path, name: str) -> None:
    assert {"adapter_config.json", "adapter_model.safetensors", "loradock-adapter.json", "README.md"} <= {
        path.name for path in folder.iterdir()
    }
    json.loads((folder / "adapter_config.json").read_text())
    json.loads((folder / "loradock-adapter.json").read_text())
    assert load_file(str(folder / "adapter_model.safetensors"))
    assert f"# {name}" in (folder / "README.md").read_text()


@pytest.mark.integration
def test_a_training_run_killed_while_saving_resumes_and_registers_once(tiny_model: Path, tmp_path: Path) -> None:
    from training.demo_task import write_dataset

    home = tmp_path / "home"
    run = home / "runs" / "crashy"
    checkpoints = run / "checkpoints"
    data = write_dataset(tmp_path / "tickets.jsonl", count=80)
    args = ["--base-model", str(tiny_model), "--data", str(data), "--output-dir", str(run), "--register", "trained"]
    args += ["--set", "max_steps=12", "--set", "save_every=3", "--set", "early_stopping_patience=null"]
    args += ["--set", "evaluate=false", *QUICK_TRAINING]

    # 1. killed the moment the trained adapter starts being saved
    process = start(home, "train", *args)
    wait_for(lambda: (run / ".adapter.partial").exists() or (run / "adapter").exists(), process, timeout_s=300)
    kill_group(process)
    if (run / "adapter").exists():
        complete_adapter(run / "adapter", "trained")  # never half of one under its final name
    assert "max_steps: 12" in (run / "config.yaml").read_text()
    check_consistent(home)

    # 2. a checkpoint that a kill cut short (the Trainer writes trainer_state.json last): gc lists it, and
    # --resume neither trusts nor keeps it
    newest = max(
        (c for c in checkpoints.glob("checkpoint-*") if (c / "trainer_state.json").is_file()),
        key=lambda c: int(c.name.split("-")[1]),
    )
    half = checkpoints / "checkpoint-99"
    shutil.copytree(newest, half)
    (half / "trainer_state.json").unlink()
    weights = half / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    listed = loradock(home, "gc", "--grace", "0", "--dry-run")
    assert listed.returncode == 0 and "checkpoint-99" in listed.stdout, listed.stdout
    assert ".adapter.partial" in listed.stdout or not (run / ".adapter.partial").exists()

    # 3. resumed: finishes, registers once, and leaves nothing for gc but what gc checks anyway
    done = loradock(home, "train", "--output-dir", str(run), "--resume")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not half.exists()
    record = json.loads((run / "run.json").read_text())
    # 13: resumed from the checkpoint at max_steps, the Trainer takes one more step
    assert record["steps"] >= 12 and record["registered"] == "trained@1"
    complete_adapter(run / "adapter", "trained")
    collect_and_check_clean(home)


def files_named(folder: Path, suffix: str) -> list[Path]:
    found = []
    for root, _, names in os.walk(folder):  # unlike rglob, quiet about folders removed while it walks
        found += [Path(root) / name for name in names if name.endswith(suffix)]
    return found


def measuring(parent: int) -> bool:
    """Whether the export's vLLM measurement runs: a process named `loradock measure`, forked from the export's
    forkserver (`training/exports/measure.py`)."""
    with contextlib.suppress(OSError):  # read from /proc, not psutil: this is polled every millisecond
        for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"loradock measure") or measuring(int(pid)):
                return True
    return False


@pytest.mark.integration
def test_an_export_killed_mid_way_registers_nothing_and_leaves_only_staging(tiny_model: Path, tmp_path: Path) -> None:
    from training.demo_task import write_dataset

    home = tmp_path / "home"
    incoming = home / "artifacts" / ".incoming"
    base = BaseModelSpec.from_folder(tiny_model)
    hub = open_hub(home)
    try:
        staged = stage_source(hub.store, str(write_adapter(tmp_path / "a", base, seed=1)), hub.registry.limits)
        hub.registry.register("exported", staged, base, created_by="test")
    finally:
        hub.close()
    data = write_dataset(tmp_path / "test.jsonl", count=8)
    args = ["export", "merged", "exported@1", "--base-model", str(tiny_model), "--data", str(data)]
    args += ["--max-prompts", "2", "--max-new-tokens", "4"]
    rng = random.Random(5)

    spool = tmp_path / "spool"  # where the killed exports' forkservers leave their socket folders
    spool.mkdir()

    # 1. killed (with its whole process group) while the merged weights are being written
    process = start(home, *args, TMPDIR=str(spool))
    wait_for(lambda: bool(files_named(incoming, ".safetensors")), process)
    time.sleep(rng.uniform(0, 0.3))
    kill_group(process)
    check_consistent(home)

    # 2. only the export's own process killed, while its measurement runs vLLM: the measurement and the forkserver it
    # was forked from go with it
    process = start(home, *args, TMPDIR=str(spool))
    assert wait_for(lambda: measuring(process.pid), process, timeout_s=300)
    descendants = psutil.Process(process.pid).children(recursive=True)
    time.sleep(rng.uniform(0.5, 2.0))
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 20
    while (survivors := [child for child in descendants if still_running(child)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    kill_group(process)
    assert not survivors, [" ".join(child.cmdline()) for child in survivors]

    hub = open_hub(home)
    try:
        assert hub.registry.get_version("exported", 1).artifacts == []  # nothing half-registered
    finally:
        hub.close()
    check_consistent(home)
    assert list(incoming.iterdir())  # the kills left staging folders, under temporary names only
    collect_and_check_clean(home)
