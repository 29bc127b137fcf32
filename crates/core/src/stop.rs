//! Stop strings (OpenAI's `stop`): generation ends where one of them first appears, and neither it
//! nor anything after it is output.
//!
//! A stop string may arrive split over several tokens, so text that could be the start of one is
//! held back until the next piece shows whether it is. Streamed text therefore never contains a
//! prefix of a stop string that later turns out to be one.

/// Text scanned piece by piece for the first occurrence of any of a few stop strings.
#[derive(Debug, Clone, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    /// Text received but not yet released: a suffix that is the start of some stop string.
    held: String,
    stopped: bool,
}

/// What one piece of text released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// Text now known to precede any stop string.
    pub text: String,
    /// A stop string was found: `text` ends where it began, and nothing more will be released.
    pub stopped: bool,
}

impl StopStrings {
    /// Empty strings are ignored (they would stop before the first character).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
            stopped: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    /// Adds the next piece of generated text.
    pub fn push(&mut self, piece: &str) -> Released {
        if self.stopped {
            return Released {
                text: String::new(),
                stopped: true,
            };
        }
        self.held.push_str(piece);
        // The earliest match wins, whichever string it is: text after it was never meant to be
        // shown, even if another stop string would have matched there too.
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first {
            self.stopped = true;
            let mut text = std::mem::take(&mut self.held);
            text.truncate(at);
            return Released {
                text,
                stopped: true,
            };
        }
        let keep = self.longest_partial_suffix();
        let split = self.held.len() - keep;
        let rest = self.held.split_off(split);
        Released {
            text: std::mem::replace(&mut self.held, rest),
            stopped: false,
        }
    }

    /// The end of generation without a stop string: whatever was held back is plain text.
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        std::mem::take(&mut self.held)
    }

    /// Length in bytes of the longest suffix of `held` that is a proper prefix of a stop string
    /// (a whole one would have matched). Always on a character boundary: it is a prefix of a
    /// string.
    fn longest_partial_suffix(&self) -> usize {
        let held = self.held.as_str();
        self.stops
            .iter()
            .map(|stop| {
                let longest = (stop.len() - 1).min(held.len());
                (1..=longest)
                    .rev()
                    .find(|&n| {
                        held.is_char_boundary(held.len() - n)
                            && stop
                                .as_bytes()
                                .starts_with(&held.as_bytes()[held.len() - n..])
                    })
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut s = StopStrings::new(&stops);
        let mut out = Vec::new();
        let mut stopped = false;
        for p in pieces {
            let r = s.push(p);
            out.push(r.text);
            stopped |= r.stopped;
        }
        (out, stopped, s.finish())
    }

    #[test]
    fn a_stop_split_over_pieces_is_caught_and_never_shown() {
        let (out, stopped, rest) = run(&["END"], &["Hello E", "N", "D and more"]);
        assert_eq!(out, ["Hello ", "", ""]);
        assert!(stopped);
        assert_eq!(rest, "");
    }

    #[test]
    fn a_false_start_is_released_once_it_cannot_be_a_stop() {
        let (out, stopped, rest) = run(&["END"], &["E", "N", "O", "E"]);
        assert_eq!(out, ["", "", "ENO", ""]);
        assert!(!stopped);
        assert_eq!(rest, "E", "held text is plain text when generation ends");
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        let (out, stopped, _) = run(&["world", "lo w"], &["hello world"]);
        assert_eq!(out, ["hel"]);
        assert!(stopped);
        let (out, _, _) = run(&["\n\n", "."], &["a.b\n\n"]);
        assert_eq!(out, ["a"]);
    }

    #[test]
    fn multibyte_text_is_split_on_characters() {
        let (out, stopped, _) = run(&["éé"], &["aé", "bé", "é!"]);
        assert_eq!(out, ["a", "éb", ""]);
        assert!(stopped);
        // A stop starting with a character whose bytes a held suffix shares only in part.
        let (out, _, rest) = run(&["éx"], &["ñ"]);
        assert_eq!(out, ["ñ"]);
        assert_eq!(rest, "");
    }

    #[test]
    fn no_stops_release_everything_and_empty_stops_are_ignored() {
        let (out, stopped, _) = run(&[], &["a", "b"]);
        assert_eq!(out, ["a", "b"]);
        assert!(!stopped);
        let (out, _, _) = run(&[""], &["a"]);
        assert_eq!(out, ["a"]);
    }
}
