//! The method's arithmetic, free of tensors: rewards, group advantages, adaptive prompt filtering
//! and the learning-rate schedule.

pub mod advantage;
pub mod filter;
pub mod reward;
pub mod schedule;

pub use advantage::{Algo, advantages, is_zero_variance};
pub use filter::{FilterOutcome, GroupSummary, adaptive_filter};
pub use reward::{ResponseOutcome, RewardConfig};
pub use schedule::LrSchedule;
