"""The peer for `cargo xtask bench-model`: llama.cpp (llama-cpp-python's bindings, 2 threads)
on the same GGUF, the same prompt text and the same measurements as engine/benches/model.rs:
prefill of 512 tokens, and decode at batch 1, 8 and 32 with every sequence's token of a step in
one `llama_batch` (as llama.cpp's server decodes its parallel slots).

Each measurement is taken twice, with flash attention off (llama-cpp-python's `Llama` default)
and on (llama.cpp's server default, `auto`, on a CPU), and the faster is kept: the peer is
llama.cpp at its best here. f16 KV cache, a KV cache per sequence.

Usage: python3 llama_cpp_peer.py MODEL.gguf -> prints JSON
       python3 llama_cpp_peer.py MODEL.gguf --decode-only N [THREADS]: decodes N tokens at
       batch 1 after a 32-token prompt with THREADS threads (2) and prints nothing (for counting
       instructions, as engine/benches/model.rs)
"""

import json
import sys
import time

import llama_cpp as L
import numpy as np

PREFILL_TOKENS = 512
DECODE_PROMPT = 32
DECODE_STEPS = 32
BATCHES = (1, 8, 32)


class Peer:
    def __init__(self, path):
        # llama.cpp logs every tensor it loads; keep stderr for errors.
        self._quiet = L.llama_log_callback(lambda level, text, data: None)
        L.llama_log_set(self._quiet, None)
        L.llama_backend_init()
        params = L.llama_model_default_params()
        # No extra buffer types (weight repacking): on CPUs with AMX, llama.cpp's AMX buffers
        # crash on Q4_1 (a known upstream bug); the repacking is not what is compared here.
        params.use_extra_bufts = False
        self.model = L.llama_model_load_from_file(path.encode(), params)
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.ctx = None

    def context(self, n_seq, n_ctx_per_seq, flash_attn=False, threads=2):
        """A fresh context for `n_seq` sequences, each with its own KV cache (`kv_unified` off,
        as llama.cpp advises when sequences share no prefix)."""
        if self.ctx is not None:
            L.llama_free(self.ctx)
            L.llama_batch_free(self.batch)
        cp = L.llama_context_default_params()
        cp.n_ctx = n_seq * n_ctx_per_seq
        cp.n_batch = max(512, n_seq * DECODE_PROMPT)
        cp.n_ubatch = 512
        cp.n_seq_max = n_seq
        cp.n_threads = threads
        cp.n_threads_batch = threads
        cp.kv_unified = False
        cp.flash_attn_type = (
            L.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.batch = L.llama_batch_init(cp.n_batch, 0, 1)

    def tokenize(self, text):
        data = text.encode()
        out = (L.llama_token * (len(data) + 8))()
        n = L.llama_tokenize(self.vocab, data, len(data), out, len(out), False, False)
        return list(out[:n])

    def clear(self):
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)

    def decode(self, entries):
        """entries: (token, pos, seq, wants_logits); returns the rows' logits, in order."""
        b = self.batch
        b.n_tokens = len(entries)
        for i, (token, pos, seq, logits) in enumerate(entries):
            b.token[i] = token
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits
        assert L.llama_decode(self.ctx, b) == 0
        return [
            np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))
            for i, e in enumerate(entries)
            if e[3]
        ]


def measure(peer, tokens, flash_attn):
    prompt = tokens[:PREFILL_TOKENS]
    peer.context(1, 1024, flash_attn)
    prefill = float("inf")
    for _ in range(3):
        peer.clear()
        start = time.perf_counter()
        peer.decode([(t, p, 0, p == len(prompt) - 1) for p, t in enumerate(prompt)])
        prefill = min(prefill, time.perf_counter() - start)
    result = {f"prefill_{PREFILL_TOKENS}_tok_s": PREFILL_TOKENS / prefill}
    for n in BATCHES:
        peer.context(n, 256, flash_attn)
        seqs = [tokens[s : s + DECODE_PROMPT] for s in range(n)]
        entries = [(t, p, s, p == DECODE_PROMPT - 1) for s in range(n) for p, t in enumerate(seqs[s])]
        for logits, seq in zip(peer.decode(entries), seqs):
            seq.append(int(np.argmax(logits)))
        start = time.perf_counter()
        for _ in range(DECODE_STEPS):
            rows = peer.decode([(seq[-1], len(seq) - 1, s, True) for s, seq in enumerate(seqs)])
            for logits, seq in zip(rows, seqs):
                seq.append(int(np.argmax(logits)))
        result[f"decode_batch_{n}_tok_s"] = n * DECODE_STEPS / (time.perf_counter() - start)
    return result


def main():
    peer = Peer(sys.argv[1])
    text = "The quick brown fox jumps over the lazy dog while the capital of France is Paris. " * 64
    tokens = peer.tokenize(text)
    if sys.argv[2:3] == ["--decode-only"]:
        peer.context(1, 1024, threads=int(sys.argv[4]) if len(sys.argv) > 4 else 2)
        seq = tokens[:DECODE_PROMPT]
        (logits,) = peer.decode([(t, p, 0, p == len(seq) - 1) for p, t in enumerate(seq)])
        for _ in range(int(sys.argv[3])):
            seq.append(int(np.argmax(logits)))
            (logits,) = peer.decode([(seq[-1], len(seq) - 1, 0, True)])
        return

    result = {"llama_cpp_python": L.__version__}
    for flash_attn in (False, True):
        for key, value in measure(peer, tokens, flash_attn).items():
            if value > result.get(key, 0):
                result[key] = value
                result[key.replace("_tok_s", "_flash_attn")] = flash_attn
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
