//! The fast rollout engine: the trainable model's forward pass without autograd, for sampling.
//!
//! The rollouts of a step are most of its time, and the trainable model's cached forward
//! (`TrainableModel::forward_cached`) spends it on graph bookkeeping, not arithmetic: per layer
//! and decode step it concatenates the whole key/value cache into a new tensor, repeats the
//! key/value heads for grouped-query attention, and runs attention as one tiny batched matrix
//! product per head, a few dozen allocating ops in all. Here:
//!
//! - every row of the step decodes in one forward: all prompts x G samples, each row at its own
//!   position against its own cache, so each weight matrix is read once per step for all rows;
//! - each row's key/value cache is reserved for its whole length (prompt + `max_new_tokens`) up
//!   front and appended to in place;
//! - attention is written over those slices (a few thousand multiply-adds per head and row),
//!   split across threads by row and head;
//! - only the matrix products (projections, MLP, head) are candle ops, on the model's own weight
//!   tensors, with the weight as the left operand (see [`linear`]).
//!
//! The weights are the trainable model's `Var`s themselves: a `Var` and the tensor read here
//! share storage, and the optimiser writes into it in place (`Var::set`), so every rollout sees
//! exactly the weights the loss differentiates, with nothing copied or refreshed. The arithmetic
//! is the trainable model's (same f32 products and formulas, summed in another order), so logits
//! agree to float rounding: `tests/fast_rollout.rs` holds them to 1e-4 of
//! `TrainableModel::forward` on the tiny fixtures and to 2e-4 on SmolLM2-135M (logits of size ~20;
//! 6.6e-5 measured).
//! The loss re-scores every sampled token with the trainable model, so such a difference can only
//! move a draw that lands within about that much probability of a token boundary.

use candle_core::{DType, Device, Tensor};
use selfroute_candle::dot;
use selfroute_core::ModelConfig;

use crate::error::{Result, TrainError};
use crate::model::{TrainableModel, rms_norm};

/// Whether [`FastDecoder`] can run `model`: f32 weights on the CPU (f64 models, used by the
/// finite-difference tests, and GPU models take the trainable path).
pub fn supports(model: &TrainableModel) -> bool {
    model.dtype() == DType::F32 && model.device().is_cpu()
}

/// One row of a forward: `token` at position `pos` of sequence `seq`, whose cache must hold
/// exactly `pos` positions once the earlier rows of the same call are appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub seq: usize,
    pub token: u32,
    pub pos: usize,
}

/// One sequence's keys and values, per layer `[position][kv_heads * head_dim]`.
#[derive(Clone, Default)]
struct SeqCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl SeqCache {
    fn len(&self, kv_dim: usize) -> usize {
        self.k.first().map_or(0, |k| k.len() / kv_dim.max(1))
    }
}

/// Sequences decoding together over the trainable model's weights (see the module docs).
pub struct FastDecoder<'m> {
    model: &'m TrainableModel,
    config: &'m ModelConfig,
    /// [position][head_dim / 2], from the same angles as the trainable model's tables.
    cos: Vec<f32>,
    sin: Vec<f32>,
    seqs: Vec<SeqCache>,
    threads: usize,
}

impl<'m> FastDecoder<'m> {
    pub fn new(model: &'m TrainableModel) -> Result<Self> {
        if !supports(model) {
            return Err(TrainError::InvalidSettings(format!(
                "the fast rollout engine needs f32 weights on the CPU, not {:?} on {:?}",
                model.dtype(),
                model.device()
            )));
        }
        let c = model.config();
        // Computed in f64 and rounded to f32, as the trainable model's tables are.
        let (cos, sin) = selfroute_core::rope::angles(c.head_dim, c.rope_theta, c.context_length)
            .map(|a| (a.cos() as f32, a.sin() as f32))
            .unzip();
        Ok(Self {
            model,
            config: c,
            cos,
            sin,
            seqs: Vec::new(),
            threads: std::thread::available_parallelism().map_or(1, usize::from),
        })
    }

