// Rotary position embedding on the fused QKV rows of a step, and the store of K and V into the
// layer's KV cache, in one dispatch. Per token the invocations are: one per rotated Q pair (Q is
// rotated in place), one per rotated K pair (written to the cache), one per V value (copied to the
// cache). Optional Q/K/V biases (Qwen2) are added first. cos/sin come from a table the host built
// in f64 once, as the CPU engine does, so both engines rotate by the same numbers.

struct Dims {
    q_dim: u32,
    kv_dim: u32,
    head_dim: u32,
    // 0: pairs (2i, 2i+1) (llama.cpp's permuted GGUF rows); 1: pairs (i, i + head_dim/2).
    half_layout: u32,
    has_bias: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> dims: Dims;
@group(0) @binding(2) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
// [position][head_dim / 2][cos, sin]
@group(0) @binding(4) var<storage, read> table: array<f32>;
@group(0) @binding(5) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(6) var<storage, read_write> v_cache: array<f32>;

fn value(row: u32, j: u32) -> f32 {
    var v = qkv[row + j];
    if (dims.has_bias == 1u) {
        v = v + bias[j];
    }
    return v;
}

// Offsets within one head of the two dimensions pair `i` rotates.
fn pair(i: u32) -> vec2<u32> {
    if (dims.half_layout == 1u) {
        return vec2<u32>(i, i + dims.head_dim / 2u);
    }
    return vec2<u32>(2u * i, 2u * i + 1u);
}

@compute @workgroup_size(64)
fn rope_store(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.y;
    let u = gid.x;
    let half = dims.head_dim / 2u;
    let q_pairs = dims.q_dim / 2u;
    let k_pairs = dims.kv_dim / 2u;
    if (t >= step.n || u >= q_pairs + k_pairs + dims.kv_dim) {
        return;
    }
    let stride = dims.q_dim + 2u * dims.kv_dim;
    let row = t * stride;
    let pos = step.start + t;
    let cache_row = pos * dims.kv_dim;
    if (u >= q_pairs + k_pairs) {
        let j = u - q_pairs - k_pairs;
        v_cache[cache_row + j] = value(row, dims.q_dim + dims.kv_dim + j);
        return;
    }
    let is_k = u >= q_pairs;
    let p = select(u, u - q_pairs, is_k);
    let head = p / half;
    let i = p % half;
    let off = head * dims.head_dim + pair(i);
    let ti = (pos * half + i) * 2u;
    let cos_t = table[ti];
    let sin_t = table[ti + 1u];
    if (is_k) {
        let a = value(row, dims.q_dim + off.x);
        let b = value(row, dims.q_dim + off.y);
        k_cache[cache_row + off.x] = a * cos_t - b * sin_t;
        k_cache[cache_row + off.y] = a * sin_t + b * cos_t;
    } else {
        let a = value(row, off.x);
        let b = value(row, off.y);
        qkv[row + off.x] = a * cos_t - b * sin_t;
        qkv[row + off.y] = a * sin_t + b * cos_t;
    }
}
