//! selfroute-train: post-training that teaches a small model when to offload, with the method of
//! arXiv:2509.24050 (hierarchical reward, group-level policy gradient, adaptive prompt filtering).

pub mod algo;
pub mod error;
pub mod model;
pub mod tasks;

pub use error::{Result, TrainError};
