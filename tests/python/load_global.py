"""Load a global model the platform wrote (safetensors) back into its nn.Module and evaluate it.

    python3 tests/python/load_global.py MODEL.safetensors [--data-dir DIR] [--limit N]
        [--expect-accuracy A] [--expect-loss L] [--tolerance T] [--loss-tolerance R]

MODEL.safetensors: `fedctl model export --out ...` (a fedcoord run) or
`<fedsim --checkpoint-dir>/round-<N>/global.safetensors` (a fedsim run). The file is parsed with
json + struct + torch.frombuffer only, so no `safetensors` package is needed (Debian 12 has none).
The model is tests/python/model.py's SmallNet: put your own module there.

Evaluates on the Fashion-MNIST test set (IDX files, gzipped or not) normalised as the platform
does, (x / 255 - 0.2860) / 0.3530, and prints `python: accuracy=... loss=... examples=...`.
With --expect-accuracy (and --expect-loss) it exits 1 unless Python's numbers are within
--tolerance (absolute, default 0.001) and --loss-tolerance (relative, default 1e-4) of the
platform's.
"""
import argparse
import gzip
import json
import os
import struct
import sys
from collections import OrderedDict

import torch
import torch.nn.functional as F

# safetensors dtype names -> torch dtypes (the ones the platform writes).
DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}


def read_safetensors(path):
    """(OrderedDict name -> tensor in file order, metadata dict) of a safetensors file.

    Format: 8 bytes little-endian header length N, N bytes of JSON
    {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the
    raw little-endian tensor bytes, offsets relative to the end of the header."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: too short for a safetensors file ({len(raw)} bytes)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise ValueError(f"{path}: header length {n} exceeds the file ({len(raw) - 8} bytes after it)")
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = bytearray(raw[8 + n:])  # writable: torch.frombuffer warns on read-only buffers
    metadata = header.pop("__metadata__", {}) or {}
    tensors = OrderedDict()
    for name, e in header.items():
        if e["dtype"] not in DTYPES:
            raise ValueError(f"{path}: tensor '{name}' has dtype {e['dtype']}, not one of {sorted(DTYPES)}")
        dtype, shape = DTYPES[e["dtype"]], list(e["shape"])
        begin, end = e["data_offsets"]
        count = 1
        for d in shape:
            count *= d
        itemsize = torch.empty((), dtype=dtype).element_size()
        if end - begin != count * itemsize or end > len(data) or begin < 0:
            raise ValueError(f"{path}: tensor '{name}' {e['dtype']} {shape} has offsets [{begin}, {end}] "
                             f"that do not fit it or the file")
        if count == 0:
            t = torch.empty(shape, dtype=dtype)
        else:
            t = torch.frombuffer(data, dtype=dtype, count=count, offset=begin).reshape(shape).clone()
        tensors[name] = t
    return tensors, metadata


def load_into(module, tensors):
    """Copies `tensors` into `module` by state_dict name. Raises ValueError naming every entry
    that is missing, unexpected, or of another shape or dtype (nothing is copied then)."""
    expected = module.state_dict()
    problems = []
    for name in expected:
        if name not in tensors:
            problems.append(f"missing '{name}' ({expected[name].dtype} {list(expected[name].shape)})")
    for name, t in tensors.items():
        if name not in expected:
            problems.append(f"unexpected '{name}' ({t.dtype} {list(t.shape)}): not in the module's state_dict")
            continue
        want = expected[name]
        if t.shape != want.shape or t.dtype != want.dtype:
            problems.append(f"'{name}' is {t.dtype} {list(t.shape)}, the module has {want.dtype} {list(want.shape)}")
    if problems:
        raise ValueError("the file does not fit the module:\n  " + "\n  ".join(problems))
    module.load_state_dict(tensors, strict=True)
    return module


def read_idx(path):
    """An IDX file (optionally .gz) as a tensor (uint8 data only: Fashion-MNIST)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not a uint8 IDX file")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = bytearray(raw[4 + 4 * ndim:])
    count = 1
    for d in dims:
        count *= d
    if len(body) != count:
        raise ValueError(f"{path}: {len(body)} bytes of data, expected {count}")
    return torch.frombuffer(body, dtype=torch.uint8).reshape(dims).clone()


def find(dir_, stem):
    for name in (stem, stem + ".gz"):
        p = os.path.join(dir_, name)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(f"{dir_}: neither {stem} nor {stem}.gz")


def fashion_mnist_test(dir_, limit=-1):
    """(x [N, 1, 28, 28] float32 normalised like the platform, y [N] int64)."""
    images = read_idx(find(dir_, "t10k-images-idx3-ubyte"))
    labels = read_idx(find(dir_, "t10k-labels-idx1-ubyte"))
    if limit >= 0:
        images, labels = images[:limit], labels[:limit]
    mean, std = 0.2860, 0.3530
    x = images.to(torch.float32).div_(255.0).sub_(mean).div_(std).unsqueeze(1).contiguous()
    return x, labels.to(torch.int64)


@torch.no_grad()
def evaluate(module, x, y, batch=1000):
    """(accuracy, mean cross-entropy) in eval mode (BatchNorm uses its running statistics)."""
    module.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(y), batch):
        logits = module(x[i:i + batch])
        correct += int((logits.argmax(1) == y[i:i + batch]).sum())
        loss += float(F.cross_entropy(logits, y[i:i + batch], reduction="sum"))
    return correct / len(y), loss / len(y)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="safetensors file of the global model")
    ap.add_argument("--data-dir", default=os.environ.get("FASHION_MNIST_DIR") or "/usr/share/datasets/fashion-mnist")
    ap.add_argument("--limit", type=int, default=-1, help="first N test examples (-1: all 10,000)")
    ap.add_argument("--expect-accuracy", type=float, help="the accuracy the platform reported")
    ap.add_argument("--expect-loss", type=float, help="the global loss the platform reported")
    ap.add_argument("--tolerance", type=float, default=0.001, help="largest |accuracy difference| accepted")
    ap.add_argument("--loss-tolerance", type=float, default=1e-4, help="largest relative loss difference accepted")
    a = ap.parse_args()

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from model import SmallNet

    torch.set_num_threads(1)
    tensors, metadata = read_safetensors(a.model)
    model = load_into(SmallNet(), tensors)
    x, y = fashion_mnist_test(a.data_dir, a.limit)
    acc, loss = evaluate(model, x, y)
    print(f"python: accuracy={acc:.4f} loss={loss:.6f} examples={len(y)} tensors={len(tensors)}"
          + (f" metadata={json.dumps(metadata)}" if metadata else ""))
    ok = True
    if a.expect_accuracy is not None:
        diff = abs(acc - a.expect_accuracy)
        print(f"python: platform accuracy={a.expect_accuracy:.4f} |difference|={diff:.4f} (tolerance {a.tolerance})")
        ok &= diff <= a.tolerance
    if a.expect_loss is not None:
        rel = abs(loss - a.expect_loss) / max(abs(a.expect_loss), 1e-12)
        print(f"python: platform loss={a.expect_loss:.6f} relative difference={rel:.2e} (tolerance {a.loss_tolerance})")
        ok &= rel <= a.loss_tolerance
    if not ok:
        print("python: MISMATCH between the platform's evaluation and Python's", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
