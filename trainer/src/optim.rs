//! AdamW with global gradient-norm clipping and a state that can be saved and restored exactly
//! (candle-nn's AdamW has neither).

use std::cell::RefCell;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Storage, Tensor, Var};
use rayon::prelude::*;

use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Gradients are scaled down so their global L2 norm is at most this; None = no clipping.
    pub max_grad_norm: Option<f64>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: Some(1.0),
        }
    }
}

pub struct AdamW {
    config: AdamWConfig,
    /// In name order.
    slots: Vec<Slot>,
    step: u64,
}

struct Slot {
    name: String,
    var: Var,
    moments: Moments,
}

/// Where a variable's first and second moments live.
enum Moments {
    /// A CPU f32 variable: flat buffers, updated with the variable in one pass over memory
    /// (one read of the gradient, one read-modify-write of the weight and each moment) instead
    /// of a dozen whole-tensor temporaries.
    Flat { m: Vec<f32>, v: Vec<f32> },
    /// Any other device or dtype: tensor ops.
    Tensors { m: Tensor, v: Tensor },
}

/// A variable's name with its first and second moments.
pub type NamedMoments = (String, Tensor, Tensor);

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    pub clipped: bool,
}

/// The constants of one step, shared by both paths.
#[derive(Clone, Copy)]
struct StepConstants {
    grad_scale: f64,
    beta1: f64,
    beta2: f64,
    bias1: f64,
    bias2: f64,
    eps: f64,
    lr: f64,
    decay: f64,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        Self::build(vars, config, true)
    }

    /// The same optimiser on tensor ops only: the reference the fused path is measured against
    /// (`cargo run --release -p selfroute-train --example adamw_bench`).
    pub fn unfused(vars: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        Self::build(vars, config, false)
    }

    fn build(vars: Vec<(String, Var)>, config: AdamWConfig, fused: bool) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|(name, var)| -> Result<_> {
                let moments = if fused && is_flat(var.as_tensor()) {
                    let n = var.elem_count();
                    Moments::Flat {
                        m: vec![0.0; n],
                        v: vec![0.0; n],
                    }
                } else {
                    let zeros = var.as_tensor().zeros_like()?;
                    Moments::Tensors {
                        m: zeros.clone(),
                        v: zeros,
                    }
                };
                Ok(Slot { name, var, moments })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config,
            slots,
            step: 0,
        })
    }

    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// One update at learning rate `lr`. Variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<StepReport> {
        let mut sq = 0.0f64;
        for slot in &self.slots {
            if let Some(g) = grads.get(slot.var.as_tensor()) {
                sq += squared_norm(g)?;
            }
        }
        let grad_norm = sq.sqrt();
        let grad_scale = match self.config.max_grad_norm {
            Some(max) if grad_norm > max && grad_norm > 0.0 => max / grad_norm,
            _ => 1.0,
        };
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let k = StepConstants {
            grad_scale,
            beta1: c.beta1,
            beta2: c.beta2,
            bias1: 1.0 - c.beta1.powi(t),
            bias2: 1.0 - c.beta2.powi(t),
            eps: c.eps,
            lr,
            decay: 1.0 - lr * c.weight_decay,
        };
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            match &mut slot.moments {
                Moments::Flat { m, v } if is_flat(g) => {
                    let op = FusedAdamW {
                        moments: RefCell::new((m, v)),
                        k,
                    };
                    slot.var.as_tensor().inplace_op2(g, &op)?;
                }
                Moments::Flat { m, v } => {
                    // A gradient in another dtype than its variable: not produced by candle's
                    // backprop, but handled rather than refused.
                    let shape = slot.var.shape().clone();
                    let device = slot.var.device().clone();
                    let mut mt = Tensor::from_slice(m, &shape, &device)?;
                    let mut vt = Tensor::from_slice(v, &shape, &device)?;
                    tensor_step(&slot.var, &g.to_dtype(DType::F32)?, &mut mt, &mut vt, k)?;
                    *m = mt.flatten_all()?.to_vec1()?;
                    *v = vt.flatten_all()?.to_vec1()?;
                }
                Moments::Tensors { m, v } => tensor_step(&slot.var, g, m, v, k)?,
            }
        }
        Ok(StepReport {
            grad_norm,
            clipped: grad_scale < 1.0,
        })
    }

    /// The moments by variable name (for checkpoints) and the step count.
    pub fn state(&self) -> Result<(Vec<NamedMoments>, u64)> {
        let moments = self
            .slots
            .iter()
            .map(|slot| -> Result<_> {
                let (m, v) = match &slot.moments {
                    Moments::Flat { m, v } => {
                        let shape = slot.var.shape();
                        let device = slot.var.device();
                        (
                            Tensor::from_slice(m, shape, device)?,
                            Tensor::from_slice(v, shape, device)?,
                        )
                    }
                    Moments::Tensors { m, v } => (m.clone(), v.clone()),
                };
                Ok((slot.name.clone(), m, v))
            })
            .collect::<Result<_>>()?;
        Ok((moments, self.step))
    }

    /// Restores what [`Self::state`] returned.
    pub fn restore(&mut self, moments: Vec<NamedMoments>, step: u64) -> Result<()> {
        for (name, m, v) in moments {
            let slot = self
                .slots
                .iter_mut()
                .find(|s| s.name == name)
                .ok_or_else(|| {
                    crate::TrainError::InvalidSettings(format!(
                        "checkpoint has optimiser state for unknown variable `{name}`"
                    ))
                })?;
            if slot.var.shape() != m.shape() || slot.var.shape() != v.shape() {
                return Err(crate::TrainError::InvalidSettings(format!(
                    "optimiser state for `{name}` has the wrong shape"
                )));
            }
            slot.moments = match &slot.moments {
                Moments::Flat { .. } => Moments::Flat {
                    m: m.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
                    v: v.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
                },
                Moments::Tensors { .. } => Moments::Tensors { m, v },
            };
        }
        self.step = step;
        Ok(())
    }
}

