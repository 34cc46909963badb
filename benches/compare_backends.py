"""The same distillation training step on every backend this machine and this `ember` build
have, plus PyTorch eager on CPU (and CUDA when present), in one run; one JSON table.

Step: Ember's `tiny` student shape (or --hidden/--layers), forward, forward KL over the teacher's
top-k + tail, backward, AdamW (the step `ember bench kd-step` times).

    python benches/compare_backends.py --ember /work/target/debug/ember [--batch 16 --seq 255]

Backends tried: cpu (flex) f32 and bf16, wgpu, tch (libtorch CPU, and CUDA when it sees a GPU) f32
and bf16, cuda (CubeCL) f32 and bf16. A backend that is not compiled in or has no runtime is listed with the reason.
"""
import argparse, json, os, subprocess, time

p = argparse.ArgumentParser()
p.add_argument("--ember", required=True, help="path of the ember binary")
p.add_argument("--batch", type=int, default=16)
p.add_argument("--seq", type=int, default=255)
p.add_argument("--k", type=int, default=32)
p.add_argument("--vocab", type=int, default=4096)
p.add_argument("--preset", default="tiny")
p.add_argument("--iters", type=int, default=5)
p.add_argument("--backends", default="cpu,cpu-bf16,wgpu,tch-cpu,tch,cuda")
p.add_argument("--no-torch", action="store_true")
p.add_argument("--timeout", type=int, default=900)
p.add_argument("--torch-malloc-as-ember", action="store_true",
               help="also time PyTorch with the glibc malloc thresholds `ember` sets for itself (src/main.rs)")
p.add_argument("--torch-label", default="", help=argparse.SUPPRESS)
a = p.parse_args()
B, S, K, V = a.batch, a.seq, a.k, a.vocab
rows = []


def ember(name, args):
    cmd = [a.ember, "bench", "kd-step", "--preset", a.preset, "--batch-size", str(B), "--seq-len", str(S),
           "--top-k", str(K), "--vocab-size", str(V), "--iters", str(a.iters)] + args
    t0 = time.time()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
    except subprocess.TimeoutExpired:
        rows.append({"engine": "ember", "backend": name, "error": f"timed out after {a.timeout}s"})
        return
    if r.returncode != 0:
        err = [l for l in r.stderr.splitlines() if l.startswith("error")] or r.stderr.splitlines()[-3:]
        rows.append({"engine": "ember", "backend": name, "error": " ".join(err)[:300]})
        return
    em = json.loads(r.stdout.strip().splitlines()[-1])
    dev = [l for l in r.stderr.splitlines() if l.startswith("backend:")]
    rows.append({"engine": "ember", "backend": name, "device": dev[0][9:] if dev else "",
                 "tokens_per_s": round(em["tokens_per_second"]), "step_s": em["median_step_seconds"],
                 "device_bytes_reserved": em.get("device_bytes_reserved"), "wall_s_incl_warmup": round(time.time() - t0, 1),
                 "last_loss": em["last_loss"]})


todo = a.backends.split(",")
if "cpu" in todo: ember("cpu", ["--backend", "cpu"])
if "cpu-bf16" in todo: ember("cpu-bf16", ["--backend", "cpu", "--precision", "bf16"])
if "wgpu" in todo: ember("wgpu", ["--backend", "wgpu"])
if "wgpu-bf16" in todo: ember("wgpu-bf16", ["--backend", "wgpu", "--precision", "bf16"])
if "tch-cpu" in todo: ember("tch-cpu", ["--backend", "tch", "--device", "cpu"])
if "tch" in todo: ember("tch", ["--backend", "tch"])
if "tch-bf16" in todo: ember("tch-bf16", ["--backend", "tch", "--precision", "bf16"])
if "cuda" in todo: ember("cuda", ["--backend", "cuda"])
if "cuda-bf16" in todo: ember("cuda-bf16", ["--backend", "cuda", "--precision", "bf16"])

if not a.no_torch:
    import torch
    import transformers as T

    def torch_step(device, dtype=torch.float32):
        torch.manual_seed(0)
        # Ember presets (crates/student/src/config.rs)
        presets = {"tiny": (128, 384, 4, 4, 2, 32, False), "small": (384, 1024, 6, 6, 2, 64, False),
                   "base": (768, 2048, 12, 12, 4, 64, False), "mobile": (960, 2560, 32, 15, 5, 64, True)}
        h, inter, L, nh, nkv, hd, tied = presets[a.preset]
        cfg = T.LlamaConfig(vocab_size=V, hidden_size=h, intermediate_size=inter, num_hidden_layers=L,
                            num_attention_heads=nh, num_key_value_heads=nkv, head_dim=hd, max_position_embeddings=4096,
                            rms_norm_eps=1e-5, tie_word_embeddings=tied, rope_theta=10000.0)
        model = T.LlamaForCausalLM(cfg).to(device=device, dtype=dtype)
        model.config._attn_implementation = "eager"
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
        i = torch.arange(B * S, device=device)
        ids = ((i * 7919 + 13) % V).reshape(B, S)
        j = torch.arange(B * S * K, device=device)
        tids = (((j // K) * 31 + (j % K) * 97) % V).reshape(B, S, K)
        tlp = torch.log(0.9 * 0.5 ** ((j % K) + 1).double()).float().reshape(B, S, K)
        P = tlp.exp()
        P_tail = (1 - P.sum(-1, keepdim=True)).clamp_min(0)

        def step():
            logits = model(input_ids=ids).logits.float()
            logq = torch.log_softmax(logits, -1)
            q_lp = logq.gather(-1, tids)
            q_tail = (1 - q_lp.exp().sum(-1, keepdim=True)).clamp(1e-10, 1)
            kl = (P * (tlp - q_lp)).sum(-1) + (P_tail * (P_tail.clamp_min(1e-10).log() - q_tail.log())).squeeze(-1)
            loss = kl.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.item()  # syncs

        for _ in range(2):
            step()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        ts = []
        for _ in range(a.iters):
            t0 = time.perf_counter(); loss = step(); ts.append(time.perf_counter() - t0)
        t = sorted(ts)[len(ts) // 2]
        row = {"engine": f"pytorch {torch.__version__} eager", "backend": f"{device} {str(dtype)[6:]}{a.torch_label}",
               "tokens_per_s": round(B * S / t), "step_s": t, "last_loss": loss}
        if device == "cuda":
            row["device_bytes_reserved"] = torch.cuda.max_memory_reserved()
        rows.append(row)

    torch.set_num_threads(os.cpu_count())
    torch_step("cpu")
    if torch.cuda.is_available():
        torch_step("cuda")
        torch_step("cuda", torch.bfloat16)

if a.torch_malloc_as_ember and not a.no_torch:
    # a fresh process: the thresholds must be set before the first allocation
    env = dict(os.environ, GLIBC_TUNABLES="glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=2147483647")
    args = ["--batch", str(B), "--seq", str(S), "--k", str(K), "--vocab", str(V), "--preset", a.preset,
            "--iters", str(a.iters), "--backends", "none", "--torch-label", ", malloc thresholds as ember"]
    r = subprocess.run(["python", __file__, "--ember", a.ember] + args, capture_output=True, text=True, env=env)
    rows += [x for x in json.loads(r.stdout)["rows"] if x["backend"].startswith("cpu")]

print(json.dumps({"batch": B, "seq_len": S, "k": K, "vocab": V, "preset": a.preset, "cpus": os.cpu_count(),
                  "rows": rows}, indent=1))
