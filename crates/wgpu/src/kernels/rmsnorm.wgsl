// RMSNorm over rows: y[r, c] = x[r, c] / sqrt(mean_c(x[r, c]^2) + eps) * w[c].
// One workgroup per row; the sum of squares is reduced in workgroup memory.

struct Dims {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> dims: Dims;

var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(64)
fn rmsnorm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x;
    if (row >= dims.rows) {
        return;
    }
    let base = row * dims.cols;
    var sum = 0.0;
    for (var c = lid; c < dims.cols; c = c + WG) {
        let v = x[base + c];
        sum = sum + v * v;
    }
    partial[lid] = sum;
    workgroupBarrier();
    var stride = WG / 2u;
    while (stride > 0u) {
        if (lid < stride) {
            partial[lid] = partial[lid] + partial[lid + stride];
        }
        workgroupBarrier();
        stride = stride / 2u;
    }
    let scale = inverseSqrt(partial[0] / f32(dims.cols) + dims.eps);
    for (var c = lid; c < dims.cols; c = c + WG) {
        y[base + c] = x[base + c] * scale * w[c];
    }
}
