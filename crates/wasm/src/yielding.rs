//! Giving the worker's event loop a turn between tokens. The CPU engine computes synchronously,
//! so without this a `stop` message posted to the worker would wait until the whole answer is
//! done: the complaint users of in-browser engines raise most.

use std::cell::Cell;
use std::rc::Rc;

use selfroute_core::{Backend, Logits, LogitsFor, ModelConfig, TokenPick};
use selfroute_engine::Engine;
use wasm_bindgen::prelude::*;

// A MessageChannel round trip is a macrotask without setTimeout's 4 ms clamp for nested timers.
#[wasm_bindgen(inline_js = "
const channel = new MessageChannel();
const waiting = [];
channel.port1.onmessage = () => { const next = waiting.shift(); if (next) next(); };
export function next_macrotask() {
  return new Promise((resolve) => { waiting.push(resolve); channel.port2.postMessage(0); });
}
")]
extern "C" {
    fn next_macrotask() -> js_sys::Promise;
}

pub async fn yield_to_event_loop() {
    let _ = wasm_bindgen_futures::JsFuture::from(next_macrotask()).await;
}

/// Set by `stop()`, read between tokens and while waiting for the cloud.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Rc<Cell<bool>>);

impl StopFlag {
    pub fn request(&self) {
        self.0.set(true);
    }

    pub fn clear(&self) {
        self.0.set(false);
    }

    pub fn is_requested(&self) -> bool {
        self.0.get()
    }

    /// What a generation callback returns: stop once `stop()` was called.
    pub fn control(&self) -> selfroute_core::Control {
        if self.is_requested() {
            selfroute_core::Control::Stop
        } else {
            selfroute_core::Control::Continue
        }
    }
}

/// The engine, yielding to the event loop before each forward call.
pub struct Yielding(pub Engine);

impl Backend for Yielding {
    fn config(&self) -> &ModelConfig {
        self.0.config()
    }

    async fn forward(
        &mut self,
        tokens: &[u32],
        start_pos: usize,
        want: LogitsFor,
    ) -> selfroute_core::Result<Logits> {
        yield_to_event_loop().await;
        self.0.forward(tokens, start_pos, want).await
    }

    async fn forward_pick(
        &mut self,
        tokens: &[u32],
        start_pos: usize,
        pick: &TokenPick<'_>,
    ) -> selfroute_core::Result<u32> {
        yield_to_event_loop().await;
        self.0.forward_pick(tokens, start_pos, pick).await
    }

    fn picks_on_device(&self) -> bool {
        self.0.picks_on_device()
    }

    fn truncate_cache(&mut self, len: usize) {
        self.0.truncate_cache(len);
    }
}
