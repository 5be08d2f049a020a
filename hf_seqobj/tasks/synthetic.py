"""The embedded default data set: procedurally generated news-style sentences with entity spans.

Deterministic by seed, needs no network and no files. Sentences are random chunks of filler words and entities of four
types (PER, ORG, LOC, MISC), one to three words long, so that the tags cannot be guessed from the previous tags
alone. Some names belong to two types (`Jordan` is a person or a place, `Morgan` a person or part of a bank's
name) and the cue word before them (`Mr.`, `in`) decides; two entities of one type may stand side by side, so
that `B-X` after `I-X` is needed.
"""

from __future__ import annotations

import random

from datasets import Dataset, DatasetDict


_FIRST = ["John", "Maria", "Peter", "Anna", "Ahmed", "Mei", "Carlos", "Olga", "David", "Fatima", "Jordan", "Helmut"]
_LAST = ["Smith", "Garcia", "Blackburn", "Kowalski", "Chen", "Haddad", "Morgan", "Okafor", "Larsen", "Washington"]
_ORG = [
    ["Reuters"],
    ["NATO"],
    ["Morgan", "Bank"],
    ["Deutsche", "Telekom"],
    ["United", "Nations"],
    ["Ajax"],
    ["General", "Motors", "Corp"],
    ["Bank", "of", "Chile"],
    ["Red", "Cross"],
    ["Volvo"],
    ["Fiat"],
    ["UEFA"],
]
_LOC = [
    ["Paris"],
    ["Jordan"],
    ["New", "York"],
    ["Washington"],
    ["Bonn"],
    ["Lima"],
    ["South", "Africa"],
    ["Chile"],
    ["Rio", "de", "Janeiro"],
    ["Oslo"],
    ["Kenya"],
    ["Hong", "Kong"],
]
_MISC = [
    ["German"],
    ["French"],
    ["Chilean"],
    ["World", "Cup"],
    ["Olympic", "Games"],
    ["Nobel", "Prize"],
    ["Kenyan"],
    ["Davis", "Cup"],
    ["Norwegian"],
    ["Euro", "2000"],
]
_FILLER = (
    "the a of to and said on that will for with after over new last first its their officials week year talks "
    "deal plan market shares rose fell by percent million from at as has was were is be an this other two three"
).split()
_NUMBERS = [str(n) for n in range(1, 100)]
# Words that announce an entity of one type (tagged O themselves): the context that resolves ambiguous names.
_CUES = {
    "PER": ["Mr.", "Mrs.", "coach", "minister", "striker", "chairman"],
    "ORG": ["company", "club", "group", "bank"],
    "LOC": ["in", "near", "to", "from", "across"],
    "MISC": ["the", "a", "an"],
}
_ENTITIES = {
    "PER": lambda rng: _person(rng),
    "ORG": lambda rng: rng.choice(_ORG),
    "LOC": lambda rng: rng.choice(_LOC),
    "MISC": lambda rng: rng.choice(_MISC),
}


def _person(rng: random.Random) -> list[str]:
    shape = rng.random()
    if shape < 0.6:
        return [rng.choice(_FIRST), rng.choice(_LAST)]
    if shape < 0.85:
        return [rng.choice(_LAST)]
    return [rng.choice(_FIRST), rng.choice(_FIRST), rng.choice(_LAST)]


def synthetic_ner_sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    """One sentence: `(words, BIO tags)`.

    A sentence is 2 to 6 chunks, each either a run of 1 to 4 filler words or an entity (usually after a cue word
    of its type, such as "Mr." or "in"); one chunk in four is followed by a second entity of the same type (so
    that `B-X` must follow `I-X`). A full stop ends it.
    """
    words: list[str] = []
    tags: list[str] = []
    for _ in range(rng.randint(2, 6)):
        if rng.random() < 0.4:
            run = [
                rng.choice(_NUMBERS) if rng.random() < 0.15 else rng.choice(_FILLER) for _ in range(rng.randint(1, 4))
            ]
            words.extend(run)
            tags.extend(["O"] * len(run))
            continue
        entity_type = rng.choice(list(_ENTITIES))
        if rng.random() < 0.8:
            words.append(rng.choice(_CUES[entity_type]))
            tags.append("O")
        for _ in range(2 if rng.random() < 0.25 else 1):
            entity = _ENTITIES[entity_type](rng)
            words.extend(entity)
            tags.extend([f"B-{entity_type}"] + [f"I-{entity_type}"] * (len(entity) - 1))
    words.append(".")
    tags.append("O")
    return words, tags


def synthetic_ner(num_sentences: int, seed: int) -> Dataset:
    """`num_sentences` sentences as a dataset with `source` (words) and `target` (tags), deterministic by `seed`."""
    rng = random.Random(seed)
    sources, targets = [], []
    for _ in range(num_sentences):
        words, tags = synthetic_ner_sentence(rng)
        sources.append(" ".join(words))
        targets.append(" ".join(tags))
    return Dataset.from_dict({"source": sources, "target": targets})


def synthetic_ner_splits(train_size: int, eval_size: int, seed: int) -> DatasetDict:
    """Train, validation and test splits drawn with seeds derived from `seed` (so they differ from each other)."""
    return DatasetDict(
        {
            "train": synthetic_ner(train_size, seed * 3 + 1),
            "validation": synthetic_ner(eval_size, seed * 3 + 2),
            "test": synthetic_ner(eval_size, seed * 3 + 3),
        }
    )
