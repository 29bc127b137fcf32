// Picks the next token where the logits are, so a decode step reads back one id instead of the
// whole vocabulary. The choice is the CPU `Sampler`'s (crates/core/src/sampler.rs) after the logit
// bias: greedy is the first maximum (NaN never wins); otherwise c = logit * (1 / T), the top_k
// largest, the shortest descending run of them holding top_p of their mass (mass = exp(c - max)),
// and the token at which the descending running mass first reaches `draw` times the kept mass.
//
// Sorting the vocabulary in one workgroup would be slow, so every cut is a threshold instead:
// "keep the tokens whose key is >= K", on an order-preserving u32 key of c. A threshold is built
// four bits at a time from the top (8 rounds); a round sums, for all 16 values of its digit at
// once, the count or the mass of the candidates at or above that threshold, and keeps the largest
// digit whose sum still reaches the goal. The draw is the same search with the goal `draw` x kept
// mass; the chosen token is the one with the smallest key at or above the threshold found.
//
// Masses are summed as 64-bit fixed point (40 fraction bits, in u32 pairs), not in f32: the CPU
// sums in f64, and deep in a long tail one token weighs less than an f32 ulp of the running sum,
// so f32 sums move the draw to a neighbour now and then; compensated f32 sums are no way out, as
// shader compilers fold the compensation away (Mesa does), while integer sums are exact and the
// same in any order on any device. Only masses below 2^-17 are rounded (by at most 2^-41). exp
// is computed here from a table, not with the built-in: Vulkan allows the built-in 3 + 2|x| ulp,
// and lavapipe's agrees with the CPU's expf on 10% of inputs and errs high by 2.6e-7 on average,
// which over thousands of tail tokens moves the draw; this one agrees on 99.8% of inputs in
// [-30, 0], off by one ulp either way on the rest.
//
// Three entry points share one bind group:
// - `sample_keys` (one workgroup per CHUNK logits): adds the bias, scales, writes each logit's key
//   (when sampling) and each workgroup's first maximum to `partials`.
// - `sample_weights` (same grid, sampling only): every token's mass exp(c - max).
// - `sample_select` (one workgroup): the greedy maximum, or the cuts and the draw; writes `token`.
//   Once a cut leaves at most CAP candidates they move into registers, so the later searches
//   never read the vocabulary again (with top_k = 40: 8 rounds and 2 gathering passes over the
//   vocabulary instead of 24 rounds).

struct Params {
    vocab: u32,
    n_bias: u32,
    // 0: greedy (bias only, no scaling); 1: sample.
    sampling: u32,
    // 0: no top-k cut (the host sends 0 for k >= vocab).
    top_k: u32,
    // 1 / temperature, rounded to f32 as the CPU sampler rounds it.
    inv_t: f32,
    // 1: no nucleus cut.
    top_p: f32,
    // Workgroups of `sample_keys`, i.e. entries in `partials`.
    groups: u32,
    _pad: u32,
    // top_p and the draw (the random number in [0, 1)) as 0.64 fixed point (hi, lo): exactly
    // the f32 top_p, and the f64 draw to all its bits.
    top_p_fixed: vec2<u32>,
    draw_fixed: vec2<u32>,
}

struct Bias {
    id: u32,
    value: f32,
}

const WG: u32 = 256u;
const PER_INVOCATION: u32 = 4u;
const CHUNK: u32 = 1024u;
const MAX_BIAS: u32 = 64u;
// Candidates that fit the registers: PER_INVOCATION per invocation.
const CAP: u32 = 1024u;
// The key of -inf, which NaN gets too: it never outranks a number, as in the CPU sampler.
const KEY_NEG_INF: u32 = 0x007fffffu;
// Above every key order_key makes (+inf is 0xff800000).
const NONE: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> bias: array<Bias>;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read_write> keys: array<u32>;
// Masses as 64-bit fixed point with 40 fraction bits, (hi, lo).
@group(0) @binding(4) var<storage, read_write> weights: array<vec2<u32>>;
@group(0) @binding(5) var<storage, read_write> partials: array<vec2<u32>>;
@group(0) @binding(6) var<storage, read_write> token: array<u32>;
// 2^(j / 64) for j < 64 as hi + lo f32s (bit patterns), (hi_j, lo_j, hi_j+1, lo_j+1) per vector;
// in a buffer because a constant array indexed at run time is copied into every invocation
// (it made lavapipe's exp pass several times slower).
@group(0) @binding(7) var<uniform> exp2_table: array<vec4<u32>, 32>;

