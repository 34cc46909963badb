"""Compare llama.cpp's next-token top-5 on Ember's GGUF exports with Ember's own top-5.

Two steps, so llama.cpp can run on another machine than Ember:

  # 1. where Ember runs: Ember's top-5 (f32) over real validation rows, from `ember serve`
  ember serve --model checkpoints/tiny/model --addr 127.0.0.1:8011 --max-logprobs 5 &
  python tests/python/check_llamacpp.py reference --url http://127.0.0.1:8011 \
      --dataset datasets/default --rows 4 --tokens 64 --out ref.json
  # 2. where llama.cpp builds (cmake, a C++ compiler): the same rows through each GGUF file,
  #    with tests/llamacpp/top5.cpp linked against libllama (scripts/build_llamacpp_top5.sh)
  python tests/python/check_llamacpp.py compare --top5-bin build/top5 --ref ref.json model-f16.gguf ...

`compare` prints one JSON line per file: top-1 agreement, mean top-5 overlap, and the largest
log-probability difference on tokens both top-5 lists hold; it exits 1 if an f16 file's top-1
agreement is below --min-f16-top1 (0.99) (an f16 export read correctly by llama.cpp must match).
"""

import argparse
import json
import sys
import urllib.request


def reference(a):
    import pyarrow.ipc as ipc

    table = ipc.open_file(f"{a.dataset}/validation-00000.arrow").read_all()
    rows = [r[: a.tokens] for r in table.column("input_ids").to_pylist()[: a.rows]]
    out = []
    for ids in rows:
        body = json.dumps(
            {"model": a.model, "prompt": ids, "max_tokens": 1, "prompt_logprobs": 5, "temperature": 0}
        ).encode()
        req = urllib.request.Request(
            f"{a.url}/v1/completions", body, {"Content-Type": "application/json"}
        )
        choice = json.load(urllib.request.urlopen(req))["choices"][0]
        top5 = []
        # entry i (i >= 1) is the distribution after ids[:i]
        for entry in choice["prompt_logprobs"][1:]:
            pairs = [(int(k), v["logprob"]) for k, v in entry.items() if v["rank"] <= 5]
            pairs.sort(key=lambda p: -p[1])
            top5.append(pairs[:5])
        out.append({"ids": ids, "top5": top5})
    with open(a.out, "w") as f:
        json.dump({"rows": out}, f)
    print(f"wrote {a.out}: {len(out)} rows x {len(out[0]['top5'])} positions")


def llama_top5(binary, path, rows):
    """llama.cpp's top-5 (id, logprob) per position of each row, from tests/llamacpp/top5.cpp."""
    import subprocess

    stdin = "".join(" ".join(map(str, r["ids"])) + "\n" for r in rows)
    out = subprocess.run([binary, path], input=stdin, capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def compare(a):
    ref = json.load(open(a.ref))["rows"]
    failed = False
    for path in a.gguf:
        got_rows = llama_top5(a.top5_bin, path, ref)
        top1 = overlap = n = 0
        max_diff = 0.0
        for row, got_row in zip(ref, got_rows):
            # llama.cpp's position p predicts token p + 1: Ember's entry p
            for want, got_pairs in zip(row["top5"], got_row):
                got = {tid: lp for tid, lp in got_pairs}
                got_ids = [tid for tid, _ in got_pairs]
                want_ids = [p[0] for p in want]
                top1 += got_ids[0] == want_ids[0]
                overlap += len(set(got_ids) & set(want_ids)) / 5
                for tid, wlp in want:
                    if tid in got:
                        max_diff = max(max_diff, abs(got[tid] - wlp))
                n += 1
        result = {
            "gguf": path,
            "positions": n,
            "top1_agreement": top1 / n,
            "top5_overlap": overlap / n,
            "max_abs_logprob_diff_on_shared_top5": max_diff,
        }
        print(json.dumps(result))
        if "f16" in path and result["top1_agreement"] < a.min_f16_top1:
            failed = True
    sys.exit(1 if failed else 0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("reference")
    r.add_argument("--url", required=True)
    r.add_argument("--model", default="model", help="served model name")
    r.add_argument("--dataset", required=True)
    r.add_argument("--rows", type=int, default=4)
    r.add_argument("--tokens", type=int, default=64)
    r.add_argument("--out", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--ref", required=True)
    c.add_argument("--top5-bin", required=True, help="tests/llamacpp/top5.cpp built against libllama")
    c.add_argument("--min-f16-top1", type=float, default=0.99, help="fail below this top-1 agreement on *f16* files")
    c.add_argument("gguf", nargs="+")
    a = p.parse_args()
    reference(a) if a.cmd == "reference" else compare(a)


if __name__ == "__main__":
    main()
