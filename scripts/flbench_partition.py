#!/usr/bin/env python3
"""Rebuild FL-bench's Dirichlet partition (the one behind the FedCMD paper's numbers) as a fedsim
partition file, without numpy; and, with --selection-out, its client-selection stream as a fedsim
selection file.

FL-bench (github.com/KarhouTam/FL-bench, and the FedCMD authors' copy of it) partitions with
numpy's legacy RandomState seeded once (`np.random.seed(seed)`), in `data/generate_data.py`:
  - `data/utils/schemes/dirichlet.py`: for each class k in turn, shuffle the class's indices,
    draw p ~ Dir(alpha * 1_K), zero the share of clients already at >= N/K examples,
    renormalise, cut at int(cumsum(p) * n_k); repeat the whole pass until every client has
    >= least_samples examples;
  - then, per client in order, shuffle its indices and keep the first int(n * fraction) for
    training, the rest for testing (`--split sample`).
The indices are into the train file followed by the test file (torchvision's order), which is
fedsim's `--partition-pool train+test` order.

numpy's legacy generator is MT19937 seeded with init_genrand, which Python's `random` also
runs: its `random()` is numpy's `random_sample()` (53 bits from two words, the same
formula) and `getrandbits(32)` is one raw word. On top of that this file ports, line for line,
numpy's legacy_standard_gamma (shape < 1, the branch Dirichlet(alpha < 1) takes),
RandomState.dirichlet (sum, then multiply by the inverse), random_interval (masked rejection)
and the Fisher-Yates `shuffle`, and np.add.reduce's pairwise summation for the renormalising
sum. `--self-test` checks the generator against values numpy is known to give.

The selection stream is FL-bench's server's: `random.seed(seed)` (Python's own generator), then
one `random.sample(range(clients), max(1, int(clients * join_ratio)))` per round, drawn up front.

Usage:
  scripts/flbench_partition.py --alpha 0.5 --out part.json [--seed 42] [--clients 100]
      [--least-samples 40] [--fraction 0.5] [--data-dir /usr/share/datasets/fashion-mnist]
      [--selection-out selection.json --rounds 200 --join-ratio 0.1]
  build/bin/fedsim ... --partition-pool train+test --client-test-fraction 0.5 --partition-file part.json \
      [--selection-file selection.json]
"""
import argparse
import gzip
import json
import math
import os
import random
import struct
import sys


class LegacyRandomState:
    """numpy.random.RandomState(seed) for the calls FL-bench's partition makes."""

    def __init__(self, seed):
        if not 0 <= seed <= 0xFFFFFFFF:
            raise ValueError(f"seed must be in [0, 2**32 - 1], got {seed}")
        key = [seed]
        for i in range(1, 624):  # init_genrand, numpy's mt19937_seed
            key.append((1812433253 * (key[-1] ^ (key[-1] >> 30)) + i) & 0xFFFFFFFF)
        self._mt = random.Random()
        self._mt.setstate((3, tuple(key) + (624,), None))

    def random_sample(self):
        return self._mt.random()

    def standard_exponential(self):
        return -math.log(1.0 - self.random_sample())

    def standard_gamma(self, shape):
        if not 0 < shape < 1:
            raise ValueError(f"only the shape < 1 branch is ported, got shape {shape}")
        while True:
            u = self.random_sample()
            v = self.standard_exponential()
            if u <= 1.0 - shape:
                x = math.pow(u, 1.0 / shape)
                if x <= v:
                    return x
            else:
                y = -math.log((1 - u) / shape)
                x = math.pow(1.0 - shape + shape * y, 1.0 / shape)
                if x <= v + y:
                    return x

    def dirichlet(self, alpha, k):
        values = [self.standard_gamma(alpha) for _ in range(k)]
        acc = 0.0
        for v in values:
            acc = acc + v
        inv = 1 / acc
        return [v * inv for v in values]

    def interval(self, top):
        if top == 0:
            return 0
        mask = top
        for s in (1, 2, 4, 8, 16, 32):
            mask |= mask >> s
        while True:
            v = self._mt.getrandbits(32) & mask
            if v <= top:
                return v

    def shuffle(self, x):
        for i in range(len(x) - 1, 0, -1):
            j = self.interval(i)
            x[i], x[j] = x[j], x[i]