/// A contiguous f32 tensor in CPU memory: what the fused path reads and writes directly.
fn is_flat(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous()
}

/// Sum of squares in f64 (straight from memory for CPU f32, by tensor ops otherwise).
fn squared_norm(g: &Tensor) -> Result<f64> {
    if is_flat(g) {
        let (storage, layout) = g.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            let values = &cpu.as_slice::<f32>()?[start..end];
            return Ok(values
                .par_chunks(CHUNK)
                .map(|c| c.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>())
                .sum());
        }
    }
    Ok(g.to_dtype(DType::F64)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()?)
}

/// Elements per parallel work item: large enough that scheduling is noise, small enough that
/// both cores share a 28M-element embedding.
const CHUNK: usize = 1 << 16;

/// The tensor-op update (any device, any float dtype).
fn tensor_step(
    var: &Var,
    g: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    k: StepConstants,
) -> Result<()> {
    let g = (g * k.grad_scale)?;
    *m = ((&*m * k.beta1)? + (&g * (1.0 - k.beta1))?)?;
    *v = ((&*v * k.beta2)? + (g.sqr()? * (1.0 - k.beta2))?)?;
    let m_hat = (&*m / k.bias1)?;
    let v_hat = (&*v / k.bias2)?;
    let update = (m_hat / (v_hat.sqrt()? + k.eps)?)?;
    let decayed = (var.as_tensor() * k.decay)?;
    var.set(&(decayed - (update * k.lr)?)?)?;
    Ok(())
}

/// The whole AdamW update of one variable as one in-place op over its storage: candle gives
/// mutable access to a tensor's memory only through in-place ops, so the moments ride along
/// inside the op.
struct FusedAdamW<'a> {
    moments: RefCell<(&'a mut Vec<f32>, &'a mut Vec<f32>)>,
    k: StepConstants,
}

