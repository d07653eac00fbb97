"""``embedforge serve``: run the server with uvicorn (graceful shutdown on SIGTERM / Ctrl-C)."""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from embedforge.server.settings import ServerSettings
from embedforge.spec import ModelSpec

# flag -> settings field; every flag defaults to None so that EMBEDFORGE_* variables fill the gaps.
# The model flags (--embedder, --reranker, their --embedder-* / --reranker-* options and the shared
# unprefixed ones) come from ModelSpec, spelled as in every other command.
_FLAGS: list[tuple[str, str, dict]] = [
    ("--embedder-name", "embedder_name", {"metavar": "ID"}),
    ("--reranker-name", "reranker_name", {"metavar": "ID"}),
    ("--host", "host", {}),
    ("--port", "port", {"type": int}),
    ("--api-key", "api_key", {"metavar": "KEY"}),
    ("--max-batch-tokens", "max_batch_tokens", {"type": int, "metavar": "N"}),
    ("--max-queue", "max_queue", {"type": int, "metavar": "N"}),
    ("--max-request-inputs", "max_request_inputs", {"type": int, "metavar": "N"}),
    ("--max-body-bytes", "max_body_bytes", {"type": int, "metavar": "N"}),
    ("--batch-wait-ms", "batch_wait_ms", {"type": float, "metavar": "MS"}),
    ("--retry-after-s", "retry_after_s", {"type": int, "metavar": "S"}),
    ("--graceful-timeout-s", "graceful_timeout_s", {"type": int, "metavar": "S"}),
    ("--log-level", "log_level", {}),
    ("--index", "index", {"metavar": "DIR"}),
]
_SWITCHES: list[tuple[str, str, bool]] = [
    ("--no-dynamic-batching", "dynamic_batching", False),
    ("--no-access-log", "access_log", False),
]
_MODEL_PREFIXES = ("embedder-", "reranker-")


def _model_fields() -> list[str]:
    """The settings fields of ``serve``'s ModelSpec flags (each flag's destination is its field)."""
    names = [ModelSpec.dest("model", p) for p in _MODEL_PREFIXES]
    for name in ModelSpec.option_names():
        names += [ModelSpec.dest(name)] + [ModelSpec.dest(name, p) for p in _MODEL_PREFIXES]
    return names


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    for flag, field, extra in _FLAGS:
        help_text = ServerSettings.model_fields[field].description
        parser.add_argument(flag, dest=field, default=None, help=help_text, **extra)
    for flag, field, value in _SWITCHES:
        help_text = ServerSettings.model_fields[field].description
        parser.add_argument(flag, dest=field, action="store_const", const=value, default=None, help=help_text)
    ModelSpec.add_arguments(parser, model_flag=False)  # shared by both models
    # --torch-threads: the old spelling of --threads
    parser.add_argument("--torch-threads", dest="threads", type=int, default=None, help=argparse.SUPPRESS)
    each = ModelSpec.option_names()  # a model's own option, when given, replaces the shared one
    ModelSpec.add_arguments(
        parser, "embedder-", model_help="embedding model: local directory or Hub id", inherit=each
    )
    ModelSpec.add_arguments(
        parser, "reranker-", model_help="reranker (Qwen3-Reranker layout): directory or Hub id", inherit=each
    )


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """Flags given on the command line, the rest from ``EMBEDFORGE_*`` variables and defaults."""
    names = [f for _, f, _ in _FLAGS] + [f for _, f, _ in _SWITCHES] + _model_fields()
    given = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    return ServerSettings(**given)


def serve(settings: ServerSettings) -> int:
    """Run until SIGTERM / SIGINT; in-flight requests finish first. 1 if the models failed to load."""
    import uvicorn

    from embedforge.server.app import create_app

    threads = settings.process_threads()
    if threads is not None:  # process-wide, so set here too (and not in create_app)
        import torch

        torch.set_num_threads(threads)
    logging.basicConfig(level=settings.log_level.upper() if settings.log_level != "trace" else "DEBUG")
    server: uvicorn.Server | None = None

    def stop(_: BaseException) -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_load_error=stop)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=settings.graceful_timeout_s,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    server.run()  # installs SIGTERM/SIGINT handlers: stop accepting, finish in-flight, run lifespan shutdown
    return 1 if app.state.server.load_error is not None else 0


def _run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"embedforge serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    return serve(settings)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the ``embedforge`` command."""
    parser = subparsers.add_parser(
        "serve",
        help="serve embeddings (OpenAI API) and reranking (Cohere/Jina API) over HTTP",
        description="Serve an embedding model and/or a reranker. Every flag can also be set by an "
        "EMBEDFORGE_<FLAG> environment variable (e.g. EMBEDFORGE_API_KEY).",
    )
    add_serve_arguments(parser)
    parser.set_defaults(func=_run)


def main(argv: list[str] | None = None) -> int:
    """``python -m embedforge.server.cli`` (the same as ``embedforge serve``)."""
    parser = argparse.ArgumentParser(prog="embedforge serve")
    add_serve_arguments(parser)
    return _run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
