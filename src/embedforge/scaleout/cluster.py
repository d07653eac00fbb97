"""Which engine runs a job (``--engine local|ray``) and the Ray cluster it runs on.

``add_engine_arguments(parser)`` adds the same four flags to every command that can scale out
(``embed``, ``index build``/``index add``, ``synth``); :meth:`EngineOptions.from_args` reads them
back; :func:`ray_cluster` joins a cluster (``--address``) or starts a local one, and shuts down
only what it started. Ray is an optional extra: nothing here imports it until a job runs on it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

ENGINES = ("local", "ray")


def require_ray() -> Any:
    """The ``ray`` module, or a clear error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ValueError(
            "--engine ray needs Ray: pip install 'embedforge[ray]' (or pip install 'ray[data]')"
        ) from None
    return ray


@dataclass(frozen=True)
class EngineOptions:
    """How a job runs: in this process (``local``) or on a Ray cluster."""

    engine: str = "local"
    address: str | None = None  # None: start a local Ray instance; else join this cluster
    actors: int = 2  # model replicas (embedding) or endpoint workers' parallelism
    threads_per_actor: int = 1  # torch intra-op threads and CPUs reserved per actor

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine {self.engine!r} is not one of {list(ENGINES)}")
        for name in ("actors", "threads_per_actor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.engine == "local" and self.address is not None:
            raise ValueError("--address applies to --engine ray only")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EngineOptions:
        return cls(
            engine=getattr(args, "engine", "local"),
            address=getattr(args, "ray_address", None),
            actors=getattr(args, "actors", 2),
            threads_per_actor=getattr(args, "threads_per_actor", 1),
        )

    @property
    def is_ray(self) -> bool:
        return self.engine == "ray"


def add_engine_arguments(parser: argparse.ArgumentParser, *, part_rows: bool = False) -> None:
    """``--engine local|ray``, ``--address``, ``--actors``, ``--threads-per-actor`` (own help group);
    with ``part_rows`` also ``--part-rows`` (records per read task and per commit of a Ray job)."""
    group = parser.add_argument_group("scale-out (Ray)")
    group.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="local: this process; ray: a Ray cluster (pip install 'embedforge[ray]') (default: local)",
    )
    group.add_argument(
        "--address",
        dest="ray_address",
        default=None,
        metavar="ADDR",
        help="Ray cluster to join, e.g. ray://head:10001 or auto (default: start a local Ray instance)",
    )
    group.add_argument(
        "--actors", type=int, default=2, metavar="N", help="model replicas / workers on Ray (default: 2)"
    )
    group.add_argument(
        "--threads-per-actor",
        type=int,
        default=1,
        metavar="T",
        help="torch threads and CPUs per Ray actor (default: 1)",
    )
    if part_rows:
        group.add_argument(
            "--part-rows",
            type=int,
            default=1024,
            metavar="N",
            help="records per Ray read task and per committed output part (default: 1024)",
        )


@contextlib.contextmanager
def ray_cluster(options: EngineOptions, *, num_cpus: int | None = None) -> Iterator[Any]:
    """Connected to Ray for the duration: an already initialised Ray is used as it is; otherwise
    join ``options.address`` or start a local instance (``num_cpus``: its CPUs, default all), and
    disconnect at the end."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    if options.address is not None:
        kwargs["address"] = options.address
    else:
        kwargs["num_cpus"] = num_cpus or max(os.cpu_count() or 1, options.actors * options.threads_per_actor)
    ray.init(**kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()