// Workgroup memory is 16 KiB at most, so the reductions, the argmax and the prefix sum of
// `gather` share `red_hi` and `red_lo`.
var<workgroup> bias_id: array<u32, MAX_BIAS>;
var<workgroup> bias_value: array<f32, MAX_BIAS>;
var<workgroup> red_hi: array<vec4<u32>, WG>;
var<workgroup> red_lo: array<vec4<u32>, WG>;
// Sums of 16 invocations each, for the four digit groups of a round.
var<workgroup> part_hi: array<vec4<u32>, 64>;
var<workgroup> part_lo: array<vec4<u32>, 64>;
var<workgroup> slots: array<u32, CAP>;
var<workgroup> kept: u32;

// The gathered candidates: slot s of invocation lid is candidate lid + s * WG. Empty slots have
// c_one = 0 and take no part.
var<private> c_index: vec4<u32>;
var<private> c_key: vec4<u32>;
var<private> c_mass_hi: vec4<u32>;
var<private> c_mass_lo: vec4<u32>;
var<private> c_one: vec4<u32>;

// One invocation's 64-bit sums for the 16 digits of a round, 4 per vector.
var<private> sum_hi0: vec4<u32>;
var<private> sum_hi1: vec4<u32>;
var<private> sum_hi2: vec4<u32>;
var<private> sum_hi3: vec4<u32>;
var<private> sum_lo0: vec4<u32>;
var<private> sum_lo1: vec4<u32>;
var<private> sum_lo2: vec4<u32>;
var<private> sum_lo3: vec4<u32>;

// a < b as floats exactly when key(a) < key(b); -0 and +0 share a key, NaN ranks as -inf. Done on
// the bits, since a shader compiler may assume floats are never NaN.
fn order_key(x: f32) -> u32 {
    let bits = bitcast<u32>(x);
    let magnitude = bits & 0x7fffffffu;
    if (magnitude > 0x7f800000u) {
        return KEY_NEG_INF;
    }
    if (magnitude == 0u) {
        return 0x80000000u;
    }
    if (bits != magnitude) {
        return ~bits;
    }
    return bits | 0x80000000u;
}

fn key_value(key: u32) -> f32 {
    if ((key & 0x80000000u) != 0u) {
        return bitcast<f32>(key & 0x7fffffffu);
    }
    return bitcast<f32>(~key);
}

// The largest key over the workgroup and, among equal keys, the smallest index.
fn reduce_best(lid: u32, key: u32, index: u32) -> vec2<u32> {
    red_hi[lid] = vec4<u32>(key, index, 0u, 0u);
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            let a = red_hi[lid];
            let b = red_hi[lid + s];
            if (b.x > a.x || (b.x == a.x && b.y < a.y)) {
                red_hi[lid] = b;
            }
        }
        workgroupBarrier();
    }
    let top = red_hi[0].xy;
    workgroupBarrier();
    return top;
}

// The first maximum of the whole vocabulary, from the partials of `sample_keys`.
fn global_max(lid: u32) -> vec2<u32> {
    var best = 0u;
    var at = NONE;
    for (var g = lid; g < params.groups; g = g + WG) {
        let p = partials[g];
        if (p.x > best || (p.x == best && p.y < at)) {
            best = p.x;
            at = p.y;
        }
    }
    return reduce_best(lid, best, at);
}

@compute @workgroup_size(256)
fn sample_keys(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // Every logit looks the list up, so it is staged in workgroup memory once.
    let n_bias = min(params.n_bias, MAX_BIAS);
    if (lid < n_bias) {
        bias_id[lid] = bias[lid].id;
        bias_value[lid] = bias[lid].value;
    }
    workgroupBarrier();
    var best = 0u;
    var at = NONE;
    let base = wid.x * CHUNK;
    for (var j = 0u; j < PER_INVOCATION; j = j + 1u) {
        let i = base + j * WG + lid;
        if (i < params.vocab) {
            var v = logits[i];
            // In list order, as the CPU adds them, so a repeated id sums the same way.
            for (var b = 0u; b < n_bias; b = b + 1u) {
                if (bias_id[b] == i) {
                    v = v + bias_value[b];
                }
            }
            if (params.sampling != 0u) {
                v = v * params.inv_t;
            }
            let key = order_key(v);
            if (params.sampling != 0u) {
                keys[i] = key;
            }
            // i grows along this loop, so only a strictly larger key replaces the first maximum.
            if (key > best) {
                best = key;
                at = i;
            }
        }
    }
    let top = reduce_best(lid, best, at);
    if (lid == 0u) {
        partials[wid.x] = top;
    }
}

