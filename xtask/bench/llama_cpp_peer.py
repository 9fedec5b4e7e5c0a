"""The peer for `cargo xtask bench-model`: llama.cpp (llama-cpp-python, 2 threads) on the same
GGUF, the same prompt text and the same measurements as engine/benches/model.rs.

Usage: python3 llama_cpp_peer.py MODEL.gguf -> prints JSON
"""

import json
import sys
import time

import numpy as np
from llama_cpp import Llama

PREFILL_TOKENS = 512
DECODE_PROMPT = 32
DECODE_STEPS = 32


def main():
    path = sys.argv[1]
    llm = Llama(model_path=path, n_threads=2, n_threads_batch=2, n_ctx=1024, n_batch=512, verbose=False)
    text = "The quick brown fox jumps over the lazy dog while the capital of France is Paris. " * 64
    tokens = llm.tokenize(text.encode(), add_bos=False, special=False)
    prompt = tokens[:PREFILL_TOKENS]

    prefill = float("inf")
    for _ in range(3):
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        prefill = min(prefill, time.perf_counter() - start)

    llm.reset()
    llm.eval(tokens[:DECODE_PROMPT])
    next_token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    start = time.perf_counter()
    for _ in range(DECODE_STEPS):
        llm.eval([next_token])
        next_token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    decode = DECODE_STEPS / (time.perf_counter() - start)

    import llama_cpp
    json.dump(
        {
            "llama_cpp_python": llama_cpp.__version__,
            f"prefill_{PREFILL_TOKENS}_tok_s": PREFILL_TOKENS / prefill,
            "decode_batch_1_tok_s": decode,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
