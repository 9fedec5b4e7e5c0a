"""Batched greedy generation with Hugging Face transformers, for `vigil check-gpu`.

Loads the HF folder vigil exported (the same weights, bf16), and for each batch size times
`generate` of NEW_TOKENS tokens after prompts of PROMPT_LEN tokens (the same token ids vigil's
benchmark uses), on cuda:0. Prints one JSON object per batch: {"batch", "seconds", "tokens"}.
Exits 3 when torch or transformers is missing, 4 when torch sees no GPU.
"""
import json
import sys
import time

try:
    import torch
    import transformers
except ImportError as e:
    print(f"missing: {e}", file=sys.stderr)
    sys.exit(3)


def main():
    folder, batches, prompt_len, new_tokens, vocab = (
        sys.argv[1],
        [int(b) for b in sys.argv[2].split(",")],
        int(sys.argv[3]),
        int(sys.argv[4]),
        int(sys.argv[5]),
    )
    if not torch.cuda.is_available():
        print("torch sees no GPU", file=sys.stderr)
        sys.exit(4)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.bfloat16).to("cuda:0")
    model.eval()
    print(json.dumps({"transformers": transformers.__version__, "torch": torch.__version__}), flush=True)
    for batch in batches:
        ids = torch.tensor(
            [[(s * 7919 + i * 104729) % vocab for i in range(prompt_len)] for s in range(batch)],
            device="cuda:0",
        )
        mask = torch.ones_like(ids)
        kwargs = dict(
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
        with torch.no_grad():
            model.generate(ids, **kwargs)  # warm-up
            torch.cuda.synchronize()
            started = time.perf_counter()
            out = model.generate(ids, **kwargs)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - started
        tokens = (out.shape[1] - prompt_len) * batch
        print(json.dumps({"batch": batch, "seconds": seconds, "tokens": tokens}), flush=True)


if __name__ == "__main__":
    main()
