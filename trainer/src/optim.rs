//! AdamW with global gradient-norm clipping and a state that can be saved and restored exactly
//! (candle-nn's AdamW has neither).

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

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
    /// (variable name, variable, first moment, second moment), in name order.
    slots: Vec<(String, Var, Tensor, Tensor)>,
    step: u64,
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    pub clipped: bool,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|(name, var)| -> Result<_> {
                let zeros = var.as_tensor().zeros_like()?;
                Ok((name, var, zeros.clone(), zeros))
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
        for (_, var, _, _) in &self.slots {
            if let Some(g) = grads.get(var.as_tensor()) {
                sq += g
                    .to_dtype(DType::F64)?
                    .sqr()?
                    .sum_all()?
                    .to_scalar::<f64>()?;
            }
        }
        let grad_norm = sq.sqrt();
        let scale = match self.config.max_grad_norm {
            Some(max) if grad_norm > max && grad_norm > 0.0 => max / grad_norm,
            _ => 1.0,
        };
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        for (_, var, m, v) in &mut self.slots {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = (g * scale)?;
            *m = ((&*m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let m_hat = (&*m / bias1)?;
            let v_hat = (&*v / bias2)?;
            let update = (m_hat / (v_hat.sqrt()? + c.eps)?)?;
            let decayed = (var.as_tensor() * (1.0 - lr * c.weight_decay))?;
            var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(StepReport {
            grad_norm,
            clipped: scale < 1.0,
        })
    }

    /// The moments by variable name (for checkpoints) and the step count.
    pub fn state(&self) -> (Vec<(String, Tensor, Tensor)>, u64) {
        let moments = self
            .slots
            .iter()
            .map(|(name, _, m, v)| (name.clone(), m.clone(), v.clone()))
            .collect();
        (moments, self.step)
    }

    /// Restores what [`Self::state`] returned.
    pub fn restore(&mut self, moments: Vec<(String, Tensor, Tensor)>, step: u64) -> Result<()> {
        for (name, m, v) in moments {
            let slot = self.slots.iter_mut().find(|s| s.0 == name).ok_or_else(|| {
                crate::TrainError::InvalidSettings(format!(
                    "checkpoint has optimiser state for unknown variable `{name}`"
                ))
            })?;
            if slot.2.shape() != m.shape() || slot.3.shape() != v.shape() {
                return Err(crate::TrainError::InvalidSettings(format!(
                    "optimiser state for `{name}` has the wrong shape"
                )));
            }
            slot.2 = m;
            slot.3 = v;
        }
        self.step = step;
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
}
