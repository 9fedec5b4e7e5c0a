"""llama.cpp's greedy continuations of fixed prompts on a GGUF: the reference Vigil's CPU backend
is held to (`vigil/tests/e2e/llama_cpp_agreement.rs`, `cargo xtask bench-model`).

Usage: python3 llama_cpp_greedy.py MODEL.gguf PROMPTS.json TOKENS -> prints JSON
  {"llama_cpp_python": version, "continuations": [{"prompt": ..., "prompt_ids": [...], "ids": [...]}]}

Greedy is the argmax of each step's logits (no sampler), prompts tokenized without BOS as the
model's metadata asks (add_bos_token false), one sequence at a time.
"""

import json
import sys

import llama_cpp
import numpy as np
from llama_cpp import Llama


def last_logits(llm):
    """The logits of the last evaluated token (llama-cpp-python keeps `scores` only with
    logits_all, so they are read from the context)."""
    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def model_params_without_extra_buffers(default=llama_cpp.llama_cpp.llama_model_default_params):
    """llama.cpp's model parameters without extra buffer types (weight repacking): on CPUs with
    AMX, its AMX buffers crash on Q4_1 (a known upstream bug). `Llama` takes no argument for
    it, so its source of default parameters is replaced."""
    params = default()
    params.use_extra_bufts = False
    return params


def main():
    llama_cpp.llama_cpp.llama_model_default_params = model_params_without_extra_buffers
    path, prompts_file, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    prompts = json.load(open(prompts_file))
    llm = Llama(model_path=path, n_threads=2, n_threads_batch=2, n_ctx=512, n_batch=512, verbose=False)
    out = []
    for prompt in prompts:
        ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        llm.reset()
        llm.eval(ids)
        generated = []
        for _ in range(n):
            token = int(np.argmax(last_logits(llm)))
            generated.append(token)
            if token == llm.token_eos():
                break
            llm.eval([token])
        out.append({"prompt": prompt, "prompt_ids": ids, "ids": generated})
    json.dump({"llama_cpp_python": llama_cpp.__version__, "continuations": out}, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