// exp(x) for x <= 0, correctly rounded but for exact values within about 0.02 ulp of a rounding
// boundary: x = n ln2 / 64 + r with |r| <= ln2 / 128, the reduction exact (ln2 / 64 in three
// parts, the first two short enough that n times them is exact); exp(x) = 2^(n >> 6) x
// 2^(j / 64) x exp(r) with j = n mod 64, 2^(j / 64) from the table as hi + lo, and exp(r) - 1 by
// a degree-4 polynomial, so only the final addition rounds at the result's scale.
fn exp_nonpositive(x: f32) -> f32 {
    // Below ln(2^-150) the result rounds to 0 (and ldexp's exponent would leave its range).
    if (x < -104.0) {
        return 0.0;
    }
    let n = i32(round(x * 92.332481384));
    let nf = f32(n);
    let r = ((x - nf * 0.0108184814453125) - nf * 0.00001193583011627197265625)
        - nf * 7.420820402614936e-9;
    let q = r * (1.0 + r * (0.5 + r * (0.16666667 + r * 0.041666668)));
    let j = u32(n & 63);
    let pair = exp2_table[j / 2u];
    let odd = (j & 1u) != 0u;
    let t_hi = bitcast<f32>(select(pair.x, pair.z, odd));
    let t_lo = bitcast<f32>(select(pair.y, pair.w, odd));
    // n >> 6 is floor(n / 64), as the table's index is n mod 64.
    return ldexp(t_hi + (t_hi * q + t_lo), n >> 6u);
}

// w in [0, 1] as 64-bit fixed point with 40 fraction bits: exact for w >= 2^-17 (the last bit
// of its f32 mantissa is worth at least 2^-40), else rounded to nearest.
fn to_fixed(w: f32) -> vec2<u32> {
    let scaled = w * 256.0;
    let whole = floor(scaled);
    // Both exact: a power-of-two scale, and the fraction of an f32.
    let frac = (scaled - whole) * 4294967296.0;
    return vec2<u32>(u32(whole), u32(round(frac)));
}

@compute @workgroup_size(256)
fn sample_weights(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let top = global_max(lid).x;
    let m = key_value(top);
    let base = wid.x * CHUNK;
    for (var j = 0u; j < PER_INVOCATION; j = j + 1u) {
        let i = base + j * WG + lid;
        if (i < params.vocab) {
            let key = keys[i];
            var w = 0.0;
            // The maximum weighs 1 even when it is infinite (exp(inf - inf) would be NaN); -inf and
            // NaN weigh 0 unless everything is -inf or NaN, when every token is a maximum.
            if (key == top) {
                w = 1.0;
            } else if (key > KEY_NEG_INF) {
                w = exp_nonpositive(key_value(key) - m);
            }
            weights[i] = to_fixed(w);
        }
    }
}

// a + b for 64-bit a, b as (hi, lo), four lanes at once.
fn add_wide(
    a_hi: vec4<u32>,
    a_lo: vec4<u32>,
    b_hi: vec4<u32>,
    b_lo: vec4<u32>,
) -> array<vec4<u32>, 2> {
    let lo = a_lo + b_lo;
    let carry = select(vec4<u32>(0u), vec4<u32>(1u), lo < a_lo);
    return array<vec4<u32>, 2>(a_hi + b_hi + carry, lo);
}

fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.y + b.y;
    return vec2<u32>(a.x + b.x + select(0u, 1u, lo < a.y), lo);
}

fn at_least(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.x > b.x || (a.x == b.x && a.y >= b.y);
}

