"""llama.cpp (through llama-cpp-python) on the same GGUF and the same prompt ids as
selfroute's cpu_bench: prefill tok/s for the prompt, then greedy decode tok/s. One JSON line.

usage: llama_cpp_bench.py MODEL.gguf PROMPT_IDS.json THREADS DECODE_TOKENS REPEATS
"""
import json
import statistics
import sys
import time

import numpy as np
from llama_cpp import Llama


def main():
    model, ids_path, threads, decode_tokens, repeats = sys.argv[1:6]
    threads, decode_tokens, repeats = int(threads), int(decode_tokens), int(repeats)
    prompt = json.load(open(ids_path))
    llm = Llama(model_path=model, n_ctx=1024, n_batch=512, n_threads=threads,
                n_threads_batch=threads, verbose=False)
    vocab = llm.n_vocab()

    def next_token():
        # Without logits_all, llama-cpp-python keeps no scores; read the context's last row.
        return int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,))))

    prefill, decode = [], []
    for _ in range(repeats):
        llm.reset()
        t = time.perf_counter()
        llm.eval(prompt)
        prefill.append(len(prompt) / (time.perf_counter() - t))
        nxt = next_token()
        t = time.perf_counter()
        for _ in range(decode_tokens):
            llm.eval([nxt])
            nxt = next_token()
        decode.append(decode_tokens / (time.perf_counter() - t))
    print(json.dumps({"prefill_tok_s": statistics.median(prefill),
                      "decode_tok_s": statistics.median(decode)}))


if __name__ == "__main__":
    main()
