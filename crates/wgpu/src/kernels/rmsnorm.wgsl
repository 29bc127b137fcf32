// RMSNorm over rows: y[r, c] = x[r, c] / sqrt(mean_c(x[r, c]^2) + eps) * w[c].
// One workgroup per row; the sum of squares is reduced in workgroup memory. The final norm only
// normalizes the rows whose logits are wanted (`use_out_rows`: rows out_row0..out_row0+out_rows).

struct Dims {
    cols: u32,
    eps: f32,
    use_out_rows: u32,
    _pad: u32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> dims: Dims;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(64)
fn rmsnorm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x;
    let rows = select(step.n, step.out_rows, dims.use_out_rows == 1u);
    if (row >= rows) {
        return;
    }
    let in_row = row + select(0u, step.out_row0, dims.use_out_rows == 1u);
    let base = in_row * dims.cols;
    var sum = 0.0;
    for (var c = lid; c < dims.cols; c = c + WG) {
        let v = x[base + c];
        sum = sum + v * v;
    }
    partial[lid] = sum;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            partial[lid] = partial[lid] + partial[lid + stride];
        }
        workgroupBarrier();
    }
    let scale = inverseSqrt(partial[0] / f32(dims.cols) + dims.eps);
    let out = base;
    for (var c = lid; c < dims.cols; c = c + WG) {
        y[out + c] = x[base + c] * scale * w[c];
    }
}
