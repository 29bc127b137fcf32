//! `WasmAssistant`: the class the worker holds (see `web/CONTRACT.md`).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use selfroute_core::{
    Assistant, ChatOutcome, GenerationParams, Message, ModelPackage, OffloadGate, OffloadReason,
    Route, SamplingParams,
};
use selfroute_engine::{
    BackendChoice, EngineKind, EngineOptions, RoutingOptions, Selection, build_assistant,
    load_engine,
};
use serde::Serialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_time::Instant;

use crate::cloud::FetchCloudClient;
use crate::errors;
use crate::events::{event, to_js};
use crate::options::{GenerateOptions, LoadOptions};
use crate::yielding::{StopFlag, Yielding};

type Session = Assistant<Yielding, FetchCloudClient>;

/// Where the session is: a turn takes it out (so no RefCell borrow is held across an await)
/// and puts it back; a call meanwhile finds it busy.
enum Slot {
    Ready(Box<Session>),
    Busy,
    Unloaded,
}

#[derive(Clone)]
struct SessionSlot(Rc<RefCell<Slot>>);

impl SessionSlot {
    fn take(&self) -> Result<Box<Session>, JsValue> {
        let mut slot = self.0.borrow_mut();
        match std::mem::replace(&mut *slot, Slot::Busy) {
            Slot::Ready(session) => Ok(session),
            Slot::Busy => Err(errors::busy()),
            Slot::Unloaded => {
                *slot = Slot::Unloaded;
                Err(errors::unloaded())
            }
        }
    }

    /// Returns the session after a turn, unless `unload()` came meanwhile.
    fn put_back(&self, session: Box<Session>) {
        let mut slot = self.0.borrow_mut();
        if matches!(*slot, Slot::Unloaded) {
            session.backend().0.release_gpu();
        } else {
            *slot = Slot::Ready(session);
        }
    }

    fn with_ready<T>(&self, f: impl FnOnce(&mut Session) -> T) -> Result<T, JsValue> {
        match &mut *self.0.borrow_mut() {
            Slot::Ready(session) => Ok(f(session)),
            Slot::Busy => Err(errors::busy()),
            Slot::Unloaded => Err(errors::unloaded()),
        }
    }
}

/// Figures of the last turn, as `stats()` returns them.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct TurnStats {
    prompt_tokens: usize,
    generated_tokens: usize,
    first_token_ms: Option<f64>,
    prefill_tokens_per_second: Option<f64>,
    decode_tokens_per_second: Option<f64>,
}

