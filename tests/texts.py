"""Fixed mixed-length texts for the core tests (several scripts, punctuation, empty-ish)."""

QUERIES = [
    "What is the capital of China?",
    "Explain gravity",
    "how do vaccines train the immune system",
    "¿Cuál es la montaña más alta del mundo?",
    "量子计算机如何工作",
    "python list comprehension with condition",
]

DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other. It gives weight to physical objects "
    "and is responsible for the movement of planets around the sun.",
    "Vaccines expose the immune system to a harmless piece of a pathogen so that memory cells form.",
    "El monte Everest, con 8.848 metros, es la montaña más alta del mundo sobre el nivel del mar.",
    "量子计算机利用量子比特的叠加和纠缠来执行计算。",
    "[x for x in items if x > 0] builds a list of the positive items.",
    "A",
    "Short.",
    " ".join(f"word{i}" for i in range(120)),
    "Tabs\tand\nnewlines\n\nin a document.",
    "Émile Zola wrote Germinal in 1885; it depicts a coal miners' strike in northern France.",
    "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
    "The reranker reads the final hidden state at the last position.",
    "Berlin is the capital of Germany; Paris is the capital of France; Beijing is the capital of China.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Rust's borrow checker enforces that references never outlive the data they point to.",
    "The mitochondrion is the powerhouse of the cell.",
    "Ein Satz auf Deutsch über das Wetter in Hamburg, wo es oft regnet.",
]