// a * f / 2^64, rounded down: a 64-bit number times a 0.64 fixed-point fraction, by 16-bit limbs
// (WGSL has no 32 x 32 -> 64 multiply).
fn mul_fraction(a: vec2<u32>, f: vec2<u32>) -> vec2<u32> {
    var x = array<u32, 4>(a.y & 0xffffu, a.y >> 16u, a.x & 0xffffu, a.x >> 16u);
    var y = array<u32, 4>(f.y & 0xffffu, f.y >> 16u, f.x & 0xffffu, f.x >> 16u);
    var z = array<u32, 8>(0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u);
    for (var i = 0u; i < 4u; i = i + 1u) {
        var carry = 0u;
        for (var k = 0u; k < 4u; k = k + 1u) {
            // < 2^16 + (2^16 - 1)^2 + 2^16: no overflow.
            let t = z[i + k] + x[i] * y[k] + carry;
            z[i + k] = t & 0xffffu;
            carry = t >> 16u;
        }
        z[i + 4u] = carry;
    }
    return vec2<u32>((z[7] << 16u) | z[6], (z[5] << 16u) | z[4]);
}

// Adds (hi, lo) to the lanes of one digit group where `on`.
fn accumulate(
    sum_hi: ptr<private, vec4<u32>>,
    sum_lo: ptr<private, vec4<u32>>,
    on: vec4<bool>,
    hi: u32,
    lo: u32,
) {
    let zero = vec4<u32>(0u);
    let add_hi = select(zero, vec4<u32>(hi), on);
    let add_lo = select(zero, vec4<u32>(lo), on);
    let s = add_wide(*sum_hi, *sum_lo, add_hi, add_lo);
    *sum_hi = s[0];
    *sum_lo = s[1];
}

// Adds one candidate to the digit sums of a round: its mass (hi, lo), or 1 when counting (no
// carries to propagate then). In round 0 lane d holds everything at or above threshold d. Later,
// a key above the whole range of the round would add the same amount to all 16 lanes, so it goes
// into lane 0 alone (whose own value the round no longer needs: digit 0 is the prefix, known to
// reach the goal) and lane d >= 1 is read as lane 0 + lane d.
fn add_candidate(
    mass: bool,
    key: u32,
    hi: u32,
    lo: u32,
    above: bool,
    t0: vec4<u32>,
    t1: vec4<u32>,
    t2: vec4<u32>,
    t3: vec4<u32>,
) {
    let k = vec4<u32>(key);
    if (!mass) {
        if (above) {
            sum_lo0.x = sum_lo0.x + 1u;
        } else {
            let zero = vec4<u32>(0u);
            let one = vec4<u32>(1u);
            sum_lo0 = sum_lo0 + select(zero, one, k >= t0);
            sum_lo1 = sum_lo1 + select(zero, one, k >= t1);
            sum_lo2 = sum_lo2 + select(zero, one, k >= t2);
            sum_lo3 = sum_lo3 + select(zero, one, k >= t3);
        }
        return;
    }
    if (above) {
        accumulate(&sum_hi0, &sum_lo0, vec4<bool>(true, false, false, false), hi, lo);
        return;
    }
    accumulate(&sum_hi0, &sum_lo0, k >= t0, hi, lo);
    accumulate(&sum_hi1, &sum_lo1, k >= t1, hi, lo);
    accumulate(&sum_hi2, &sum_lo2, k >= t2, hi, lo);
    accumulate(&sum_hi3, &sum_lo3, k >= t3, hi, lo);
}

// Sums one group of four 64-bit lanes over each run of 16 invocations into part[16 g ..]: two
// barriers per group rather than a tree's eight, and the four groups' totals then need none.
fn reduce_part(lid: u32, g: u32, hi: vec4<u32>, lo: vec4<u32>) {
    red_hi[lid] = hi;
    red_lo[lid] = lo;
    workgroupBarrier();
    if (lid < 16u) {
        var s_hi = vec4<u32>(0u);
        var s_lo = vec4<u32>(0u);
        for (var j = 0u; j < 16u; j = j + 1u) {
            let t = add_wide(s_hi, s_lo, red_hi[16u * lid + j], red_lo[16u * lid + j]);
            s_hi = t[0];
            s_lo = t[1];
        }
        part_hi[16u * g + lid] = s_hi;
        part_lo[16u * g + lid] = s_lo;
    }
    workgroupBarrier();
}

