"""Regenerate the general instruction rows mixed into training against forgetting (deterministic):

    python scripts/make_general.py      # writes finetune/samples/general/instructions.jsonl

Short, checkable everyday tasks (arithmetic, units, words, grammar, comparisons) with one right
answer each. Their topics stay apart from the general-knowledge probe
(finetune/samples/probe/questions.jsonl), so mixing them in never trains on the probe's answers.
"""

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "finetune" / "samples" / "general"

WORDS = ["garden", "window", "planet", "rocket", "silver", "pencil", "market", "forest", "bridge",
         "candle", "ladder", "button", "puzzle", "travel", "orange", "winter", "basket", "rabbit",
         "castle", "marble", "cotton", "shadow", "anchor", "violin", "meadow", "harbor", "lemon",
         "tiger", "cloud", "stone"]
PLURALS = {"child": "children", "mouse": "mice", "foot": "feet", "tooth": "teeth", "man": "men",
           "woman": "women", "goose": "geese", "person": "people", "sheep": "sheep",
           "leaf": "leaves", "knife": "knives", "wolf": "wolves", "cactus": "cacti",
           "half": "halves", "ox": "oxen"}
OPPOSITES = {"hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "early": "late",
             "open": "closed", "full": "empty", "strong": "weak", "young": "old", "wet": "dry",
             "loud": "quiet", "hard": "soft", "rich": "poor", "thick": "thin", "high": "low"}
PAST = {"go": "went", "eat": "ate", "see": "saw", "write": "wrote", "run": "ran", "swim": "swam",
        "take": "took", "give": "gave", "speak": "spoke", "drink": "drank", "fly": "flew",
        "begin": "began", "sing": "sang", "buy": "bought", "think": "thought"}
UNITS = [("kilometres", "metres", 1000), ("kilograms", "grams", 1000),
         ("litres", "millilitres", 1000), ("metres", "centimetres", 100)]


def rows(rng: random.Random) -> list[tuple[str, str]]:
    out = []
    for _ in range(40):
        a, b = rng.randint(11, 99), rng.randint(11, 99)
        out.append((f"What is {a} + {b}?", f"{a} + {b} = {a + b}."))
    for _ in range(30):
        a, b = rng.randint(50, 99), rng.randint(11, 49)
        out.append((f"What is {a} - {b}?", f"{a} - {b} = {a - b}."))
    for _ in range(30):
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        out.append((f"What is {a} times {b}?", f"{a} times {b} is {a * b}."))
    for _ in range(24):
        big, small, factor = rng.choice(UNITS)
        n = rng.randint(2, 9)
        out.append((f"Convert {n} {big} to {small}.", f"{n} {big} is {n * factor:,} {small}."))
    for word in WORDS:
        task = rng.choice(["upper", "reverse", "count", "first"])
        if task == "upper":
            out.append((f"Write the word '{word}' in capital letters.", word.upper()))
        elif task == "reverse":
            out.append((f"Spell '{word}' backwards.", word[::-1]))
        elif task == "count":
            out.append((f"How many letters are in the word '{word}'?",
                        f"'{word}' has {len(word)} letters."))
        else:
            out.append((f"What is the first letter of '{word}'?", f"'{word[0]}'"))
    out += [(f"What is the plural of '{w}'?", f"The plural of '{w}' is '{p}'.")
            for w, p in PLURALS.items()]
    out += [(f"What is the opposite of '{w}'?", f"The opposite of '{w}' is '{o}'.")
            for w, o in OPPOSITES.items()]
    out += [(f"What is the past tense of '{w}'?", f"The past tense of '{w}' is '{p}'.")
            for w, p in PAST.items()]
    for _ in range(25):
        n = rng.randint(10, 999)
        out.append((f"Is {n} an even or an odd number?",
                    f"{n} is {'even' if n % 2 == 0 else 'odd'}."))
    for _ in range(25):
        a, b = rng.sample(range(10, 999), 2)
        out.append((f"Which is larger, {a} or {b}?", f"{max(a, b)} is larger than {min(a, b)}."))
    for _ in range(20):
        nums = rng.sample(range(1, 100), 5)
        out.append((f"Sort these numbers from smallest to largest: {', '.join(map(str, nums))}.",
                    ", ".join(map(str, sorted(nums)))))
    rng.shuffle(out)
    return out


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "instructions.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for question, answer in rows(random.Random(2024)):
            f.write(json.dumps({"messages": [{"role": "user", "content": question},
                                             {"role": "assistant", "content": answer}]}) + "\n")
    print(path)


if __name__ == "__main__":
    main()
