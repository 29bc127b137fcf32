// Dequantizing loads shared by the kernels that read weight matrices (linear, embedding). The host
// prepends `const FORMAT: u32 = ...;` and the including file declares `w: array<u32>`: every
// format lives in 32-bit words, as storage buffers are arrays of 4-byte words (see quant.rs):
//   F32   one value per word
//   F16   two values per word (unpack2x16float, so no shader-f16 is needed)
//   Q8_0  9 words per 32-value block: the f32 scale, then 32 int8 quants four per word
//   Q4_1  5 words per 32-value block, GGUF's own layout: f16 scale and min, then 16 bytes where
//         byte j holds value j in its low nibble and value j + 16 in its high nibble

const FORMAT_F32: u32 = 0u;
const FORMAT_F16: u32 = 1u;
const FORMAT_Q8_0: u32 = 2u;
const FORMAT_Q4_1: u32 = 3u;

// Values col..col+3 of row `row` of a matrix with `cols` columns; col is a multiple of 4.
fn load4(row: u32, col: u32, cols: u32) -> vec4<f32> {
    let i = row * cols + col;
    if (FORMAT == FORMAT_F32) {
        return vec4<f32>(bitcast<f32>(w[i]), bitcast<f32>(w[i + 1u]), bitcast<f32>(w[i + 2u]),
            bitcast<f32>(w[i + 3u]));
    } else if (FORMAT == FORMAT_F16) {
        return vec4<f32>(unpack2x16float(w[i / 2u]), unpack2x16float(w[i / 2u + 1u]));
    } else if (FORMAT == FORMAT_Q8_0) {
        let base = (i / 32u) * 9u;
        let q = i32(w[base + 1u + (i % 32u) / 4u]);
        let v = vec4<f32>(f32(extractBits(q, 0u, 8u)), f32(extractBits(q, 8u, 8u)),
            f32(extractBits(q, 16u, 8u)), f32(extractBits(q, 24u, 8u)));
        return v * bitcast<f32>(w[base]);
    } else {
        let base = (i / 32u) * 5u;
        let dm = unpack2x16float(w[base]);
        let j = i % 32u;
        let word = w[base + 1u + (j % 16u) / 4u];
        let shift = select(0u, 4u, j >= 16u);
        let q = vec4<f32>(f32((word >> shift) & 15u), f32((word >> (8u + shift)) & 15u),
            f32((word >> (16u + shift)) & 15u), f32((word >> (24u + shift)) & 15u));
        return q * dm.x + vec4<f32>(dm.y);
    }
}
