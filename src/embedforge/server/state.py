"""What the routes read from the app: the settings, the engine once the models are loaded, the
served model ids."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from fastapi import Request

from embedforge.engine import Engine, EngineError, ErrorKind
from embedforge.server.settings import ServerSettings


class Task(str, Enum):
    EMBEDDING = "embedding"
    RERANK = "rerank"


@dataclass
class ServerState:
    """Mutable state of one app; ``engine`` is None until the models are loaded."""

    settings: ServerSettings
    served: dict[str, Task] = field(default_factory=dict)
    engine: Engine | None = None
    load_error: BaseException | None = None
    created: int = 0
    index: Any = None  # an embedforge.index.Index when the server was started with --index

    def ready_engine(self) -> Engine:
        """The engine, or 503 while the models load (or after loading failed)."""
        if self.engine is not None:
            return self.engine
        if self.load_error is not None:
            raise EngineError(
                ErrorKind.NOT_READY, "the models failed to load; see the server log", retry_after=None
            )
        raise EngineError(
            ErrorKind.NOT_READY, "the models are still loading", retry_after=self.settings.retry_after_s
        )

    def resolve_model(self, requested: str | None, task: Task) -> str:
        """The served id for ``requested`` (None: this task's model), or 404 naming what is served."""
        if requested is None:
            for model_id, kind in self.served.items():
                if kind is task:
                    return model_id
            raise EngineError(
                ErrorKind.MODEL_NOT_FOUND, f"this server serves no {task.value} model", param="model"
            )
        found = self.served.get(requested)
        if found is task:
            return requested
        served = ", ".join(f"{m!r} ({k.value})" for m, k in self.served.items())
        what = (
            f"is a {found.value} model, not a {task.value} model"
            if found is not None
            else "is not served here"
        )
        raise EngineError(
            ErrorKind.MODEL_NOT_FOUND, f"model {requested!r} {what}; served: {served}", param="model"
        )


def get_state(request: Request) -> ServerState:
    return request.app.state.server


__all__ = ["ServerState", "Task", "get_state"]
