//! Route events and outcomes as plain JavaScript objects (`{type: "local", text}`, ...).

use selfroute_core::{ChatOutcome, OffloadReason, RouteEvent};
use serde::Serialize;
use wasm_bindgen::JsValue;

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
enum JsEvent<'a> {
    Local { text: &'a str },
    Offload { reason: OffloadReason },
    OffloadDeclined { reason: OffloadReason },
    Cloud { text: &'a str },
    CloudFailed { message: String },
    Done { outcome: &'a ChatOutcome },
}

/// Plain objects (not Maps), `null` for None: what JavaScript code expects to read.
pub fn to_js<T: Serialize + ?Sized>(value: &T) -> JsValue {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .unwrap_or(JsValue::NULL)
}

pub fn event(event: &RouteEvent<'_>) -> JsValue {
    let js = match event {
        RouteEvent::LocalText(text) => JsEvent::Local { text },
        RouteEvent::OffloadStarted { reason } => JsEvent::Offload { reason: *reason },
        RouteEvent::OffloadDeclined { reason } => JsEvent::OffloadDeclined { reason: *reason },
        RouteEvent::CloudText(text) => JsEvent::Cloud { text },
        RouteEvent::CloudFailed { error } => JsEvent::CloudFailed {
            message: error.to_string(),
        },
        RouteEvent::Done(outcome) => JsEvent::Done { outcome },
    };
    to_js(&js)
}
