#!/usr/bin/env python3
"""Independent Python/numpy reference for selfroute's Rust tests.

Everything here is written from the published model/format descriptions, NOT
from the Rust code, so that agreement between the two is meaningful:

* GGUF is read with the `gguf` package's reader and dequantised with its own
  numpy code (`gguf.quants.dequantize`).
* The llama forward pass uses the *Hugging Face* layout: Q/K rows of the GGUF
  are un-permuted back to HF order and RoPE is HF's "rotate half". (llama.cpp,
  and the Rust side, keep the permuted rows and rotate adjacent pairs.) As an
  internal cross-check this script also runs the llama.cpp convention and
  asserts that both agree.
* The tokenizer is a from-scratch byte-level BPE driven by the GGUF metadata
  (tokens + merges), with HF's pre-tokenizer for SmolLM2:
  Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False)].
* Chat templates are rendered with jinja2 the way transformers does
  (sandboxed env, trim_blocks + lstrip_blocks).

All forward passes are computed in float64 from the weights as stored (after
dequantisation / f16 / bf16 rounding), then rounded for the JSON files.

Outputs (under --out):
  smollm2_q4_1.json            logits top-20 per prompt position + 32 greedy steps
  tokenizer_cases.json         strings -> ids -> decoded text
  chat_template.json           raw template + rendered cases
  tiny_llama_f16/              HF llama, f16 safetensors + reference.json
  tiny_qwen2_bf16/             HF qwen2, bf16 safetensors + reference.json
  tiny_llama.gguf              llama.cpp-convention tiny GGUF (Q8_0/F16/F32)
  tiny_llama_gguf_reference.json
  quant_types.gguf + quant_types.json   one tensor per ggml type + dequantised values
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np
import regex
import jinja2
import jinja2.ext
import jinja2.sandbox
import gguf
from gguf import GGUFReader, GGUFWriter, GGMLQuantizationType as QT
from gguf.quants import dequantize, quantize


# --------------------------------------------------------------------------
# Deterministic JSON output
# --------------------------------------------------------------------------

def r6(x) -> float:
    """Round to 6 significant digits (used for logits)."""
    return float(f"{float(x):.6g}")


def f32_exact(x) -> float:
    """Shortest decimal that round-trips to the same float32.

    Parsing the printed number as f32 gives back exactly this value, so
    dequantisation tests can compare bit-exactly (at most 9 significant digits).
    """
    return float(str(np.float32(x)))


def _is_scalar(v) -> bool:
    return not isinstance(v, (dict, list))


def dumps(obj, indent: int = 0) -> str:
    """Stable, diff-friendly JSON: dicts one key per line, lists of scalars on
    one line, lists of lists one inner list per line."""
    pad, pad1 = "  " * indent, "  " * (indent + 1)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{pad1}{json.dumps(k, ensure_ascii=False)}: {dumps(v, indent + 1)}"
                 for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list):
        if all(_is_scalar(v) for v in obj):
            return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(", ", ": "))
        items = [pad1 + dumps(v, indent + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    assert not isinstance(obj, (np.generic, np.ndarray)), f"numpy value leaked into JSON: {obj!r}"
    return json.dumps(obj, ensure_ascii=False, allow_nan=False)


def write_json(path: Path, obj) -> None:
    path.write_text(dumps(obj) + "\n", encoding="utf-8")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------
# Byte-level BPE tokenizer (GPT-2 style), built from GGUF metadata
# --------------------------------------------------------------------------

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode char map."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


BYTE_ENCODER = bytes_to_unicode()
BYTE_DECODER = {c: b for b, c in BYTE_ENCODER.items()}

# HF ByteLevel(use_regex=True) pattern (GPT-2). Note the final `|\s+`, which
# llama.cpp leaves implicit.
GPT2_PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
# HF Digits(individual_digits=True) splits on Rust `char::is_numeric`, which
# is Unicode N* (Nd/Nl/No) == regex \p{N}; each such char becomes its own piece.
DIGIT_PATTERN = regex.compile(r"\p{N}")


class BpeTokenizer:
    def __init__(self, tokens: list[str], merges: list[str], token_types: list[int]):
        self.tokens = tokens
        self.vocab = {t: i for i, t in enumerate(tokens)}
        # Merge rank: lower = applied first. Merges are "left right" with a
        # single ASCII space (byte-level symbols never contain a raw space).
        self.ranks: dict[tuple[str, str], int] = {}
        for i, m in enumerate(merges):
            a, b = m.split(" ")
            self.ranks[(a, b)] = i
        # Control tokens (type 3) are matched literally in the input text
        # before any pre-tokenisation. Longest first so the alternation picks
        # the longest token at a given start (HF uses leftmost-longest).
        self.control = {t: i for i, (t, ty) in enumerate(zip(tokens, token_types)) if ty == 3}
        alts = sorted(self.control, key=lambda s: (-len(s), s))
        self.control_re = regex.compile("|".join(regex.escape(s) for s in alts)) if alts else None
        self.cache: dict[str, list[int]] = {}

    @staticmethod
    def pre_tokenize(text: str) -> list[str]:
        pieces = []
        # Step 1: Digits(individual_digits=True) -- isolate every numeric char.
        last = 0
        for m in DIGIT_PATTERN.finditer(text):
            if m.start() > last:
                pieces.append(text[last:m.start()])
            pieces.append(m.group())
            last = m.end()
        if last < len(text):
            pieces.append(text[last:])
        # Step 2: the GPT-2 regex on each piece separately.
        out = []
        for p in pieces:
            out.extend(m.group() for m in GPT2_PATTERN.finditer(p))
        return out

    def bpe(self, word: str) -> list[int]:
        """Merge the byte-level symbols of one pre-token by merge rank."""
        if word in self.cache:
            return self.cache[word]
        syms = list(word)
        while len(syms) > 1:
            best, best_rank = None, None
            for i in range(len(syms) - 1):
                r = self.ranks.get((syms[i], syms[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = (syms[i], syms[i + 1]), r
            if best is None:
                break
            merged, i = [], 0
            while i < len(syms):
                if i < len(syms) - 1 and (syms[i], syms[i + 1]) == best:
                    merged.append(syms[i] + syms[i + 1])
                    i += 2
                else:
                    merged.append(syms[i])
                    i += 1
            syms = merged
        ids = [self.vocab[s] for s in syms]  # every single byte symbol is in vocab
        self.cache[word] = ids
        return ids

    def encode_plain(self, text: str) -> list[int]:
        ids = []
        for piece in self.pre_tokenize(text):
            word = "".join(BYTE_ENCODER[b] for b in piece.encode("utf-8"))
            ids.extend(self.bpe(word))
        return ids

    def encode(self, text: str) -> list[int]:
        """Control tokens found literally in `text` map to their ids; the
        text between them is BPE-encoded independently."""
        if self.control_re is None:
            return self.encode_plain(text)
        ids, last = [], 0
        for m in self.control_re.finditer(text):
            ids.extend(self.encode_plain(text[last:m.start()]))
            ids.append(self.control[m.group()])
            last = m.end()
        ids.extend(self.encode_plain(text[last:]))
        return ids

    def decode(self, ids: list[int]) -> str:
        """Control tokens are rendered as their literal text (HF decode with
        skip_special_tokens=False); invalid UTF-8 becomes U+FFFD."""
        out = bytearray()
        for i in ids:
            t = self.tokens[i]
            if t in self.control:
                out += t.encode("utf-8")
            else:
                out += bytes(BYTE_DECODER[c] for c in t)
        return out.decode("utf-8", errors="replace")


def field_value(reader: GGUFReader, key: str):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def tokenizer_from_gguf(reader: GGUFReader) -> BpeTokenizer:
    assert field_value(reader, "tokenizer.ggml.model") == "gpt2"
    return BpeTokenizer(field_value(reader, "tokenizer.ggml.tokens"),
                        field_value(reader, "tokenizer.ggml.merges"),
                        field_value(reader, "tokenizer.ggml.token_type"))


# --------------------------------------------------------------------------
# Chat template rendering (as transformers does it)
# --------------------------------------------------------------------------

def render_chat(template: str, messages, add_generation_prompt: bool, **special) -> str:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])

    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)

    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=add_generation_prompt, **special)


# --------------------------------------------------------------------------
# Llama / Qwen2 forward pass (HF convention), float64
# --------------------------------------------------------------------------

def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp convert's Q/K row permutation -> HF row order."""
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf's permute (HF -> GGUF row order)."""
    rows, cols = w.shape
    return w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_tables(n_pos: int, head_dim: int, theta: float):
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    freqs = np.arange(n_pos, dtype=np.float64)[:, None] * inv_freq[None, :]  # [T, hd/2]
    return np.cos(freqs), np.sin(freqs)


