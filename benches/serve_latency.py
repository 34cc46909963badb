"""`ember serve` latency, one run: generation time by max_tokens (linear with the KV cache?),
and the latency of short requests while long generations run concurrently.

Builds a random Llama checkpoint of the quick-start tiny student's shape (vocab 4096, hidden
128, 4 layers, 4/2 heads, SwiGLU 384, 2048 positions) with transformers (no download), starts
`ember serve` on it on 127.0.0.1, and measures with plain HTTP clients:

    $(bash scripts/setup_python.sh | tail -1) benches/serve_latency.py --ember target/debug/ember

Writes a JSON summary to stdout (and to --out if given).
"""
import argparse, json, os, statistics, subprocess, tempfile, threading, time, urllib.request

import torch
import transformers as T

p = argparse.ArgumentParser()
p.add_argument("--ember", required=True, help="path of the ember binary")
p.add_argument("--lengths", default="100,300,600,1000")
p.add_argument("--long-tokens", type=int, default=1000)
p.add_argument("--short-clients", type=int, default=4)
p.add_argument("--short-requests", type=int, default=10)
p.add_argument("--out", default=None)
a = p.parse_args()

torch.manual_seed(0)
cfg = T.LlamaConfig(vocab_size=4096, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                    max_position_embeddings=2048, tie_word_embeddings=True, rope_theta=10000.0)
d = tempfile.mkdtemp(prefix="ember-serve-bench-")
model = T.AutoModelForCausalLM.from_config(cfg)
model.save_pretrained(d, safe_serialization=True)

server = subprocess.Popen([a.ember, "serve", "--model", d, "--addr", "127.0.0.1:0",
                           "--served-model-name", "m"], stdout=subprocess.PIPE, text=True)
url = server.stdout.readline().split()[2]


def post(body):
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.loads(r.read())
    return time.perf_counter() - t0, out


try:
    post({"prompt": [1, 2, 3], "max_tokens": 4})  # warm-up
    by_length = {}
    for n in [int(x) for x in a.lengths.split(",")]:
        secs, out = post({"prompt": [1, 17, 42, 99], "max_tokens": n, "temperature": 0})
        assert len(out["choices"][0]["token_ids"]) == n
        by_length[n] = round(secs, 3)

    # short requests (32-token prompt, prompt_logprobs 5) alone, then beside long generations
    def short(i):
        prompt = [(j * 7 + i * 13) % 4096 for j in range(32)]
        secs, out = post({"prompt": prompt, "max_tokens": 1, "prompt_logprobs": 5})
        assert len(out["choices"][0]["prompt_logprobs"]) == 32
        return secs

    alone = sorted(short(i) for i in range(a.short_requests))
    long_times, short_times, errors = [], [], []

    def long_client():
        try:
            secs, _ = post({"prompt": [1, 5, 9], "max_tokens": a.long_tokens, "temperature": 0.8})
            long_times.append(secs)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    def short_client(c):
        for i in range(a.short_requests):
            try:
                short_times.append(short(c * 100 + i))
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))

    longs = [threading.Thread(target=long_client) for _ in range(2)]
    for t in longs:
        t.start()
    time.sleep(0.2)
    shorts = [threading.Thread(target=short_client, args=(c,)) for c in range(a.short_clients)]
    for t in shorts:
        t.start()
    for t in shorts + longs:
        t.join()
    short_times.sort()
    q = lambda xs, p: xs[min(len(xs) - 1, round((len(xs) - 1) * p))]
    result = {
        "model": "random Llama, tiny-student shape (vocab 4096, hidden 128, 4 layers)",
        "cores": os.cpu_count(),
        "generation_seconds_by_max_tokens": by_length,
        "short_request_alone_p50_s": round(q(alone, 0.5), 4),
        "short_request_under_2_long_generations": {
            "requests": len(short_times), "p50_s": round(q(short_times, 0.5), 4),
            "p99_s": round(q(short_times, 0.99), 4), "max_s": round(short_times[-1], 4)},
        f"long_generation_{a.long_tokens}_tokens_s": [round(x, 2) for x in long_times],
        "errors": errors,
    }
finally:
    server.kill()
text = json.dumps(result, indent=1)
print(text)
if a.out:
    open(a.out, "w").write(text + "\n")
