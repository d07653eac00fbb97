"""``embedforge serve``: run the server with uvicorn (graceful shutdown on SIGTERM / Ctrl-C)."""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from embedforge.server.settings import ServerSettings

# flag -> settings field; every flag defaults to None so that EMBEDFORGE_* variables fill the gaps
_FLAGS: list[tuple[str, str, dict]] = [
    ("--embedder", "embedder", {"metavar": "M"}),
    ("--reranker", "reranker", {"metavar": "R"}),
    ("--embedder-name", "embedder_name", {"metavar": "ID"}),
    ("--reranker-name", "reranker_name", {"metavar": "ID"}),
    ("--host", "host", {}),
    ("--port", "port", {"type": int}),
    ("--api-key", "api_key", {"metavar": "KEY"}),
    ("--max-batch-tokens", "max_batch_tokens", {"type": int, "metavar": "N"}),
    ("--max-queue", "max_queue", {"type": int, "metavar": "N"}),
    ("--max-request-inputs", "max_request_inputs", {"type": int, "metavar": "N"}),
    ("--max-body-bytes", "max_body_bytes", {"type": int, "metavar": "N"}),
    ("--max-length", "max_length", {"type": int, "metavar": "N"}),
    ("--device", "device", {}),
    ("--dtype", "dtype", {}),
    ("--torch-threads", "torch_threads", {"type": int, "metavar": "N"}),
    ("--batch-wait-ms", "batch_wait_ms", {"type": float, "metavar": "MS"}),
    ("--retry-after-s", "retry_after_s", {"type": int, "metavar": "S"}),
    ("--graceful-timeout-s", "graceful_timeout_s", {"type": int, "metavar": "S"}),
    ("--log-level", "log_level", {}),
]
_SWITCHES: list[tuple[str, str, bool]] = [
    ("--no-dynamic-batching", "dynamic_batching", False),
    ("--no-access-log", "access_log", False),
    ("--allow-pickle", "allow_pickle", True),
    ("--trust-remote-code", "trust_remote_code", True),
]


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    for flag, field, extra in _FLAGS:
        help_text = ServerSettings.model_fields[field].description
        parser.add_argument(flag, dest=field, default=None, help=help_text, **extra)
    for flag, field, value in _SWITCHES:
        help_text = ServerSettings.model_fields[field].description
        parser.add_argument(flag, dest=field, action="store_const", const=value, default=None, help=help_text)


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """Flags given on the command line, the rest from ``EMBEDFORGE_*`` variables and defaults."""
    names = [f for _, f, _ in _FLAGS] + [f for _, f, _ in _SWITCHES]
    given = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    return ServerSettings(**given)


def serve(settings: ServerSettings) -> int:
    """Run until SIGTERM / SIGINT; in-flight requests finish first. 1 if the models failed to load."""
    import uvicorn

    from embedforge.server.app import create_app

    if settings.torch_threads is not None:  # process-wide, so set here and not in create_app
        import torch

        torch.set_num_threads(settings.torch_threads)
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
