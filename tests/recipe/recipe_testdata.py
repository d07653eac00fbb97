"""The tiny data of the recipe tests (a BEIR set written by the test, personas) and a recipe writer."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

DOCS = [
    (
        "d01",
        "Coral reefs",
        "Coral reefs bleach when warm water makes corals expel the algae living in their tissues.",
    ),
    (
        "d02",
        "Steam engines",
        "Steam locomotives convert the heat of burning coal into motion through pistons and rods.",
    ),
    (
        "d03",
        "Night shifts",
        "Night shifts disturb the circadian rhythm and raise the risk of sleep disorders among nurses.",
    ),
    (
        "d04",
        "B-trees",
        "A B-tree keeps keys sorted and balanced so that a database finds rows in logarithmic time.",
    ),
    (
        "d05",
        "Crop rotation",
        "Crop rotation restores soil nutrients and reduces pests without synthetic chemicals.",
    ),
    (
        "d06",
        "Spice trade",
        "Venetian merchants dominated the spice trade between Asia and Europe in the fourteenth century.",
    ),
    ("d07", "Photosynthesis", "Plants turn light into chemical energy in chloroplasts and release oxygen."),
    (
        "d08",
        "Boiling water",
        "Water boils at one hundred degrees Celsius at sea level and lower on mountains.",
    ),
    ("d09", "Vaccines", "Vaccines train the immune system to recognise a pathogen before an infection."),
    (
        "d10",
        "Rust",
        "Rust guarantees memory safety without a garbage collector through ownership and borrowing.",
    ),
    (
        "d11",
        "French revolution",
        "The French Revolution began in 1789 with the storming of the Bastille prison.",
    ),
    ("d12", "Black holes", "A black hole is a region where gravity prevents even light from escaping."),
    ("d13", "Espresso", "Espresso forces hot water through finely ground coffee under high pressure."),
    (
        "d14",
        "Everest",
        "Mount Everest is the highest mountain above sea level, on the border of Nepal and China.",
    ),
    ("d15", "Tides", "Tides rise and fall because the moon's gravity pulls on the oceans of the earth."),
    ("d16", "Honey bees", "Honey bees dance to tell their hive the direction and distance of flowers."),
]
TRAIN = [
    ("q01", "why do corals lose their colour", "d01"),
    ("q02", "how does a steam locomotive move", "d02"),
    ("q03", "health effects of working at night", "d03"),
    ("q04", "database index data structure", "d04"),
    ("q05", "organic farming soil nutrients", "d05"),
    ("q06", "medieval spice merchants", "d06"),
    ("q07", "how plants make energy from light", "d07"),
    ("q08", "temperature at which water boils", "d08"),
    ("q09", "how do vaccines work", "d09"),
    ("q10", "memory safe programming language", "d10"),
    ("q11", "start of the french revolution", "d11"),
    ("q12", "can light escape a black hole", "d12"),
]
TEST = [
    ("t01", "espresso brewing pressure", "d13"),
    ("t02", "tallest mountain in the world", "d14"),
    ("t03", "what causes ocean tides", "d15"),
    ("t04", "bee communication dance", "d16"),
    ("t05", "coral bleaching warm water", "d01"),
    ("t06", "b-tree logarithmic lookup", "d04"),
]
PERSONAS = [
    "a marine biologist who studies coral reef bleaching",
    "a retired railway engineer who restores steam locomotives",
    "a nurse working night shifts in an intensive care unit",
    "a software developer maintaining an open-source database",
    "a farmer growing organic vegetables for local markets",
    "a historian of medieval European trade routes",
    "a climate scientist modelling Arctic sea ice",
    "a barista who trains apprentices",
]


def write_beir(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, t, x in DOCS), encoding="utf-8"
    )
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": x}) + "\n" for q, x, _ in TRAIN + TEST), encoding="utf-8"
    )
    for split, rows in (("train", TRAIN), ("test", TEST)):
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t1" for q, _, d in rows]
        (root / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def recipe_dict(model: Path, data: Path, personas: Path, llm_url: str, out: Path) -> dict:
    """A full recipe over the tiny data: every stage on, a few steps each, one thread (exact resume)."""
    train = {"batch_size": 4, "learning_rate": 1e-3, "temperature": 0.05, "max_length": 64, "save_every": 2}
    return {
        "name": "tiny",
        "output_dir": str(out),
        "seed": 3,
        "model": {"model": str(model), "threads": 1, "device": "cpu"},
        "data": {"synthesis_corpus": str(data / "corpus.jsonl"), "labeled": str(data), "eval": str(data)},
        "stages": {
            "synthesize": {
                "llm": {"url": llm_url, "model": "fake-llm", "concurrency": 4, "max_retries": 0},
                "lengths": "3-6",
                "personas": str(personas),
                "top_personas": 3,
                "max_invalid": 1,
            },
            "filter": {"min_cos": 0.0, "near_dup": None},
            "weak": {**train, "max_steps": 6},
            "mine": {"k": 2, "skip_top": 1},
            "supervised": {**train, "max_steps": 6, "num_negatives": 2, "keep_checkpoints": 2},
            "merge": {"checkpoints": 2},
            "evaluate": {"top_k": 10},
        },
    }


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path
