//! The offload protocol: how the local model says "send this to the cloud", and how the streamed
//! output is watched for it.
//!
//! Two signals are recognised:
//! - **The `<|offload|>` token** ([`OFFLOAD_TOKEN`]). The trainer adds it to the vocabulary: as a
//!   control token (GGUF `tokenizer.ggml.token_type` = 3) in GGUF vocabularies and as a special
//!   entry of `added_tokens` in `tokenizer.json`. [`OffloadSignal::from_tokenizer`] looks it up with
//!   [`Tokenizer::token_to_id`], which sees both. It is detected by id, so a user typing the string
//!   cannot trigger it: message contents are encoded with [`Tokenizer::encode_literal`], which never
//!   produces special tokens.
//! - **A text marker**, for models trained without the token (the paper's prompt-only baseline asks
//!   for [`DEFAULT_OFFLOAD_MARKER`] in the system prompt). It is only watched for when configured.
//!   Matching is exact: byte for byte, case-sensitive, spaces included, so `<unknown>I need
//!   external assistance</unknown>` (no inner spaces) or `<Unknown> ...` is *not* the marker. A
//!   looser match would need a normalising matcher that can still hold back the right text while
//!   streaming; the trained token makes that unnecessary.
//!
//! Local generation stops at the signal; the cloud receives the original conversation only.

use crate::error::{Error, Result};
use crate::generate::TokenEvent;
use crate::tokenizer::Tokenizer;

/// The special token a trained model emits to ask for the cloud.
pub const OFFLOAD_TOKEN: &str = "<|offload|>";

/// The paper's text marker (arXiv:2509.24050), for models without [`OFFLOAD_TOKEN`].
pub const DEFAULT_OFFLOAD_MARKER: &str = "<unknown> I need external assistance </unknown>";

/// What counts as an offload request for one model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OffloadSignal {
    /// Id of [`OFFLOAD_TOKEN`] when the vocabulary has it.
    pub token_id: Option<u32>,
    /// Text marker to watch for in the output; None disables marker detection. Must not be empty.
    pub marker: Option<String>,
}

impl OffloadSignal {
    /// The offload token of this tokenizer, if any, plus an optional text marker (pass
    /// `Some(DEFAULT_OFFLOAD_MARKER.into())` for the paper's prompt-only baseline).
    pub fn from_tokenizer(tokenizer: &Tokenizer, marker: Option<String>) -> Result<Self> {
        if marker.as_deref() == Some("") {
            // An empty marker would match before the first token and offload every request.
            return Err(Error::InvalidOffloadMarker(
                "the offload marker is empty".into(),
            ));
        }
        Ok(Self {
            token_id: tokenizer.token_to_id(OFFLOAD_TOKEN),
            marker,
        })
    }

    /// Whether anything can trigger an offload.
    pub fn is_enabled(&self) -> bool {
        self.token_id.is_some() || self.marker.as_deref().is_some_and(|m| !m.is_empty())
    }