impl InplaceOp2 for FusedAdamW<'_> {
    fn name(&self) -> &'static str {
        "fused-adamw"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(weights), CpuStorage::F32(grads)) = (dst, grad) else {
            candle_core::bail!("fused-adamw: f32 weights and gradients only");
        };
        let (Some((w0, w1)), Some((g0, g1))) = (
            dst_layout.contiguous_offsets(),
            grad_layout.contiguous_offsets(),
        ) else {
            candle_core::bail!("fused-adamw: contiguous tensors only");
        };
        let mut moments = self.moments.borrow_mut();
        let (m, v) = &mut *moments;
        let (weights, grads) = (&mut weights[w0..w1], &grads[g0..g1]);
        if grads.len() != weights.len() || m.len() != weights.len() || v.len() != weights.len() {
            candle_core::bail!("fused-adamw: gradient, moments and weights differ in size");
        }
        let k = self.k;
        // f32 arithmetic like the tensor path (whose f64 scalars candle applies in f32).
        let (scale, b1, b2) = (k.grad_scale as f32, k.beta1 as f32, k.beta2 as f32);
        let (one_b1, one_b2) = ((1.0 - k.beta1) as f32, (1.0 - k.beta2) as f32);
        let (inv_bias1, inv_bias2) = ((1.0 / k.bias1) as f32, (1.0 / k.bias2) as f32);
        let (eps, lr, decay) = (k.eps as f32, k.lr as f32, k.decay as f32);
        weights
            .par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(grads.par_chunks(CHUNK))
            .for_each(|(((w, m), v), g)| {
                for i in 0..w.len() {
                    let g = g[i] * scale;
                    m[i] = m[i] * b1 + g * one_b1;
                    v[i] = v[i] * b2 + g * g * one_b2;
                    let update = (m[i] * inv_bias1) / ((v[i] * inv_bias2).sqrt() + eps);
                    w[i] = w[i] * decay - update * lr;
                }
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn one_step_matches_the_adamw_formula_and_clipping_scales_the_gradient() {
        let var = Var::new(&[1.0f64, -2.0], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(
            vec![("w".into(), var.clone())],
            AdamWConfig {
                weight_decay: 0.1,
                max_grad_norm: Some(1.0),
                ..AdamWConfig::default()
            },
        )
        .unwrap();
        // loss = 3 w0 + 4 w1: gradient (3, 4), norm 5, clipped to (0.6, 0.8).
        let loss = ((var.as_tensor().get(0).unwrap() * 3.0).unwrap()
            + (var.as_tensor().get(1).unwrap() * 4.0).unwrap())
        .unwrap();
        let report = opt.step(&loss.backward().unwrap(), 0.01).unwrap();
        assert!((report.grad_norm - 5.0).abs() < 1e-12);
        assert!(report.clipped);
        // First step: m_hat = g, v_hat = g^2, update = g / (|g| + eps) = sign(g).
        let w = var.as_tensor().to_vec1::<f64>().unwrap();
        let expect = [1.0 * (1.0 - 0.001) - 0.01, -2.0 * (1.0 - 0.001) - 0.01];
        for (a, b) in w.iter().zip(expect) {
            assert!((a - b).abs() < 1e-9, "{w:?}");
        }
        assert_eq!(opt.steps_taken(), 1);
    }

    /// The textbook AdamW in f64, written out per element: the reference for the fused path.
    fn reference_adamw(
        w: &mut [f64],
        m: &mut [f64],
        v: &mut [f64],
        grads: &[f64],
        t: i32,
        lr: f64,
        c: AdamWConfig,
    ) {
        let norm = grads.iter().map(|g| g * g).sum::<f64>().sqrt();
        let scale = match c.max_grad_norm {
            Some(max) if norm > max => max / norm,
            _ => 1.0,
        };
        for i in 0..w.len() {
            let g = grads[i] * scale;
            m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * g;
            v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * g * g;
            let m_hat = m[i] / (1.0 - c.beta1.powi(t));
            let v_hat = v[i] / (1.0 - c.beta2.powi(t));
            w[i] = w[i] * (1.0 - lr * c.weight_decay) - lr * m_hat / (v_hat.sqrt() + c.eps);
        }
    }

    /// Gradients of `sum(coef * w^2 / 2)`, i.e. `coef * w`, through candle's backprop.
    fn quadratic_grads(var: &Var, coef: &Tensor) -> GradStore {
        let loss = (var.as_tensor().sqr().unwrap() * coef)
            .unwrap()
            .sum_all()
            .unwrap()
            .affine(0.5, 0.0)
            .unwrap();
        loss.backward().unwrap()
    }

    #[test]
    fn the_fused_step_on_f32_variables_follows_the_formula_over_several_steps() {
        let config = AdamWConfig {
            weight_decay: 0.05,
            max_grad_norm: Some(2.0),
            ..AdamWConfig::default()
        };
        // Larger than one parallel chunk, so the split across threads is exercised.
        let n = CHUNK * 2 + 17;
        let init: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let coefs: Vec<f32> = (0..n).map(|i| 0.1 + (i % 7) as f32 * 0.3).collect();
        let var = Var::from_slice(&init, (n,), &Device::Cpu).unwrap();
        let coef = Tensor::from_slice(&coefs, (n,), &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], config).unwrap();
        assert!(matches!(opt.slots[0].moments, Moments::Flat { .. }));

        let mut w: Vec<f64> = init.iter().map(|&x| f64::from(x)).collect();
        let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
        for t in 1..=4 {
            let lr = 0.01 * t as f64;
            let grads: Vec<f64> = w
                .iter()
                .zip(&coefs)
                .map(|(w, &c)| w * f64::from(c))
                .collect();
            reference_adamw(&mut w, &mut m, &mut v, &grads, t, lr, config);
            let report = opt.step(&quadratic_grads(&var, &coef), lr).unwrap();
            let norm = grads.iter().map(|g| g * g).sum::<f64>().sqrt();
            assert!((report.grad_norm - norm).abs() < 1e-4 * norm);
            assert_eq!(report.clipped, norm > 2.0);
        }
        let got = var.as_tensor().to_vec1::<f32>().unwrap();
        let worst = got
            .iter()
            .zip(&w)
            .map(|(a, b)| (f64::from(*a) - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-5, "largest difference from the formula: {worst}");
    }

    #[test]
    fn saved_and_restored_flat_moments_continue_exactly() {
        let config = AdamWConfig::default();
        let init: Vec<f32> = (0..300).map(|i| (i as f32 - 150.0) / 40.0).collect();
        let coef = Tensor::from_slice(&[1.5f32; 300], (300,), &Device::Cpu).unwrap();
        let run = |split: bool| {
            let var = Var::from_slice(&init, (300,), &Device::Cpu).unwrap();
            let mut opt = AdamW::new(vec![("w".into(), var.clone())], config).unwrap();
            for _ in 0..2 {
                opt.step(&quadratic_grads(&var, &coef), 0.05).unwrap();
            }
            if split {
                let (moments, step) = opt.state().unwrap();
                opt = AdamW::new(vec![("w".into(), var.clone())], config).unwrap();
                opt.restore(moments, step).unwrap();
            }
            opt.step(&quadratic_grads(&var, &coef), 0.05).unwrap();
            var.as_tensor().to_vec1::<f32>().unwrap()
        };
        assert_eq!(run(false), run(true));
    }
}
