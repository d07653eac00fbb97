"""Validation of user inputs, shared by the library, the CLI and the server."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def check_texts(texts: Iterable[str], name: str = "texts") -> list[str]:
    """Return ``texts`` as a list of str, or raise naming the first bad element."""
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{name} must be a list of str, got a single {type(texts).__name__}")
    try:
        items = list(texts)
    except TypeError:
        raise TypeError(f"{name} must be a list of str, got {type(texts).__name__}") from None
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise TypeError(f"{name}[{i}] is {type(t).__name__} ({t!r:.40}), expected str")
    return items


def check_pairs(pairs: Iterable[Sequence[str]], name: str = "pairs") -> list[tuple[str, str]]:
    """Return ``pairs`` as a list of (query, document) str tuples, or raise naming the bad one."""
    if isinstance(pairs, (str, bytes)):
        raise TypeError(f"{name} must be a list of (query, document) pairs, got a single str")
    out: list[tuple[str, str]] = []
    for i, p in enumerate(pairs):
        if isinstance(p, (str, bytes)) or len(p) != 2:
            raise TypeError(f"{name}[{i}] must be a (query, document) pair of str, got {p!r:.60}")
        q, d = p
        if not isinstance(q, str) or not isinstance(d, str):
            raise TypeError(f"{name}[{i}] must hold two str, got ({type(q).__name__}, {type(d).__name__})")
        out.append((q, d))
    return out


def check_dim(dim: int | None, hidden: int) -> None:
    """Matryoshka dims must lie in 32..hidden."""
    if dim is None:
        return
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int or None, got {type(dim).__name__} ({dim!r})")
    if not 32 <= dim <= hidden:
        raise ValueError(
            f"dim={dim} is out of range: Matryoshka dims must be between 32 and {hidden} (the hidden size)"
        )


def check_positive(value: int | None, name: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive int, got {value!r}")