impl TurnStats {
    /// Prefill speed from the prompt tokens run before the first token; decode speed from the
    /// tokens after it.
    fn measure(
        new_prompt_tokens: usize,
        generated: usize,
        first_ms: Option<f64>,
        total_ms: f64,
    ) -> Self {
        let per_second = |n: usize, ms: f64| (ms > 0.0 && n > 0).then(|| n as f64 * 1e3 / ms);
        Self {
            prompt_tokens: new_prompt_tokens,
            generated_tokens: generated,
            first_token_ms: first_ms,
            prefill_tokens_per_second: first_ms.and_then(|ms| per_second(new_prompt_tokens, ms)),
            decode_tokens_per_second: first_ms
                .and_then(|ms| per_second(generated.saturating_sub(1), total_ms - ms)),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Stats<'a> {
    backend: &'static str,
    adapter: Option<&'a str>,
    backend_reason: &'a str,
    #[serde(flatten)]
    last_turn: &'a TurnStats,
}

/// The page's veto, asked before a conversation leaves the device.
struct JsGate(Option<js_sys::Function>);

impl OffloadGate for JsGate {
    async fn approve(&mut self, reason: OffloadReason) -> bool {
        let Some(ask) = &self.0 else {
            return true;
        };
        let answer = match ask.call1(&JsValue::NULL, &to_js(&reason)) {
            Ok(answer) => answer,
            // A throwing veto handler is a no: nothing leaves the device on an error.
            Err(_) => return false,
        };
        match answer.dyn_into::<js_sys::Promise>() {
            Ok(promise) => JsFuture::from(promise).await.is_ok_and(|v| v.is_truthy()),
            Err(value) => value.is_truthy(),
        }
    }
}

#[wasm_bindgen]
pub struct WasmAssistant {
    session: SessionSlot,
    /// What ran the last turn, readable while a turn runs.
    kind: Rc<std::cell::Cell<EngineKind>>,
    stop: StopFlag,
    selection: Selection,
    generation: GenerationParams,
    last_turn: Rc<RefCell<TurnStats>>,
}

/// An options object, its defaults when the caller passed none.
fn options_from_js<T: Default + serde::de::DeserializeOwned>(value: JsValue) -> Result<T, JsValue> {
    if value.is_undefined() || value.is_null() {
        return Ok(T::default());
    }
    serde_wasm_bindgen::from_value(value)
        .map_err(|e| errors::named("DataError", format!("options: {e}")))
}

fn js_backend_name(kind: EngineKind) -> &'static str {
    match kind {
        EngineKind::Gpu => "webgpu",
        EngineKind::Cpu => "cpu",
    }
}

#[wasm_bindgen]
impl WasmAssistant {
    /// Parses the GGUF in `bytes` (copied), loads it into the engine `options.backend` chooses and
    /// assembles the routing session.
    pub async fn load(bytes: &[u8], options: JsValue) -> Result<WasmAssistant, JsValue> {
        let options: LoadOptions = options_from_js(options)?;
        let choice: BackendChoice = options.backend.parse().map_err(|e| errors::engine(&e))?;
        let package = ModelPackage::from_gguf(options.source_name.clone(), bytes.to_vec())
            .map_err(|e| errors::invalid_model(&e))?;
        let ModelPackage {
            config,
            tokenizer,
            chat_template,
            weights,
        } = package;
        let template = chat_template.ok_or_else(|| {
            errors::named(
                "InvalidModelError",
                format!("{} has no chat template", options.source_name),
            )
        })?;
        let engine_options = EngineOptions {
            choice,
            ..EngineOptions::default()
        };
        let (engine, mut selection) = load_engine(&config, weights, &engine_options)
            .await
            .map_err(|e| errors::engine(&e))?;
        name_the_adapter(&mut selection).await;
        let stop = StopFlag::default();
        let cloud = options
            .cloud
            .as_ref()
            .filter(|c| !c.endpoint.is_empty())
            .map(|c| {
                FetchCloudClient::new(
                    &c.endpoint,
                    Duration::from_millis(u64::from(c.timeout_ms.max(1))),
                    c.retries,
                    stop.clone(),
                )
            });
        let generation = GenerationParams {
            max_new_tokens: options.max_tokens,
            sampling: SamplingParams {
                temperature: options.temperature,
                top_k: options.top_k,
                top_p: options.top_p,
                seed: options.seed,
                ..SamplingParams::default()
            },
            ..GenerationParams::default()
        };
        let routing = RoutingOptions {
            generation: generation.clone(),
            budget_share: options.budget.share,
            budget_window: options.budget.window,
            offload_bias: options.offload_bias,
            cloud_model: options
                .cloud
                .as_ref()
                .map_or_else(|| "default".into(), |c| c.model.clone()),
            ..RoutingOptions::default()
        };
        let session = build_assistant(Yielding(engine), tokenizer, template, cloud, &routing)
            .map_err(|e| errors::named("DataError", e.to_string()))?;
        Ok(WasmAssistant {
            session: SessionSlot(Rc::new(RefCell::new(Slot::Ready(Box::new(session))))),
            kind: Rc::new(std::cell::Cell::new(selection.kind)),
            stop,
            selection,
            generation,
            last_turn: Rc::default(),
        })
    }

    /// `"webgpu"` or `"cpu"`: what runs the model now (a lost GPU moves it to the CPU).
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> String {
        js_backend_name(self.kind.get()).into()
    }

    #[wasm_bindgen(getter)]
    pub fn adapter(&self) -> Option<String> {
        self.selection.adapter.clone()
    }

    #[wasm_bindgen(getter, js_name = backendReason)]
    pub fn backend_reason(&self) -> String {
        self.selection.reason.clone()
    }

