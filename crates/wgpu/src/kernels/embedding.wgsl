// Token embedding lookup: out[t] = W[ids[t]], dequantized from any quant.wgsl format (the Q8_0
// table of SmolLM2 stays quantized; the same buffer is the tied output head). One invocation per
// four values; ids outside the table give zeros (the host checks them first).

struct Dims {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> dims: Dims;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn embedding(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.y;
    let c = gid.x * 4u;
    if (t >= step.n || c >= dims.cols) {
        return;
    }
    let id = ids[t];
    var v = vec4<f32>(0.0);
    if (id < dims.rows) {
        v = load4(id, c, dims.cols);
    }
    let o = t * dims.cols + c;
    out[o] = v.x;
    out[o + 1u] = v.y;
    out[o + 2u] = v.z;
    out[o + 3u] = v.w;
}