def rope_rotate_half(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """HF RoPE: pairs (i, i + hd/2). x: [heads, T, hd]."""
    c = np.concatenate([cos, cos], axis=-1)
    s = np.concatenate([sin, sin], axis=-1)
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * c + rot * s


def rope_interleaved(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """llama.cpp "normal" RoPE: adjacent pairs (2i, 2i+1). Used only for the
    self-check against the permuted GGUF layout."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


class Model:
    """Weights in float64, HF orientation ([out, in]) and HF Q/K row order."""

    def __init__(self, cfg: dict, embed, layers, norm, lm_head):
        self.cfg = cfg          # n_head, n_kv, head_dim, theta, eps
        self.embed = embed      # [vocab, hidden]
        self.layers = layers    # list of dicts: q,k,v,o,gate,up,down,attn_norm,ffn_norm,(q_b,k_b,v_b)
        self.norm = norm
        self.lm_head = lm_head  # [vocab, hidden]

    def forward(self, ids, last_only=False, interleaved_rope=False) -> np.ndarray:
        c = self.cfg
        nh, nkv, hd = c["n_head"], c["n_kv"], c["head_dim"]
        T = len(ids)
        x = self.embed[np.asarray(ids)]
        cos, sin = rope_tables(T, hd, c["theta"])
        rope = rope_interleaved if interleaved_rope else rope_rotate_half
        causal = np.triu(np.full((T, T), -np.inf), k=1)
        for L in self.layers:
            h = rms_norm(x, L["attn_norm"], c["eps"])
            q, k, v = h @ L["q"].T, h @ L["k"].T, h @ L["v"].T
            if "q_b" in L:
                q, k, v = q + L["q_b"], k + L["k_b"], v + L["v_b"]
            q = q.reshape(T, nh, hd).transpose(1, 0, 2)
            k = k.reshape(T, nkv, hd).transpose(1, 0, 2)
            v = v.reshape(T, nkv, hd).transpose(1, 0, 2)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            # GQA: query head h uses kv head h // (nh / nkv)
            k = np.repeat(k, nh // nkv, axis=0)
            v = np.repeat(v, nh // nkv, axis=0)
            s = q @ k.transpose(0, 2, 1) / math.sqrt(hd) + causal
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            p = s / s.sum(axis=-1, keepdims=True)
            o = (p @ v).transpose(1, 0, 2).reshape(T, nh * hd)
            x = x + o @ L["o"].T
            h = rms_norm(x, L["ffn_norm"], c["eps"])
            g = h @ L["gate"].T
            x = x + ((g / (1.0 + np.exp(-g))) * (h @ L["up"].T)) @ L["down"].T
        if last_only:
            x = x[-1:]
        x = rms_norm(x, self.norm, c["eps"])
        return x @ self.lm_head.T


def gguf_tensors(reader: GGUFReader) -> dict[str, np.ndarray]:
    """Dequantise every tensor to float32, numpy shape = reversed GGUF dims."""
    out = {}
    for t in reader.tensors:
        a = dequantize(t.data, t.tensor_type)
        out[t.name] = np.asarray(a, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)])
    return out


def llama_from_gguf(reader: GGUFReader, keep_permuted=False) -> Model:
    arch = field_value(reader, "general.architecture")
    assert arch == "llama", arch
    n_layer = field_value(reader, "llama.block_count")
    nh = field_value(reader, "llama.attention.head_count")
    nkv = field_value(reader, "llama.attention.head_count_kv")
    hidden = field_value(reader, "llama.embedding_length")
    cfg = dict(n_head=nh, n_kv=nkv, head_dim=hidden // nh,
               theta=float(field_value(reader, "llama.rope.freq_base")),
               eps=float(field_value(reader, "llama.attention.layer_norm_rms_epsilon")))
    W = gguf_tensors(reader)
    f64 = lambda a: a.astype(np.float64)
    layers = []
    for i in range(n_layer):
        p = f"blk.{i}."
        q, k = W[p + "attn_q.weight"], W[p + "attn_k.weight"]
        if not keep_permuted:
            q, k = unpermute(q, nh), unpermute(k, nkv)
        layers.append(dict(
            q=f64(q), k=f64(k), v=f64(W[p + "attn_v.weight"]), o=f64(W[p + "attn_output.weight"]),
            gate=f64(W[p + "ffn_gate.weight"]), up=f64(W[p + "ffn_up.weight"]),
            down=f64(W[p + "ffn_down.weight"]),
            attn_norm=f64(W[p + "attn_norm.weight"]), ffn_norm=f64(W[p + "ffn_norm.weight"])))
    embed = f64(W["token_embd.weight"])
    # Tied embeddings when there is no output.weight (SmolLM2).
    lm_head = f64(W["output.weight"]) if "output.weight" in W else embed
    return Model(cfg, embed, layers, f64(W["output_norm.weight"]), lm_head)


def top_k(logits: np.ndarray, k: int):
    # Stable sort on (-logit, id): ties broken by lower token id.
    order = np.lexsort((np.arange(len(logits)), -logits))[:k]
    return [[int(i), r6(logits[i])] for i in order]


def logsumexp(v: np.ndarray) -> float:
    m = v.max()
    return float(m + np.log(np.exp(v - m).sum()))


# --------------------------------------------------------------------------
# (a) SmolLM2 Q4_1 reference
# --------------------------------------------------------------------------

def make_smollm(model_path: Path, out: Path, reader: GGUFReader, tok: BpeTokenizer, template: str):
    t0 = time.time()
    model = llama_from_gguf(reader)
    print(f"  loaded + dequantised in {time.time() - t0:.1f}s", flush=True)

    assert tok.encode("The capital of France is") == [504, 3575, 282, 4649, 314]

    chat_messages = [{"role": "user", "content": "What is 7 + 5? Answer with just the number."}]
    chat_text = render_chat(template, chat_messages, True,
                            bos_token="<|im_start|>", eos_token="<|im_end|>")
    prompts = [
        ("plain", "The capital of France is", None),
        ("chat", chat_text, {"messages": chat_messages, "add_generation_prompt": True}),
        ("mixed", "In 2023, the café on Rue de l'Église sold 1,250 croissants.\n"
                  "Price: €3.50 each!", None),
    ]

    # Self-check of the layout claim: llama.cpp convention (permuted rows +
    # interleaved RoPE) must give the same logits as HF convention.
    permuted = llama_from_gguf(reader, keep_permuted=True)
    ids0 = tok.encode(prompts[0][1])
    d = np.abs(model.forward(ids0) - permuted.forward(ids0, interleaved_rope=True)).max()
    assert d < 1e-6, f"permuted/interleaved vs HF layout mismatch: {d}"
    del permuted

    entries = []
    for name, text, chat in prompts:
        t1 = time.time()
        ids = tok.encode(text)
        logits = model.forward(ids)
        positions = [{"position": p, "logsumexp": r6(logsumexp(logits[p])),
                      "top": top_k(logits[p], 20)} for p in range(len(ids))]
        # 32 greedy argmax steps, full recompute each step, no stop on eos.
        seq, greedy, margins = list(ids), [], []
        nxt_logits = logits[-1]
        for step in range(32):
            if step > 0:
                nxt_logits = model.forward(seq, last_only=True)[0]
            top2 = top_k(nxt_logits, 2)
            nxt = top2[0][0]
            greedy.append(nxt)
            # top1 - top2 gap: tests may stop comparing after a near-tie.
            margins.append(r6(nxt_logits[top2[0][0]] - nxt_logits[top2[1][0]]))
            seq.append(nxt)
        entry = {"name": name, "text": text}
        if chat is not None:
            entry["chat"] = chat
        entry.update({"token_ids": ids, "positions": positions,
                      "greedy": {"n": 32, "token_ids": greedy, "text": tok.decode(greedy),
                                 "top1_top2_margin": margins}})
        entries.append(entry)
        print(f"  prompt {name!r}: {len(ids)} tokens, greedy {tok.decode(greedy)!r} "
              f"({time.time() - t1:.1f}s)", flush=True)

    write_json(out / "smollm2_q4_1.json", {
        "model": {"file": model_path.name, "sha256": sha256_file(model_path)},
        "notes": ("Logits computed in float64 from gguf.quants-dequantised weights (HF layout: "
                  "Q/K rows un-permuted, rotate-half RoPE), rounded to 6 significant digits. "
                  "top: 20 highest [token_id, logit], descending, ties by lower id. greedy: 32 "
                  "argmax steps, no eos stop; text decoded with control tokens shown literally."),
        "prompts": entries,
    })
    return entries


# --------------------------------------------------------------------------
# (b) tokenizer cases, (c) chat template
# --------------------------------------------------------------------------

TOKENIZER_CASES = [
    "",
    "Hello world",
    "The capital of France is",
    "12345",
    "3.14",
    "a  b   c",
    "tab\there\t\tdouble",
    "line1\n\nline2",
    "\n\n",
    " leading space",
    "trailing spaces   ",
    "don't",
    "I'll say it's 'quoted'",
    "café naïve",
    "日本語のテキスト",
    "emoji 😀👍🏽!",
    "x<|im_start|>y",
    "<|im_start|>user\nHi<|im_end|>\n",
    "Version 2.0.1 costs $1,299.99 (½ price, ²)",
]


def make_tokenizer_cases(out: Path, tok: BpeTokenizer):
    cases, surprises = [], []
    for s in TOKENIZER_CASES:
        ids = tok.encode(s)
        dec = tok.decode(ids)
        if dec != s:
            surprises.append(s)
        cases.append({"text": s, "token_ids": ids,
                      "tokens": [tok.tokens[i] for i in ids], "decoded": dec})
    write_json(out / "tokenizer_cases.json", {
        "notes": ("Pure-Python byte-level BPE from GGUF tokens+merges; pre-tokenizer = "
                  "Digits(individual_digits) then GPT-2 regex; control tokens (type 3) matched "
                  "literally first. tokens = byte-level (GPT-2 unicode) token strings."),
        "cases": cases,
    })
    return surprises


def make_chat_template(out: Path, tok: BpeTokenizer, template: str):
    cases_in = [
        ([{"role": "user", "content": "Hello!"}], True),
        ([{"role": "system", "content": "You are a pirate."},
          {"role": "user", "content": "Where is the treasure?"}], True),
        ([{"role": "user", "content": "What is 2+2?"},
          {"role": "assistant", "content": "4"},
          {"role": "user", "content": "And times 3?"}], True),
        ([{"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Hello! How can I help?"}], False),
        ([{"role": "user", "content": "Line 1\nLine 2\n\n\tTabbed \"quotes\" & <tags> "
                                      "{{ not jinja }} {% raw %} 'single' café 😀 <|im_end|>"}],
         True),
    ]
    cases = []
    for messages, agp in cases_in:
        rendered = render_chat(template, messages, agp,
                               bos_token="<|im_start|>", eos_token="<|im_end|>")
        cases.append({"messages": messages, "add_generation_prompt": agp,
                      "rendered": rendered, "token_ids": tok.encode(rendered)})
    write_json(out / "chat_template.json", {
        "notes": ("Rendered with jinja2 ImmutableSandboxedEnvironment(trim_blocks=True, "
                  "lstrip_blocks=True) like transformers; token_ids with control tokens split out."),
        "template": template,
        "cases": cases,
    })


# --------------------------------------------------------------------------
# (d) tiny HF safetensors models
# --------------------------------------------------------------------------

def f32_to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even f32 -> bf16 (no NaNs in our data)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    u = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
    return (u >> np.uint32(16)).astype(np.uint16)


def bf16_bits_to_f32(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << np.uint32(16)).view(np.float32)


def write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple, bytes]]) -> None:
    """Minimal safetensors writer: u64 LE header length, JSON header
    (space-padded to 8 bytes), raw little-endian data. Tensors sorted by name."""
    header = {"__metadata__": {"format": "pt"}}
    blobs, off = [], 0
    for name in sorted(tensors):
        dtype, shape, data = tensors[name]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)


TINY = dict(vocab=256, hidden=64, inter=128, layers=2, n_head=4, n_kv=2)
TINY_IDS = [1, 17, 200, 45, 99, 3, 128, 255, 0, 64, 12, 77]


def random_hf_weights(seed: int, *, qkv_bias: bool, tied: bool) -> dict[str, np.ndarray]:
    """float32 weights with HF names. Linear weights ~ N(0, 1/in) so that
    activations and logits are O(1); norms ~ 1 + N(0, 0.1^2)."""
    rng = np.random.default_rng(seed)
    V, H, I, nh, nkv = TINY["vocab"], TINY["hidden"], TINY["inter"], TINY["n_head"], TINY["n_kv"]
    hd = H // nh
    lin = lambda o, i: (rng.standard_normal((o, i)) / math.sqrt(i)).astype(np.float32)
    norm = lambda n: (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)
    w = {"model.embed_tokens.weight": (rng.standard_normal((V, H)) / math.sqrt(H)).astype(np.float32)}
    for i in range(TINY["layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(H)
        w[p + "self_attn.q_proj.weight"] = lin(nh * hd, H)
        w[p + "self_attn.k_proj.weight"] = lin(nkv * hd, H)
        w[p + "self_attn.v_proj.weight"] = lin(nkv * hd, H)
        if qkv_bias:
            w[p + "self_attn.q_proj.bias"] = (0.2 * rng.standard_normal(nh * hd)).astype(np.float32)
            w[p + "self_attn.k_proj.bias"] = (0.2 * rng.standard_normal(nkv * hd)).astype(np.float32)
            w[p + "self_attn.v_proj.bias"] = (0.2 * rng.standard_normal(nkv * hd)).astype(np.float32)
        w[p + "self_attn.o_proj.weight"] = lin(H, nh * hd)
        w[p + "post_attention_layernorm.weight"] = norm(H)
        w[p + "mlp.gate_proj.weight"] = lin(I, H)
        w[p + "mlp.up_proj.weight"] = lin(I, H)
        w[p + "mlp.down_proj.weight"] = lin(H, I)
    w["model.norm.weight"] = norm(H)
    if not tied:
        w["lm_head.weight"] = lin(V, H)
    return w


def model_from_hf(w: dict[str, np.ndarray], theta: float, eps: float) -> Model:
    f64 = lambda n: w[n].astype(np.float64)
    layers = []
    for i in range(TINY["layers"]):
        p = f"model.layers.{i}."
        L = dict(q=f64(p + "self_attn.q_proj.weight"), k=f64(p + "self_attn.k_proj.weight"),
                 v=f64(p + "self_attn.v_proj.weight"), o=f64(p + "self_attn.o_proj.weight"),
                 gate=f64(p + "mlp.gate_proj.weight"), up=f64(p + "mlp.up_proj.weight"),
                 down=f64(p + "mlp.down_proj.weight"),
                 attn_norm=f64(p + "input_layernorm.weight"),
                 ffn_norm=f64(p + "post_attention_layernorm.weight"))
        if p + "self_attn.q_proj.bias" in w:
            L.update(q_b=f64(p + "self_attn.q_proj.bias"), k_b=f64(p + "self_attn.k_proj.bias"),
                     v_b=f64(p + "self_attn.v_proj.bias"))
        layers.append(L)
    embed = f64("model.embed_tokens.weight")
    lm_head = f64("lm_head.weight") if "lm_head.weight" in w else embed
    cfg = dict(n_head=TINY["n_head"], n_kv=TINY["n_kv"], head_dim=TINY["hidden"] // TINY["n_head"],
               theta=theta, eps=eps)
    return Model(cfg, embed, layers, f64("model.norm.weight"), lm_head)


def logits_json(logits: np.ndarray):
    return [[r6(v) for v in row] for row in logits]


def make_tiny_hf(out: Path):
    common = {
        "vocab_size": TINY["vocab"], "hidden_size": TINY["hidden"],
        "intermediate_size": TINY["inter"], "num_hidden_layers": TINY["layers"],
        "num_attention_heads": TINY["n_head"], "num_key_value_heads": TINY["n_kv"],
        "max_position_embeddings": 128, "hidden_act": "silu", "initializer_range": 0.02,
        "bos_token_id": 1, "eos_token_id": 2, "use_cache": True, "attention_dropout": 0.0,
    }
    specs = [
        ("tiny_llama_f16", 1001, dict(
            common, architectures=["LlamaForCausalLM"], model_type="llama",
            head_dim=TINY["hidden"] // TINY["n_head"], rope_theta=10000.0, rms_norm_eps=1e-5,
            rope_scaling=None, attention_bias=False, mlp_bias=False, pretraining_tp=1,
            tie_word_embeddings=False, torch_dtype="float16")),
        ("tiny_qwen2_bf16", 2002, dict(
            common, architectures=["Qwen2ForCausalLM"], model_type="qwen2",
            rope_theta=1000000.0, rms_norm_eps=1e-6, rope_scaling=None,
            use_sliding_window=False, sliding_window=128, max_window_layers=2,
            tie_word_embeddings=True, torch_dtype="bfloat16")),
    ]
    for dirname, seed, config in specs:
        d = out / dirname
        d.mkdir(parents=True, exist_ok=True)
        is_bf16 = config["torch_dtype"] == "bfloat16"
        w32 = random_hf_weights(seed, qkv_bias=config["model_type"] == "qwen2",
                                tied=config["tie_word_embeddings"])
        stored, tensors = {}, {}
        for name, a in w32.items():
            if is_bf16:
                bits = f32_to_bf16_bits(a)
                stored[name] = bf16_bits_to_f32(bits)
                tensors[name] = ("BF16", a.shape, bits.astype("<u2").tobytes())
            else:
                h = a.astype(np.float16)
                stored[name] = h.astype(np.float32)
                tensors[name] = ("F16", a.shape, h.astype("<f2").tobytes())
        write_safetensors(d / "model.safetensors", tensors)
        (d / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        # Reference from the weights AS STORED (after f16/bf16 rounding).
        m = model_from_hf(stored, config["rope_theta"], config["rms_norm_eps"])
        logits = m.forward(TINY_IDS)
        write_json(d / "reference.json", {
            "notes": ("float64 numpy forward from the stored (rounded) weights; HF rotate-half "
                      "RoPE, GQA, SwiGLU, RMSNorm. logits[position][token], 6 significant digits."),
            "token_ids": TINY_IDS,
            "argmax": [int(i) for i in logits.argmax(axis=-1)],
            "logits": logits_json(logits),
        })


# --------------------------------------------------------------------------
# (e) tiny GGUF in llama.cpp convention
# --------------------------------------------------------------------------

# Byte values that never occur in valid UTF-8; dropped from the tiny vocab so
# 3 control + 243 bytes + 10 merged tokens fit in 256 ids while still being
# able to encode any valid UTF-8 string.
INVALID_UTF8_BYTES = {0xC0, 0xC1} | set(range(0xF5, 0x100))
TINY_MERGES = ["Ġ t", "h e", "Ġt he", "i n", "e r", "Ġ a", "o n", "r e", "a t", "Ġ s"]
TINY_CONTROL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def tiny_gguf_vocab():
    tokens = list(TINY_CONTROL)
    tokens += [BYTE_ENCODER[b] for b in range(256) if b not in INVALID_UTF8_BYTES]
    tokens += [m.replace(" ", "") for m in TINY_MERGES]
    assert len(tokens) == 256 and len(set(tokens)) == 256
    types = [3] * len(TINY_CONTROL) + [1] * (len(tokens) - len(TINY_CONTROL))
    return tokens, types


def make_tiny_gguf(out: Path, template: str):
    V, H, I, nh, nkv = TINY["vocab"], TINY["hidden"], TINY["inter"], TINY["n_head"], TINY["n_kv"]
    w = random_hf_weights(3003, qkv_bias=False, tied=False)
    path = out / "tiny_llama.gguf"
    wr = GGUFWriter(str(path), "llama")
    wr.add_name("selfroute tiny llama test model")
    wr.add_context_length(128)
    wr.add_embedding_length(H)
    wr.add_block_count(TINY["layers"])
    wr.add_feed_forward_length(I)
    wr.add_head_count(nh)
    wr.add_head_count_kv(nkv)
    wr.add_rope_freq_base(10000.0)
    wr.add_layer_norm_rms_eps(1e-5)
    wr.add_rope_dimension_count(H // nh)
    wr.add_vocab_size(V)
    wr.add_file_type(7)  # LLAMA_FTYPE_MOSTLY_Q8_0
    wr.add_quantization_version(2)
    tokens, types = tiny_gguf_vocab()
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre("smollm")
    wr.add_token_list(tokens)
    wr.add_token_types(types)
    wr.add_token_merges(TINY_MERGES)
    wr.add_bos_token_id(1)
    wr.add_eos_token_id(2)
    wr.add_unk_token_id(0)
    wr.add_pad_token_id(2)
    wr.add_add_bos_token(False)
    wr.add_chat_template(template)

    q8 = lambda a: quantize(a, QT.Q8_0)
    wr.add_tensor("token_embd.weight", w["model.embed_tokens.weight"].astype(np.float16))
    wr.add_tensor("output_norm.weight", w["model.norm.weight"])
    wr.add_tensor("output.weight", q8(w["lm_head.weight"]), raw_dtype=QT.Q8_0)
    for i in range(TINY["layers"]):
        p, g = f"model.layers.{i}.", f"blk.{i}."
        wr.add_tensor(g + "attn_norm.weight", w[p + "input_layernorm.weight"])
        # Q/K rows permuted exactly like llama.cpp's convert script.
        wr.add_tensor(g + "attn_q.weight", q8(permute(w[p + "self_attn.q_proj.weight"], nh)), raw_dtype=QT.Q8_0)
        wr.add_tensor(g + "attn_k.weight", q8(permute(w[p + "self_attn.k_proj.weight"], nkv)), raw_dtype=QT.Q8_0)
        wr.add_tensor(g + "attn_v.weight", q8(w[p + "self_attn.v_proj.weight"]), raw_dtype=QT.Q8_0)
        wr.add_tensor(g + "attn_output.weight", q8(w[p + "self_attn.o_proj.weight"]), raw_dtype=QT.Q8_0)
        wr.add_tensor(g + "ffn_norm.weight", w[p + "post_attention_layernorm.weight"])
        wr.add_tensor(g + "ffn_gate.weight", q8(w[p + "mlp.gate_proj.weight"]), raw_dtype=QT.Q8_0)
        wr.add_tensor(g + "ffn_up.weight", q8(w[p + "mlp.up_proj.weight"]), raw_dtype=QT.Q8_0)
        wr.add_tensor(g + "ffn_down.weight", q8(w[p + "mlp.down_proj.weight"]), raw_dtype=QT.Q8_0)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()

    # Reference: read the file back, dequantise what is stored, un-permute.
    reader = GGUFReader(str(path))
    m = llama_from_gguf(reader)
    logits = m.forward(TINY_IDS)
    # Cross-check: llama.cpp convention on the stored rows gives the same.
    mp = llama_from_gguf(reader, keep_permuted=True)
    assert np.abs(logits - mp.forward(TINY_IDS, interleaved_rope=True)).max() < 1e-9
    tok = tokenizer_from_gguf(reader)
    tok_cases = []
    for s in ["the cat sat on the mat", "Hello, world!", "in 2024: naïve 😀",
              "<|im_start|>user\nthere<|im_end|>\n", ""]:
        ids = tok.encode(s)
        assert tok.decode(ids) == s
        tok_cases.append({"text": s, "token_ids": ids})
    write_json(out / "tiny_llama_gguf_reference.json", {
        "file": path.name,
        "sha256": sha256_file(path),
        "notes": ("float64 numpy forward from the dequantised stored weights, Q/K un-permuted to "
                  "HF order + rotate-half RoPE (checked equal to permuted + interleaved RoPE). "
                  "logits[position][token], 6 significant digits."),
        "token_ids": TINY_IDS,
        "argmax": [int(i) for i in logits.argmax(axis=-1)],
        "logits": logits_json(logits),
        "tokenizer_cases": tok_cases,
    })


# --------------------------------------------------------------------------
# (f) one tensor per quantisation type
# --------------------------------------------------------------------------

def random_q4_k_blocks(rng, n_blocks: int) -> np.ndarray:
    # block_q4_K: f16 d, f16 dmin, 12 bytes packed 6-bit scales/mins, 128 bytes 4-bit quants
    d = rng.uniform(0.0005, 0.004, n_blocks).astype(np.float16)
    dmin = rng.uniform(0.0005, 0.004, n_blocks).astype(np.float16)
    scales = rng.integers(0, 256, (n_blocks, 12), dtype=np.uint8)
    qs = rng.integers(0, 256, (n_blocks, 128), dtype=np.uint8)
    return np.concatenate([d.view(np.uint8).reshape(n_blocks, 2), dmin.view(np.uint8).reshape(n_blocks, 2),
                           scales, qs], axis=1)


def random_q6_k_blocks(rng, n_blocks: int) -> np.ndarray:
    # block_q6_K: 128 bytes ql, 64 bytes qh, 16 int8 scales, f16 d
    ql = rng.integers(0, 256, (n_blocks, 128), dtype=np.uint8)
    qh = rng.integers(0, 256, (n_blocks, 64), dtype=np.uint8)
    scales = rng.integers(-64, 64, (n_blocks, 16), dtype=np.int8).view(np.uint8)
    d = rng.uniform(0.0005, 0.004, n_blocks).astype(np.float16)
    return np.concatenate([ql, qh, scales, d.view(np.uint8).reshape(n_blocks, 2)], axis=1)


def make_quant_types(out: Path):
    rng = np.random.default_rng(4004)
    rows, cols = 4, 256
    path = out / "quant_types.gguf"
    wr = GGUFWriter(str(path), "llama")  # arch key only; the file holds no model
    wr.add_name("selfroute quant type test tensors")
    made = []
    for qt in [QT.F32, QT.F16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q4_K, QT.Q6_K]:
        name = qt.name.lower()
        src = rng.standard_normal((rows, cols)).astype(np.float32)
        if qt == QT.F32:
            data, how = src, "random normal"
        elif qt == QT.F16:
            data, how = src.astype(np.float16), "random normal cast to f16"
        elif qt in (QT.Q8_0, QT.Q4_0, QT.Q4_1):
            data, how = quantize(src, qt), "gguf.quants.quantize(random normal)"
        else:
            bpr = cols // 256  # super-blocks per row
            blocks = random_q4_k_blocks(rng, rows * bpr) if qt == QT.Q4_K else random_q6_k_blocks(rng, rows * bpr)
            data, how = blocks.reshape(rows, -1), "random raw block bytes, f16 scales in [5e-4, 4e-3]"
        if data.dtype == np.uint8:
            wr.add_tensor(name, data, raw_dtype=qt)
        else:
            wr.add_tensor(name, data)
        made.append((name, qt, how))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()

    reader = GGUFReader(str(path))
    tensors = {}
    by_name = {t.name: t for t in reader.tensors}
    for name, qt, how in made:
        t = by_name[name]
        assert t.tensor_type == qt
        vals = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(rows, cols)
        assert np.isfinite(vals).all()
        tensors[name] = {"type": qt.name, "ggml_type_id": int(qt), "shape": [rows, cols],
                         "gguf_dims": [cols, rows], "data": how,
                         "values": [[f32_exact(v) for v in row] for row in vals]}
    write_json(out / "quant_types.json", {
        "file": path.name,
        "sha256": sha256_file(path),
        "notes": ("values = gguf.quants.dequantize of the stored bytes, shape [rows, cols] "
                  "(row-major), each printed as the shortest decimal that round-trips to the "
                  "same float32 (so comparisons can be exact)."),
        "tensors": tensors,
    })


# --------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--skip-smollm", action="store_true", help="only the synthetic fixtures")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    reader = GGUFReader(str(args.model))
    tok = tokenizer_from_gguf(reader)
    template = field_value(reader, "tokenizer.chat_template")

    print("tokenizer cases", flush=True)
    surprises = make_tokenizer_cases(args.out, tok)
    if surprises:
        print(f"  WARNING: decode(encode(s)) != s for {surprises!r}")
    print("chat template", flush=True)
    make_chat_template(args.out, tok, template)
    print("tiny HF models", flush=True)
    make_tiny_hf(args.out)
    print("tiny gguf", flush=True)
    make_tiny_gguf(args.out, template)
    print("quant types", flush=True)
    make_quant_types(args.out)
    if not args.skip_smollm:
        print("smollm2 reference", flush=True)
        make_smollm(args.model, args.out, reader, tok, template)
    print(f"done in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
