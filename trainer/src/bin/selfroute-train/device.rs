//! `--device cpu|cuda|cuda:N`.

use anyhow::{Context, Result};
use candle_core::Device;

pub fn parse_device(spec: &str) -> Result<Device> {
    let ordinal = match spec {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("--device {other}: expected cpu, cuda or cuda:N"))?,
    };
    Device::new_cuda(ordinal).with_context(|| {
        format!("--device {spec}: no CUDA device (build with `--features cuda` on a GPU machine)")
    })
}
