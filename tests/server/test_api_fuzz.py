"""The whole HTTP API fuzzed from its own OpenAPI document with schemathesis: over 1,000 generated requests, valid
and invalid, against a real server (real engine, real database); none may get a 5xx or a response that breaks the
document (status, content type, body schema).

Each operation is fuzzed three ways: schema-valid inputs, schema-invalid inputs, and valid inputs aimed at things
that exist (the registered adapter, the uploaded file, the served models), so that fuzzing reaches past the 404s
into generation, downloads, aliases and feedback.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from adapters.fingerprint import BaseModelSpec
from tests.adapter_factory import write_adapter
from tests.conftest import SERVER_ENV
from tests.helpers import ServerProcess, adapter_files, upload_adapter

pytestmark = pytest.mark.integration

EXAMPLES_PER_RUN = 20
MIN_CASES = 1000
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
ADAPTER = "fuzzed"


def launch(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """A server of its own (fuzzing registers, deletes and uploads junk) over the 2-layer tiny model, so that the
    valid generations are quick, with output capped at 16 tokens (`tests/early_start.py`)."""
    env = {**SERVER_ENV, "LORADOCK_MAX_OUTPUT_TOKENS": "16", "LORADOCK_MAX_N": "2", "LORADOCK_DRIFT": "false"}
    home = request.getfixturevalue("tmp_path_factory").mktemp("fuzz-home")
    server = ServerProcess(home, ["--base-model", str(request.getfixturevalue("tiny_model"))], env=env)
    try:
        yield server
    finally:
        server.terminate()


@pytest.fixture(scope="module")
def fuzz_server(launched: ServerProcess, tiny_model: Path) -> tuple[ServerProcess, dict[str, Any]]:
    """The module's server, ready, and what exists on it to aim at."""
    server = launched
    server.wait_ready()
    folder = write_adapter(server.home / "adapter", BaseModelSpec.from_folder(tiny_model), seed=3)
    assert upload_adapter(server.url, ADAPTER, adapter_files(folder)).status_code == 201
    rows = "".join(
        json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}) + "\n"
        for i in range(12)
    )
    uploaded = httpx.post(
        f"{server.url}/v1/files", files={"file": ("train.jsonl", rows)}, data={"purpose": "fine-tune"}, timeout=60
    )
    assert uploaded.status_code == 200, uploaded.text
    existing = {
        "name": ADAPTER,
        "version": 1,
        "alias": "live",
        "file_id": uploaded.json()["id"],
        "models": [tiny_model.name, ADAPTER, f"{ADAPTER}@1"],
    }
    return server, existing


def _aimed(operation: Any, existing: dict[str, Any]) -> st.SearchStrategy[schemathesis.Case]:
    """Valid cases whose path parameters and `model` name things that exist."""
    wanted = {parameter.name for parameter in operation.path_parameters}
    path = {key: existing[key] for key in wanted if key in existing} or None
    strategy = operation.as_strategy(GenerationMode.POSITIVE, path_parameters=path)

    def with_model(pair: tuple[schemathesis.Case, str]) -> schemathesis.Case:
        case, model = pair
        if isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = model
        return case

    return st.tuples(strategy, st.sampled_from(existing["models"])).map(with_model)


def test_no_server_error_and_every_response_matches_the_schema(fuzz_server) -> None:
    server, existing = fuzz_server
    api_schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    statuses: Counter[int] = Counter()
    failures: dict[str, str] = {}
    for result in api_schema.get_all_operations():
        operation = result.ok()
        runs = {
            "valid": operation.as_strategy(GenerationMode.POSITIVE),
            "invalid": operation.as_strategy(GenerationMode.NEGATIVE),
            "aimed": _aimed(operation, existing),
        }
        for kind, strategy in runs.items():

            @given(case=strategy)
            @settings(
                max_examples=EXAMPLES_PER_RUN,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
                database=None,
            )
            def fuzz(case: schemathesis.Case) -> None:
                response = case.call_and_validate(checks=CHECKS, timeout=60)
                statuses[response.status_code] += 1

            try:
                fuzz()
            except Unsatisfiable:  # nothing about the operation can be invalid (no body, only a free-form string)
                continue
            except Exception as exc:
                failures[f"{operation.label} ({kind} inputs)"] = str(exc)[:3000]
    print(f"{statuses.total()} cases, statuses {dict(sorted(statuses.items()))}")
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
    assert statuses.total() >= MIN_CASES, f"only {statuses.total()} cases ran"