    /// A new, empty sequence whose cache is reserved for `capacity` positions. Reserved, not
    /// touched: the pages of a row that stops early are never mapped.
    pub fn new_sequence(&mut self, capacity: usize) -> usize {
        let size = capacity.min(self.config.context_length) * self.kv_dim();
        let layers = || {
            (0..self.config.num_layers)
                .map(|_| Vec::with_capacity(size))
                .collect()
        };
        self.seqs.push(SeqCache {
            k: layers(),
            v: layers(),
        });
        self.seqs.len() - 1
    }

    /// A new sequence holding a copy of `from`'s cache (a prompt shared by a group), reserved
    /// for `capacity` positions.
    pub fn fork(&mut self, from: usize, capacity: usize) -> Result<usize> {
        let source = self.seqs.get(from).cloned().ok_or_else(|| unknown(from))?;
        let id = self.new_sequence(capacity);
        let seq = &mut self.seqs[id];
        for (dst, src) in seq.k.iter_mut().zip(&source.k) {
            dst.extend_from_slice(src);
        }
        for (dst, src) in seq.v.iter_mut().zip(&source.v) {
            dst.extend_from_slice(src);
        }
        Ok(id)
    }

    /// Frees a finished sequence's cache (its id stays valid and empty).
    pub fn release(&mut self, seq: usize) {
        if let Some(s) = self.seqs.get_mut(seq) {
            *s = SeqCache::default();
        }
    }

    /// Positions cached for `seq`.
    pub fn len(&self, seq: usize) -> usize {
        self.seqs.get(seq).map_or(0, |s| s.len(self.kv_dim()))
    }

    /// Runs `rows` (a prompt: one sequence at consecutive positions; a decode step: one row per
    /// sequence) and returns the logits `[rows.len(), vocab]` of the rows in `want` (indices
    /// into `rows`).
    pub fn forward(&mut self, rows: &[Row], want: &[usize]) -> Result<Vec<Vec<f32>>> {
        let hidden = self.hidden(rows)?;
        let picked: Vec<u32> = want
            .iter()
            .map(|&i| {
                u32::try_from(i)
                    .ok()
                    .filter(|_| i < rows.len())
                    .ok_or_else(|| TrainError::InvalidSettings(format!("no row {i}")))
            })
            .collect::<Result<_>>()?;
        let hidden = hidden.index_select(&Tensor::new(picked.as_slice(), &Device::Cpu)?, 0)?;
        let logits = linear(&hidden, self.model.head().as_tensor())?;
        Ok(logits.to_vec2::<f32>()?)
    }

    fn kv_dim(&self) -> usize {
        self.config.num_kv_heads * self.config.head_dim
    }

