"""A bounded schemathesis run over the app's own OpenAPI schema against a live server: no 5xx.

Driven through hypothesis directly (one strategy per operation and generation mode) rather than
schemathesis' pytest plugin, which does not support this pytest version.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip(
    "schemathesis", reason="schemathesis is a test-only extra (pip install schemathesis)"
)
from hypothesis import HealthCheck, given, settings  # noqa: E402  (schemathesis brings hypothesis)

EXAMPLES_PER_RUN = 40


def fuzz(operation, mode, calls: dict[tuple[str, str], int]) -> None:
    """Call ``operation`` with EXAMPLES_PER_RUN generated requests; fail on any 5xx."""
    key = (operation.path, mode.value)

    @settings(
        max_examples=EXAMPLES_PER_RUN,
        deadline=None,
        derandomize=True,  # the same examples on every run
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def call(case) -> None:
        response = case.call(timeout=60)
        calls[key] = calls.get(key, 0) + 1
        assert response.status_code < 500, (case.body, response.status_code, response.text)
        if response.status_code >= 400:  # every error is an OpenAI-style body
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}

    call()


@pytest.mark.slow
def test_fuzzing_the_openapi_schema_finds_no_server_error(server):
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/v1/embeddings",
        "/v1/rerank",
        "/v1/models",
        "/health",
        "/metrics",
    }
    calls: dict[tuple[str, str], int] = {}
    positive, negative = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
    for operation in operations:
        fuzz(operation, positive, calls)
        if operation.method.upper() == "POST":  # GET routes take no parameters: nothing invalid to send
            fuzz(operation, negative, calls)
    assert {path for path, _ in calls} == {op.path for op in operations}
    negative = {path for path, mode in calls if mode == "negative"}
    assert negative == {op.path for op in operations if op.method.upper() == "POST"}
    assert negative >= {"/v1/embeddings", "/v1/rerank"}
