"""One model specification: what to load and how, shared by every command, the server and workers.

A :class:`ModelSpec` names a checkpoint (a local directory or a Hub id, with an optional Hub
revision) and the settings it runs with. It is frozen, picklable and converts to and from a JSON
dict, so a server worker or a Ray actor receives one and builds its model with
:meth:`ModelSpec.load_embedder` or :meth:`ModelSpec.load_reranker`.

The command line spells the same fields the same way everywhere (:meth:`ModelSpec.add_arguments`):
``--model --revision --device --dtype --max-length --batch-tokens --threads --backend
--allow-pickle --trust-remote-code``. A second model of a command takes a prefix: with
``prefix="reranker-"`` the flags are ``--reranker`` (the model), ``--reranker-revision``,
``--reranker-device`` ... Options a prefixed model does not set can be inherited from the
unprefixed ones (:meth:`ModelSpec.from_args`).

Two rules worth knowing:

* ``threads`` sets torch's intra-op thread count when the model is loaded. That setting is
  process-wide: every model of the process runs with it, so commands that load two models
  refuse two different values (:func:`process_threads`).
* ``revision`` applies to Hub ids only. A local directory is whatever is on disk, so a spec that
  pairs a local directory with a revision is refused at load time rather than silently loading
  something other than the pinned revision.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .embedder import Embedder
    from .reranker import Reranker

from .runtime import BACKENDS  # the one list of runtimes a model can run on

DTYPES: tuple[str, ...] = ("auto", "float32", "fp32", "float", "bfloat16", "bf16", "float16", "fp16", "half")
# the options that say how a model runs rather than which model it is; a prefixed model inherits
# these from the unprefixed ones when it does not set them (``from_args(..., inherit=...)``)
RUNTIME_OPTIONS: tuple[str, ...] = (
    "device",
    "dtype",
    "batch_tokens",
    "threads",
    "backend",
    "allow_pickle",
    "trust_remote_code",
)

_HELP = {  # field: (what it is, its default)
    "revision": ("Hub revision (branch, tag or commit); Hub ids only", "the latest"),
    "device": ("cpu, cuda, cuda:1 ...", "cuda if available, else cpu"),
    "dtype": ("float32 | bfloat16 | float16", "fp32 on CPU, bf16 on GPU"),
    "max_length": ("tokens per input", "the checkpoint's, else 8192"),
    "batch_tokens": ("padded tokens per batch", "4096 on CPU, 16384 on GPU"),
    "threads": ("torch intra-op CPU threads, set when the model loads (process-wide)", "torch's"),
    "backend": (f"runtime that runs the model: {' | '.join(BACKENDS)}", "torch"),
    "allow_pickle": ("allow loading pickle (.bin) weights, which can run code", "off"),
    "trust_remote_code": ("run the checkpoint's own Python code", "off"),
}
_INT_OPTIONS = ("max_length", "batch_tokens", "threads")
_BOOL_OPTIONS = ("allow_pickle", "trust_remote_code")


def _positive_int(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")


@dataclass(frozen=True)
class ModelSpec:
    """Which checkpoint to load and how; every field has a flag of the same name.

    Example::

        spec = ModelSpec("Qwen/Qwen3-Embedding-0.6B", revision="main", dtype="bfloat16")
        embedder = spec.load_embedder()
        same = ModelSpec.from_dict(spec.to_dict())  # what a worker receives
    """

    model: str  # a local directory or a Hub id
    revision: str | None = None  # Hub branch, tag or commit (Hub ids only)
    device: str | None = None  # None: cuda when available, else cpu
    dtype: str | None = None  # None: fp32 on CPU, bf16 on accelerators
    max_length: int | None = None  # None: the checkpoint's own limit
    batch_tokens: int | None = None  # None: the device's default budget
    threads: int | None = None  # torch intra-op threads, process-wide; None: leave as is
    backend: str = "torch"  # one of BACKENDS
    allow_pickle: bool = False  # load pickle (.bin) weights
    trust_remote_code: bool = False  # run a checkpoint's own code

    def __post_init__(self) -> None:
        if isinstance(self.model, Path):
            object.__setattr__(self, "model", str(self.model))
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model must be a local directory or a Hub id, got {self.model!r}")
        for name in ("revision", "device", "dtype"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"{name} must be a non-empty string or None, got {value!r}")
        if self.device is not None:
            import torch

            try:
                torch.device(self.device)
            except RuntimeError:
                raise ValueError(
                    f"device {self.device!r} is not a torch device; use cpu, cuda, cuda:N, mps ..."
                ) from None
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not supported; use one of {list(DTYPES)}")
        for name in _INT_OPTIONS:
            _positive_int(name, getattr(self, name))
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r} is not supported; use one of {list(BACKENDS)}")
        for name in _BOOL_OPTIONS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")

    # ------------------------------------------------------------------ dict / JSON
    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-ready values (``from_dict`` reads them back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """The spec of a dict written by :meth:`to_dict` (missing options take their defaults)."""
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ValueError(f"unknown model spec field(s) {unknown}; allowed: {allowed}")
        if "model" not in data:
            raise ValueError(
                f"a model spec needs 'model' (a directory or a Hub id), got fields {sorted(data)}"
            )
        return cls(**dict(data))

    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ command line
    @staticmethod
    def flag(name: str, prefix: str = "") -> str:
        """The flag of field ``name``: ``--model`` / ``--reranker`` for the model, else ``--{prefix}{name}``."""
        if name == "model":
            return "--" + (prefix.rstrip("-") or "model")
        return "--" + prefix + name.replace("_", "-")

    @staticmethod
    def dest(name: str, prefix: str = "") -> str:
        """The ``argparse`` destination of field ``name`` (``model`` / ``reranker``, ``reranker_device``)."""
        return ModelSpec.flag(name, prefix)[2:].replace("-", "_")

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The fields other than ``model``, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "model")

    @classmethod
    def add_arguments(
        cls,
        parser: argparse.ArgumentParser,
        prefix: str = "",
        *,
        default_model: str | None = None,
        model_flag: bool = True,
        model_help: str | None = None,
        inherit: Collection[str] = (),
        model_required: bool | None = None,
    ) -> None:
        """Add the spec's flags to ``parser`` (in their own help group).

        The model flag is required when unprefixed and without ``default_model``; a prefixed model
        is optional; ``model_required`` overrides that (a command that can take its model from
        elsewhere checks it itself, with :meth:`required_from_args`). ``model_flag=False`` adds the options only: a command whose model comes from
        another flag, or a command of two prefixed models whose unprefixed options are the default
        of both. Every option defaults to ``None`` so that :meth:`from_args` sees what was given;
        ``inherit`` names the options whose help says they default to the unprefixed flag (pass
        the same to :meth:`from_args`).
        """
        if prefix and not prefix.endswith("-"):
            raise ValueError(f"prefix must end with '-', like 'reranker-', got {prefix!r}")
        title = f"{prefix.rstrip('-')} model" if prefix else "model"
        if not model_flag and not prefix:
            title = "model options (the default of each model of the command)"
        group = parser.add_argument_group(title)
        if model_flag:
            what = model_help or "local directory or Hub id"
            group.add_argument(
                cls.flag("model", prefix),
                dest=cls.dest("model", prefix),
                default=default_model,
                required=(not prefix and default_model is None) if model_required is None else model_required,
                metavar="MODEL",
                help=what + (f" (default {default_model})" if default_model else ""),
            )
        for name in cls.option_names():
            flag, dest = cls.flag(name, prefix), cls.dest(name, prefix)
            what, default = _HELP[name]
            text = f"{what} (default: {cls.flag(name) if prefix and name in inherit else default})"
            if name in _BOOL_OPTIONS:
                group.add_argument(flag, dest=dest, action="store_const", const=True, default=None, help=text)
            elif name in _INT_OPTIONS:
                group.add_argument(flag, dest=dest, type=int, default=None, metavar="N", help=text)
            elif name == "backend":
                group.add_argument(flag, dest=dest, choices=BACKENDS, default=None, help=text)
            else:
                group.add_argument(flag, dest=dest, default=None, metavar=name.upper(), help=text)

    @classmethod
    def from_args(
        cls,
        args: argparse.Namespace,
        prefix: str = "",
        *,
        model: str | None = None,
        inherit: Collection[str] = (),
    ) -> ModelSpec | None:
        """The spec of ``add_arguments(parser, prefix)``'s flags; ``None`` when no model was given.

        ``model`` replaces the model flag's value (for a command whose model comes from another
        flag). Options in ``inherit`` that the prefixed flags leave unset take the unprefixed
        flag's value (e.g. a reranker runs on ``--device`` unless ``--reranker-device`` is given).
        """
        name = model if model is not None else getattr(args, cls.dest("model", prefix), None)
        if name is None:
            return None
        values: dict[str, Any] = {}
        for option in cls.option_names():
            value = getattr(args, cls.dest(option, prefix), None)
            if value is None and prefix and option in inherit:
                value = getattr(args, cls.dest(option), None)
            if value is not None:
                values[option] = value
        return cls(model=str(name), **values)

    @classmethod
    def required_from_args(cls, args: argparse.Namespace, prefix: str = "") -> ModelSpec:
        """Like :meth:`from_args`, for a model the command cannot run without."""
        spec = cls.from_args(args, prefix)
        if spec is None:
            raise ValueError(f"{cls.flag('model', prefix)} is required")
        return spec

    # ------------------------------------------------------------------ loading
    def check_revision(self) -> None:
        """Refuse a revision with a local directory (it cannot be checked out there)."""
        if self.revision is not None and Path(self.model).expanduser().is_dir():
            raise ValueError(
                f"revision {self.revision!r} applies to Hub ids only, but {self.model!r} is a local "
                "directory; check the revision out there, or drop the revision"
            )

    def apply_threads(self) -> None:
        """Set torch's intra-op threads (process-wide) when the spec names a count."""
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)

    def prepare(self) -> None:
        """What every load does first: check the revision rule, set the thread count."""
        self.check_revision()
        self.apply_threads()

    def _load_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(
            revision=self.revision,
            device=self.device,
            dtype=self.dtype,
            batch_tokens=self.batch_tokens,
            allow_pickle=self.allow_pickle,
            trust_remote_code=self.trust_remote_code,
            backend=self.backend,
        )
        if self.max_length is not None:  # None: the loader's own default
            kwargs["max_length"] = self.max_length
        return kwargs

    def _split(self, overrides: Mapping[str, Any]) -> tuple[ModelSpec, dict[str, Any]]:
        """Overrides of spec fields make a new (validated) spec; the rest go to the loader."""
        names = {f.name for f in dataclasses.fields(self)}
        changes = {k: v for k, v in overrides.items() if k in names}
        extra = {k: v for k, v in overrides.items() if k not in names}
        return (self.replace(**changes) if changes else self), extra

    def load_embedder(self, **overrides: Any) -> Embedder:
        """``Embedder.from_pretrained`` with this spec. ``overrides`` replace spec fields
        (``device="cpu"``) or go to the loader as they are (``pooling=``, ``normalize=`` ...)."""
        from .embedder import Embedder

        spec, extra = self._split(overrides)
        spec.prepare()
        return Embedder.from_pretrained(spec.model, **{**spec._load_kwargs(), **extra})

    def load_reranker(self, **overrides: Any) -> Reranker:
        """``Reranker.from_pretrained`` with this spec; ``overrides`` as in :meth:`load_embedder`."""
        from .reranker import Reranker

        spec, extra = self._split(overrides)
        spec.prepare()
        return Reranker.from_pretrained(spec.model, **{**spec._load_kwargs(), **extra})


def process_threads(*specs: ModelSpec | None) -> int | None:
    """The one thread count of the specs a process loads; two different counts are an error."""
    counts = {s.threads for s in specs if s is not None and s.threads is not None}
    if len(counts) > 1:
        raise ValueError(f"threads is process-wide, but the models ask for {sorted(counts)}; give one count")
    return counts.pop() if counts else None


def add_progress_argument(parser: argparse.ArgumentParser, *, quiet_alias: bool = False) -> None:
    """``--no-progress``, the one spelling of "hide progress bars" (``--quiet``: old, hidden alias)."""
    parser.add_argument("--no-progress", dest="no_progress", action="store_true", help="hide progress bars")
    if quiet_alias:
        parser.add_argument("--quiet", dest="no_progress", action="store_true", help=argparse.SUPPRESS)


__all__ = [
    "BACKENDS",
    "DTYPES",
    "RUNTIME_OPTIONS",
    "ModelSpec",
    "add_progress_argument",
    "process_threads",
]
