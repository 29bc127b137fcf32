//! Finding the final answer in a free-text response and reading it as a number.
//!
//! Extraction is lenient about where the answer is (tags, `\boxed{}`, an "Answer:" line, the last
//! number) but reading is strict about what it is: the extracted text must be one number, give or
//! take common decorations. A response whose answer slot holds prose is therefore Malformed rather
//! than scored on whatever digits it happens to contain, which keeps "list several candidates"
//! from earning reward.

/// Longest text `parse_number` looks at; real numeric answers are far shorter.
const MAX_NUMBER_TEXT: usize = 256;

const OPEN_TAG: &str = "<answer>";
const CLOSE_TAG: &str = "</answer>";
const BOXED: &str = "\\boxed{";

/// The final answer of a response, trimmed: the content of the last `<answer>...</answer>` pair;
/// else the last balanced `\boxed{...}`; else what follows the last line starting with "Answer:",
/// "Final answer:", "The answer is" or "The final answer is" (the next non-empty line when nothing
/// follows on the same line); else the last number in the text.
pub fn extract_final_answer(response: &str) -> Option<String> {
    let found = marked_answer(response).or_else(|| last_number(response))?;
    Some(found.trim().to_string())
}

/// What [`extract_final_answer`] finds before it falls back to the last number: a tagged, boxed
/// or "Answer:" answer, the ones a response marks as its answer. Untrimmed.
pub(crate) fn marked_answer(response: &str) -> Option<&str> {
    answer_tag_content(response)
        .or_else(|| last_boxed(response))
        .or_else(|| answer_line(response))
}

/// The content of the last complete `<answer>...</answer>` pair (tags matched case-insensitively).
/// Without a complete pair, the text after the last `<answer>`: generation is often stopped on
/// `</answer>`, which then does not appear in the response.
pub(crate) fn answer_tag_content(response: &str) -> Option<&str> {
    // ASCII lowercasing keeps every byte offset, so positions found in `lower` slice `response`.
    let lower = response.to_ascii_lowercase();
    if let Some(close) = lower.rfind(CLOSE_TAG)
        && let Some(open) = lower[..close].rfind(OPEN_TAG)
    {
        return Some(&response[open + OPEN_TAG.len()..close]);
    }
    let open = lower.rfind(OPEN_TAG)?;
    Some(&response[open + OPEN_TAG.len()..])
}

/// The content of the last `\boxed{...}` whose braces balance (a truncated one is skipped).
fn last_boxed(text: &str) -> Option<&str> {
    let mut end = text.len();
    while let Some(start) = text[..end].rfind(BOXED) {
        let body = &text[start + BOXED.len()..];
        if let Some(len) = balanced_len(body) {
            return Some(&body[..len]);
        }
        end = start;
    }
    None
}