// The workgroup's total of group g, once reduce_part has run for it (and a barrier since).
fn part_total(g: u32) -> array<vec4<u32>, 2> {
    var s_hi = vec4<u32>(0u);
    var s_lo = vec4<u32>(0u);
    for (var j = 0u; j < 16u; j = j + 1u) {
        let t = add_wide(s_hi, s_lo, part_hi[16u * g + j], part_lo[16u * g + j]);
        s_hi = t[0];
        s_lo = t[1];
    }
    return array<vec4<u32>, 2>(s_hi, s_lo);
}

// The largest K such that the candidates with keys >= max(K, low) hold at least the goal: a count
// of `count` tokens (mass = false), or `frac` (0.64 fixed point) of the mass at or above `low`
// (mass = true), which must also be > 0, so a zero draw lands on the maximum, not above it. The
// goal holds at K = low, so the result is >= low.
fn search(lid: u32, compact: bool, mass: bool, low: u32, frac: vec2<u32>, count: u32) -> u32 {
    var prefix = 0u;
    var goal = vec2<u32>(0u, count);
    let low4 = vec4<u32>(low);
    for (var r = 0u; r < 8u; r = r + 1u) {
        let shift = 28u - 4u * r;
        let p = vec4<u32>(prefix);
        let sh = vec4<u32>(shift);
        let t0 = max(p | (vec4<u32>(0u, 1u, 2u, 3u) << sh), low4);
        let t1 = max(p | (vec4<u32>(4u, 5u, 6u, 7u) << sh), low4);
        let t2 = max(p | (vec4<u32>(8u, 9u, 10u, 11u) << sh), low4);
        let t3 = max(p | (vec4<u32>(12u, 13u, 14u, 15u) << sh), low4);
        // After round 0, lane 0 collects only the keys above the range (see add_candidate).
        let lanes0 = vec4<u32>(select(t0.x, NONE, r > 0u), t0.y, t0.z, t0.w);
        // Keys whose bits above this round's digit exceed the prefix's are above the whole range
        // (none are in round 0, which covers every key; the shift is kept below 32).
        let range_shift = min(shift + 4u, 31u);
        let range_top = prefix >> range_shift;
        let zero = vec4<u32>(0u);
        sum_hi0 = zero;
        sum_hi1 = zero;
        sum_hi2 = zero;
        sum_hi3 = zero;
        sum_lo0 = zero;
        sum_lo1 = zero;
        sum_lo2 = zero;
        sum_lo3 = zero;
        if (compact) {
            for (var s = 0u; s < PER_INVOCATION; s = s + 1u) {
                let key = c_key[s];
                if (c_one[s] != 0u && key >= t0.x) {
                    let hi = c_mass_hi[s];
                    let lo = c_mass_lo[s];
                    let above = r > 0u && (key >> range_shift) > range_top;
                    add_candidate(mass, key, hi, lo, above, lanes0, t1, t2, t3);
                }
            }
        } else {
            for (var i = lid; i < params.vocab; i = i + WG) {
                let key = keys[i];
                // Below the lowest threshold it would add 0 to every lane.
                if (key >= t0.x) {
                    var w = vec2<u32>(0u);
                    if (mass) {
                        w = weights[i];
                    }
                    let above = r > 0u && (key >> range_shift) > range_top;
                    add_candidate(mass, key, w.x, w.y, above, lanes0, t1, t2, t3);
                }
            }
        }
        reduce_part(lid, 0u, sum_hi0, sum_lo0);
        reduce_part(lid, 1u, sum_hi1, sum_lo1);
        reduce_part(lid, 2u, sum_hi2, sum_lo2);
        reduce_part(lid, 3u, sum_hi3, sum_lo3);
        let g0 = part_total(0u);
        let g1 = part_total(1u);
        let g2 = part_total(2u);
        let g3 = part_total(3u);
        var base = vec2<u32>(g0[0].x, g0[1].x);
        if (r == 0u) {
            // Lane 0 of round 0 is the total at or above `low`, and nothing is above the range.
            if (mass) {
                goal = mul_fraction(base, frac);
            }
            base = vec2<u32>(0u);
        }
        // The sums fall as the digit grows, so the last digit that reaches the goal is the
        // largest; digit 0 (the prefix itself) always does.
        var digit = 0u;
        for (var d = 1u; d < 16u; d = d + 1u) {
            let lane = d % 4u;
            var g = g0;
            if (d >= 12u) {
                g = g3;
            } else if (d >= 8u) {
                g = g2;
            } else if (d >= 4u) {
                g = g1;
            }
            let v = add64(base, vec2<u32>(g[0][lane], g[1][lane]));
            if (at_least(v, goal) && (v.x | v.y) != 0u) {
                digit = d;
            }
        }
        prefix = prefix | (digit << shift);
    }
    return max(prefix, low);
}

