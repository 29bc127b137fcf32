//! selfroute in the browser: the wasm-bindgen API that `web/selfroute-worker.js` drives (see
//! `web/CONTRACT.md`). A [`WasmAssistant`](api::WasmAssistant) is the same routing session the
//! CLI runs (`selfroute_core::Assistant` over `selfroute_engine::Engine`), with the cloud reached
//! through `fetch` and the engine yielding to the worker's event loop between tokens so a stop
//! message is heard mid-answer.
//!
//! Natively the crate is empty: everything here needs a browser.

#[cfg(target_arch = "wasm32")]
mod api;
#[cfg(target_arch = "wasm32")]
mod cloud;
#[cfg(target_arch = "wasm32")]
mod errors;
#[cfg(target_arch = "wasm32")]
mod events;
#[cfg(target_arch = "wasm32")]
mod options;
#[cfg(target_arch = "wasm32")]
mod yielding;

#[cfg(target_arch = "wasm32")]
pub use api::WasmAssistant;
