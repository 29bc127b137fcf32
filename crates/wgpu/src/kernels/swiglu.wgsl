// SwiGLU: act[t, i] = silu(gate[t, i]) * up[t, i], reading the fused gate|up rows the linear
// kernel wrote ([tokens][gate 0..inter | up 0..inter]).

struct Dims {
    inter: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> dims: Dims;
@group(0) @binding(2) var<storage, read> gate_up: array<f32>;
@group(0) @binding(3) var<storage, read_write> act: array<f32>;

@compute @workgroup_size(64)
fn swiglu(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.y;
    let i = gid.x;
    if (t >= step.n || i >= dims.inter) {
        return;
    }
    let g = gate_up[t * 2u * dims.inter + i];
    let u = gate_up[t * 2u * dims.inter + dims.inter + i];
    act[t * dims.inter + i] = g / (1.0 + exp(-g)) * u;
}
