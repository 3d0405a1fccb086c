"""Writes tests/reference/rouge_vectors.json: (reference, prediction) pairs with rouge-score's ROUGE-L.

    tests/.tmp/venv-rouge/bin/python tests/reference/rouge_vectors.py   # after tests/reference/rouge_setup.sh

The pairs are hand-written edge cases (case, punctuation, accents, digits, empty sides, repeats) plus
pairs drawn with a fixed seed from datasets/lexicon-instruct responses: a response against a word-level
perturbation of itself (dropped, swapped, repeated, foreign words) or against another response.
"""
import json
import os
import random
from importlib.metadata import version

from rouge_score import rouge_scorer

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "datasets", "lexicon-instruct")

HAND = [
    ("the cat sat on the mat", "the cat sat on the mat"),
    ("the cat sat on the mat", "The CAT, sat... on the mat!"),
    ("the cat sat on the mat", "mat the on sat cat the"),
    ("the cat sat on the mat", "a dog lay under a rug"),
    ("the cat sat on the mat", ""),
    ("", "the cat sat on the mat"),
    ("", ""),
    ("!!! ---", "the cat"),
    ("the cat", "... ,,, ;;;"),
    ("Advanced Communication Function / Telecommunications Access Method (IBM, ACF), \"ACF/TCAM\"",
     "Advanced Communication Facility (IBM)"),
    ("MikroProFessor 1, \"MPF 1\"", "mpf1 micro professor 1"),
    ("café crème brûlée", "cafe creme brulee"),
    ("Straße über Öl", "strasse uber ol"),
    ("naïve façade coöperate", "na ve fa ade co perate"),
    ("\u212a-means (Kelvin sign)", "k means kelvin sign"),
    ("\u0130stanbul", "i stanbul"),
    ("x86-64 and ARM64v8", "x86 64 and arm64v8"),
    ("tab\tseparated\nnew line  double  space", "tab separated new line double space"),
    ("a a a a b", "a b a b a b"),
    ("1 2 3 4 5 6 7 8 9 10", "10 9 8 7 6 5 4 3 2 1"),
    ("emoji \U0001F600 in text", "emoji in text \U0001F600"),
    ("under_score and-hyphen", "under score and hyphen"),
]


def responses():
    out = []
    for name in sorted(os.listdir(DATA)):
        if name.endswith(".jsonl"):
            with open(os.path.join(DATA, name), encoding="utf-8") as f:
                lines = f.read().strip().split("\n")
            out.extend(json.loads(l)["response"] for l in lines[:200])
    return out


def perturb(rng, text, pool):
    words = text.split()
    kind = rng.randrange(5)
    if kind == 0 and words:
        words = [w for w in words if rng.random() > 0.3]
    elif kind == 1 and len(words) > 1:
        for _ in range(rng.randrange(1, 4)):
            i, j = rng.randrange(len(words)), rng.randrange(len(words))
            words[i], words[j] = words[j], words[i]
    elif kind == 2 and words:
        words = words + [rng.choice(words) for _ in range(rng.randrange(1, 5))]
    elif kind == 3:
        other = rng.choice(pool).split()
        words = words[: rng.randrange(len(words) + 1)] + other[: rng.randrange(len(other) + 1)]
    else:
        return rng.choice(pool)
    return " ".join(words)


def main():
    rng = random.Random(14)
    pool = responses()
    pairs = list(HAND)
    for _ in range(60):
        ref = rng.choice(pool)
        pairs.append((ref, perturb(rng, ref, pool)))
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    vectors = []
    for ref, pred in pairs:
        s = scorer.score(ref, pred)["rougeL"]
        vectors.append({"reference": ref, "prediction": pred, "precision": s.precision, "recall": s.recall,
                        "f": s.fmeasure})
    doc = {"generator": "tests/reference/rouge_vectors.py", "rouge_score": version("rouge-score"),
           "vectors": vectors}
    with open(os.path.join(HERE, "rouge_vectors.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {len(vectors)} vectors")


if __name__ == "__main__":
    main()
