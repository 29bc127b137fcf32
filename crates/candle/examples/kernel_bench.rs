//! Micro-benchmark of the f32-activation kernels on SmolLM2's matrix shapes, beside candle's
//! QMatMul (8-bit activations) on the same bytes. Threads come from RAYON_NUM_THREADS.

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use selfroute_candle::kernels::{BlockFormat, QuantMatrix, selected_path};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "kernel path: {}, threads: {}",
        selected_path(),
        rayon::current_num_threads()
    );
    for (rows, cols, fmt, gfmt) in [
        (1536usize, 576usize, BlockFormat::Q4_1, GgmlDType::Q4_1),
        (1536, 576, BlockFormat::Q4_1, GgmlDType::Q4_1),
        (576, 1536, BlockFormat::Q4_1, GgmlDType::Q4_1),
        (576, 576, BlockFormat::Q4_1, GgmlDType::Q4_1),
        (49152, 576, BlockFormat::Q8_0, GgmlDType::Q8_0),
    ] {
        let w = Tensor::randn(0f32, 0.05, (rows, cols), &Device::Cpu)?;
        let q = QTensor::quantize(&w, gfmt)?;
        let bytes = q.data()?.to_vec();
        let ours = QuantMatrix::new(fmt, rows, cols, &bytes)?;
        let qmm = QMatMul::from_qtensor(q)?;
        for batch in [1usize, 128] {
            let x = Tensor::randn(0f32, 1.0, (batch, cols), &Device::Cpu)?;
            let xs = x.flatten_all()?.to_vec1::<f32>()?;
            let mut out = vec![0f32; rows * batch];
            let iters = (200_000_000 / (rows * cols * batch)).max(3);
            let t = Instant::now();
            for _ in 0..iters {
                ours.matmul(&xs, batch, &mut out)?;
            }
            let ours_us = t.elapsed().as_secs_f64() * 1e6 / iters as f64;
            let t = Instant::now();
            for _ in 0..iters {
                qmm.forward(&x)?;
            }
            let candle_us = t.elapsed().as_secs_f64() * 1e6 / iters as f64;
            let gflop = 2.0 * (rows * cols * batch) as f64 / 1e3;
            println!(
                "{rows:>6}x{cols:<5} {fmt:?} batch {batch:>3}: ours {ours_us:>9.1} us ({:>6.1} GFLOP/s)  candle QMatMul {candle_us:>9.1} us  ratio {:.2}x",
                gflop / ours_us,
                candle_us / ours_us
            );
        }
    }
    Ok(())
}
