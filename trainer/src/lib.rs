//! selfroute-train: post-training that teaches a small model when to offload, with the method of
//! arXiv:2509.24050 (hierarchical reward, group-level policy gradient, adaptive prompt filtering).

pub mod algo;
pub mod checkpoint;
pub mod cloud;
pub mod curve;
pub mod error;
pub mod eval;
pub mod export;
pub mod hidden;
pub mod logsumexp;
pub mod model;
pub mod optim;
#[cfg(feature = "plot")]
pub mod plot;
pub mod prepare;
pub mod rollout;
pub mod router;
pub mod stats;
pub mod tasks;
pub mod train;
pub mod update;
pub mod warmup;

pub use error::{Result, TrainError};
