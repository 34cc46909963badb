"""Table and plot of the on-policy comparison (scripts/onpolicy_comparison.sh).

    python3 scripts/onpolicy_report.py reports/onpolicy

Reads <dir>/<run>/{summary.json, metrics.jsonl, onpolicy.jsonl, eval_chat.json}; writes
<dir>/results.md (table) and <dir>/validation.svg (validation answer loss against teacher-scored
tokens and against wall time). Standard library only.
"""
import json, os, sys

root = sys.argv[1]
RUNS = ["ce", "offline-kd", "onpolicy-sampled-kl", "onpolicy-jsd", "onpolicy-mix",
        "sft-then-ce", "sft-then-offline-kd", "sft-then-onpolicy-sampled-kl", "sft-then-onpolicy-jsd",
        "sft-then-onpolicy-sampled-kl-lr2e-4", "sft-then-onpolicy-jsd-t0.7-lr2e-4", "sft-then-onpolicy-mix"]
CATS = ["customs", "delivery_exception", "routing", "shipment_status"]


def jsonl(path):
    if not os.path.exists(path):
        return []
    return [json.loads(l) for l in open(path) if l.strip()]


rows, curves = [], {}
for run in RUNS:
    d = os.path.join(root, run)
    if not os.path.exists(os.path.join(d, "summary.json")):
        continue
    s = json.load(open(os.path.join(d, "summary.json")))
    ev = json.load(open(os.path.join(d, "eval_chat.json")))
    metrics = jsonl(os.path.join(d, "metrics.jsonl"))
    onp = jsonl(os.path.join(d, "onpolicy.jsonl"))
    steps, rows_per_step, seq = s["steps"], 16, 256
    # teacher-scored tokens per optimizer step: offline rows are scored whole (seq_len tokens each);
    # on-policy rows are prompt + sample; the offline share of a mixed run is counted as rows
    onp_by_step = {}
    for b in onp:
        onp_by_step[b["step"]] = onp_by_step.get(b["step"], 0) + b["scored_tokens"]
    per_step = []
    for st in range(1, steps + 1):
        if run.endswith("ce") and "kd" not in run:
            per_step.append(0)
        elif "onpolicy" in run:
            # micro-batches of this step that were not on-policy were offline rows
            n_on = sum(1 for b in onp if b["step"] == st)
            per_step.append(onp_by_step.get(st, 0) + (1 - n_on) * rows_per_step * seq)
        else:
            per_step.append(rows_per_step * seq)
    # positions with a loss: generated tokens of on-policy batches, whole rows (seq - 1) of the others
    n_on = len(onp)
    trained = sum(b["generated_tokens"] for b in onp) + (steps - n_on) * rows_per_step * (seq - 1)
    cum = [0]
    for x in per_step:
        cum.append(cum[-1] + x)
    train_rows = [m for m in metrics if m.get("split") == "train"]
    elapsed = {m["step"]: m["elapsed_seconds"] for m in train_rows}
    valid = [m for m in metrics if m.get("split") == "validation"]
    curves[run] = [(m["step"], cum[m["step"]], elapsed.get(m["step"], 0.0 if m["step"] == 0 else s["seconds"]), m["loss"]) for m in valid]
    o = s.get("onpolicy") or {}
    rows.append({
        "run": run, "answer_loss": ev["answer_loss"], "exact": ev["overall"]["exact_match"],
        "valid_json": ev["overall"]["valid_json"],
        "cats": [ev["per_category"][c]["exact_match"] for c in CATS],
        "teacher_tokens": cum[-1], "seconds": s["seconds"],
        "sample_tps": o.get("sample_tokens_per_second"), "score_tps": o.get("score_tokens_per_second"),
        "loop_tps": o.get("loop_generated_tokens_per_second"), "train_tps": trained / s["seconds"],
        "staleness": o.get("max_staleness_seen"), "wait": o.get("wait_seconds"),
        "stopped": (o["rows_stopped"] / o["rows"]) if o.get("rows") else None,
    })

