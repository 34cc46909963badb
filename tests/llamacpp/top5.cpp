// Next-token top-5 of a GGUF model under llama.cpp, for token ids given on stdin
// (one sequence per line, space-separated). Prints one JSON line per sequence:
// [[[id, logprob] x5] per position]. Built and run by tests/python/check_llamacpp.py.
#include "llama.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

static void quiet(ggml_log_level, const char *, void *) {}

int main(int argc, char ** argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s model.gguf < ids.txt\n", argv[0]);
        return 2;
    }
    llama_log_set(quiet, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 1024;
    cp.n_batch = 1024;
    cp.n_ubatch = 1024;
    llama_context * ctx = llama_init_from_model(model, cp);
    const int nv = llama_vocab_n_tokens(llama_model_get_vocab(model));
    std::string line;
    while (std::getline(std::cin, line)) {
        std::istringstream in(line);
        std::vector<llama_token> ids;
        for (llama_token t; in >> t;) ids.push_back(t);
        if (ids.empty()) continue;
        llama_memory_clear(llama_get_memory(ctx), true);
        llama_batch b = llama_batch_init((int32_t) ids.size(), 0, 1);
        for (size_t i = 0; i < ids.size(); ++i) {
            b.token[i] = ids[i];
            b.pos[i] = (llama_pos) i;
            b.n_seq_id[i] = 1;
            b.seq_id[i][0] = 0;
            b.logits[i] = 1;
        }
        b.n_tokens = (int32_t) ids.size();
        if (llama_decode(ctx, b) != 0) {
            fprintf(stderr, "llama_decode failed\n");
            return 1;
        }
        std::printf("[");
        for (size_t i = 0; i < ids.size(); ++i) {
            const float * l = llama_get_logits_ith(ctx, (int32_t) i);
            float m = *std::max_element(l, l + nv);
            double z = 0;
            for (int j = 0; j < nv; ++j) z += std::exp((double) l[j] - m);
            const double lse = m + std::log(z);
            std::vector<int> order(nv);
            std::iota(order.begin(), order.end(), 0);
            std::partial_sort(order.begin(), order.begin() + 5, order.end(),
                              [&](int a, int c) { return l[a] > l[c]; });
            std::printf("%s[", i ? "," : "");
            for (int r = 0; r < 5; ++r)
                std::printf("%s[%d,%.7f]", r ? "," : "", order[r], (double) l[order[r]] - lse);
            std::printf("]");
        }
        std::printf("]\n");
        std::fflush(stdout);
        llama_batch_free(b);
    }
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
