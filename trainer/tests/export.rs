//! prepare -> export -> the inference engine: the exported GGUF carries `<|offload|>` where the
//! inference side finds it, and reproduces the trainer's model: exactly (greedy tokens, logits to
//! float rounding) for F32, within a stated tolerance for Q8_0 and Q4_1.

mod support;

use support::gguf;

use candle_core::quantized::gguf_file::Value;
use candle_core::{DType, Device, Tensor};
use selfroute_candle::CandleModel;
use selfroute_core::{
    GenerationParams, Generator, GgufFile, LogitsFor, Message, ModelPackage, OFFLOAD_TOKEN,
    OffloadSignal, SamplingParams,
};
use selfroute_train::export::{AddedToken, ExportType, gguf_bytes};
use selfroute_train::model::TrainableModel;
use selfroute_train::prepare::add_offload_token;
use selfroute_train::rollout::{RolloutConfig, rollout_group};

struct Prepared {
    model: TrainableModel,
    source: GgufFile,
    prompt: Vec<u32>,
    offload_id: u32,
}

fn prepared() -> Prepared {
    let mut builder = gguf::GgufBuilder::tiny_llama();
    builder.set_meta("llama.context_length", Value::U32(64));
    let bytes = builder.bytes();
    let package = ModelPackage::from_gguf("tiny.gguf", bytes.clone()).unwrap();
    let mut model = support::trainable(&package, DType::F32);
    let template = package.chat_template.unwrap();
    let prompt = template
        .encode(&[Message::user("What is 2 + 3?")], true, &package.tokenizer)
        .unwrap();
    let other = template
        .encode(&[Message::user("Name a colour.")], true, &package.tokenizer)
        .unwrap();
    let vocab = package.config.vocab_size as u32;
    let (offload_id, report) = add_offload_token(
        &mut model,
        &package.tokenizer,
        &[prompt.clone(), other],
        0.2,
    )
    .unwrap();
    assert_eq!(offload_id, vocab, "appended at the end");
    assert!((report.final_rate - 0.2).abs() < 1e-6, "{report:?}");
    Prepared {
        model,
        source: GgufFile::from_bytes("tiny.gguf", bytes).unwrap(),
        prompt,
        offload_id,
    }
}