fmt = lambda x, f="{:.3f}": "" if x is None else f.format(x)
out = ["| run | answer loss | exact match | " + " | ".join(CATS) + " | valid JSON | teacher-scored tokens | wall s |", "|---" * (6 + len(CATS)) + "|"]
for r in rows:
    out.append(f"| {r['run']} | {r['answer_loss']:.4f} | {r['exact']:.3f} | " + " | ".join(f"{c:.3f}" for c in r["cats"]) +
               f" | {r['valid_json']:.2f} | {r['teacher_tokens']:,} | {r['seconds']:.0f} |")
out += ["", "| run | train tok/s | sampling gen tok/s | teacher tok/s | loop gen tok/s | max staleness | trainer waited s | samples ending at EOS |", "|---" * 8 + "|"]
for r in rows:
    out.append(f"| {r['run']} | {r['train_tps']:.0f} | {fmt(r['sample_tps'], '{:.0f}')} | {fmt(r['score_tps'], '{:.0f}')} | {fmt(r['loop_tps'], '{:.0f}')} | {fmt(r['staleness'], '{}')} | {fmt(r['wait'], '{:.0f}')} | {fmt(r['stopped'])} |")
open(os.path.join(root, "results.md"), "w").write("\n".join(out) + "\n")
print("\n".join(out))

# SVG: two panels, validation loss vs teacher-scored tokens and vs wall seconds
W, H, P = 460, 300, 50
colors = ["#444", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#7f7f7f", "#17becf", "#ff7f0e", "#bcbd22", "#e377c2", "#8c564b", "#aec7e8"]
def panel(x0, key, label):
    pts = [(c[key], c[3]) for v in curves.values() for c in v]
    xs, ys = [p[0] for p in pts] or [1], [p[1] for p in pts] or [1]
    xmax, ymin, ymax = max(xs) or 1, min(ys), max(ys)
    sx = lambda x: x0 + P + (W - 2 * P) * x / xmax
    sy = lambda y: H - P - (H - 2 * P) * (y - ymin) / ((ymax - ymin) or 1)
    g = [f'<rect x="{x0 + P}" y="{P}" width="{W - 2 * P}" height="{H - 2 * P}" fill="none" stroke="#999"/>',
         f'<text x="{x0 + W / 2}" y="{H - 12}" text-anchor="middle" font-size="12">{label}</text>',
         f'<text x="{x0 + P}" y="{H - P + 14}" font-size="10">0</text>',
         f'<text x="{x0 + W - P}" y="{H - P + 14}" font-size="10" text-anchor="end">{xmax:,.0f}</text>',
         f'<text x="{x0 + P - 4}" y="{P + 4}" font-size="10" text-anchor="end">{ymax:.2f}</text>',
         f'<text x="{x0 + P - 4}" y="{H - P}" font-size="10" text-anchor="end">{ymin:.2f}</text>']
    for (run, c), col in zip(curves.items(), colors):
        if key == 1 and run.endswith("ce") and "kd" not in run:
            continue
        path = " ".join(f"{sx(p[key]):.1f},{sy(p[3]):.1f}" for p in c)
        g.append(f'<polyline points="{path}" fill="none" stroke="{col}" stroke-width="2"/>')
    return g
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{max(2 * W, 10 + 100 * len(curves))}" height="{H + 30}" font-family="sans-serif">',
       '<text x="10" y="20" font-size="13">validation answer loss (nats/token) of the nano student</text>']
svg += panel(0, 1, "teacher-scored tokens") + panel(W, 2, "wall seconds (2 CPU cores)")
for i, (run, col) in enumerate(zip(curves, colors)):
    svg.append(f'<text x="{10 + 100 * i}" y="{H + 22}" font-size="9" fill="{col}">{run}</text>')
svg.append("</svg>")
open(os.path.join(root, "validation.svg"), "w").write("\n".join(svg))