    /// The final normed hidden states `[rows, hidden]`, appending every row's key and value.
    fn hidden(&mut self, rows: &[Row]) -> Result<Tensor> {
        let c = self.config;
        for row in rows {
            if row.pos >= c.context_length {
                return Err(TrainError::InvalidSettings(format!(
                    "position {} is outside the context of {}",
                    row.pos, c.context_length
                )));
            }
            if row.seq >= self.seqs.len() {
                return Err(unknown(row.seq));
            }
        }
        self.check_positions(rows)?;
        let eps = f64::from(c.rms_norm_eps);
        let model = self.model;
        let ids: Vec<u32> = rows.iter().map(|r| r.token).collect();
        let mut x = model
            .embedding()
            .as_tensor()
            .index_select(&Tensor::new(ids.as_slice(), &Device::Cpu)?, 0)?;
        for (l, layer) in model.layers().iter().enumerate() {
            let h = rms_norm(&x, &layer.attn_norm, eps)?;
            let mut q = linear(&h, layer.q.as_tensor())?;
            let mut k = linear(&h, layer.k.as_tensor())?;
            let mut v = linear(&h, layer.v.as_tensor())?;
            if let Some((bq, bk, bv)) = &layer.qkv_bias {
                q = q.broadcast_add(bq.as_tensor())?;
                k = k.broadcast_add(bk.as_tensor())?;
                v = v.broadcast_add(bv.as_tensor())?;
            }
            let mut q = q.flatten_all()?.to_vec1::<f32>()?;
            let mut k = k.flatten_all()?.to_vec1::<f32>()?;
            let v = v.flatten_all()?.to_vec1::<f32>()?;
            let (q_dim, kv_dim) = (c.num_heads * c.head_dim, self.kv_dim());
            for (i, row) in rows.iter().enumerate() {
                self.rotate(&mut q[i * q_dim..(i + 1) * q_dim], row.pos);
                self.rotate(&mut k[i * kv_dim..(i + 1) * kv_dim], row.pos);
                let seq = &mut self.seqs[row.seq];
                seq.k[l].extend_from_slice(&k[i * kv_dim..(i + 1) * kv_dim]);
                seq.v[l].extend_from_slice(&v[i * kv_dim..(i + 1) * kv_dim]);
            }
            let out = self.attend(l, rows, &q);
            let out = Tensor::from_vec(out, (rows.len(), q_dim), &Device::Cpu)?;
            x = (x + linear(&out, layer.o.as_tensor())?)?;
            let h = rms_norm(&x, &layer.ffn_norm, eps)?;
            let gate = linear(&h, layer.gate.as_tensor())?.silu()?;
            let up = linear(&h, layer.up.as_tensor())?;
            x = (x + linear(&(gate * up)?, layer.down.as_tensor())?)?;
        }
        rms_norm(&x, model.output_norm(), eps)
    }

    /// Every row must extend its sequence by exactly one position, in order.
    fn check_positions(&self, rows: &[Row]) -> Result<()> {
        let mut next: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
        for row in rows {
            let expected = *next.entry(row.seq).or_insert_with(|| self.len(row.seq));
            if row.pos != expected {
                return Err(TrainError::InvalidSettings(format!(
                    "sequence {} holds {expected} positions; a row at position {} cannot follow",
                    row.seq, row.pos
                )));
            }
            next.insert(row.seq, expected + 1);
        }
        Ok(())
    }

    /// Rotates one row's heads (`[heads][head_dim]`) to position `pos`, in the layout the
    /// weights need.
    fn rotate(&self, x: &mut [f32], pos: usize) {
        let hd = self.config.head_dim;
        let half = hd / 2;
        let cos = &self.cos[pos * half..(pos + 1) * half];
        let sin = &self.sin[pos * half..(pos + 1) * half];
        for head in x.chunks_exact_mut(hd) {
            match self.config.rope_layout {
                selfroute_core::RopeLayout::Half => {
                    let (lo, hi) = head.split_at_mut(half);
                    for i in 0..half {
                        let (a, b) = (lo[i], hi[i]);
                        lo[i] = a * cos[i] - b * sin[i];
                        hi[i] = a * sin[i] + b * cos[i];
                    }
                }
                selfroute_core::RopeLayout::Interleaved => {
                    for (i, pair) in head.chunks_exact_mut(2).enumerate() {
                        let (a, b) = (pair[0], pair[1]);
                        pair[0] = a * cos[i] - b * sin[i];
                        pair[1] = a * sin[i] + b * cos[i];
                    }
                }
            }
        }
    }