def numpy_sum(a):
    """np.add.reduce over a 1-D float64 array: the first element plus the pairwise sum of the rest."""

    def pairwise(b):
        n = len(b)
        if n < 8:
            res = 0.0
            for v in b:
                res += v
            return res
        if n > 128:  # numpy recurses on halves above its block size
            half = (n // 2) - (n // 2) % 8
            return pairwise(b[:half]) + pairwise(b[half:])
        r = list(b[:8])
        i = 8
        while i < n - (n % 8):
            for j in range(8):
                r[j] += b[i + j]
            i += 8
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        while i < n:
            res += b[i]
            i += 1
        return res

    return a[0] + pairwise(a[1:])


def read_labels(path):
    with gzip.open(path) as f:
        magic, n = struct.unpack(">II", f.read(8))
        if magic != 2049:
            raise ValueError(f"{path}: not an IDX label file (magic {magic})")
        data = f.read(n)
        if len(data) != n:
            raise ValueError(f"{path}: {len(data)} labels, the header says {n}")
        return list(data)


def dirichlet_partition(targets, num_classes, clients, alpha, least_samples, rng):
    n = len(targets)
    by_class = [[i for i, t in enumerate(targets) if t == k] for k in range(num_classes)]
    min_size, passes = 0, 0
    while min_size < least_samples:
        passes += 1
        if passes > 1000:
            raise RuntimeError(f"no partition gave every client >= {least_samples} examples in 1000 passes")
        parts = [[] for _ in range(clients)]
        for k in range(num_classes):
            rng.shuffle(by_class[k])
            p = rng.dirichlet(alpha, clients)
            p = [pj * (len(parts[j]) < n / clients) for j, pj in enumerate(p)]
            total = numpy_sum(p)
            p = [pj / total for pj in p]
            cuts, acc = [0], 0.0
            for pj in p[:-1]:
                acc += pj
                cuts.append(int(acc * len(by_class[k])))
            cuts.append(len(by_class[k]))
            for j in range(clients):
                parts[j] += by_class[k][cuts[j]:cuts[j + 1]]
            min_size = min(len(x) for x in parts)
    return parts, passes


def selection_stream(seed, clients, join_ratio, rounds):
    rng = random.Random(seed)
    k = max(1, int(clients * join_ratio))
    return [rng.sample(range(clients), k) for _ in range(rounds)]


def write_json(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def self_test():
    # Values numpy gives: np.random.seed(42); np.random.rand() and np.random.permutation(10);
    # np.random.seed(0); np.random.rand().
    checks = [
        (LegacyRandomState(42).random_sample(), 0.3745401188473625),
        (LegacyRandomState(0).random_sample(), 0.5488135039273248),
    ]
    perm = list(range(10))
    LegacyRandomState(42).shuffle(perm)
    checks.append((perm, [8, 1, 5, 0, 7, 2, 9, 4, 3, 6]))
    d = LegacyRandomState(7).dirichlet(0.5, 100)
    checks.append((abs(sum(d) - 1) < 1e-12 and min(d) >= 0, True))
    checks.append((numpy_sum([0.1] * 10), 0.1 + (((0.1 + 0.1) + (0.1 + 0.1)) + ((0.1 + 0.1) + (0.1 + 0.1))) + 0.1))
    bad = [(got, want) for got, want in checks if got != want]
    for got, want in bad:
        print(f"self-test: got {got}, numpy gives {want}", file=sys.stderr)
    print("self-test: " + ("FAILED" if bad else f"{len(checks)} checks passed"))
    return 1 if bad else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alpha", type=float)
    ap.add_argument("--out")
    ap.add_argument("--seed", type=int, default=42, help="FL-bench's default, the paper's")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--least-samples", type=int, default=40)
    ap.add_argument("--fraction", type=float, default=0.5, help="each client's share kept for training")
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--selection-out", help="also write the client-selection stream (fedsim --selection-file)")
    ap.add_argument("--rounds", type=int, default=200, help="rounds of the selection stream")
    ap.add_argument("--join-ratio", type=float, default=0.1, help="fraction of clients per round")
    ap.add_argument("--self-test", action="store_true")
    a = ap.parse_args()
    if a.self_test:
        return self_test()
    if a.alpha is None or a.out is None:
        ap.error("--alpha and --out are required")
    if not 0 < a.alpha < 1:
        ap.error(f"--alpha must be in (0, 1) (the ported gamma branch), got {a.alpha}")
    if not 0 < a.fraction < 1:
        ap.error(f"--fraction must be in (0, 1), got {a.fraction}")
    if a.clients < 1 or a.least_samples < 0:
        ap.error("--clients must be >= 1 and --least-samples >= 0")
    if a.rounds < 1 or not 0 < a.join_ratio <= 1:
        ap.error("--rounds must be >= 1 and --join-ratio in (0, 1]")
    files = [os.path.join(a.data_dir, f) for f in ("train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz")]
    for f in files:
        if not os.path.isfile(f):
            ap.error(f"{f} not found (Debian package dataset-fashion-mnist, or --data-dir)")
    targets = read_labels(files[0]) + read_labels(files[1])
    if a.clients > len(targets):
        ap.error(f"--clients {a.clients} exceeds the {len(targets)} examples")

    rng = LegacyRandomState(a.seed)
    parts, passes = dirichlet_partition(targets, 10, a.clients, a.alpha, a.least_samples, rng)
    clients = []
    for idx in parts:
        n_train = int(len(idx) * a.fraction)
        rng.shuffle(idx)
        clients.append({"train": idx[:n_train], "test": idx[n_train:], "noise_std": 0.0, "rotation_deg": 0.0})
    options = {"method": "dirichlet", "num_clients": a.clients, "alpha": a.alpha, "min_samples": a.least_samples,
               "client_test_fraction": round(1 - a.fraction, 12), "seed": a.seed}
    write_json(a.out, {"format": "fl-partition", "version": 1, "options": options, "dataset_size": len(targets),
                       "clients": clients})
    if a.selection_out:
        write_json(a.selection_out, selection_stream(a.seed, a.clients, a.join_ratio, a.rounds))
    sizes = sorted(len(c["train"]) + len(c["test"]) for c in clients)
    print(f"{a.out}: {a.clients} clients, {passes} pass(es); examples per client min {sizes[0]}, "
          f"median {sizes[len(sizes) // 2]}, max {sizes[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
