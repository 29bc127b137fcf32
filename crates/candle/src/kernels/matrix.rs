//! The repacked weight matrix and its parallel product.

use half::f16;
use rayon::prelude::*;

use super::dispatch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockFormat {
    /// 4-bit quants, value = (q - 8) * d.
    Q4_0,
    /// 4-bit quants, value = q * d + m.
    Q4_1,
    /// 8-bit signed quants, value = q * d.
    Q8_0,
}

impl BlockFormat {
    fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }

    /// Bytes of quants per block after repacking.
    pub(super) fn quant_bytes(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q4_1 => 16,
            Self::Q8_0 => 32,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{cols} columns are not a multiple of the block size 32")]
    RaggedColumns { cols: usize },
    #[error("expected {expected} bytes for a {rows}x{cols} {format:?} matrix, got {actual}")]
    WrongByteCount {
        format: BlockFormat,
        rows: usize,
        cols: usize,
        expected: usize,
        actual: usize,
    },
    #[error("activations hold {actual} values, expected {batch} x {cols}")]
    WrongInput {
        batch: usize,
        cols: usize,
        actual: usize,
    },
    #[error("row {row} is outside the {rows} rows")]
    RowOutOfRange { row: usize, rows: usize },
}

pub const BLOCK: usize = 32;

/// A [rows, cols] weight matrix in a GGML block format, repacked for the kernels.
pub struct QuantMatrix {
    format: BlockFormat,
    rows: usize,
    cols: usize,
    /// rows * blocks_per_row * quant_bytes.
    quants: Vec<u8>,
    /// Per block: scale d. Kept f16 (not widened at load): decode is memory-bound, and f32 scales
    /// would add a fifth to the bytes read per token.
    scales: Vec<f16>,
    /// Per block: offset m (Q4_1: stored; Q4_0: -8d). Empty for Q8_0.
    offsets: Vec<f16>,
}

