// y = x W^T for a weight matrix W [rows, cols] in any of quant.wgsl's formats, kept quantized.
// `matvec` serves decode (one token): MV_THREADS invocations per row and MV_ROWS rows per
// invocation, set by the host per adapter: 16 x 1 on GPUs so a row is read in coalesced runs,
// 1 x 4 on CPU adapters such as lavapipe, where barriers cost and x is best loaded once per 4 rows.
// `matmul` serves prefill: 64 rows x 64 tokens per workgroup, staged through workgroup memory
// 16 columns at a time (8 KiB of the 16 KiB WebGPU guarantees), 4 x 4 outputs per invocation.
// A prologue fused into the read of x saves the dispatch (and the round trip through memory) of
// the step before: PROLOGUE (set by the host) 0 reads x as it is, 1 reads rmsnorm(x) * aux (aux:
// the norm weight), 2 reads silu(gate) * up from fused gate|up rows twice `cols` wide (SwiGLU).
// matvec stages the prepared x in workgroup memory (up to MAX_STAGED values), matmul prepares it
// as it fills its tile.
// The output lands at column y_off of rows y_stride wide, so Q, K and V (or gate and up) can
// share one buffer; with `accumulate` it is added instead (the residual connection).

struct Dims {
    rows: u32,
    cols: u32,
    y_stride: u32,
    y_off: u32,
    accumulate: u32,
    // 1: as many tokens as logits are wanted (the output head), else all tokens of the step.
    use_out_rows: u32,
    groups_x: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> dims: Dims;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> aux: array<f32>;

const MAX_STAGED: u32 = 2048u;

fn x_stride() -> u32 {
    return select(dims.cols, 2u * dims.cols, PROLOGUE == 2u);
}

// Row of x that output token `token` reads: the head reads only the rows whose logits are wanted.
fn x_row(token: u32) -> u32 {
    return token + select(0u, step.out_row0, dims.use_out_rows == 1u);
}

// x[c] of a row starting at `base`, prepared by the prologue; `scale` is the row's 1/rms.
fn prepared(base: u32, c: u32, scale: f32) -> f32 {
    if (PROLOGUE == 1u) {
        return x[base + c] * scale * aux[c];
    } else if (PROLOGUE == 2u) {
        let g = x[base + c];
        return g / (1.0 + exp(-g)) * x[base + dims.cols + c];
    }
    return x[base + c];
}

fn tokens() -> u32 {
    return select(step.n, step.out_rows, dims.use_out_rows == 1u);
}

fn store(token: u32, row: u32, v: f32) {
    let i = token * dims.y_stride + dims.y_off + row;
    if (dims.accumulate == 1u) {
        y[i] = y[i] + v;
    } else {
        y[i] = v;
    }
}

var<workgroup> partial: array<f32, 64>;
var<workgroup> staged: array<vec4<f32>, MAX_STAGED / 4u>;

// Sum over the 64 invocations of a workgroup, returned to all of them.
fn workgroup_sum(lid: u32, v: f32) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s = s / 2u) {
        if (lid < s) {
            partial[lid] = partial[lid] + partial[lid + s];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

// Whether matvec stages x (always with a prologue; without one, when it fits).
fn is_staged() -> bool {
    return PROLOGUE != 0u || dims.cols <= MAX_STAGED;
}

// x[c..c+4] for matvec; c is a multiple of 4.
fn x4(c: u32) -> vec4<f32> {
    if (is_staged()) {
        return staged[c / 4u];
    }
    let i = x_row(0u) * dims.cols + c;
    return vec4<f32>(x[i], x[i + 1u], x[i + 2u], x[i + 3u]);
}

// One 32-value block of a quantized row against the block of x in `xb`, the scale applied once
// per block.
fn block_dot(row: u32, b: u32, xb: array<vec4<f32>, 8>) -> f32 {
    let blocks = dims.cols / 32u;
    if (FORMAT == FORMAT_Q8_0) {
        let base = (row * blocks + b) * 9u;
        var acc = 0.0;
        for (var i = 0u; i < 8u; i = i + 1u) {
            let q = i32(w[base + 1u + i]);
            let v = vec4<f32>(f32(extractBits(q, 0u, 8u)), f32(extractBits(q, 8u, 8u)),
                f32(extractBits(q, 16u, 8u)), f32(extractBits(q, 24u, 8u)));
            acc = acc + dot(v, xb[i]);
        }
        return acc * bitcast<f32>(w[base]);
    }
    // Q4_1: d * sum(q x) + m * sum(x).
    let base = (row * blocks + b) * 5u;
    let dm = unpack2x16float(w[base]);
    var acc = 0.0;
    var xsum = 0.0;
    for (var i = 0u; i < 4u; i = i + 1u) {
        let word = w[base + 1u + i];
        let lo = vec4<f32>(f32(word & 15u), f32((word >> 8u) & 15u), f32((word >> 16u) & 15u),
            f32((word >> 24u) & 15u));
        let hi = vec4<f32>(f32((word >> 4u) & 15u), f32((word >> 12u) & 15u),
            f32((word >> 20u) & 15u), f32(word >> 28u));
        acc = acc + dot(lo, xb[i]) + dot(hi, xb[i + 4u]);
        xsum = xsum + dot(xb[i] + xb[i + 4u], vec4<f32>(1.0));
    }
    return dm.x * acc + dm.y * xsum;
}

// Each invocation computes MV_ROWS rows (set by the host: several on CPU adapters, so each block
// of x is loaded once for all of them), 64 / MV_THREADS apart so neighbours read neighbouring rows.
@compute @workgroup_size(64)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let stride = 64u / MV_THREADS;
    let first = (wid.x + wid.y * dims.groups_x) * stride * MV_ROWS + lid / MV_THREADS;
    let t = lid % MV_THREADS;
    if (is_staged()) {
        let base = x_row(0u) * x_stride();
        var scale = 1.0;
        if (PROLOGUE == 1u) {
            var sq = 0.0;
            for (var c = lid; c < dims.cols; c = c + 64u) {
                sq = sq + x[base + c] * x[base + c];
            }
            scale = inverseSqrt(workgroup_sum(lid, sq) / f32(dims.cols) + dims.eps);
        }
        for (var c = lid * 4u; c < dims.cols; c = c + 256u) {
            staged[c / 4u] = vec4<f32>(prepared(base, c, scale), prepared(base, c + 1u, scale),
                prepared(base, c + 2u, scale), prepared(base, c + 3u, scale));
        }
        workgroupBarrier();
    }
    var sums = array<f32, MV_ROWS>();
    if (FORMAT == FORMAT_Q8_0 || FORMAT == FORMAT_Q4_1) {
        for (var b = t; b < dims.cols / 32u; b = b + MV_THREADS) {
            // Q4_1 pairs value j with j + 16, so the block is kept in value order.
            var xb: array<vec4<f32>, 8>;
            for (var i = 0u; i < 8u; i = i + 1u) {
                xb[i] = x4(b * 32u + 4u * i);
            }
            for (var k = 0u; k < MV_ROWS; k = k + 1u) {
                let row = first + k * stride;
                if (row < dims.rows) {
                    sums[k] = sums[k] + block_dot(row, b, xb);
                }
            }
        }
    } else {
        for (var c = t * 4u; c < dims.cols; c = c + 4u * MV_THREADS) {
            let xv = x4(c);
            for (var k = 0u; k < MV_ROWS; k = k + 1u) {
                let row = first + k * stride;
                if (row < dims.rows) {
                    sums[k] = sums[k] + dot(load4(row, c, dims.cols), xv);
                }
            }
        }
    }
    if (MV_THREADS == 1u) {
        for (var k = 0u; k < MV_ROWS; k = k + 1u) {
            let row = first + k * stride;
            if (row < dims.rows) {
                store(0u, row, sums[k]);
            }
        }
        return;
    }
    // Several invocations share a row: reduce each row's partial sums in workgroup memory.
    for (var k = 0u; k < MV_ROWS; k = k + 1u) {
        partial[lid] = sums[k];
        workgroupBarrier();
        for (var s = MV_THREADS / 2u; s > 0u; s = s / 2u) {
            if (t < s) {
                partial[lid] = partial[lid] + partial[lid + s];
            }
            workgroupBarrier();
        }
        let row = first + k * stride;
        if (t == 0u && row < dims.rows) {
            store(0u, row, partial[lid]);
        }
        workgroupBarrier();
    }
}

// All 32 values of block b of a quantized row, in value order.
fn block_values(row: u32, b: u32) -> array<vec4<f32>, 8> {
    let blocks = dims.cols / 32u;
    var v: array<vec4<f32>, 8>;
    if (FORMAT == FORMAT_Q8_0) {
        let base = (row * blocks + b) * 9u;
        let d = bitcast<f32>(w[base]);
        for (var i = 0u; i < 8u; i = i + 1u) {
            let q = i32(w[base + 1u + i]);
            v[i] = d * vec4<f32>(f32(extractBits(q, 0u, 8u)), f32(extractBits(q, 8u, 8u)),
                f32(extractBits(q, 16u, 8u)), f32(extractBits(q, 24u, 8u)));
        }
        return v;
    }
    let base = (row * blocks + b) * 5u;
    let dm = unpack2x16float(w[base]);
    for (var i = 0u; i < 4u; i = i + 1u) {
        let word = w[base + 1u + i];
        v[i] = dm.x * vec4<f32>(f32(word & 15u), f32((word >> 8u) & 15u),
            f32((word >> 16u) & 15u), f32((word >> 24u) & 15u)) + vec4<f32>(dm.y);
        v[i + 4u] = dm.x * vec4<f32>(f32((word >> 4u) & 15u), f32((word >> 12u) & 15u),
            f32((word >> 20u) & 15u), f32(word >> 28u)) + vec4<f32>(dm.y);
    }
    return v;
}

// Prefill on CPU adapters (lavapipe): no workgroup memory and no barriers, which a software
// rasterizer pays for dearly. Each invocation computes 4 rows (64 apart) x 4 consecutive tokens
// from registers, so a dequantized block serves 4 tokens and a block of x serves 4 rows.
const RT_ROWS: u32 = 4u;
const RT_TOKENS: u32 = 4u;

@compute @workgroup_size(64)
fn matmul_registers(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = tokens();
    let first_row = wid.x * 64u * RT_ROWS + lid;
    let tok0 = wid.y * RT_TOKENS;
    var scale = vec4<f32>(1.0);
    var base: array<u32, 4>;
    for (var j = 0u; j < RT_TOKENS; j = j + 1u) {
        base[j] = x_row(min(tok0 + j, n - 1u)) * x_stride();
        if (PROLOGUE == 1u) {
            var sq = 0.0;
            for (var c = 0u; c < dims.cols; c = c + 1u) {
                sq = sq + x[base[j] + c] * x[base[j] + c];
            }
            scale[j] = inverseSqrt(sq / f32(dims.cols) + dims.eps);
        }
    }
    var acc: array<vec4<f32>, 4>;
    if (FORMAT == FORMAT_Q8_0 || FORMAT == FORMAT_Q4_1) {
        for (var b = 0u; b < dims.cols / 32u; b = b + 1u) {
            var xb: array<array<vec4<f32>, 8>, 4>;
            for (var j = 0u; j < RT_TOKENS; j = j + 1u) {
                for (var i = 0u; i < 8u; i = i + 1u) {
                    let c = b * 32u + 4u * i;
                    xb[j][i] = vec4<f32>(prepared(base[j], c, scale[j]),
                        prepared(base[j], c + 1u, scale[j]), prepared(base[j], c + 2u, scale[j]),
                        prepared(base[j], c + 3u, scale[j]));
                }
            }
            for (var k = 0u; k < RT_ROWS; k = k + 1u) {
                let row = first_row + k * 64u;
                if (row < dims.rows) {
                    let wb = block_values(row, b);
                    for (var j = 0u; j < RT_TOKENS; j = j + 1u) {
                        var d = 0.0;
                        for (var i = 0u; i < 8u; i = i + 1u) {
                            d = d + dot(wb[i], xb[j][i]);
                        }
                        acc[k][j] = acc[k][j] + d;
                    }
                }
            }
        }
    } else {
        for (var c = 0u; c < dims.cols; c = c + 4u) {
            var xv: array<vec4<f32>, 4>;
            for (var j = 0u; j < RT_TOKENS; j = j + 1u) {
                xv[j] = vec4<f32>(prepared(base[j], c, scale[j]),
                    prepared(base[j], c + 1u, scale[j]), prepared(base[j], c + 2u, scale[j]),
                    prepared(base[j], c + 3u, scale[j]));
            }
            for (var k = 0u; k < RT_ROWS; k = k + 1u) {
                let row = first_row + k * 64u;
                if (row < dims.rows) {
                    let wv = load4(row, c, dims.cols);
                    for (var j = 0u; j < RT_TOKENS; j = j + 1u) {
                        acc[k][j] = acc[k][j] + dot(wv, xv[j]);
                    }
                }
            }
        }
    }
    for (var k = 0u; k < RT_ROWS; k = k + 1u) {
        let row = first_row + k * 64u;
        for (var j = 0u; j < RT_TOKENS; j = j + 1u) {
            if (row < dims.rows && tok0 + j < n) {
                store(tok0 + j, row, acc[k][j]);
            }
        }
    }
}

const TILE: u32 = 64u;
const KT: u32 = 16u;
var<workgroup> w_tile: array<f32, 1024>;
var<workgroup> x_tile: array<f32, 1024>;
var<workgroup> token_sq: array<f32, 256>;
var<workgroup> token_scale: array<f32, TILE>;

@compute @workgroup_size(256)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = tokens();
    let row0 = wid.x * TILE;
    let tok0 = wid.y * TILE;
    // Staging: each invocation loads four consecutive columns of one row and of one token.
    let load_i = lid / 4u;
    let load_k = (lid % 4u) * 4u;
    // Computing: four rows and four tokens each.
    let my_rows = (lid % 16u) * 4u;
    let my_toks = (lid / 16u) * 4u;
    var acc = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    let my_base = x_row(tok0 + load_i) * x_stride();
    if (PROLOGUE == 1u) {
        // 1/rms of each of the tile's tokens, four invocations per token.
        var sq = 0.0;
        if (tok0 + load_i < n) {
            for (var c = lid % 4u; c < dims.cols; c = c + 4u) {
                sq = sq + x[my_base + c] * x[my_base + c];
            }
        }
        token_sq[lid] = sq;
        workgroupBarrier();
        if (lid % 4u == 0u) {
            let total = token_sq[lid] + token_sq[lid + 1u] + token_sq[lid + 2u] + token_sq[lid + 3u];
            token_scale[load_i] = inverseSqrt(total / f32(dims.cols) + dims.eps);
        }
        workgroupBarrier();
    }
    for (var k0 = 0u; k0 < dims.cols; k0 = k0 + KT) {
        let c = k0 + load_k;
        var wv = vec4<f32>(0.0);
        if (row0 + load_i < dims.rows && c < dims.cols) {
            wv = load4(row0 + load_i, c, dims.cols);
        }
        var xv = vec4<f32>(0.0);
        if (tok0 + load_i < n && c < dims.cols) {
            var scale = 1.0;
            if (PROLOGUE == 1u) {
                scale = token_scale[load_i];
            }
            xv = vec4<f32>(prepared(my_base, c, scale), prepared(my_base, c + 1u, scale),
                prepared(my_base, c + 2u, scale), prepared(my_base, c + 3u, scale));
        }
        let s = load_i * KT + load_k;
        w_tile[s] = wv.x;
        w_tile[s + 1u] = wv.y;
        w_tile[s + 2u] = wv.z;
        w_tile[s + 3u] = wv.w;
        x_tile[s] = xv.x;
        x_tile[s + 1u] = xv.y;
        x_tile[s + 2u] = xv.z;
        x_tile[s + 3u] = xv.w;
        workgroupBarrier();
        for (var kk = 0u; kk < KT; kk = kk + 1u) {
            let a = vec4<f32>(w_tile[my_rows * KT + kk], w_tile[(my_rows + 1u) * KT + kk],
                w_tile[(my_rows + 2u) * KT + kk], w_tile[(my_rows + 3u) * KT + kk]);
            acc[0] = acc[0] + a * x_tile[my_toks * KT + kk];
            acc[1] = acc[1] + a * x_tile[(my_toks + 1u) * KT + kk];
            acc[2] = acc[2] + a * x_tile[(my_toks + 2u) * KT + kk];
            acc[3] = acc[3] + a * x_tile[(my_toks + 3u) * KT + kk];
        }
        workgroupBarrier();
    }
    for (var j = 0u; j < 4u; j = j + 1u) {
        let token = tok0 + my_toks + j;
        for (var i = 0u; i < 4u; i = i + 1u) {
            let row = row0 + my_rows + i;
            if (token < n && row < dims.rows) {
                store(token, row, acc[j][i]);
            }
        }
    }
}