    /// Causal attention of each row's query heads against its sequence's cache up to its own
    /// position. Returns `[rows][heads * head_dim]`.
    fn attend(&self, layer: usize, rows: &[Row], q: &[f32]) -> Vec<f32> {
        let c = self.config;
        let (heads, hd, kv_dim) = (c.num_heads, c.head_dim, self.kv_dim());
        let group = heads / c.num_kv_heads.max(1);
        let scale = 1.0 / (hd as f32).sqrt();
        let mut out = vec![0.0f32; rows.len() * heads * hd];
        let work = |first: usize, chunk: &mut [f32]| {
            let mut scores = Vec::new();
            for (j, o) in chunk.chunks_exact_mut(hd).enumerate() {
                let item = first + j;
                let (r, h) = (item / heads, item % heads);
                let row = rows[r];
                let seq = &self.seqs[row.seq];
                let (keys, values) = (&seq.k[layer], &seq.v[layer]);
                let kv = (h / group) * hd;
                let qh = &q[item * hd..(item + 1) * hd];
                scores.clear();
                scores.extend(
                    (0..=row.pos)
                        .map(|t| dot(qh, &keys[t * kv_dim + kv..t * kv_dim + kv + hd]) * scale),
                );
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut total = 0.0f32;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    total += *s;
                }
                let inv = 1.0 / total;
                for (t, p) in scores.iter().enumerate() {
                    let w = p * inv;
                    let vt = &values[t * kv_dim + kv..t * kv_dim + kv + hd];
                    for (acc, x) in o.iter_mut().zip(vt) {
                        *acc += w * x;
                    }
                }
            }
        };
        let items = rows.len() * heads;
        // A thread per core when there is enough work to pay for starting them.
        let threads = self.threads.min(items / 16).max(1);
        if threads == 1 {
            work(0, &mut out);
        } else {
            let per = items.div_ceil(threads);
            std::thread::scope(|s| {
                for (i, chunk) in out.chunks_mut(per * hd).enumerate() {
                    let work = &work;
                    s.spawn(move || work(i * per, chunk));
                }
            });
        }
        out
    }
}

fn unknown(seq: usize) -> TrainError {
    TrainError::InvalidSettings(format!("no rollout sequence {seq}"))
}

/// `x @ w^T` for a weight stored [out, in], computed as `(w @ x^T)^T`: with the weight as the
/// left operand, read row-major as stored, gemm runs this 1.2-2x faster at a decode step's
/// 8-32 rows (2.5-8x for the vocabulary-wide head) than with the weight's transposed view on the
/// right, which it repacks on every call.
fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(w.matmul(&x.t()?)?.t()?.contiguous()?)
}

/// Logits at every position of `tokens` through the fast engine (one sequence from position 0):
/// what the parity test holds against `TrainableModel::forward`.
pub fn logits(model: &TrainableModel, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
    let mut decoder = FastDecoder::new(model)?;
    let seq = decoder.new_sequence(tokens.len());
    let rows: Vec<Row> = tokens
        .iter()
        .enumerate()
        .map(|(pos, &token)| Row { seq, token, pos })
        .collect();
    let all: Vec<usize> = (0..rows.len()).collect();
    decoder.forward(&rows, &all)
}

/// Logits of `tokens` decoded one token per forward after a prefill of `prefill` of them, with
/// `copies` identical sequences as the rows of every step: the decode path of a rollout. Row
/// `copies - 1`'s logits for positions `prefill - 1..` (the parity test's second half).
pub fn decode_logits(
    model: &TrainableModel,
    tokens: &[u32],
    prefill: usize,
    copies: usize,
) -> Result<Vec<Vec<f32>>> {
    if prefill == 0 || prefill > tokens.len() || copies == 0 {
        return Err(TrainError::InvalidSettings(
            "decode_logits needs a non-empty prefill within the tokens and one copy".into(),
        ));
    }
    let mut decoder = FastDecoder::new(model)?;
    let first = decoder.new_sequence(tokens.len());
    let rows: Vec<Row> = tokens[..prefill]
        .iter()
        .enumerate()
        .map(|(pos, &token)| Row {
            seq: first,
            token,
            pos,
        })
        .collect();
    let mut out = decoder.forward(&rows, &[prefill - 1])?;
    let mut seqs = vec![first];
    for _ in 1..copies {
        seqs.push(decoder.fork(first, tokens.len())?);
    }
    for (pos, &token) in tokens.iter().enumerate().skip(prefill) {
        let rows: Vec<Row> = seqs.iter().map(|&seq| Row { seq, token, pos }).collect();
        let mut logits = decoder.forward(&rows, &(0..rows.len()).collect::<Vec<_>>())?;
        out.push(logits.pop().unwrap_or_default());
    }
    Ok(out)
}
