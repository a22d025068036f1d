#!/usr/bin/env python3
"""Three hospitals' shares of the Wisconsin Diagnostic Breast Cancer data (make demo-hospitals).

    scripts/hospital_split.py RAW_CSV OUT_DIR [--seed 1]

RAW_CSV is scikit-learn's breast_cancer.csv (scripts/fetch_breast_cancer.sh): a first line
"569,30,malignant,benign", then 30 features and the target (0 malignant, 1 benign) per row.
Writes, with a real header (the 30 WDBC feature names in snake_case and "diagnosis", malignant
or benign):
  OUT_DIR/wdbc.csv                      all 569 cases
  OUT_DIR/hospital-N/{train,test}.csv   each hospital's cases, 75/25 within each class
  OUT_DIR/global_test.csv               the union of the three test splits
  OUT_DIR/split.txt                     the counts
The hospitals see different case mixes and sizes (a fixed seed, so every run is the same split):
  hospital-1  referral centre     120 malignant,  30 benign (150 cases, 80% malignant)
  hospital-2  screening clinic     22 malignant, 257 benign (279 cases,  8% malignant)
  hospital-3  community hospital   70 malignant,  70 benign (140 cases, 50% malignant)
Only the standard library: random.Random(seed) gives the same shuffle on every Python 3.
"""
import argparse
import os
import random
import sys

STATS = ["radius", "texture", "perimeter", "area", "smoothness", "compactness", "concavity",
         "concave_points", "symmetry", "fractal_dimension"]
# sklearn's order: the 10 means, their standard errors, then the 10 worst (largest) values.
FEATURES = ([f"mean_{s}" for s in STATS] + [f"{s}_error" for s in STATS] + [f"worst_{s}" for s in STATS])
TARGETS = {"0": "malignant", "1": "benign"}
# (name, role, malignant, benign); the last one takes what is left.
HOSPITALS = [("hospital-1", "referral centre", 120, 30),
             ("hospital-3", "community hospital", 70, 70),
             ("hospital-2", "screening clinic", None, None)]
TEST_FRACTION = 0.25


def fail(msg):
    sys.exit(f"hospital_split.py: error: {msg}")


def read_raw(path):
    with open(path) as f:
        lines = [l.strip() for l in f if l.strip()]
    head = lines[0].split(",")
    if len(head) < 4 or head[:2] != ["569", "30"] or head[2:4] != ["malignant", "benign"]:
        fail(f"{path}: first line {lines[0]!r} is not sklearn's '569,30,malignant,benign'")
    rows = [l.split(",") for l in lines[1:]]
    if len(rows) != 569:
        fail(f"{path}: {len(rows)} cases, expected 569")
    for i, r in enumerate(rows, start=2):
        if len(r) != 31 or r[30] not in TARGETS:
            fail(f"{path}:{i}: expected 30 features and a target 0 or 1")
        for v in r[:30]:
            float(v)
    return [(r[:30], TARGETS[r[30]]) for r in rows]


def write(path, cases):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".part", "w") as f:
        f.write(",".join(FEATURES + ["diagnosis"]) + "\n")
        for x, y in cases:
            f.write(",".join(x + [y]) + "\n")
    os.replace(path + ".part", path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("raw")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    cases = read_raw(a.raw)
    write(os.path.join(a.out, "wdbc.csv"), cases)
    rng = random.Random(a.seed)
    pools = {c: [x for x in cases if x[1] == c] for c in ("malignant", "benign")}
    for c in pools:
        rng.shuffle(pools[c])
    summary, tests = [], {}
    for name, role, n_mal, n_ben in HOSPITALS:
        take = {"malignant": n_mal, "benign": n_ben}
        train, test = [], []
        for c in ("malignant", "benign"):
            n = len(pools[c]) if take[c] is None else take[c]
            mine, pools[c] = pools[c][:n], pools[c][n:]
            k = max(1, int(n * TEST_FRACTION + 0.5))  # both classes in every test split
            test += mine[:k]
            train += mine[k:]
        rng.shuffle(train)
        rng.shuffle(test)
        write(os.path.join(a.out, name, "train.csv"), train)
        write(os.path.join(a.out, name, "test.csv"), test)
        tests[name] = test
        count = lambda s, c: sum(1 for _, y in s if y == c)
        n = len(train) + len(test)
        mal = count(train, "malignant") + count(test, "malignant")
        summary.append(f"{name}  {role:<18}  {n:3d} cases  {mal:3d} malignant ({100 * mal / n:2.0f}%)  "
                       f"train {len(train):3d} ({count(train, 'malignant')} malignant)  "
                       f"test {len(test):2d} ({count(test, 'malignant')} malignant)")
    union = [c for name in sorted(tests) for c in tests[name]]
    write(os.path.join(a.out, "global_test.csv"), union)
    summary.sort()
    summary.append(f"global test set: the union of the 3 test splits, {len(union)} cases "
                   f"({sum(1 for _, y in union if y == 'malignant')} malignant)")
    with open(os.path.join(a.out, "split.txt"), "w") as f:
        f.write("\n".join(summary) + "\n")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