    pub fn detector(&self) -> OffloadDetector {
        OffloadDetector::new(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OffloadReason {
    /// The model emitted [`OFFLOAD_TOKEN`].
    Token,
    /// The output contained the text marker.
    Marker,
}

/// What to do after one generated token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detection {
    /// Keep generating; `visible` is the text that can be shown now (possibly empty while text
    /// that may begin the marker is held back).
    Continue { visible: String },
    /// Stop local generation and offload. `visible` is the output text before the signal not yet
    /// shown; text after the marker in the same piece is dropped.
    Offload {
        reason: OffloadReason,
        visible: String,
    },
}

/// Watches a generation's tokens and text for the offload signal, holding back any text that may
/// be the start of the marker so the user never sees half a marker.
///
/// Feed it every [`TokenEvent`] of `Generator::generate` and stop (`Control::Stop`) at the first
/// [`Detection::Offload`]. Do not put the offload token in `extra_stop_tokens`: stop tokens never
/// reach the callback and would end the generation as an ordinary `Stop`.
#[derive(Debug, Clone)]
pub struct OffloadDetector {
    token_id: Option<u32>,
    marker: Option<String>,
    /// Output text not shown yet: always a proper prefix of the marker, so its size is bounded.
    held: String,
    offloaded: Option<OffloadReason>,
}

impl OffloadDetector {
    pub fn new(signal: &OffloadSignal) -> Self {
        Self {
            token_id: signal.token_id,
            marker: signal.marker.clone().filter(|m| !m.is_empty()),
            held: String::new(),
            offloaded: None,
        }
    }

    /// One generated token and the text it completed. Once an offload was detected every later
    /// call answers the same offload with no visible text (the generation's trailing event for
    /// an incomplete character repeats the last token id).
    pub fn push(&mut self, token_id: u32, text: &str) -> Detection {
        if let Some(reason) = self.offloaded {
            return Detection::Offload {
                reason,
                visible: String::new(),
            };
        }
        if self.token_id == Some(token_id) {
            // The marker cannot complete any more, so held-back text is ordinary output. The
            // token's own text is empty when it is special (decoding skips it); strip it in case
            // a vocabulary added it as a plain token.
            let mut visible = std::mem::take(&mut self.held);
            visible.push_str(text.strip_suffix(OFFLOAD_TOKEN).unwrap_or(text));
            self.offloaded = Some(OffloadReason::Token);
            return Detection::Offload {
                reason: OffloadReason::Token,
                visible,
            };
        }
        let Some(marker) = self.marker.as_deref() else {
            return Detection::Continue {
                visible: text.to_string(),
            };
        };
        let mut buf = std::mem::take(&mut self.held);
        buf.push_str(text);
        if let Some(start) = buf.find(marker) {
            buf.truncate(start);
            self.offloaded = Some(OffloadReason::Marker);
            return Detection::Offload {
                reason: OffloadReason::Marker,
                visible: buf,
            };
        }
        // Hold back the longest tail that could still grow into the marker. Any marker that
        // starts in `buf` and ends later starts inside that tail, so what is released before it
        // can never be part of one.
        let hold_from = partial_marker_start(&buf, marker);
        self.held = buf.split_off(hold_from);
        Detection::Continue { visible: buf }
    }

    /// [`Self::push`] for an event of `Generator::generate`.
    pub fn push_event(&mut self, event: &TokenEvent<'_>) -> Detection {
        self.push(event.id, event.text)
    }

    /// End of the stream: returns the text still held back (it did not become the marker), or
    /// nothing after an offload.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// The offload detected so far, if any.
    pub fn offloaded(&self) -> Option<OffloadReason> {
        self.offloaded
    }

    /// Text currently held back as a possible start of the marker.
    pub fn held_back(&self) -> &str {
        &self.held
    }
}

/// Byte index where the longest suffix of `text` that is a proper prefix of `marker` begins
/// (`text.len()` when there is none).
fn partial_marker_start(text: &str, marker: &str) -> usize {
    let earliest = text.len().saturating_sub(marker.len().saturating_sub(1));
    (earliest..text.len())
        .find(|&i| {
            text.is_char_boundary(i) && text.get(i..).is_some_and(|tail| marker.starts_with(tail))
        })
        .unwrap_or(text.len())
}

/// Forbids the offload token (logit bias of negative infinity), e.g. once the cloud budget is
/// spent. Replaces any bias already set for it, since adding to +inf would give NaN. Returns
/// false when the model has no offload token: a text marker cannot be masked this way, so the
/// caller must answer locally in some other way (e.g. not ask for the marker in the prompt).
pub fn mask_offload(logit_bias: &mut Vec<(u32, f32)>, signal: &OffloadSignal) -> bool {
    let Some(id) = signal.token_id else {
        return false;
    };
    logit_bias.retain(|&(t, _)| t != id);
    logit_bias.push((id, f32::NEG_INFINITY));
    true
}

/// Makes the offload token more (positive `bias`) or less (negative) likely. Adds to a bias
/// already set for it, so a mask stays a mask. Returns false when the model has no offload token.
pub fn bias_offload(
    logit_bias: &mut Vec<(u32, f32)>,
    signal: &OffloadSignal,
    bias: f32,
) -> Result<bool> {
    if !bias.is_finite() {
        return Err(Error::InvalidSampling(format!(
            "offload bias {bias} must be finite (use mask_offload to forbid the token)"
        )));
    }
    let Some(id) = signal.token_id else {
        return Ok(false);
    };
    match logit_bias.iter_mut().find(|(t, _)| *t == id) {
        Some((_, b)) => *b += bias,
        None => logit_bias.push((id, bias)),
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_marker_start_finds_the_longest_possible_beginning() {
        assert_eq!(partial_marker_start("abc <unk", "<unknown>"), 4);
        assert_eq!(partial_marker_start("abc <", "<unknown>"), 4);
        assert_eq!(partial_marker_start("abc", "<unknown>"), 3);
        assert_eq!(partial_marker_start("", "<unknown>"), 0);
        // `<<u` ends in `<u`, not in `<<u`.
        assert_eq!(partial_marker_start("<<u", "<unknown>"), 1);
        // Multi-byte characters never split.
        assert_eq!(partial_marker_start("é€", "€x"), 2);
        assert_eq!(partial_marker_start("é€", "x€"), 5);
    }

    #[test]
    fn nothing_configured_passes_everything_through() {
        let mut d = OffloadSignal::default().detector();
        assert_eq!(
            d.push(5, "<unknown>"),
            Detection::Continue {
                visible: "<unknown>".into()
            }
        );
        assert_eq!(d.finish(), "");
        assert!(!OffloadSignal::default().is_enabled());
    }

    #[test]
    fn an_empty_marker_in_a_hand_built_signal_is_ignored() {
        let signal = OffloadSignal {
            token_id: None,
            marker: Some(String::new()),
        };
        assert!(!signal.is_enabled());
        let mut d = signal.detector();
        assert_eq!(
            d.push(1, "hi"),
            Detection::Continue {
                visible: "hi".into()
            }
        );
    }
}
