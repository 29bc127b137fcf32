//! The GPU context for kernel tests: with SELFROUTE_REQUIRE_GPU=1 (set by `cargo xtask test`) a
//! missing adapter fails the test; elsewhere the test is skipped with the reason.
#![allow(dead_code)]

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use selfroute_core::{TensorDType, TensorData};
use selfroute_wgpu::GpuContext;

pub fn context() -> Option<GpuContext> {
    match pollster::block_on(GpuContext::new()) {
        Ok(ctx) => {
            eprintln!("adapter: {}", ctx.adapter_name);
            Some(ctx)
        }
        Err(e) if std::env::var_os("SELFROUTE_REQUIRE_GPU").is_some() => {
            panic!("SELFROUTE_REQUIRE_GPU is set but: {e}")
        }
        Err(e) => {
            eprintln!("skipping GPU test: {e}");
            None
        }
    }
}

/// Uniform values in [-scale, scale), reproducible from `seed`.
pub fn random(n: usize, seed: u64, scale: f64) -> Vec<f32> {
    let mut rng = selfroute_core::rng::SplitMix64::new(seed);
    (0..n)
        .map(|_| ((rng.next_f64() * 2.0 - 1.0) * scale) as f32)
        .collect()
}

/// A read-only storage buffer holding `values` (a kernel's input).
pub fn input_buffer(ctx: &GpuContext, label: &str, values: &[f32]) -> wgpu::Buffer {
    ctx.storage_buffer(label, bytemuck::cast_slice(values))
        .expect("input buffer")
}

/// A read-write storage buffer holding `values` (a kernel's output, or one it updates): start
/// outputs with sentinel values to see what a kernel leaves untouched.
pub fn output_buffer(ctx: &GpuContext, label: &str, values: &[f32]) -> wgpu::Buffer {
    let buffer = ctx
        .scratch_buffer(label, (values.len() * 4) as u64)
        .expect("output buffer");
    ctx.queue
        .write_buffer(&buffer, 0, bytemuck::cast_slice(values));
    buffer
}

/// Records `encode` in one compute pass, submits it and reads back the whole of each of `read`
/// (buffers from `output_buffer`) as f32s. Panics on any error wgpu reported.
pub fn run_pass(
    ctx: &GpuContext,
    encode: impl FnOnce(&mut wgpu::ComputePass<'_>),
    read: &[&wgpu::Buffer],
) -> Vec<Vec<f32>> {
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        encode(&mut pass);
    }
    let readbacks: Vec<wgpu::Buffer> = read
        .iter()
        .map(|b| {
            let rb = ctx.readback_buffer("readback", b.size());
            enc.copy_buffer_to_buffer(b, 0, &rb, 0, b.size());
            rb
        })
        .collect();
    ctx.queue.submit([enc.finish()]);
    readbacks
        .iter()
        .map(|rb| pollster::block_on(ctx.read_f32(rb)).expect("readback"))
        .collect()
}

/// Asserts `|got - want| <= tol * (1 + |want|)` element by element (NaN fails) and returns the
/// worst `|got - want| / (1 + |want|)`, for the test to report.
pub fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let mut worst = 0.0f64;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (f64::from(*g) - w).abs() / (1.0 + w.abs());
        assert!(err <= tol, "{what}: [{i}] got {g}, want {w}");
        worst = worst.max(err);
    }
    worst
}

/// A random [rows, cols] weight stored as `dtype`, and the values a correct kernel reads from it.
pub fn weight(
    dtype: TensorDType,
    rows: usize,
    cols: usize,
    seed: u64,
) -> (TensorData<'static>, Vec<f32>) {
    let w = random(rows * cols, seed, 1.0);
    let (bytes, values): (Vec<u8>, Vec<f32>) = match dtype {
        TensorDType::F32 => (w.iter().flat_map(|v| v.to_le_bytes()).collect(), w),
        TensorDType::F16 => {
            let h: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
            (
                h.iter().flat_map(|v| v.to_le_bytes()).collect(),
                h.iter().map(|v| v.to_f32()).collect(),
            )
        }
        TensorDType::BF16 => {
            let h: Vec<half::bf16> = w.iter().map(|&v| half::bf16::from_f32(v)).collect();
            (
                h.iter().flat_map(|v| v.to_le_bytes()).collect(),
                h.iter().map(|v| v.to_f32()).collect(),
            )
        }
        TensorDType::Q8_0 | TensorDType::Q4_1 => {
            let ggml = if dtype == TensorDType::Q8_0 {
                GgmlDType::Q8_0
            } else {
                GgmlDType::Q4_1
            };
            let t = Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&t, ggml).unwrap();
            let values = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            (q.data().unwrap().into_owned(), values)
        }
        other => panic!("no test data for {other}"),
    };
    let td = TensorData {
        name: format!("{dtype} {rows}x{cols}"),
        dtype,
        shape: vec![rows, cols],
        bytes: Cow::Owned(bytes),
    };
    (td, values)
}
