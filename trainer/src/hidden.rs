//! The model's final hidden state at the answer position: what a prompt router reads and what
//! the output head (the `<|offload|>` row included) multiplies for the first answer token.

use candle_core::{DType, Tensor};

use crate::error::{Result, TrainError};
use crate::model::TrainableModel;

/// Prompts per forward pass: larger matrix products, and far fewer of the many small ops the
/// spelled-out forward pass has per layer.
const BATCH: usize = 16;

impl TrainableModel {
    /// Per prompt, the final normed hidden state at its last token (after the final norm, where
    /// the first answer token is predicted), in f64.
    ///
    /// Prompts are batched with right padding: attention is causal, so padding after a prompt's
    /// last token never changes that token's state.
    pub fn answer_states(&self, prompts: &[Vec<u32>]) -> Result<Vec<Vec<f64>>> {
        let mut out = Vec::with_capacity(prompts.len());
        for chunk in prompts.chunks(BATCH) {
            let len = chunk.iter().map(Vec::len).max().unwrap_or(0);
            let mut ids = Vec::with_capacity(chunk.len() * len);
            for prompt in chunk {
                let &last = prompt.last().ok_or_else(|| {
                    TrainError::InvalidSettings("an empty prompt has no answer position".into())
                })?;
                ids.extend_from_slice(prompt);
                ids.extend(std::iter::repeat_n(last, len - prompt.len()));
            }
            let ids = Tensor::from_vec(ids, (chunk.len(), len), self.device())?;
            let hidden = self.final_hidden(&ids)?.detach();
            for (i, prompt) in chunk.iter().enumerate() {
                out.push(
                    hidden
                        .get(i)?
                        .get(prompt.len() - 1)?
                        .to_dtype(DType::F64)?
                        .to_vec1::<f64>()?,
                );
            }
        }
        Ok(out)
    }
}