    /// Answers the last message; `on_event` gets each event as it happens, `approve_offload`
    /// (optional) may veto sending the conversation out. Resolves to the outcome.
    pub fn chat(
        &self,
        messages: JsValue,
        on_event: js_sys::Function,
        approve_offload: Option<js_sys::Function>,
    ) -> js_sys::Promise {
        let session = self.session.clone();
        let kind = self.kind.clone();
        let stop = self.stop.clone();
        let last_turn = self.last_turn.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let messages: Vec<Message> = serde_wasm_bindgen::from_value(messages)
                .map_err(|e| errors::named("DataError", format!("messages: {e}")))?;
            let mut assistant = session.take()?;
            stop.clear();
            let mut gate = JsGate(approve_offload);
            let result = assistant
                .chat_gated(&messages, &mut gate, |e| {
                    // A throwing listener must not end the turn: the answer is still wanted.
                    let _ = on_event.call1(&JsValue::NULL, &event(&e));
                    stop.control()
                })
                .await;
            kind.set(assistant.backend().0.kind());
            session.put_back(assistant);
            let outcome = result.map_err(|e| errors::turn(&e))?;
            *last_turn.borrow_mut() = turn_stats(&outcome);
            Ok(to_js(&outcome))
        })
    }

    /// A plain greedy generation without routing, for parity checks: `{tokens, text}`.
    pub fn generate(&self, prompt: String, options: JsValue) -> js_sys::Promise {
        let session = self.session.clone();
        let kind = self.kind.clone();
        let stop = self.stop.clone();
        let last_turn = self.last_turn.clone();
        let base = self.generation.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let options: GenerateOptions = options_from_js(options)?;
            let mut assistant = session.take()?;
            stop.clear();
            let params = GenerationParams {
                max_new_tokens: options.max_tokens,
                sampling: SamplingParams::greedy(),
                ..base
            };
            let started = Instant::now();
            let mut first: Option<f64> = None;
            let result = assistant
                .generate_plain(&prompt, options.chat, &params, |_| {
                    first.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1e3);
                    stop.control()
                })
                .await;
            kind.set(assistant.backend().0.kind());
            session.put_back(assistant);
            let generation = result.map_err(|e| errors::turn(&e))?;
            let total = started.elapsed().as_secs_f64() * 1e3;
            *last_turn.borrow_mut() = TurnStats::measure(
                generation.prompt_tokens - generation.reused_prompt_tokens,
                generation.tokens.len(),
                first,
                total,
            );
            #[derive(Serialize)]
            struct Plain<'a> {
                tokens: &'a [u32],
                text: &'a str,
            }
            Ok(to_js(&Plain {
                tokens: &generation.tokens,
                text: &generation.text,
            }))
        })
    }

    /// Stops the running turn before its next token (or its cloud call now); it resolves with
    /// `cancelled: true` and the assistant stays ready for the next one.
    pub fn stop(&self) {
        self.stop.request();
    }

    pub fn stats(&self) -> JsValue {
        let kind = self.backend();
        let last_turn = self.last_turn.borrow();
        to_js(&Stats {
            backend: if kind == "webgpu" { "webgpu" } else { "cpu" },
            adapter: self.selection.adapter.as_deref(),
            backend_reason: &self.selection.reason,
            last_turn: &last_turn,
        })
    }

    /// Forgets the conversation's KV cache.
    #[wasm_bindgen(js_name = resetChat)]
    pub fn reset_chat(&self) -> Result<(), JsValue> {
        self.session.with_ready(|session| session.forget_context())
    }

    /// Releases the model (and the GPU device) now, before the object is freed.
    pub fn unload(&self) -> Result<(), JsValue> {
        self.stop.request();
        // A running turn finds the slot unloaded when it ends and releases the GPU then.
        let previous = std::mem::replace(&mut *self.session.0.borrow_mut(), Slot::Unloaded);
        if let Slot::Ready(session) = previous {
            session.backend().0.release_gpu();
        }
        Ok(())
    }
}

// wgpu names a browser adapter by its `description`, which Chromium leaves empty; vendor and
// architecture say what it is ("google swiftshader").
#[wasm_bindgen(inline_js = "
export async function adapter_label() {
  const gpu = globalThis.navigator && navigator.gpu;
  const adapter = gpu ? await gpu.requestAdapter() : null;
  if (!adapter) return '';
  const info = adapter.info || {};
  const parts = [info.vendor, info.architecture, info.description].filter((p) => p);
  const fallback = info.isFallbackAdapter ? ' (software fallback)' : '';
  return parts.join(' ') + fallback;
}
")]
extern "C" {
    fn adapter_label() -> js_sys::Promise;
}

async fn name_the_adapter(selection: &mut Selection) {
    // The GPU engine's adapter, or the one `auto` passed over (named in the reason).
    // (`BrowserWebGpu` is how the GPU context names wgpu's browser backend.)
    let old = selection
        .adapter
        .clone()
        .unwrap_or_else(|| format!("{} (BrowserWebGpu)", selfroute_engine::UNNAMED_ADAPTER));
    let label = JsFuture::from(adapter_label())
        .await
        .ok()
        .and_then(|v| v.as_string())
        .filter(|l| !l.trim().is_empty());
    if let Some(label) = label {
        selection.reason = selection.reason.replace(&old, &label);
        if selection.adapter.is_some() {
            selection.adapter = Some(label);
        }
    }
}

fn turn_stats(outcome: &ChatOutcome) -> TurnStats {
    let new_prompt = outcome
        .prompt_tokens
        .saturating_sub(outcome.reused_prompt_tokens);
    // Decode speed is the device's: only a turn answered locally from its first token says it.
    let first = (outcome.route == Route::Local)
        .then_some(outcome.time_to_first_token_ms)
        .flatten();
    TurnStats::measure(new_prompt, outcome.local_tokens, first, outcome.latency_ms)
}
