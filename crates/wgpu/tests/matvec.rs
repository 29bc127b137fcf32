//! The matvec kernels against a CPU reference on random inputs, on whatever adapter is available
//! (lavapipe in CI). Q8_0 data comes from candle's quantizer and the reference from candle's
//! dequantizer, so the repacking and the kernel are checked against an independent codec.
//! With SELFROUTE_REQUIRE_GPU=1 (set by `cargo xtask test`) a missing adapter fails the tests;
//! elsewhere they are skipped with the reason.

mod support;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use selfroute_wgpu::GpuError;
use selfroute_wgpu::matvec::{MatVec, WeightMatrix};
use support::{context, random};

fn reference(w: &[f32], x: &[f32], rows: usize, cols: usize) -> Vec<f64> {
    (0..rows)
        .map(|r| {
            (0..cols)
                .map(|c| f64::from(w[r * cols + c]) * f64::from(x[c]))
                .sum()
        })
        .collect()
}

fn assert_close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-4 * (1.0 + w.abs());
        assert!(
            (f64::from(*g) - w).abs() <= tol,
            "{what}: row {i}: {g} vs {w}"
        );
    }
}

#[test]
fn f32_matvec_matches_the_cpu_on_awkward_shapes() {
    let Some(ctx) = context() else { return };
    let mv = MatVec::new(&ctx);
    // Rows and columns that are not multiples of the workgroup size, one row, one column, and
    // more rows than one dispatch dimension holds.
    for (rows, cols) in [
        (1, 1),
        (70, 33),
        (130, 100),
        (576, 576),
        (3, 1536),
        (70_000, 8),
    ] {
        let w = random(rows * cols, rows as u64 * 31 + cols as u64, 1.0);
        let x = random(cols, 7, 1.0);
        let matrix = WeightMatrix::from_f32(&ctx, &w, rows, cols).unwrap();
        let got = pollster::block_on(mv.run(&ctx, &matrix, &x)).unwrap();
        assert_close(
            &got,
            &reference(&w, &x, rows, cols),
            &format!("f32 {rows}x{cols}"),
        );
    }
}

#[test]
fn q8_0_matvec_matches_candles_dequantization() {
    let Some(ctx) = context() else { return };
    let mv = MatVec::new(&ctx);
    for (rows, cols) in [(1, 32), (65, 64), (3, 576), (1000, 96), (577, 1536)] {
        let w = random(rows * cols, rows as u64 + 3 * cols as u64, 1.0);
        let t = Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, GgmlDType::Q8_0).unwrap();
        let bytes = q.data().unwrap();
        let dequantized = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let x = random(cols, 11, 1.0);
        let matrix = WeightMatrix::from_q8_0(&ctx, &bytes, rows, cols).unwrap();
        let got = pollster::block_on(mv.run(&ctx, &matrix, &x)).unwrap();
        assert_close(
            &got,
            &reference(&dequantized, &x, rows, cols),
            &format!("q8_0 {rows}x{cols}"),
        );
    }
}

#[test]
fn bad_shapes_are_clear_errors() {
    let Some(ctx) = context() else { return };
    let mv = MatVec::new(&ctx);
    assert!(matches!(
        WeightMatrix::from_f32(&ctx, &[1.0; 5], 2, 3),
        Err(GpuError::Invalid(_))
    ));
    assert!(matches!(
        WeightMatrix::from_q8_0(&ctx, &[0u8; 34], 1, 30),
        Err(GpuError::Invalid(_))
    ));
    assert!(matches!(
        WeightMatrix::from_q8_0(&ctx, &[0u8; 33], 1, 32),
        Err(GpuError::Invalid(_))
    ));
    let m = WeightMatrix::from_f32(&ctx, &[1.0; 6], 2, 3).unwrap();
    assert!(matches!(
        pollster::block_on(mv.run(&ctx, &m, &[1.0; 4])),
        Err(GpuError::Invalid(_))
    ));
    // Beyond the 128 MiB storage binding limit: refused before anything is allocated.
    let rows = (ctx.limits.max_storage_buffer_binding_size as usize / 4) / 32 + 1;
    let big = vec![0.0f32; rows * 32];
    assert!(matches!(
        WeightMatrix::from_f32(&ctx, &big, rows, 32),
        Err(GpuError::TooLarge { .. })
    ));
}
