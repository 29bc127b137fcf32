//! `log sum_v exp(x_v)` over the last dimension as one op with its own backward.
//!
//! Why: the update scores every answer token against the 49152-wide vocabulary. Written with
//! candle's elementwise ops (`log_softmax`, then a gather), the graph keeps about four
//! vocabulary-wide copies of a pass's logits (shifted, exp, log-softmax) and the backward adds
//! a gradient for each: a pass of 4096 tokens peaked at 18.5 GB on a 23 GB machine. Here the graph
//! keeps only the logits and one number per row; the backward, `grad * exp(x - lse)` (the
//! softmax), is built only while it runs.

use candle_core::{CpuStorage, CustomOp1, D, Layout, Shape, Tensor, WithDType};

use crate::error::Result;

struct LogSumExp;

impl LogSumExp {
    /// Each row's value, accumulated in f64.
    fn rows<T: WithDType>(x: &[T], width: usize) -> Vec<T> {
        x.chunks_exact(width)
            .map(|row| {
                let max = row
                    .iter()
                    .map(|v| v.to_f64())
                    .fold(f64::NEG_INFINITY, f64::max);
                if !max.is_finite() {
                    // All -inf (every token masked) stays -inf; +inf or NaN propagates.
                    return T::from_f64(max);
                }
                let sum: f64 = row.iter().map(|v| (v.to_f64() - max).exp()).sum();
                T::from_f64(max + sum.ln())
            })
            .collect()
    }
}

impl CustomOp1 for LogSumExp {
    fn name(&self) -> &'static str {
        "logsumexp-last-dim"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("logsumexp needs a contiguous input");
        };
        let dims = layout.shape().dims();
        let Some((&width, outer)) = dims.split_last() else {
            candle_core::bail!("logsumexp needs at least one dimension");
        };
        if width == 0 {
            candle_core::bail!("logsumexp over an empty last dimension");
        }
        let mut out_dims = outer.to_vec();
        out_dims.push(1);
        let out = match storage {
            CpuStorage::F32(x) => CpuStorage::F32(Self::rows(&x[start..end], width)),
            CpuStorage::F64(x) => CpuStorage::F64(Self::rows(&x[start..end], width)),
            _ => candle_core::bail!("logsumexp supports f32 and f64 only"),
        };
        Ok((out, Shape::from(out_dims)))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        // d lse / d x_v = exp(x_v - lse), the softmax.
        let softmax = arg.broadcast_sub(res)?.exp()?;
        Ok(Some(softmax.broadcast_mul(grad_res)?))
    }
}

/// `log sum exp` of `x` over its last dimension, kept as a dimension of size 1. On the CPU one
/// op (see the module comment); elsewhere candle's ops, which have device kernels.
pub fn logsumexp_keepdim(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        return Ok(x.contiguous()?.apply_op1(LogSumExp)?);
    }
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    Ok((shifted.exp()?.sum_keepdim(D::Minus1)?.log()? + max)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    /// Against candle's own `log_softmax` (an independent implementation): the log-probability
    /// of picked tokens and its gradient with respect to the logits.
    #[test]
    fn matches_log_softmax_and_its_gradient() -> Result<()> {
        let device = Device::Cpu;
        let mut rng = selfroute_core::rng::SplitMix64::new(7);
        let values: Vec<f64> = (0..3 * 5 * 11)
            .map(|_| rng.next_f64() * 40.0 - 20.0)
            .collect();
        let targets = Tensor::from_vec(
            (0..15u32).map(|i| (i * 7) % 11).collect::<Vec<_>>(),
            (3, 5, 1),
            &device,
        )?;
        let weights = Tensor::from_vec(
            (0..15).map(|i| f64::from(i) - 6.5).collect::<Vec<_>>(),
            (3, 5, 1),
            &device,
        )?;
        let x = Var::from_vec(values, (3, 5, 11), &device)?;
        let ours = (x.gather(&targets, D::Minus1)? - logsumexp_keepdim(x.as_tensor())?)?;
        let reference =
            candle_nn::ops::log_softmax(x.as_tensor(), D::Minus1)?.gather(&targets, D::Minus1)?;
        let diff = (&ours - &reference)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-12, "log-probabilities differ by {diff}");
        let ours_grad = (ours * &weights)?.sum_all()?.backward()?;
        let reference_grad = (reference * &weights)?.sum_all()?.backward()?;
        let (Some(a), Some(b)) = (ours_grad.get(&x), reference_grad.get(&x)) else {
            panic!("no gradient for the logits");
        };
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-12, "gradients differ by {diff}");
        Ok(())
    }

    #[test]
    fn a_large_logit_does_not_overflow_and_f32_works() -> Result<()> {
        let x = Tensor::from_vec(vec![1000f32, 0.0, -1000.0, 5.0], (2, 2), &Device::Cpu)?;
        let lse: Vec<f32> = logsumexp_keepdim(&x)?.flatten_all()?.to_vec1()?;
        assert!((lse[0] - 1000.0).abs() < 1e-3, "{lse:?}");
        let expected = 5.0 + (1.0 + (-1005f32).exp()).ln();
        assert!((lse[1] - expected).abs() < 1e-4, "{lse:?}");
        Ok(())
    }
}
