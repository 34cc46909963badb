"""Check an Ember -> DistillKit export against DistillKit's format, independently of Ember.

Usage: python check_distillkit_export.py <ember v1 logits dir (full precision)> <capture dir>

Reads the capture with pyarrow and yaml, decodes every position with the numpy decoder of
distillkit_format.py, and encodes the original full-precision top-k with the numpy encoder
(what DistillKit's own capture would store). Prints JSON: positions, ids_equal, the largest
|decoded - original| of the export and of the reference encoder, and rows/columns seen.
"""
import glob, json, os, sys

import numpy as np
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from distillkit_format import decode, encode, index_bits, unpack  # noqa: E402

src, cap = sys.argv[1], sys.argv[2]
cfg = yaml.safe_load(open(os.path.join(cap, "compression_config.yaml")))
k, bits = cfg["k"], index_bits(cfg)
orig = []
for f in sorted(glob.glob(os.path.join(src, "train-*.arrow"))):
    t = ipc.open_file(f).read_all()
    orig += list(zip(t.column("input_ids").to_pylist(), t.column("topk_ids").to_pylist(),
                     t.column("topk_logprobs").to_pylist()))
files = sorted(glob.glob(os.path.join(cap, "data_*.parquet")), key=lambda p: int(p.rsplit("_", 1)[1].split(".")[0]))
rows = []
for f in files:
    tab = pq.read_table(f)
    # the Parquet list layout DistillKit's own writer (pyarrow) produces: "element" items
    assert [str(x) for x in tab.schema.types] == ["list<element: uint64>", "list<element: list<element: uint8>>",
                                                  "list<element: list<element: uint8>>"], tab.schema
    rows += tab.to_pylist()
assert len(rows) == len(orig), (len(rows), len(orig))
ids_equal, worst_export, worst_reference, positions = True, 0.0, 0.0, 0
for row, (input_ids, tid, tlp) in zip(rows, orig):
    assert row["input_ids"][:-1] == input_ids and len(row["input_ids"]) == len(input_ids) + 1
    for p in range(len(input_ids)):
        ids = unpack(row["bytepacked_indices"][p], bits, k)
        ids_equal &= ids == tid[p][:k]
        got = decode(row["compressed_logprobs"][p], cfg)
        _, ref = encode(tlp[p][:k], cfg)
        want = np.asarray(tlp[p][:k], dtype=np.float64)
        worst_export = max(worst_export, float(np.abs(got - want).max()))
        worst_reference = max(worst_reference, float(np.abs(ref - want).max()))
        positions += 1
print(json.dumps(dict(positions=positions, rows=len(rows), files=len(files), ids_equal=ids_equal,
                      worst_export=worst_export, worst_reference=worst_reference)))