/// Length of `s` up to the `}` that closes an already-open brace.
fn balanced_len(s: &str) -> Option<usize> {
    let mut depth = 1usize;
    for (i, byte) in s.bytes().enumerate() {
        match byte {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn answer_line(text: &str) -> Option<&str> {
    const PREFIXES: [&str; 4] = [
        "final answer:",
        "answer:",
        "the final answer is",
        "the answer is",
    ];
    let lines: Vec<&str> = text.lines().collect();
    for (index, line) in lines.iter().enumerate().rev() {
        // Markdown emphasis, headings and quotes often precede the phrase.
        let stripped = line.trim_start_matches(|c: char| c.is_whitespace() || "*#>_".contains(c));
        let lower = stripped.to_ascii_lowercase();
        let Some(prefix) = PREFIXES.iter().find(|p| lower.starts_with(*p)) else {
            continue;
        };
        let rest = stripped[prefix.len()..]
            .trim_matches(|c: char| c.is_whitespace() || c == ':' || c == '*' || c == '_');
        if !rest.is_empty() {
            return Some(rest);
        }
        return lines[index + 1..]
            .iter()
            .map(|l| l.trim())
            .find(|l| !l.is_empty());
    }
    None
}

/// The last number-looking token: optional minus, digits with optional thousands commas, optional
/// decimals, optional `/denominator`.
fn last_number(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let mut last = None;
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let mut start = i;
        // A minus belongs to the number only when it cannot be a binary operator ("37-45").
        if start > 0 && bytes[start - 1] == b'-' {
            let before = if start >= 2 { bytes[start - 2] } else { b' ' };
            if !before.is_ascii_alphanumeric() && before != b')' {
                start -= 1;
            }
        }
        let mut end = digits_end(bytes, i);
        // Thousands groups: a comma followed by exactly three digits.
        while end < bytes.len() && bytes[end] == b',' {
            let group_end = digits_end(bytes, end + 1);
            if group_end - (end + 1) != 3 {
                break;
            }
            end = group_end;
        }
        if end + 1 < bytes.len() && bytes[end] == b'.' && bytes[end + 1].is_ascii_digit() {
            end = digits_end(bytes, end + 1);
        }
        if end + 1 < bytes.len() && bytes[end] == b'/' && bytes[end + 1].is_ascii_digit() {
            end = digits_end(bytes, end + 1);
        }
        last = Some(&text[start..end]);
        i = end;
    }
    last
}

fn digits_end(bytes: &[u8], from: usize) -> usize {
    let mut end = from;
    while end < bytes.len() && bytes[end].is_ascii_digit() {
        end += 1;
    }
    end
}

/// Reads text as one number. Accepts a sign (ASCII or U+2212), thousands commas (`1,234`, also
/// LaTeX `1{,}234`), a leading `$`, a trailing `%` (dropped: "25%" reads as 25), a trailing period,
/// decimals, simple fractions `3/4` and `\frac{3}{4}`, and wrappers `**..**`, `$..$`, `\(..\)`,
/// `\boxed{..}`. Rejects everything else, including exponents, `inf` and `nan`.
pub fn parse_number(text: &str) -> Option<f64> {
    let normalized = normalize(text)?;
    let (negative, body) = split_sign(strip_decorations(&normalized))?;
    let magnitude = if let Some((num, den)) = latex_fraction(body) {
        ratio(num, den)?
    } else if let Some((num, den)) = body.split_once('/') {
        ratio(num, den)?
    } else {
        decimal(body)?.parse::<f64>().ok()?
    };
    let value = if negative { -magnitude } else { magnitude };
    value.is_finite().then_some(value)
}

/// Reads text as an exact integer, with `parse_number`'s decorations; a decimal part must be all
/// zeros ("82.0"). Fractions and values beyond 18 digits give `None`.
pub fn parse_integer(text: &str) -> Option<i64> {
    let normalized = normalize(text)?;
    let (negative, body) = split_sign(strip_decorations(&normalized))?;
    let digits = decimal(body)?;
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((&digits, ""));
    if !frac_part.bytes().all(|b| b == b'0') || int_part.is_empty() || int_part.len() > 18 {
        return None;
    }
    let magnitude: i64 = int_part.parse().ok()?;
    Some(if negative { -magnitude } else { magnitude })
}

/// Whether two numeric answers agree: relative tolerance 1e-6, absolute 1e-9 near zero.
pub fn numbers_match(a: f64, b: f64) -> bool {
    (a - b).abs() <= (1e-6 * a.abs().max(b.abs())).max(1e-9)
}

fn normalize(text: &str) -> Option<String> {
    if text.len() > MAX_NUMBER_TEXT {
        return None;
    }
    Some(
        text.replace('\u{2212}', "-")
            .replace("{,}", ",")
            .replace("\\,", ",")
            .replace("\\!", ""),
    )
}

/// Peels wrappers and trailing punctuation until none is left (bounded: each pass shortens).
fn strip_decorations(mut s: &str) -> &str {
    loop {
        let before = s.len();
        s = s.trim().trim_matches('*');
        s = s.strip_suffix('.').unwrap_or(s);
        s = s.strip_suffix("\\%").unwrap_or(s);
        s = s.strip_suffix('%').unwrap_or(s);
        s = s.strip_prefix("\\$").unwrap_or(s);
        s = s.trim_matches('$');
        for (open, close) in [("\\(", "\\)"), ("\\[", "\\]"), (BOXED, "}")] {
            if let Some(inner) = s.strip_prefix(open).and_then(|r| r.strip_suffix(close)) {
                s = inner;
            }
        }
        if s.len() == before {
            return s;
        }
    }
}

fn split_sign(s: &str) -> Option<(bool, &str)> {
    let (negative, rest) = if let Some(rest) = s.strip_prefix('-') {
        (true, rest)
    } else if let Some(rest) = s.strip_prefix('+') {
        (false, rest)
    } else {
        (false, s)
    };
    // "-$5": the currency sign may follow the minus.
    let rest = rest.strip_prefix("\\$").unwrap_or(rest);
    let rest = rest.strip_prefix('$').unwrap_or(rest).trim();
    (!rest.is_empty()).then_some((negative, rest))
}

/// `\frac{a}{b}` (also `\dfrac`, `\tfrac`) split into its two parts.
fn latex_fraction(s: &str) -> Option<(&str, &str)> {
    let rest = ["\\frac{", "\\dfrac{", "\\tfrac{"]
        .iter()
        .find_map(|p| s.strip_prefix(p))?;
    let num_len = balanced_len(rest)?;
    let after = rest[num_len + 1..].strip_prefix('{')?;
    let den = after.strip_suffix('}')?;
    Some((&rest[..num_len], den))
}

fn ratio(num: &str, den: &str) -> Option<f64> {
    let signed = |s: &str| -> Option<f64> {
        let (negative, body) = split_sign(s.trim())?;
        let v: f64 = decimal(body)?.parse().ok()?;
        Some(if negative { -v } else { v })
    };
    let den = signed(den)?;
    if den == 0.0 {
        return None;
    }
    Some(signed(num)? / den)
}

/// Validates an unsigned decimal and returns it without thousands commas.
fn decimal(s: &str) -> Option<String> {
    let (int_part, frac_part) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    if let Some(frac) = frac_part
        && (frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let mut digits = String::with_capacity(s.len());
    if int_part.contains(',') {
        let mut groups = int_part.split(',');
        let first = groups.next()?;
        if !(1..=3).contains(&first.len()) || !first.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.push_str(first);
        for group in groups {
            if group.len() != 3 || !group.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            digits.push_str(group);
        }
    } else {
        if !int_part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if int_part.is_empty() && frac_part.is_none() {
            return None;
        }
        digits.push_str(int_part);
    }
    if let Some(frac) = frac_part {
        if digits.is_empty() {
            digits.push('0');
        }
        digits.push('.');
        digits.push_str(frac);
    }
    Some(digits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfroute_core::rng::SplitMix64;

    fn extract(s: &str) -> Option<String> {
        extract_final_answer(s)
    }

    #[test]
    fn answer_tags_win_and_the_last_pair_counts() {
        assert_eq!(extract("<answer>82</answer>").as_deref(), Some("82"));
        assert_eq!(
            extract("I think <answer>80</answer>. No wait: <answer> 82 </answer> done.").as_deref(),
            Some("82")
        );
        assert_eq!(
            extract("\\boxed{5} <ANSWER>7</Answer> answer: 9").as_deref(),
            Some("7")
        );
        // Stopped on `</answer>`: the closing tag is missing.
        assert_eq!(extract("reasoning... <answer>82").as_deref(), Some("82"));
        assert_eq!(extract("<answer></answer>").as_deref(), Some(""));
    }

    #[test]
    fn boxed_then_answer_line_then_last_number() {
        assert_eq!(
            extract("so \\boxed{\\frac{3}{4}} and \\boxed{12").as_deref(),
            Some("\\frac{3}{4}")
        );
        assert_eq!(
            extract("37 + 45 = 82\nAnswer: 82.\nCheck: 1 + 1 = 2").as_deref(),
            Some("82.")
        );
        assert_eq!(
            extract("**Final Answer:** $1,234").as_deref(),
            Some("$1,234")
        );
        assert_eq!(extract("The answer is\n\n  -7\n").as_deref(), Some("-7"));
        assert_eq!(
            extract("37 - 45 gives -8, so x = -8.").as_deref(),
            Some("-8")
        );
        assert_eq!(extract("37-45").as_deref(), Some("45"));
        assert_eq!(
            extract("total 1,234,567 units").as_deref(),
            Some("1,234,567")
        );
        assert_eq!(extract("ratio 3/4").as_deref(), Some("3/4"));
        assert_eq!(extract("pi is 3.14159.").as_deref(), Some("3.14159"));
        assert_eq!(extract("no digits here"), None);
        assert_eq!(extract(""), None);
    }

    #[test]
    fn parses_numbers_with_decorations() {
        let cases: [(&str, f64); 20] = [
            ("42", 42.0),
            ("+5", 5.0),
            ("-17", -17.0),
            ("\u{2212}3", -3.0),
            ("1,234", 1234.0),
            ("1,234,567.5", 1_234_567.5),
            ("1{,}234", 1234.0),
            ("$12.50", 12.5),
            ("-$5", -5.0),
            ("\\$7", 7.0),
            ("25%", 25.0),
            ("82.", 82.0),
            (".5", 0.5),
            ("3/4", 0.75),
            ("-1/8", -0.125),
            ("\\frac{3}{4}", 0.75),
            ("\\dfrac{-1}{2}", -0.5),
            ("**82**", 82.0),
            ("$\\boxed{9}$", 9.0),
            ("\\( 10 \\)", 10.0),
        ];
        for (text, want) in cases {
            assert_eq!(parse_number(text), Some(want), "{text:?}");
        }
    }

    #[test]
    fn rejects_non_numbers() {
        for text in [
            "",
            "   ",
            "-",
            "abc",
            "82 apples",
            "1e5",
            "inf",
            "NaN",
            "1,23",
            "12,3456",
            "1.2.3",
            "3/0",
            "1/2/3",
            "--5",
            "5-",
            "0x10",
            "\\frac{1}{0}",
            "\\frac{1}",
            ",123",
        ] {
            assert_eq!(parse_number(text), None, "{text:?}");
        }
        assert_eq!(parse_number(&"9".repeat(400)), None);
        // A long but finite number that fits the length bound still reads.
        assert!(parse_number(&"9".repeat(200)).is_some());
    }

    #[test]
    fn parses_exact_integers() {
        assert_eq!(parse_integer("1,234"), Some(1234));
        assert_eq!(parse_integer("+5"), Some(5));
        assert_eq!(parse_integer("-22."), Some(-22));
        assert_eq!(parse_integer("82.000"), Some(82));
        assert_eq!(parse_integer("82.5"), None);
        assert_eq!(parse_integer("3/4"), None);
        assert_eq!(parse_integer(&"9".repeat(19)), None);
        assert_eq!(parse_integer("."), None);
    }

    #[test]
    fn tolerance() {
        assert!(numbers_match(0.75, 0.750_000_1));
        assert!(!numbers_match(0.75, 0.7501));
        assert!(numbers_match(1e12, 1e12 + 1.0));
        assert!(numbers_match(0.0, 1e-10));
        assert!(!numbers_match(0.0, 1e-8));
    }

    #[test]
    fn never_panics_on_random_text() {
        const PIECES: [&str; 24] = [
            "<answer>",
            "</answer>",
            "\\boxed{",
            "}",
            "{",
            "Answer:",
            "The answer is",
            "\n",
            "-",
            "+",
            ",",
            ".",
            "/",
            "$",
            "%",
            "\\frac{",
            "é",
            "\u{2212}",
            "12",
            "7",
            " ",
            "*",
            "\\(",
            "0",
        ];
        let mut rng = SplitMix64::new(99);
        for _ in 0..500 {
            let len = rng.below(30) as usize;
            let text: String = (0..len)
                .map(|_| PIECES[rng.below(PIECES.len() as u64) as usize])
                .collect();
            let extracted = extract_final_answer(&text);
            let _ = parse_number(&text);
            let _ = parse_integer(&text);
            if let Some(e) = extracted {
                let _ = parse_number(&e);
                let _ = parse_integer(&e);
            }
        }
    }
}
