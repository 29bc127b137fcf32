// Matrix-vector products for decode: y[r] = sum_c W[r, c] * x[c], one workgroup per row.
// Weights are stored [rows, cols] row-major as files store them. Q8_0 is repacked at load into
// 32-bit words of four int8 quants (storage buffers hold 4-byte words) plus one f32 scale per
// 32-value block, so it stays quantized on the GPU.

struct Dims {
    rows: u32,
    cols: u32,
    // Q8_0 blocks per row (cols / 32).
    blocks: u32,
    // Workgroups along x, to rebuild the row from a 2-D dispatch (65535 per dimension).
    groups_x: u32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<storage, read> w_f32: array<f32>;
@group(0) @binding(1) var<storage, read> w_q8: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> dims: Dims;
@group(0) @binding(5) var<storage, read> scales: array<f32>;

var<workgroup> partial: array<f32, WG>;

fn reduce_and_store(lid: u32, row: u32, sum: f32) {
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
    if (lid == 0u) {
        y[row] = partial[0];
    }
}

@compute @workgroup_size(64)
fn matvec_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * dims.groups_x;
    // Uniform control flow: every invocation of a workgroup takes the same branch.
    if (row >= dims.rows) {
        return;
    }
    let base = row * dims.cols;
    var sum = 0.0;
    for (var c = lid; c < dims.cols; c = c + WG) {
        sum = sum + w_f32[base + c] * x[c];
    }
    reduce_and_store(lid, row, sum);
}

@compute @workgroup_size(64)
fn matvec_q8_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * dims.groups_x;
    if (row >= dims.rows) {
        return;
    }
    var sum = 0.0;
    for (var b = lid; b < dims.blocks; b = b + WG) {
        let block = row * dims.blocks + b;
        let word0 = block * 8u;
        let col0 = b * 32u;
        var acc = 0.0;
        for (var i = 0u; i < 8u; i = i + 1u) {
            let word = i32(w_q8[word0 + i]);
            let c = col0 + i * 4u;
            acc = acc + f32(extractBits(word, 0u, 8u)) * x[c]
                + f32(extractBits(word, 8u, 8u)) * x[c + 1u]
                + f32(extractBits(word, 16u, 8u)) * x[c + 2u]
                + f32(extractBits(word, 24u, 8u)) * x[c + 3u];
        }
        sum = sum + acc * scales[block];
    }
    reduce_and_store(lid, row, sum);
}
