#!/usr/bin/env python3
"""PyTorch eager baseline for selfroute's gpu_bench: same GGUF, same prompt ids.

The model is read from the GGUF that selfroute runs (SmolLM2-135M-Instruct Q4_1), every tensor
dequantised with gguf-py (`gguf.quants.dequantize`), the Q/K rows llama.cpp's converter permutes
put back in Hugging Face order, and the result loaded into `transformers.LlamaForCausalLM` with
eager attention in float16 (default) on CUDA. The weights are therefore exactly the quantised
ones, rounded once to f16: the same numbers our engine reads, in PyTorch's layout.

If transformers cannot be imported (or --impl plain is given) a minimal plain-PyTorch LLaMA with
a preallocated KV cache runs instead (same maths as HF eager: f32 RMSNorm and softmax,
rotate-half RoPE, GQA by repeating KV heads). The JSON says which ran: "impl".

Prompt ids: gpu_bench builds its prompt as PROMPT_TEXT (read here from
crates/wgpu/examples/gpu_bench.rs) encoded, repeated until long enough, and truncated to N
tokens. This script does the same with a `tokenizers` tokenizer built from the GGUF's own
vocabulary and merges, configured exactly like selfroute's Rust tokenizer (byte-level BPE,
pre-tokenizer Digits(individual_digits) + ByteLevel for `tokenizer.ggml.pre = smollm`). It needs
no network access (the Hub's tokenizer.json for HuggingFaceTB/SmolLM2-135M-Instruct has the same
vocabulary/merges/pre-tokenizer). It is self-checked against the reference ids below.

Measured (torch.cuda.synchronize() around every timing, one warm-up run, median of --repeats):
  prefill: one forward over the prompt (building the KV cache) plus the argmax of the last row;
  decode:  --decode-tokens greedy steps of one token each with the KV cache; by default every
           step reads its token id back to the host (int(tensor)), as selfroute's generation loop
           and gpu_bench do; --no-step-sync lets PyTorch queue steps asynchronously instead.

Correctness check (on by default, skipped with --no-check): the prompt "The capital of France
is" is run and compared with tests/reference/data/smollm2_q4_1.json (a float64 numpy forward of
the same dequantised weights): max |logit difference| over each position's reference top-20, and
the greedy continuation (--check-tokens steps) against the reference's. f16 may flip a near-tie
late in the continuation; the reference's top1-top2 margin at the first divergence is reported.

Prints one JSON line (also written to --json-out if given), e.g.
  {"torch_prefill_tok_s": ..., "torch_decode_tok_s": ..., "device": "NVIDIA H100 ...",
   "torch": "2.5.1", "transformers": "4.46.0", "impl": "transformers", ...}
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
GPU_BENCH_RS = ROOT / "crates/wgpu/examples/gpu_bench.rs"
REFERENCE_JSON = ROOT / "tests/reference/data/smollm2_q4_1.json"
# Used only if gpu_bench.rs cannot be read; keep equal to PROMPT_TEXT there.
PROMPT_TEXT_FALLBACK = (
    "Self-routing lets a small language model running in the browser decide, while it answers, "
    "whether it can solve a query itself or should hand the conversation to a larger model in the cloud. "
    "The decision is learned with reinforcement learning: a hierarchical reward prefers correct local answers, "
    "then correct cloud answers, and gives nothing for wrong ones. "
)
CHECK_PROMPT = "The capital of France is"
CHECK_PROMPT_IDS = [504, 3575, 282, 4649, 314]

TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4


def log(msg: str) -> None:
    print(f"[torch_decode_bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# The prompt text, as gpu_bench has it
# --------------------------------------------------------------------------

def rust_str_unescape(body: str) -> str:
    """Unescape the body of a Rust string literal (the escapes a prompt plausibly uses)."""
    out, i = [], 0
    simple = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", '"': '"', "'": "'"}
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt == "\n":  # line continuation: drop the newline and the next line's indentation
            i += 2
            while i < len(body) and body[i] in " \t\n\r":
                i += 1
        elif nxt in simple:
            out.append(simple[nxt])
            i += 2
        elif nxt == "u":  # \u{XXXX}
            end = body.index("}", i)
            out.append(chr(int(body[i + 3:end], 16)))
            i = end + 1
        else:
            raise ValueError(f"unsupported escape \\{nxt} in PROMPT_TEXT")
    return "".join(out)


def gpu_bench_prompt_text() -> tuple[str, str]:
    try:
        src = GPU_BENCH_RS.read_text(encoding="utf-8")
        m = re.search(r'const\s+PROMPT_TEXT\s*:\s*&str\s*=\s*"((?:[^"\\]|\\.)*)"\s*;', src, re.S)
        if m:
            return rust_str_unescape(m.group(1)), str(GPU_BENCH_RS.relative_to(ROOT))
    except OSError:
        pass
    log(f"warning: could not read PROMPT_TEXT from {GPU_BENCH_RS}; using this script's copy")
    return PROMPT_TEXT_FALLBACK, "torch_decode_bench.py (fallback copy)"


# --------------------------------------------------------------------------
# GGUF: metadata, tokenizer, weights
# --------------------------------------------------------------------------

def field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def tokenizer_from_gguf(reader):
    """A `tokenizers.Tokenizer` built like selfroute's (crates/core/src/tokenizer.rs)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    if field(reader, "tokenizer.ggml.model") != "gpt2":
        raise SystemExit("only byte-level BPE (tokenizer.ggml.model = gpt2) GGUFs are supported")
    tokens = field(reader, "tokenizer.ggml.tokens")
    merges = field(reader, "tokenizer.ggml.merges")
    types = field(reader, "tokenizer.ggml.token_type", [])
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    tok = Tokenizer(models.BPE(vocab, [tuple(m.split(" ", 1)) for m in merges]))
    pre = field(reader, "tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in ("default", "gpt2"):
        tok.pre_tokenizer = byte_level
    else:
        raise SystemExit(f"tokenizer.ggml.pre = {pre!r} is not handled by this script")
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t, ty in zip(tokens, types)
                            if ty == TOKEN_TYPE_CONTROL])
    tok.add_tokens([AddedToken(t, special=False) for t, ty in zip(tokens, types)
                    if ty == TOKEN_TYPE_USER_DEFINED])
    try:  # like selfroute's encode_literal: special-token strings are plain text
        tok.encode_special_tokens = True
    except AttributeError:
        pass
    return tok


