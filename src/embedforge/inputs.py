"""Validation of user inputs, shared by the library, the CLI and the server."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

MIN_DIM = 32  # smallest Matryoshka dimension the library, the server and evaluation accept


class InputTooLongError(ValueError):
    """An input is longer than the model's window and the caller asked not to truncate.

    ``index`` is its position in ``name``; ``n_tokens`` its length with the tokens the model adds.
    """

    def __init__(self, name: str, index: int, n_tokens: int, limit: int) -> None:
        super().__init__(
            f"{name}[{index}] is {n_tokens} tokens long, over this model's limit of {limit}; "
            "shorten it or allow truncation"
        )
        self.name = name
        self.index = index
        self.n_tokens = n_tokens
        self.limit = limit


def check_unicode(text: str, name: str) -> str:
    """Return ``text``, or raise ValueError when it is not valid Unicode (a lone surrogate such as
    ``"\\ud800"``, which no tokenizer can encode)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        raise ValueError(
            f"{name} is not valid Unicode: it holds the lone surrogate U+{ord(bad):04X} at character "
            f"{exc.start}; surrogates must come in pairs (decode the input with errors='replace' to drop them)"
        ) from None
    return text


def check_text(text: object, name: str) -> str:
    """Return ``text`` as a valid-Unicode str, or raise naming ``name``."""
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    return check_unicode(text, name)


def check_texts(texts: Iterable[str], name: str = "texts") -> list[str]:
    """Return ``texts`` as a list of valid-Unicode str, or raise naming the first bad element."""
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{name} must be a list of str, got a single {type(texts).__name__}")
    try:
        items = list(texts)
    except TypeError:
        raise TypeError(f"{name} must be a list of str, got {type(texts).__name__}") from None
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise TypeError(f"{name}[{i}] is {type(t).__name__} ({t!r:.40}), expected str")
        check_unicode(t, f"{name}[{i}]")
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
        check_unicode(q, f"{name}[{i}][0] (the query)")
        check_unicode(d, f"{name}[{i}][1] (the document)")
        out.append((q, d))
    return out


def check_dim(dim: int | None, hidden: int) -> None:
    """Matryoshka dims must lie in ``MIN_DIM``..hidden."""
    if dim is None:
        return
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int or None, got {type(dim).__name__} ({dim!r})")
    if not MIN_DIM <= dim <= hidden:
        raise ValueError(
            f"dim={dim} is out of range: Matryoshka dims must be between {MIN_DIM} and {hidden} (the hidden size)"
        )


def check_positive(value: int | None, name: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive int, got {value!r}")