impl QuantMatrix {
    pub fn new(
        format: BlockFormat,
        rows: usize,
        cols: usize,
        ggml: &[u8],
    ) -> Result<Self, KernelError> {
        if !cols.is_multiple_of(BLOCK) {
            return Err(KernelError::RaggedColumns { cols });
        }
        let blocks = rows * cols / BLOCK;
        let expected = blocks * format.block_bytes();
        if ggml.len() != expected {
            return Err(KernelError::WrongByteCount {
                format,
                rows,
                cols,
                expected,
                actual: ggml.len(),
            });
        }
        let qb = format.quant_bytes();
        let mut quants = Vec::with_capacity(blocks * qb);
        let mut scales = Vec::with_capacity(blocks);
        let mut offsets = Vec::with_capacity(blocks);
        for block in ggml.chunks_exact(format.block_bytes()) {
            let d = f16::from_le_bytes([block[0], block[1]]);
            match format {
                BlockFormat::Q4_0 => {
                    scales.push(d);
                    // -8d is exact in f16 (a power-of-two multiple) unless it overflows.
                    offsets.push(f16::from_f32(-8.0 * d.to_f32()));
                    quants.extend_from_slice(&block[2..18]);
                }
                BlockFormat::Q4_1 => {
                    scales.push(d);
                    offsets.push(f16::from_le_bytes([block[2], block[3]]));
                    quants.extend_from_slice(&block[4..20]);
                }
                BlockFormat::Q8_0 => {
                    scales.push(d);
                    quants.extend_from_slice(&block[2..34]);
                }
            }
        }
        Ok(Self {
            format,
            rows,
            cols,
            quants,
            scales,
            offsets,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn format(&self) -> BlockFormat {
        self.format
    }

    pub(super) fn blocks_per_row(&self) -> usize {
        self.cols / BLOCK
    }

    /// One row's quants, scales and offsets.
    pub(super) fn row(&self, r: usize) -> (&[u8], &[f16], &[f16]) {
        let nb = self.blocks_per_row();
        let qb = self.format.quant_bytes();
        let offsets = self.offsets.get(r * nb..(r + 1) * nb).unwrap_or(&[]);
        (
            &self.quants[r * nb * qb..(r + 1) * nb * qb],
            &self.scales[r * nb..(r + 1) * nb],
            offsets,
        )
    }

    /// out[b * rows + r] = sum_c W[r, c] * xs[b * cols + c], for b in 0..batch.
    pub fn matmul(&self, xs: &[f32], batch: usize, out: &mut [f32]) -> Result<(), KernelError> {
        self.check_shapes(xs, batch, out)?;
        if batch == 0 || self.rows == 0 {
            return Ok(());
        }
        // Enough chunks to balance the pool, few enough that scheduling is noise.
        let threads = rayon::current_num_threads().max(1);
        let chunk_rows = self.rows.div_ceil(threads * 4).max(16);
        if batch == 1 {
            let block_sums = block_sums(xs);
            out.par_chunks_mut(chunk_rows)
                .enumerate()
                .for_each(|(i, chunk)| {
                    dispatch::matvec_rows(self, i * chunk_rows, xs, &block_sums, chunk);
                });
            return Ok(());
        }
        // Prefill: each task dequantizes its rows once and multiplies them with every activation
        // row in one small f32 GEMM; results land row-major per task and are transposed into
        // [batch, rows] at the end.
        let mut by_row = vec![0.0f32; self.rows * batch];
        by_row
            .par_chunks_mut(chunk_rows * batch)
            .enumerate()
            .for_each(|(i, chunk)| {
                dispatch::matmul_rows(self, i * chunk_rows, xs, batch, chunk);
            });
        transpose_into(&by_row, batch, self.rows, out);
        Ok(())
    }

    /// The same product as [`QuantMatrix::matmul`] for the rows of several sequences decoding
    /// together: each activation row goes through the batch-1 matrix-vector kernel, so every
    /// output equals a batch-1 `matmul` of that row bit for bit (a batched step cannot change a
    /// greedy continuation), while the rows run tile by tile: the B rows reuse each tile of
    /// weights from cache, so the weights are read from memory about once per step, not B times,
    /// and the AVX paths turn each weight block into floats once for several rows.
    pub fn matvec_batch(
        &self,
        xs: &[f32],
        batch: usize,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        if batch == 1 {
            // One sequence: the decode step itself (four rows at a time, prefetching).
            return self.matmul(xs, batch, out);
        }
        self.check_shapes(xs, batch, out)?;
        if batch == 0 || self.rows == 0 {
            return Ok(());
        }
        let sums = block_sums(xs);
        let threads = rayon::current_num_threads().max(1);
        let chunk_rows = self.rows.div_ceil(threads * 4).max(16);
        let tile = self.tile_rows();
        // Each task fills [batch][its rows], scattered into [batch, rows] at the end.
        let mut by_chunk = vec![0.0f32; self.rows * batch];
        by_chunk
            .par_chunks_mut(chunk_rows * batch)
            .enumerate()
            .for_each(|(i, chunk)| {
                let len = chunk.len() / batch;
                let mut start = 0;
                while start < len {
                    let n = (len - start).min(tile);
                    let rows_out = dispatch::MultiOut {
                        xs,
                        sums: &sums,
                        batch,
                        out: chunk,
                        stride: len,
                        at: start,
                    };
                    dispatch::matvec_multi(self, i * chunk_rows + start, n, rows_out);
                    start += n;
                }
            });
        for (i, chunk) in by_chunk.chunks(chunk_rows * batch).enumerate() {
            let len = chunk.len() / batch;
            for (b, values) in chunk.chunks_exact(len).enumerate() {
                let at = b * self.rows + i * chunk_rows;
                out[at..at + len].copy_from_slice(values);
            }
        }
        Ok(())
    }

    /// Weight rows per cache tile in `matvec_batch`: about 32 KiB of quants and scales (an L1
    /// data cache), a multiple of 4 because the SIMD kernels take rows four at a time.
    fn tile_rows(&self) -> usize {
        let scale_bytes = if self.offsets.is_empty() { 2 } else { 4 };
        let row_bytes = self.blocks_per_row() * (self.format.quant_bytes() + scale_bytes);
        ((32 * 1024) / row_bytes.max(1)).max(4) / 4 * 4
    }

    fn check_shapes(&self, xs: &[f32], batch: usize, out: &[f32]) -> Result<(), KernelError> {
        if xs.len() != batch * self.cols {
            return Err(KernelError::WrongInput {
                batch,
                cols: self.cols,
                actual: xs.len(),
            });
        }
        if out.len() != batch * self.rows {
            return Err(KernelError::WrongInput {
                batch,
                cols: self.rows,
                actual: out.len(),
            });
        }
        Ok(())
    }

    /// Row `row` as f32 (embedding lookup).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) -> Result<(), KernelError> {
        if row >= self.rows {
            return Err(KernelError::RowOutOfRange {
                row,
                rows: self.rows,
            });
        }
        if out.len() != self.cols {
            return Err(KernelError::WrongInput {
                batch: 1,
                cols: self.cols,
                actual: out.len(),
            });
        }
        super::dot::dequantize_row(self.format, self.row(row), out);
        Ok(())
    }
}

/// [rows, batch] -> [batch, rows].
fn transpose_into(by_row: &[f32], batch: usize, rows: usize, out: &mut [f32]) {
    for (r, values) in by_row.chunks_exact(batch).enumerate() {
        for (b, v) in values.iter().enumerate() {
            out[b * rows + r] = *v;
        }
    }
}

/// Sum of each block of 32 activations (for the offset term).
fn block_sums(x: &[f32]) -> Vec<f32> {
    x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect()
}
