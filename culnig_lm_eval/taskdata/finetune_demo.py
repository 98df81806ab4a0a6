"""``qa_match_demo``: an offline, QNLI-shaped training task for the fine-tuning demo.

QNLI asks whether a sentence contains the answer to a question.  This task asks the same about
short invented sentences, generated here from a seeded grammar (no external text): every item
is a question about one event (who / where / when / what / why) and a sentence about that
event that either answers it or answers a different question about it.  A small model starts
near chance and learns it within a few hundred updates, which is what a CPU demo of
``culnig-finetune`` needs; it is a stand-in for QNLI, not a benchmark, and the README says so.

Splits are disjoint by construction (train / validation / test draw from different seeds and
every (person, object) pair appears in one split only).  Label 0 = the sentence answers it.
"""

from __future__ import annotations

import random

PEOPLE = ["Amara", "Bruno", "Chen", "Dalia", "Emeka", "Farah", "Goran", "Hana", "Ivo", "Jonas", "Kemal", "Lena",
          "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tariq", "Uma", "Viktor", "Wen", "Yara"]
OBJECTS = ["bicycle", "violin", "lantern", "notebook", "kite", "teapot", "camera", "ladder", "map", "blanket",
           "radio", "basket", "umbrella", "clock", "mirror", "drum"]
PLACES = ["in the garden", "at the station", "near the bridge", "behind the library", "on the roof",
          "in the kitchen", "at the market", "under the stairs"]
TIMES = ["on Monday morning", "last winter", "after lunch", "at midnight", "during the storm", "on her birthday",
         "before sunrise", "in early spring"]
REASONS = ["because it was broken", "because a friend asked for it", "because the old one was lost",
           "because it was on sale", "because the school needed one", "because it was a gift"]
GIVERS = ["her neighbour", "his uncle", "a teacher", "the mayor", "an old friend", "a stranger"]

# question form and answer sentence per slot; the slot value fills {v}
SLOTS = {
    "where": ("Where did {p} leave the {o}?", "{p} left the {o} {v}."),
    "when": ("When did {p} find the {o}?", "{p} found the {o} {v}."),
    "why": ("Why did {p} buy the {o}?", "{p} bought the {o} {v}."),
    "who": ("Who gave {p} the {o}?", "The {o} was given to {p} by {v}."),
}
VALUES = {"where": PLACES, "when": TIMES, "why": REASONS, "who": GIVERS}
SPLIT_SEEDS = {"train": 11, "validation": 12, "test": 13}


def _pairs_for(split: str) -> list[tuple[str, str]]:
    pairs = [(p, o) for p in PEOPLE for o in OBJECTS]
    random.Random(0).shuffle(pairs)
    third = len(pairs) // 3
    return {"train": pairs[:third], "validation": pairs[third:2 * third], "test": pairs[2 * third:]}[split]


def items(split: str, count: int) -> list[dict]:
    rng = random.Random(SPLIT_SEEDS[split])
    pairs = _pairs_for(split)
    out = []
    for i in range(count):
        person, obj = pairs[i % len(pairs)]
        asked = rng.choice(sorted(SLOTS))
        answers = i % 2 == 0  # balanced labels
        told = asked if answers else rng.choice([s for s in sorted(SLOTS) if s != asked])
        question = SLOTS[asked][0].format(p=person, o=obj)
        sentence = SLOTS[told][1].format(p=person, o=obj, v=rng.choice(VALUES[told]))
        out.append({"question": question, "sentence": sentence, "label": 0 if answers else 1, "idx": i})
    return out


def qa_match_demo(train: int = 2000, validation: int = 200, test: int = 200, **_options):
    import datasets

    return datasets.DatasetDict({
        name: datasets.Dataset.from_list(items(name, n))
        for name, n in (("train", train), ("validation", validation), ("test", test))
    })
