//! The embedding gather, and through it the dequantizing load (`kernels/quant.wgsl`) every weight
//! kernel shares: against gguf-py's own dequantization of tests/reference/data/quant_types.gguf,
//! and on random tables and ids.

mod support;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use selfroute_core::rng::SplitMix64;
use selfroute_core::{GgufFile, TensorDType, TensorData};
use selfroute_wgpu::embedding::EmbeddingKernel;
use selfroute_wgpu::kernel::Step;
use selfroute_wgpu::quant::{GpuMatrix, WeightFormat};
use selfroute_wgpu::{GpuContext, GpuError};
use serde::Deserialize;
use support::{assert_close, context, output_buffer, run_pass, weight};

fn data(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/reference/data")
        .join(name)
}

fn quant_types() -> (GgufFile, BTreeMap<String, QuantTensor>) {
    let file = GgufFile::from_bytes(
        "quant_types.gguf",
        std::fs::read(data("quant_types.gguf")).unwrap(),
    )
    .unwrap();
    let text = std::fs::read_to_string(data("quant_types.json")).unwrap();
    let reference: QuantReference = serde_json::from_str(&text).unwrap();
    (file, reference.tensors)
}

#[derive(Deserialize)]
struct QuantReference {
    tensors: BTreeMap<String, QuantTensor>,
}

#[derive(Deserialize)]
struct QuantTensor {
    #[serde(rename = "type")]
    dtype: String,
    /// gguf-py's dequantized values, [rows][cols].
    values: Vec<Vec<f32>>,
}

fn upload(ctx: &GpuContext, td: &TensorData<'_>) -> GpuMatrix {
    match GpuMatrix::upload(ctx, td) {
        Ok(m) => m,
        Err(e) => panic!("{}: {e}", td.name),
    }
}

/// Rows `ids` of `table`, with the step saying `n` tokens but the dispatch covering all of `ids`;
/// the output starts as NaN.
fn gather(
    ctx: &GpuContext,
    kernel: &EmbeddingKernel,
    table: &GpuMatrix,
    ids: &[u32],
    n: usize,
) -> Vec<f32> {
    let step = ctx.uniform(
        "step",
        &Step {
            n: n as u32,
            ..Step::default()
        },
    );
    let ids_buffer = ctx
        .storage_buffer("ids", bytemuck::cast_slice(ids))
        .unwrap();
    let out = output_buffer(ctx, "out", &vec![f32::NAN; ids.len() * table.cols]);
    let bound = kernel.bind(ctx, &step, table, &ids_buffer, &out);
    run_pass(ctx, |pass| kernel.encode(pass, &bound, ids.len()), &[&out]).remove(0)
}

#[test]
fn gpu_formats_dequantize_like_gguf_py() {
    let Some(ctx) = context() else { return };
    let kernel = EmbeddingKernel::new(&ctx);
    let (file, reference) = quant_types();
    for (name, format) in [
        ("f32", WeightFormat::F32),
        ("f16", WeightFormat::F16),
        ("q8_0", WeightFormat::Q8_0),
        ("q4_1", WeightFormat::Q4_1),
    ] {
        let expected = &reference[name];
        let td = file.tensor_by_name(name).unwrap().unwrap();
        assert_eq!(td.dtype.to_string(), expected.dtype, "{name}");
        let (rows, cols) = (expected.values.len(), expected.values[0].len());
        assert_eq!(td.shape, [rows, cols], "{name}");
        let table = upload(&ctx, &td);
        assert_eq!(table.format, format, "{name}");
        // Every row, in an order that is not the identity, one of them twice.
        let ids: Vec<u32> = (0..rows as u32).rev().chain([1]).collect();
        let got = gather(&ctx, &kernel, &table, &ids, ids.len());
        let mut worst = 0.0f32;
        for (t, &id) in ids.iter().enumerate() {
            let want = &expected.values[id as usize];
            for (c, (g, w)) in got[t * cols..(t + 1) * cols].iter().zip(want).enumerate() {
                let err = (g - w).abs() / w.abs().max(1.0);
                assert!(err <= 1e-6, "{name}[{id}, {c}]: {g} vs gguf-py {w}");
                worst = worst.max(err);
            }
        }
        eprintln!("{name}: worst |err| / max(|want|, 1) against gguf-py = {worst:.2e}");
    }
}

#[test]
fn unsupported_formats_are_refused_with_a_clear_error() {
    let Some(ctx) = context() else { return };
    let (file, reference) = quant_types();
    for name in ["q4_0", "q4_k", "q6_k"] {
        let td = file.tensor_by_name(name).unwrap().unwrap();
        match GpuMatrix::upload(&ctx, &td) {
            Err(GpuError::Unsupported(message)) => {
                eprintln!("{name}: {message}");
                assert!(message.contains(name), "{name}: {message}");
                assert!(
                    message.contains(&reference[name].dtype),
                    "{name}: {message}"
                );
                assert!(message.contains("CPU engine"), "{name}: {message}");
            }
            Err(other) => panic!("{name}: expected Unsupported, got {other}"),
            Ok(_) => panic!("{name}: uploaded a format the kernels cannot read"),
        }
    }
    // Rows the kernels cannot load four values at a time.
    let td = TensorData {
        name: "ragged".into(),
        dtype: TensorDType::F32,
        shape: vec![2, 6],
        bytes: Cow::Owned(vec![0; 48]),
    };
    assert!(matches!(
        GpuMatrix::upload(&ctx, &td),
        Err(GpuError::Unsupported(_))
    ));
}

#[test]
fn random_ids_gather_their_rows_including_the_last() {
    let Some(ctx) = context() else { return };
    let kernel = EmbeddingKernel::new(&ctx);
    // Widths of 9, 65 and 72 groups of four values: less than one workgroup of 64, and more.
    for (dtype, rows, cols) in [
        (TensorDType::F32, 1000, 36),
        (TensorDType::F16, 517, 260),
        (TensorDType::Q8_0, 301, 288),
    ] {
        let (td, w) = weight(dtype, rows, cols, (rows + cols) as u64);
        let table = upload(&ctx, &td);
        let mut rng = SplitMix64::new(rows as u64);
        let mut ids: Vec<u32> = vec![rows as u32 - 1, 0];
        ids.extend((0..14).map(|_| rng.below(rows as u64) as u32));
        ids.push(rows as u32 - 1);
        // Out of the table: zeros (the host checks ids first; the kernel must not read past).
        // 2^30 * cols wraps to 0 in u32 for these widths (multiples of 4): without the bounds
        // check it would read row 0, not past the buffer, where robust access hides the bug.
        ids.extend([rows as u32, u32::MAX, 1 << 30]);
        let n = ids.len();
        // One more id than the step has tokens: its row must stay untouched.
        ids.push(3);
        let got = gather(&ctx, &kernel, &table, &ids, n);
        let mut want: Vec<f64> = Vec::new();
        for &id in &ids[..n] {
            let id = id as usize;
            if id < rows {
                want.extend(w[id * cols..(id + 1) * cols].iter().map(|&v| f64::from(v)));
            } else {
                want.extend(std::iter::repeat_n(0.0, cols));
            }
        }
        assert_close(&got[..n * cols], &want, 0.0, &format!("{dtype} ids"));
        assert!(
            got[n * cols..].iter().all(|v| v.is_nan()),
            "{dtype}: a row past the step's tokens was written"
        );
    }
}