fn export(p: &Prepared, format: ExportType) -> ModelPackage {
    let added = [AddedToken {
        text: OFFLOAD_TOKEN.into(),
        token_type: 3,
    }];
    let bytes = gguf_bytes(&p.model, &p.source, &added, format).unwrap();
    ModelPackage::from_gguf("exported.gguf", bytes).expect("the exported GGUF loads")
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

fn engine_logits(package: &ModelPackage, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut engine =
        CandleModel::load(&package.config, package.weights.as_ref(), &Device::Cpu).unwrap();
    engine
        .forward_tokens(tokens, 0, LogitsFor::All)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
}

fn trainer_logits(model: &TrainableModel, tokens: &[u32]) -> Vec<Vec<f32>> {
    let ids = Tensor::new(tokens, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model
        .forward(&ids)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
}

#[test]
fn an_f32_export_reproduces_the_trainer_exactly_and_carries_the_offload_token() {
    let p = prepared();
    let package = export(&p, ExportType::F32);
    // The inference side finds the token where the trainer put it.
    let signal = OffloadSignal::from_tokenizer(&package.tokenizer, None).unwrap();
    assert_eq!(signal.token_id, Some(p.offload_id));
    assert_eq!(package.config.vocab_size, p.offload_id as usize + 1);
    assert!(
        !package
            .tokenizer
            .encode_literal(OFFLOAD_TOKEN)
            .unwrap()
            .contains(&p.offload_id)
    );

    let diff = max_diff(
        &trainer_logits(&p.model, &p.prompt),
        &engine_logits(&package, &p.prompt),
    );
    assert!(diff < 1e-4, "logits differ by {diff}");

    // Greedy continuations: the trainer's rollout code and the inference engine's generator.
    let ours = rollout_group(
        &p.model,
        &package.tokenizer,
        &signal,
        &p.prompt,
        &RolloutConfig {
            group: 1,
            max_new_tokens: 12,
            temperature: 0.0,
        },
        0,
    )
    .unwrap()
    .remove(0);
    let engine =
        CandleModel::load(&package.config, package.weights.as_ref(), &Device::Cpu).unwrap();
    let mut generator = Generator::new(engine);
    let params = GenerationParams {
        max_new_tokens: 12,
        sampling: SamplingParams::greedy(),
        ..GenerationParams::default()
    };
    let mut theirs = Vec::new();
    pollster::block_on(
        generator.generate(&package.tokenizer, &p.prompt, &params, |e| {
            theirs.push(e.id);
            if e.id == p.offload_id {
                selfroute_core::Control::Stop
            } else {
                selfroute_core::Control::Continue
            }
        }),
    )
    .unwrap();
    let ours_tokens: Vec<u32> = ours
        .tokens
        .iter()
        .copied()
        .filter(|t| !package.tokenizer.stop_token_ids().contains(t))
        .collect();
    assert_eq!(ours_tokens, theirs);
    assert!(!ours_tokens.is_empty());
}

#[test]
fn quantized_exports_stay_within_tolerance() {
    let p = prepared();
    let reference = trainer_logits(&p.model, &p.prompt);
    // Q8_0 keeps 8 bits per weight, Q4_1 4: bounds measured on this model with margin.
    for (format, bound) in [
        (ExportType::Q8_0, 0.05),
        (ExportType::F16, 0.01),
        (ExportType::Q4_1, 0.5),
    ] {
        let package = export(&p, format);
        let diff = max_diff(&reference, &engine_logits(&package, &p.prompt));
        eprintln!("{format:?}: max logit difference {diff}");
        assert!(diff < bound, "{format:?}: logits differ by {diff}");
        assert!(
            diff > 0.0 || format == ExportType::F16,
            "{format:?} really quantized"
        );
    }
}

#[test]
fn a_hugging_face_folder_reproduces_the_trainer() {
    let p = prepared();
    // The tokenizer of the exported GGUF knows the offload token; the folder carries it along.
    let gguf_package = export(&p, ExportType::F32);
    let dir = std::env::temp_dir().join(format!("selfroute-hf-export-{}", std::process::id()));
    let template = p
        .source
        .metadata("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned();
    selfroute_train::export::write_hf_folder(
        &p.model,
        &gguf_package.tokenizer,
        template.as_deref(),
        &dir,
    )
    .unwrap();
    let read = |n: &str| std::fs::read(dir.join(n)).unwrap();
    let config = String::from_utf8(read("config.json")).unwrap();
    let tok_config = String::from_utf8(read("tokenizer_config.json")).unwrap();
    let package = ModelPackage::from_hf_files(
        dir.display().to_string(),
        &config,
        vec![("model.safetensors".into(), read("model.safetensors"))],
        Some(&read("tokenizer.json")),
        Some(&tok_config),
    )
    .expect("the folder loads");
    assert_eq!(package.config.rope_layout, selfroute_core::RopeLayout::Half);
    assert_eq!(
        package.tokenizer.token_to_id(OFFLOAD_TOKEN),
        Some(p.offload_id)
    );
    let prompt = package
        .chat_template
        .as_ref()
        .unwrap()
        .encode(&[Message::user("What is 2 + 3?")], true, &package.tokenizer)
        .unwrap();
    assert_eq!(
        prompt, p.prompt,
        "same tokens through tokenizer.json and the template"
    );
    // Un-permuted Q/K with rotate-half RoPE give the same logits as the GGUF layout.
    let diff = max_diff(
        &trainer_logits(&p.model, &p.prompt),
        &engine_logits(&package, &p.prompt),
    );
    assert!(diff < 1e-4, "logits differ by {diff}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Training that moved one tensor: the export copies every other tensor from the source file in
/// its own type, byte for byte, and writes the moved one in the requested type. Read back with
/// candle's own GGUF reader, not the exporter's code.
#[test]
fn tensors_training_left_keep_their_source_type_and_bytes() {
    use candle_core::quantized::GgmlDType;
    use std::io::Cursor;

    let bytes = gguf::GgufBuilder::tiny_llama().bytes();
    let package = ModelPackage::from_gguf("tiny.gguf", bytes.clone()).unwrap();
    let source = GgufFile::from_bytes("tiny.gguf", bytes.clone()).unwrap();
    let model = support::trainable(&package, DType::F32);
    let moved = "model.layers.1.mlp.up_proj.weight";
    let (_, var) = model
        .named_vars()
        .unwrap()
        .into_iter()
        .find(|(name, _)| name == moved)
        .expect("the tiny model has the tensor");
    let trained = (var.as_tensor() * 1.5).unwrap();
    var.set(&trained).unwrap();

    let exported = gguf_bytes(&model, &source, &[], ExportType::F32).unwrap();
    let read = |bytes: &[u8]| {
        let mut reader = Cursor::new(bytes.to_vec());
        let content =
            candle_core::quantized::gguf_file::Content::read(&mut reader).expect("a GGUF file");
        let names: Vec<String> = content.tensor_infos.keys().cloned().collect();
        names
            .into_iter()
            .map(|name| {
                let t = content.tensor(&mut reader, &name, &Device::Cpu).unwrap();
                (name, t)
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let before = read(&bytes);
    let after = read(&exported);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    let mut kept_quantized = 0;
    for (name, original) in &before {
        let out = &after[name];
        if name == "blk.1.ffn_up.weight" {
            assert_eq!(out.dtype(), GgmlDType::F32, "{name}: the moved tensor");
            let values = out.dequantize(&Device::Cpu).unwrap();
            let diff = (values - &trained)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(diff, 0.0, "{name}: the trained values, exactly");
        } else {
            assert_eq!(out.dtype(), original.dtype(), "{name}: its source type");
            assert_eq!(
                out.data().unwrap(),
                original.data().unwrap(),
                "{name}: its source bytes"
            );
            kept_quantized += usize::from(original.dtype() != GgmlDType::F32);
        }
    }
    assert!(
        kept_quantized >= 10,
        "quantized tensors kept: {kept_quantized}"
    );
    assert!(
        exported.len() < 2 * bytes.len(),
        "{} vs {}",
        exported.len(),
        bytes.len()
    );
}
