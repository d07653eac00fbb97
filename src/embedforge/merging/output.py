"""Where a merge may write, and writing it all or nothing.

A merge reads its input checkpoints while it writes its output, so an output that is an input,
lies inside one or holds one would destroy (or litter) what the merge reads. :func:`check_output`
refuses such an output before anything is read or written. Paths are compared resolved (symlinks
followed) and, where they exist, as files (``os.path.samefile``, which also sees a directory
reached through a bind mount).

What may already be at the output path: nothing, an empty directory, or an earlier merge output
(its ``model.safetensors`` carries the ``embedforge_merge`` metadata), which is replaced as a
whole. Anything else is refused: replacing it would delete files the merge did not write, and
writing into it would mix them with the merge's (a stale shard index would even take precedence
over the new weights).

:func:`staged_output` builds the output in a hidden temporary directory next to it (on the same
file system) and renames it into place only once complete. On any error, Ctrl-C included, it
removes the temporary directory and every parent directory it created, so a failed merge leaves
the file system as it found it. Replacing an earlier merge output takes two renames (old one
aside, new one in), so the path briefly holds nothing, but never a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from embedforge.merging.safetensors_io import read_header

MERGE_METADATA_KEY = "embedforge_merge"  # in the safetensors metadata of every merge output


class MergeError(ValueError):
    """A merge that was refused or failed; nothing was written at its output path."""


def _show(path: Path) -> str:
    real = path.resolve()
    return str(path) if real == path.absolute() else f"{path} (resolved: {real})"


def _within(path: Path, root: Path) -> bool:
    """Whether ``path`` is ``root`` or lies below it."""
    real_path, real_root = path.resolve(), root.resolve()
    if real_path.is_relative_to(real_root):
        return True
    if not real_root.exists():
        return False
    return any(p.exists() and os.path.samefile(p, real_root) for p in (real_path, *real_path.parents))


def checkpoint_inputs(checkpoint: Path) -> list[Path]:
    """The directories a merge reads for one checkpoint: itself and, for a LoRA adapter, its base
    model when that is a local directory."""
    config = checkpoint / "adapter_config.json"
    if not config.is_file():
        return [checkpoint]
    try:
        base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise MergeError(f"the LoRA adapter config {config} is not a valid JSON object ({exc})") from None
    return [checkpoint, Path(base)] if isinstance(base, str) and Path(base).is_dir() else [checkpoint]


def is_merge_output(directory: Path) -> bool:
    """Whether ``directory`` holds a checkpoint written by a merge (and so may be replaced by one)."""
    try:
        meta = read_header(directory / "model.safetensors").get("__metadata__")
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and MERGE_METADATA_KEY in meta


def check_output(out: Path, inputs: Sequence[Path]) -> None:
    """Raise :class:`MergeError` unless ``out`` may receive the merge of ``inputs`` (rules above)."""
    for inp in inputs:
        if _within(out, inp):
            relation = "is" if out.resolve() == inp.resolve() else "lies inside"
            raise MergeError(
                f"the output {_show(out)} {relation} the input checkpoint {_show(inp)}: the merge would "
                "overwrite what it reads; choose an output directory outside every input"
            )
        if _within(inp, out):
            raise MergeError(
                f"the output {_show(out)} contains the input checkpoint {_show(inp)}: the merge replaces "
                "its output as a whole; choose an output directory outside every input"
            )
    real = out.resolve()
    if real.exists() and not real.is_dir():
        raise MergeError(f"the output {_show(out)} exists and is not a directory")
    if real.is_dir() and any(real.iterdir()) and not is_merge_output(real):
        raise MergeError(
            f"the output directory {_show(out)} is not empty and holds no earlier merge output; "
            "a merge replaces its output as a whole: remove it or choose another output directory"
        )


def _make_parents(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing parents; return the created ones, outermost first."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()][::-1]
    for d in missing:
        d.mkdir()
    return missing


def _move_into_place(build: Path, target: Path, staging: Path) -> None:
    if target.is_dir() and any(target.iterdir()):
        if not is_merge_output(target):  # something appeared there during the merge
            raise MergeError(f"the output directory {target} was filled by something else during the merge")
        previous = staging / "previous"
        os.rename(target, previous)
        try:
            os.rename(build, target)
        except BaseException:
            os.rename(previous, target)
            raise
    else:
        os.rename(build, target)  # atomic; replaces an empty directory (POSIX rename)


@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """Yield an empty directory to build the output in, next to ``out``; when the block ends without
    error it becomes ``out`` (call :func:`check_output` first); on any error nothing is left."""
    target = out.resolve()
    created: list[Path] = []
    staging: Path | None = None
    try:
        try:
            created = _make_parents(target.parent)
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".merging", dir=target.parent))
            build = staging / "checkpoint"
            build.mkdir()  # mkdtemp's directory is private (0700); this one gets the usual mode
        except OSError as exc:
            raise MergeError(f"cannot create the output {_show(out)}: {exc}") from exc
        yield build
        _move_into_place(build, target, staging)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for d in created[::-1]:  # innermost first, and only while empty
            try:
                d.rmdir()
            except OSError:
                break
        raise
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
