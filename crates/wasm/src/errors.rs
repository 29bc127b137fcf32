//! Errors cross into JavaScript as `Error`s whose `name` says what happened (the names of
//! `web/CONTRACT.md`), so the page can tell a lost device from a corrupt file without parsing text.

use selfroute_core::BackendErrorKind;
use selfroute_engine::EngineError;
use wasm_bindgen::JsValue;

pub fn named(name: &str, message: impl AsRef<str>) -> JsValue {
    let error = js_sys::Error::new(message.as_ref());
    error.set_name(name);
    error.into()
}

fn name_of_kind(kind: BackendErrorKind) -> &'static str {
    match kind {
        BackendErrorKind::NoAdapter | BackendErrorKind::Unsupported => "NotSupportedError",
        BackendErrorKind::DeviceLost => "DeviceLostError",
        BackendErrorKind::OutOfMemory => "OutOfMemoryError",
        BackendErrorKind::InvalidInput => "DataError",
        BackendErrorKind::Failed => "OperationError",
    }
}

/// A model that could not be read at all (bad bytes, a missing tensor).
pub fn invalid_model(e: &selfroute_core::Error) -> JsValue {
    match e.backend_kind() {
        Some(kind) => named(name_of_kind(kind), e.to_string()),
        None => named("InvalidModelError", e.to_string()),
    }
}

pub fn engine(e: &EngineError) -> JsValue {
    match e {
        EngineError::InvalidModel(text) => named("InvalidModelError", text),
        other => named(name_of_kind(other.kind()), other.to_string()),
    }
}

/// A failed turn: an engine failure by its kind; anything else was the caller's input.
pub fn turn(e: &selfroute_core::Error) -> JsValue {
    match e.backend_kind() {
        Some(kind) => named(name_of_kind(kind), e.to_string()),
        None => named("DataError", e.to_string()),
    }
}

pub fn busy() -> JsValue {
    named(
        "InvalidStateError",
        "the assistant is answering; stop() it or wait for the answer",
    )
}

pub fn unloaded() -> JsValue {
    named("InvalidStateError", "the model was unloaded")
}