// When at most CAP tokens have keys >= low, moves them into the registers and returns true (the
// same answer in every invocation).
fn gather(lid: u32, low: u32) -> bool {
    var n = 0u;
    for (var i = lid; i < params.vocab; i = i + WG) {
        if (keys[i] >= low) {
            n = n + 1u;
        }
    }
    // Inclusive prefix sum of the per-invocation counts (in red_lo[].x).
    red_lo[lid].x = n;
    workgroupBarrier();
    for (var s = 1u; s < WG; s = s * 2u) {
        var add = 0u;
        if (lid >= s) {
            add = red_lo[lid - s].x;
        }
        workgroupBarrier();
        red_lo[lid].x = red_lo[lid].x + add;
        workgroupBarrier();
    }
    if (lid == WG - 1u) {
        kept = red_lo[lid].x;
    }
    let total = workgroupUniformLoad(&kept);
    let end = red_lo[lid].x;
    // Before red_lo is a reduction's again.
    workgroupBarrier();
    if (total > CAP) {
        return false;
    }
    var o = end - n;
    for (var i = lid; i < params.vocab; i = i + WG) {
        if (keys[i] >= low) {
            slots[o] = i;
            o = o + 1u;
        }
    }
    workgroupBarrier();
    for (var s = 0u; s < PER_INVOCATION; s = s + 1u) {
        let slot = lid + s * WG;
        if (slot < total) {
            let i = slots[slot];
            let w = weights[i];
            c_index[s] = i;
            c_key[s] = keys[i];
            c_mass_hi[s] = w.x;
            c_mass_lo[s] = w.y;
            c_one[s] = 1u;
        } else {
            c_index[s] = NONE;
            c_key[s] = 0u;
            c_mass_hi[s] = 0u;
            c_mass_lo[s] = 0u;
            c_one[s] = 0u;
        }
    }
    return true;
}

// Writes the token with the smallest key >= k (the last of the descending run the draw reached,
// whose key is k), the first such index on ties.
fn write_pick(lid: u32, compact: bool, k: u32) {
    // reduce_best keeps the largest key, so keys go in complemented; NONE complemented (0) is
    // below the complement of every key order_key makes.
    var best = 0u;
    var at = NONE;
    if (compact) {
        for (var s = 0u; s < PER_INVOCATION; s = s + 1u) {
            let key = c_key[s];
            let i = c_index[s];
            if (c_one[s] != 0u && key >= k && (~key > best || (~key == best && i < at))) {
                best = ~key;
                at = i;
            }
        }
    } else {
        for (var i = lid; i < params.vocab; i = i + WG) {
            let key = keys[i];
            // i grows along this loop, so a tie keeps the first.
            if (key >= k && ~key > best) {
                best = ~key;
                at = i;
            }
        }
    }
    let pick = reduce_best(lid, best, at);
    if (lid == 0u) {
        token[0] = pick.y;
    }
}

@compute @workgroup_size(256)
fn sample_select(@builtin(local_invocation_index) lid: u32) {
    let top = global_max(lid);
    if (params.sampling == 0u) {
        if (lid == 0u) {
            token[0] = top.y;
        }
        return;
    }
    // Three phases, top-k, top-p and the draw, each a search from the last one's threshold; a
    // loop rather than three calls so the shader holds one copy of `search` (compilers inline
    // it). Before a phase the candidates move into registers when few enough: at the start when
    // the vocabulary is small, else after a cut.
    var compact = false;
    var try_gather = params.vocab <= CAP;
    var low = 0u;
    for (var phase = 0u; phase < 3u; phase = phase + 1u) {
        if (try_gather && !compact) {
            compact = gather(lid, low);
        }
        try_gather = false;
        let cut_k = phase == 0u && params.top_k != 0u;
        let cut_p = phase == 1u && params.top_p < 1.0;
        if (cut_k || cut_p || phase == 2u) {
            let frac = select(params.draw_fixed, params.top_p_fixed, phase == 1u);
            low = search(lid, compact, phase != 0u, low, frac, params.top_k);
            try_gather = true;
        }
    }
    write_pick(lid, compact, low);
}
