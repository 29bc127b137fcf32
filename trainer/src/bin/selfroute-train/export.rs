//! `selfroute-train export`: a checkpoint as a GGUF file (and optionally a Hugging Face folder).
//! Without `--checkpoint` it converts the model's own weights (dequantized), so an untrained
//! GGUF can be handed to Hugging Face tools (e.g. `cargo xtask bench train` gives TRL the very
//! model we train).

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{DType, Device};
use clap::Args;
use selfroute_train::export::{ExportType, gguf_bytes, write_atomically, write_hf_folder};
use selfroute_train::model::TrainableModel;

use crate::model_file::read_gguf;
use crate::output::{prepare_output_dir, prepare_output_file};

#[derive(Args)]
pub struct ExportArgs {
    /// The GGUF the checkpoint was trained from (its tokenizer and metadata are kept).
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// A checkpoint written by `train`. Without it, the model's own weights are exported.
    #[arg(long, value_name = "PATH")]
    checkpoint: Option<PathBuf>,
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
    /// The type of the tensors training changed: f32 (the precision it trained in), f16, q8_0
    /// or q4_1. Tensors it left as they were keep the source file's type and bytes.
    #[arg(long = "type", default_value = "f32")]
    format: String,
    /// Also write a Hugging Face folder (config.json, model.safetensors, tokenizer.json,
    /// tokenizer_config.json) here.
    #[arg(long, value_name = "DIR")]
    hf: Option<PathBuf>,
}

pub fn run(args: ExportArgs) -> Result<()> {
    let format = ExportType::parse(&args.format)?;
    prepare_output_file(&args.out)?;
    if let Some(dir) = &args.hf {
        prepare_output_dir(dir)?;
    }
    let (package, source) = read_gguf(&args.model)?;
    let model = TrainableModel::from_weights(
        &package.config,
        package.weights.as_ref(),
        DType::F32,
        &Device::Cpu,
    )?;
    let step = match &args.checkpoint {
        Some(path) => {
            let checkpoint = selfroute_train::checkpoint::load(path, DType::F32, &Device::Cpu)?;
            selfroute_train::checkpoint::load_weights_into(&model, &checkpoint.weights, path)?;
            Some(checkpoint.position.step)
        }
        None => None,
    };
    let bytes = gguf_bytes(&model, &source, &[], format)?;
    write_atomically(&args.out, &bytes)?;
    if let Some(dir) = &args.hf {
        let template = source
            .metadata("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned();
        write_hf_folder(&model, &package.tokenizer, template.as_deref(), dir)?;
        eprintln!("wrote {}", dir.display());
    }
    eprintln!(
        "wrote {} ({:.1} MB, {})",
        args.out.display(),
        bytes.len() as f64 / 1e6,
        match step {
            Some(step) => format!("step {step}"),
            None => "the model's own weights".to_string(),
        }
    );
    Ok(())
}
