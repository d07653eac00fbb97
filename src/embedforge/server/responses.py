"""Error responses documented on every route of the OpenAPI schema."""

from __future__ import annotations

from typing import Any

from embedforge.server.errors import ERROR_TABLE, UNDOCUMENTED
from embedforge.server.schemas import ErrorBody

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": "OpenAI-style error body"}
    for status in sorted({row.status for row in ERROR_TABLE.values()} - UNDOCUMENTED)
}

__all__ = ["ERROR_RESPONSES"]
