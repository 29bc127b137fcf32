// Causal grouped-query attention of a step's queries over the layer's KV cache (which already
// holds this step's keys and values). One workgroup per (head, token): scores for every visible
// position go to a scratch buffer, softmax is reduced in workgroup memory, then each invocation
// owns output dimensions and sums the weighted values. Decode is the one-token case.

struct Dims {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    q_dim: u32,
    kv_dim: u32,
    // Positions per scratch row (the cache capacity).
    capacity: u32,
    scale: f32,
    _pad: u32,
}

const WG: u32 = 64u;
const MAX_HEAD_DIM: u32 = 256u;

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> dims: Dims;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;
@group(0) @binding(3) var<storage, read> k_cache: array<f32>;
@group(0) @binding(4) var<storage, read> v_cache: array<f32>;
@group(0) @binding(5) var<storage, read_write> scores: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

var<workgroup> q: array<f32, MAX_HEAD_DIM>;
var<workgroup> red: array<f32, WG>;

fn reduce_max(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let t = wid.y;
    if (t >= step.n) {
        return;
    }
    let kv_off = (h / (dims.heads / dims.kv_heads)) * dims.head_dim;
    let len = step.start + t + 1u;
    let stride = dims.q_dim + 2u * dims.kv_dim;
    for (var d = lid; d < dims.head_dim; d = d + WG) {
        q[d] = qkv[t * stride + h * dims.head_dim + d] * dims.scale;
    }
    workgroupBarrier();
    let srow = (t * dims.heads + h) * dims.capacity;
    // The lowest finite f32, spelled as bits: Chromium's Tint rejects the decimal literal, which
    // rounds past f32::MAX.
    var m = bitcast<f32>(0xff7fffffu);
    for (var p = lid; p < len; p = p + WG) {
        let k = p * dims.kv_dim + kv_off;
        var s = 0.0;
        for (var d = 0u; d < dims.head_dim; d = d + 1u) {
            s = s + q[d] * k_cache[k + d];
        }
        scores[srow + p] = s;
        m = max(m, s);
    }
    m = reduce_max(lid, m);
    var sum = 0.0;
    for (var p = lid; p < len; p = p + WG) {
        let e = exp(scores[srow + p] - m);
        scores[srow + p] = e;
        sum = sum + e;
    }
    sum = reduce_sum(lid, sum);
    storageBarrier();
    for (var d = lid; d < dims.head_dim; d = d + WG) {
        var acc = 0.0;
        for (var p = 0u; p < len; p = p + 1u) {
            acc = acc + scores[srow + p] * v_cache[p * dims.kv_dim + kv_off + d];
        }
        out[t * dims.q_dim + h * dims.head_dim + d] = acc / sum;
    }
}
