//! Log-probabilities of generated tokens, as OpenAI's `logprobs` / `top_logprobs` report them.
//!
//! Which distribution: the model's own, the log-softmax of its raw logits, before the request's
//! `logit_bias`, penalties, temperature and top-p cut. That is what OpenAI reports (its log-probs do
//! not move with `temperature`) and vLLM's default (`raw_logprobs`); it describes the model rather
//! than the sampling settings, so two requests that differ only in temperature see the same
//! numbers. The sampled token is reported with its log-probability under that distribution even
//! when a bias made an unlikely token win.

use crate::tokenizer::Tokenizer;

/// Most alternatives a caller may ask for per token (OpenAI's limit for `top_logprobs`).
pub const MAX_TOP_LOGPROBS: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
}

/// One generated token's log-probability and the most likely alternatives at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub chosen: TokenLogprob,
    /// The `top` most likely tokens, most likely first (ties by lower id).
    pub top: Vec<TokenLogprob>,
}

/// The normaliser of a log-softmax over `logits`: max + ln(sum(exp(l - max))), in f64 so a
/// 50k-token vocabulary does not lose the small terms. NaN logits count as impossible.
fn log_normaliser(logits: &[f32]) -> f64 {
    let max = logits
        .iter()
        .filter(|l| !l.is_nan())
        .fold(f32::NEG_INFINITY, |m, &l| m.max(l));
    if max == f32::NEG_INFINITY || max.is_infinite() {
        return f64::from(max);
    }
    let sum: f64 = logits
        .iter()
        .filter(|l| !l.is_nan())
        .map(|&l| f64::from(l - max).exp())
        .sum();
    f64::from(max) + sum.ln()
}

fn logprob_of(logits: &[f32], normaliser: f64, id: u32) -> f32 {
    match logits.get(id as usize) {
        Some(l) if !l.is_nan() => (f64::from(*l) - normaliser) as f32,
        _ => f32::NEG_INFINITY,
    }
}

impl TokenLogprobs {
    /// From the raw logits of one position, the token picked there and how many alternatives to
    /// keep (at most [`MAX_TOP_LOGPROBS`]).
    pub fn from_logits(logits: &[f32], chosen: u32, top: usize) -> Self {
        let normaliser = log_normaliser(logits);
        let top = top.min(MAX_TOP_LOGPROBS).min(logits.len());
        let mut best: Vec<TokenLogprob> = Vec::with_capacity(top + 1);
        if top > 0 {
            // One pass keeping the best `top` in order: top <= 20, so the insertion is cheap next
            // to sorting the whole vocabulary.
            for (i, &l) in logits.iter().enumerate() {
                if l.is_nan() {
                    continue;
                }
                if best.len() == top && best.last().is_some_and(|b| l <= b.logprob) {
                    continue;
                }
                let at = best.partition_point(|b| b.logprob >= l);
                best.insert(
                    at,
                    TokenLogprob {
                        id: i as u32,
                        logprob: l,
                    },
                );
                best.truncate(top);
            }
            for b in &mut best {
                b.logprob = logprob_of(logits, normaliser, b.id);
            }
        }
        Self {
            chosen: TokenLogprob {
                id: chosen,
                logprob: logprob_of(logits, normaliser, chosen),
            },
            top: best,
        }
    }
}

/// A token as text and as the bytes it stands for: what OpenAI's `token` and `bytes` fields hold.
/// A token that is only part of a character has bytes that are not UTF-8 on their own; its text is
/// then their lossy decoding.
pub fn token_text_and_bytes(tokenizer: &Tokenizer, id: u32) -> (String, Vec<u8>) {
    if let Ok(text) = tokenizer.decode(&[id], false)
        && !text.contains('\u{FFFD}')
    {
        let bytes = text.as_bytes().to_vec();
        return (text, bytes);
    }
    let bytes = tokenizer
        .id_to_token(id)
        .and_then(|piece| piece_bytes(&piece))
        .unwrap_or_else(|| "\u{FFFD}".as_bytes().to_vec());
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

/// The bytes of a vocabulary entry that decodes to part of a character: a byte-level BPE piece
/// (GPT-2's byte-to-character table) or a SentencePiece byte token (`<0xE2>`).
fn piece_bytes(piece: &str) -> Option<Vec<u8>> {
    if let Some(hex) = piece
        .strip_prefix("<0x")
        .and_then(|rest| rest.strip_suffix('>'))
    {
        return u8::from_str_radix(hex, 16).ok().map(|b| vec![b]);
    }
    piece.chars().map(byte_level_byte).collect()
}

/// GPT-2's byte-level alphabet backwards: printable Latin-1 bytes stand for themselves, the other
/// 68 bytes are shifted to U+0100.. in byte order.
fn byte_level_byte(c: char) -> Option<u8> {
    let code = u32::from(c);
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if code <= 0xFF {
        return printable(code).then_some(code as u8);
    }
    let index = code.checked_sub(0x100)? as usize;
    (0u32..=0xFF)
        .filter(|&b| !printable(b))
        .nth(index)
        .map(|b| b as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_and_top_alternatives() {
        let logits = [1.0f32, 3.0, f32::NAN, 2.0, f32::NEG_INFINITY];
        let lp = TokenLogprobs::from_logits(&logits, 3, 3);
        // By hand: ln(e^1 + e^3 + e^2) = 3.40760596.
        let norm = 3.407_606_f32;
        assert!((lp.chosen.logprob - (2.0 - norm)).abs() < 1e-5, "{lp:?}");
        let ids: Vec<u32> = lp.top.iter().map(|t| t.id).collect();
        assert_eq!(ids, [1, 3, 0]);
        assert!((lp.top[0].logprob - (3.0 - norm)).abs() < 1e-5);
        assert!((lp.top[2].logprob - (1.0 - norm)).abs() < 1e-5);
        assert_eq!(
            TokenLogprobs::from_logits(&logits, 4, 0).chosen.logprob,
            f32::NEG_INFINITY
        );
        assert!(TokenLogprobs::from_logits(&logits, 1, 0).top.is_empty());
        // The NaN is no candidate.
        assert_eq!(TokenLogprobs::from_logits(&logits, 1, 50).top.len(), 4);
    }

    #[test]
    fn equal_logits_keep_the_lower_id_first() {
        let lp = TokenLogprobs::from_logits(&[0.5, 2.0, 2.0, 2.0], 2, 2);
        let ids: Vec<u32> = lp.top.iter().map(|t| t.id).collect();
        assert_eq!(ids, [1, 2]);
    }

    #[test]
    fn byte_level_pieces_map_back_to_bytes() {
        assert_eq!(piece_bytes("Ġhi"), Some(b" hi".to_vec()));
        assert_eq!(piece_bytes("Ċ"), Some(b"\n".to_vec()));
        // "—" is E2 80 94; byte-level BPE writes it "âĢĶ".
        assert_eq!(piece_bytes("âĢ"), Some(vec![0xE2, 0x80]));
        assert_eq!(piece_bytes("<0xE2>"), Some(vec![0xE2]));
    }
}