def encode(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp convert's Q/K row permutation -> HF row order
    (same as tests/reference/make_reference.py)."""
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def load_gguf(path: Path):
    """(config dict, HF LlamaForCausalLM state dict of float32 numpy arrays, reader)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))
    arch = field(reader, "general.architecture")
    if arch != "llama":
        raise SystemExit(f"general.architecture = {arch!r}; this script handles llama GGUFs only")
    k = lambda name: f"{arch}.{name}"  # noqa: E731
    hidden = int(field(reader, k("embedding_length")))
    n_head = int(field(reader, k("attention.head_count")))
    n_kv = int(field(reader, k("attention.head_count_kv"), n_head))
    W: dict[str, np.ndarray] = {}
    types: dict[str, str] = {}
    for t in reader.tensors:
        a = dequantize(t.data, t.tensor_type)
        W[t.name] = np.asarray(a, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)])
        types[t.name] = t.tensor_type.name
    cfg = dict(
        vocab_size=int(W["token_embd.weight"].shape[0]),
        hidden_size=hidden,
        intermediate_size=int(field(reader, k("feed_forward_length"))),
        num_hidden_layers=int(field(reader, k("block_count"))),
        num_attention_heads=n_head,
        num_key_value_heads=n_kv,
        head_dim=int(field(reader, k("attention.key_length"), hidden // n_head)),
        rope_theta=float(field(reader, k("rope.freq_base"), 10000.0)),
        rms_norm_eps=float(field(reader, k("attention.layer_norm_rms_epsilon"))),
        max_position_embeddings=int(field(reader, k("context_length"))),
        tie_word_embeddings="output.weight" not in W,
        bos_token_id=field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=field(reader, "tokenizer.ggml.eos_token_id"),
    )
    sd = {"model.embed_tokens.weight": W.pop("token_embd.weight"),
          "model.norm.weight": W.pop("output_norm.weight")}
    if "output.weight" in W:
        sd["lm_head.weight"] = W.pop("output.weight")
    names = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
             "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    for i in range(cfg["num_hidden_layers"]):
        for g, h in names.items():
            w = W.pop(f"blk.{i}.{g}.weight")
            if g == "attn_q":
                w = unpermute(w, n_head)
            elif g == "attn_k":
                w = unpermute(w, n_kv)
            sd[f"model.layers.{i}.{h}.weight"] = w
    if W:
        raise SystemExit(f"GGUF tensors this script does not map: {sorted(W)[:8]}")
    quant = sorted(set(types.values()))
    return cfg, sd, reader, quant


# --------------------------------------------------------------------------
# Two implementations behind one interface: prefill(ids) -> logits[T, vocab]
# (all rows or the last), step(id_tensor) -> logits[1, vocab]
# --------------------------------------------------------------------------

class HfRunner:
    impl = "transformers"

    def __init__(self, cfg, sd, device, dtype):
        import transformers
        from transformers import LlamaConfig, LlamaForCausalLM

        self.version = transformers.__version__
        config = LlamaConfig(**cfg, attention_bias=False, mlp_bias=False, rope_scaling=None,
                             attn_implementation="eager")
        config._attn_implementation = "eager"
        with torch.device(device):
            model = LlamaForCausalLM(config)
        model = model.to(dtype=dtype).eval()
        state = {k: torch.tensor(v) for k, v in sd.items()}  # copies: GGUF F32 arrays are read-only
        if cfg["tie_word_embeddings"]:
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [m for m in missing if "rotary_emb" not in m]
        if missing or unexpected:
            raise SystemExit(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
        if cfg["tie_word_embeddings"]:
            model.tie_weights()
            assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        self.attn = getattr(model.config, "_attn_implementation", "?")
        if self.attn != "eager":
            raise SystemExit(f"attention implementation is {self.attn!r}, not eager")
        self.model = model
        self.device = device
        params = inspect.signature(model.forward).parameters
        # transformers <= 4.x: past_key_values; newer: cache.
        self.cache_kw = "past_key_values" if "past_key_values" in params else "cache"
        self.keep_kw = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params),
                            None)
        self.cache = None

    def _cache_of(self, out):
        for key in ("cache", "past_key_values"):
            c = getattr(out, key, None)
            if c is not None:
                return c
        raise RuntimeError("the model returned no KV cache")

    def prefill(self, ids: torch.Tensor, all_rows: bool = False) -> torch.Tensor:
        kw = {}
        if not all_rows and self.keep_kw:
            kw[self.keep_kw] = 1
        out = self.model(input_ids=ids[None], use_cache=True, **kw)
        self.cache = self._cache_of(out)
        logits = out.logits[0]
        return logits if all_rows else logits[-1:]

    def step(self, token: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=token.view(1, 1), use_cache=True, **{self.cache_kw: self.cache})
        self.cache = self._cache_of(out)
        return out.logits[0, -1:]


class PlainRunner:
    """Minimal LLaMA in plain PyTorch, eager ops, preallocated KV cache."""

    impl = "plain-torch"
    version = None
    attn = "eager (plain torch)"

    def __init__(self, cfg, sd, device, dtype, max_len: int):
        t = lambda a: torch.tensor(a, device=device, dtype=dtype)  # noqa: E731
        self.c = cfg
        self.dtype, self.device = dtype, device
        self.embed = t(sd["model.embed_tokens.weight"])
        self.lm_head = self.embed if cfg["tie_word_embeddings"] else t(sd["lm_head.weight"])
        self.norm = t(sd["model.norm.weight"])
        self.layers = []
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            L = {k: t(sd[p + k + ".weight"]) for k in (
                "input_layernorm", "post_attention_layernorm", "self_attn.q_proj",
                "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                "mlp.up_proj", "mlp.down_proj")}
            self.layers.append(L)
        hd = cfg["head_dim"]
        inv_freq = 1.0 / (cfg["rope_theta"] ** (
            torch.arange(0, hd, 2, dtype=torch.int64).to(device=device, dtype=torch.float32) / hd))
        pos = torch.arange(max_len, device=device, dtype=torch.float32)
        freqs = torch.outer(pos, inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.cos, self.sin = emb.cos().to(dtype), emb.sin().to(dtype)
        shape = (cfg["num_hidden_layers"], cfg["num_key_value_heads"], max_len, hd)
        self.k_cache = torch.zeros(shape, device=device, dtype=dtype)
        self.v_cache = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.pos = 0

    def _rms(self, x, w):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.c["rms_norm_eps"])
        return w * xf.to(self.dtype)

    @staticmethod
    def _rot_half(x):
        h = x.shape[-1] // 2
        return torch.cat([-x[..., h:], x[..., :h]], dim=-1)

    def _forward(self, ids: torch.Tensor, all_rows: bool) -> torch.Tensor:
        c = self.c
        nh, nkv, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        T, p0 = ids.shape[0], self.pos
        end = p0 + T
        if end > self.max_len:
            raise RuntimeError(f"KV cache of {self.max_len} positions is full")
        cos, sin = self.cos[p0:end], self.sin[p0:end]
        mask = None
        if T > 1:
            q_pos = torch.arange(p0, end, device=self.device)[:, None]
            k_pos = torch.arange(0, end, device=self.device)[None, :]
            mask = torch.zeros((T, end), device=self.device, dtype=torch.float32)
            mask = mask.masked_fill(k_pos > q_pos, float("-inf"))
        x = self.embed[ids]
        for li, L in enumerate(self.layers):
            h = self._rms(x, L["input_layernorm"])
            q = (h @ L["self_attn.q_proj"].T).view(T, nh, hd).transpose(0, 1)
            k = (h @ L["self_attn.k_proj"].T).view(T, nkv, hd).transpose(0, 1)
            v = (h @ L["self_attn.v_proj"].T).view(T, nkv, hd).transpose(0, 1)
            q = q * cos + self._rot_half(q) * sin
            k = k * cos + self._rot_half(k) * sin
            self.k_cache[li, :, p0:end] = k
            self.v_cache[li, :, p0:end] = v
            kk = self.k_cache[li, :, :end].repeat_interleave(nh // nkv, dim=0)
            vv = self.v_cache[li, :, :end].repeat_interleave(nh // nkv, dim=0)
            s = (q @ kk.transpose(1, 2)) * (1.0 / math.sqrt(hd))
            if mask is not None:
                s = s + mask
            a = torch.softmax(s, dim=-1, dtype=torch.float32).to(self.dtype)
            o = (a @ vv).transpose(0, 1).reshape(T, nh * hd)
            x = x + o @ L["self_attn.o_proj"].T
            h = self._rms(x, L["post_attention_layernorm"])
            g = torch.nn.functional.silu(h @ L["mlp.gate_proj"].T)
            x = x + (g * (h @ L["mlp.up_proj"].T)) @ L["mlp.down_proj"].T
        self.pos = end
        if not all_rows:
            x = x[-1:]
        return self._rms(x, self.norm) @ self.lm_head.T

    def prefill(self, ids, all_rows=False):
        self.pos = 0
        return self._forward(ids, all_rows)

    def step(self, token):
        return self._forward(token.view(1), False)


# --------------------------------------------------------------------------
# Timing and checks
# --------------------------------------------------------------------------

def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_once(runner, prompt: torch.Tensor, n_decode: int, device: str, step_sync: bool):
    """(prefill tok/s, decode tok/s, generated ids)."""
    sync(device)
    t0 = time.perf_counter()
    logits = runner.prefill(prompt)
    nxt = logits[-1].argmax()
    sync(device)
    t1 = time.perf_counter()
    out = []
    for _ in range(n_decode):
        logits = runner.step(nxt)
        nxt = logits[-1].argmax()
        if step_sync:
            out.append(int(nxt))  # host readback, as the generation loop does
        else:
            out.append(nxt)
    sync(device)
    t2 = time.perf_counter()
    ids = [int(t) for t in out]
    return len(prompt) / (t1 - t0), (n_decode / (t2 - t1)) if n_decode else float("nan"), ids


def greedy(runner, ids: list[int], n: int, device: str) -> list[int]:
    logits = runner.prefill(torch.tensor(ids, device=device))
    nxt = logits[-1].argmax()
    out = [int(nxt)]
    for _ in range(n - 1):
        nxt = runner.step(nxt)[-1].argmax()
        out.append(int(nxt))
    return out


def check_against_reference(runner, tok, device: str, n_tokens: int) -> dict:
    ids = encode(tok, CHECK_PROMPT)
    res: dict = {"check_prompt": CHECK_PROMPT, "check_prompt_ids": ids}
    if ids != CHECK_PROMPT_IDS:
        res["check_error"] = f"tokenizer gives {ids}, expected {CHECK_PROMPT_IDS}"
        return res
    logits = runner.prefill(torch.tensor(ids, device=device), all_rows=True).float().cpu()
    res["check_greedy_ids"] = greedy(runner, ids, n_tokens, device)
    if not REFERENCE_JSON.exists():
        res["check_reference"] = "missing (tests/reference/data/smollm2_q4_1.json)"
        return res
    ref = next(p for p in json.loads(REFERENCE_JSON.read_text())["prompts"] if p["name"] == "plain")
    assert ref["token_ids"] == ids
    diff = 0.0
    top1_same = True
    for pos in ref["positions"]:
        row = logits[pos["position"]]
        for tid, val in pos["top"]:
            diff = max(diff, abs(float(row[tid]) - val))
        top1_same &= int(row.argmax()) == pos["top"][0][0]
    ref_ids = ref["greedy"]["token_ids"][:n_tokens]
    got = res["check_greedy_ids"]
    first_diff = next((i for i, (a, b) in enumerate(zip(got, ref_ids)) if a != b), None)
    res.update({
        "check_reference": str(REFERENCE_JSON.relative_to(ROOT)),
        "check_max_abs_logit_diff_top20": round(diff, 5),
        "check_prompt_argmax_matches": top1_same,
        "check_reference_greedy_ids": ref_ids,
        "check_greedy_matches_reference": first_diff is None,
        "check_first_divergence": first_diff,
    })
    if first_diff is not None:
        res["check_reference_margin_at_divergence"] = ref["greedy"]["top1_top2_margin"][first_diff]
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--torch-device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--impl", default="auto", choices=["auto", "transformers", "plain"],
                    help="auto: transformers if it imports, else plain PyTorch")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--no-step-sync", action="store_true",
                    help="do not read each decoded id back to the host")
    ap.add_argument("--no-check", action="store_true", help="skip the reference check")
    ap.add_argument("--check-tokens", type=int, default=16)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()

    device = args.torch_device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--torch-device {device}, but torch {torch.__version__} sees no CUDA "
                         "device (a CPU-only wheel, or no NVIDIA driver); use --torch-device cpu "
                         "to try the script without a GPU")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)

    t = time.perf_counter()
    cfg, sd, reader, quant = load_gguf(Path(args.model))
    log(f"read + dequantised {args.model} ({'/'.join(quant)}) in {time.perf_counter() - t:.1f}s")
    tok = tokenizer_from_gguf(reader)
    text, text_source = gpu_bench_prompt_text()
    piece = encode(tok, text)
    prompt_ids: list[int] = []
    while len(prompt_ids) < args.prompt_tokens:
        prompt_ids.extend(piece)
    prompt_ids = prompt_ids[:args.prompt_tokens]

    max_len = max(args.prompt_tokens + args.decode_tokens, len(CHECK_PROMPT_IDS) + args.check_tokens) + 8
    t = time.perf_counter()
    runner = None
    transformers_error = None
    if args.impl in ("auto", "transformers"):
        try:
            runner = HfRunner(cfg, sd, device, dtype)
        except Exception as e:  # noqa: BLE001  (an ImportError, or a transformers/torch mismatch)
            if args.impl == "transformers":
                raise
            transformers_error = f"{type(e).__name__}: {e}"
            log(f"transformers unavailable ({transformers_error}); using plain PyTorch")
    if runner is None:
        runner = PlainRunner(cfg, sd, device, dtype, max_len)
    del sd
    load_s = time.perf_counter() - t
    log(f"{runner.impl} model on {device} in {args.dtype}, built in {load_s:.1f}s")

    result: dict = {}
    with torch.inference_mode():
        if not args.no_check:
            result.update(check_against_reference(runner, tok, device, args.check_tokens))
            log(f"check: greedy {result.get('check_greedy_ids')} "
                f"matches reference: {result.get('check_greedy_matches_reference')}, "
                f"max |logit diff| {result.get('check_max_abs_logit_diff_top20')}")
        prompt = torch.tensor(prompt_ids, device=device)
        step_sync = not args.no_step_sync
        log(f"warm-up, then {args.repeats} runs of {len(prompt_ids)}-token prefill + "
            f"{args.decode_tokens} decode steps")
        run_once(runner, prompt, min(args.decode_tokens, 8), device, step_sync)
        pre, dec = [], []
        for r in range(args.repeats):
            p, d, ids = run_once(runner, prompt, args.decode_tokens, device, step_sync)
            pre.append(p)
            dec.append(d)
            log(f"run {r + 1}: prefill {p:.1f} tok/s, decode {d:.1f} tok/s")

    if device.startswith("cuda"):
        dev_name = torch.cuda.get_device_name(torch.device(device))
    else:
        dev_name = f"cpu ({torch.get_num_threads()} threads)"
    out = {
        "torch_prefill_tok_s": statistics.median(pre),
        "torch_decode_tok_s": statistics.median(dec),
        "torch_decode_step_ms": 1e3 / statistics.median(dec),
        "device": dev_name,
        "torch": torch.__version__,
        "transformers": runner.version,
        "impl": runner.impl,
        "attn_implementation": runner.attn,
        "dtype": args.dtype,
        "step_sync": step_sync,
        "prompt_tokens": len(prompt_ids),
        "decode_tokens": args.decode_tokens,
        "repeats": args.repeats,
        "prompt_text_from": text_source,
        "tokenizer": "tokenizers BPE built from the GGUF vocabulary/merges (as selfroute's)",
        "prompt_ids_head": prompt_ids[:8],
        "weights_from": f"{Path(args.model).name} dequantised with gguf-py ({'/'.join(quant)}) to {args.dtype}",
        "load_s": load_s,
        **result,
    }
    if transformers_error:
        out["transformers_error"] = transformers_error
    line = json.dumps(out)
    print(line, flush=True)
    if args.json_out:
        Path(args.json_out).write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
