//! A safe evaluator for countdown equations: integers, `+ - * /`, unary minus and parentheses,
//! computed as exact fractions so `(7 / 2) * 2` is exactly 7 and rounding can never turn a wrong
//! equation into a right one. Input length and nesting depth are bounded and every operation is
//! checked, so model output can make it fail but not panic or overflow the stack.

use std::fmt;

/// Longest expression accepted, in bytes.
pub const MAX_EXPR_LEN: usize = 512;
/// Deepest nesting of parentheses and unary minus accepted.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExprError {
    #[error("empty expression")]
    Empty,
    #[error("expression longer than {MAX_EXPR_LEN} bytes")]
    TooLong,
    #[error("expression nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("unexpected input at byte {at}")]
    Unexpected { at: usize },
    #[error("expression ends too early")]
    UnexpectedEnd,
    #[error("division by zero")]
    DivisionByZero,
    #[error("arithmetic overflow")]
    Overflow,
}

/// An exact fraction in lowest terms with a positive denominator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rational {
    num: i128,
    den: i128,
}

impl Rational {
    pub fn integer(value: i128) -> Self {
        Self { num: value, den: 1 }
    }

    pub fn numer(&self) -> i128 {
        self.num
    }

    pub fn denom(&self) -> i128 {
        self.den
    }

    /// The value when it is a whole number.
    pub fn as_integer(&self) -> Option<i128> {
        (self.den == 1).then_some(self.num)
    }

    fn new(num: i128, den: i128) -> Result<Self, ExprError> {
        if den == 0 {
            return Err(ExprError::DivisionByZero);
        }
        let (mut num, mut den) = if den < 0 {
            (checked(num.checked_neg())?, checked(den.checked_neg())?)
        } else {
            (num, den)
        };
        let g = gcd(num.unsigned_abs(), den.unsigned_abs());
        if g > 1 {
            let g = checked(i128::try_from(g).ok())?;
            num /= g;
            den /= g;
        }
        Ok(Self { num, den })
    }

    fn add(self, other: Self) -> Result<Self, ExprError> {
        let left = checked(self.num.checked_mul(other.den))?;
        let right = checked(other.num.checked_mul(self.den))?;
        Self::new(
            checked(left.checked_add(right))?,
            checked(self.den.checked_mul(other.den))?,
        )
    }

    fn neg(self) -> Result<Self, ExprError> {
        Ok(Self {
            num: checked(self.num.checked_neg())?,
            den: self.den,
        })
    }

    fn sub(self, other: Self) -> Result<Self, ExprError> {
        self.add(other.neg()?)
    }

    fn mul(self, other: Self) -> Result<Self, ExprError> {
        Self::new(
            checked(self.num.checked_mul(other.num))?,
            checked(self.den.checked_mul(other.den))?,
        )
    }

    fn div(self, other: Self) -> Result<Self, ExprError> {
        if other.num == 0 {
            return Err(ExprError::DivisionByZero);
        }
        Self::new(
            checked(self.num.checked_mul(other.den))?,
            checked(self.den.checked_mul(other.num))?,
        )
    }
}

impl fmt::Display for Rational {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.den == 1 {
            write!(f, "{}", self.num)
        } else {
            write!(f, "{}/{}", self.num, self.den)
        }
    }
}

fn checked<T>(value: Option<T>) -> Result<T, ExprError> {
    value.ok_or(ExprError::Overflow)
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The value of an expression and the number literals it used, in order of appearance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub value: Rational,
    pub numbers: Vec<u64>,
}

/// Evaluates `text`. Besides ASCII operators it accepts `×`, `·`, `÷` and `−`, which models write.
pub fn evaluate(text: &str) -> Result<Evaluation, ExprError> {
    if text.len() > MAX_EXPR_LEN {
        return Err(ExprError::TooLong);
    }
    let tokens = tokenize(text)?;
    if tokens.is_empty() {
        return Err(ExprError::Empty);
    }
    let mut parser = Parser {
        tokens: &tokens,
        pos: 0,
        numbers: Vec::new(),
    };
    let value = parser.expr(0)?;
    if let Some(&(_, at)) = tokens.get(parser.pos) {
        return Err(ExprError::Unexpected { at });
    }
    Ok(Evaluation {
        value,
        numbers: parser.numbers,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Num(u64),
    Plus,
    Minus,
    Star,
    Slash,
    Open,
    Close,
}

/// Tokens with the byte offset each starts at.
fn tokenize(text: &str) -> Result<Vec<(Token, usize)>, ExprError> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        let token = match c {
            c if c.is_whitespace() => continue,
            '0'..='9' => {
                let mut value = u64::from(c as u8 - b'0');
                while let Some(&(_, d)) = chars.peek() {
                    let Some(digit) = d.to_digit(10) else {
                        break;
                    };
                    value = checked(
                        value
                            .checked_mul(10)
                            .and_then(|v| v.checked_add(u64::from(digit))),
                    )?;
                    chars.next();
                }
                Token::Num(value)
            }
            '+' => Token::Plus,
            '-' | '\u{2212}' => Token::Minus,
            '*' | '×' | '·' => Token::Star,
            '/' | '÷' => Token::Slash,
            '(' => Token::Open,
            ')' => Token::Close,
            _ => return Err(ExprError::Unexpected { at }),
        };
        tokens.push((token, at));
    }
    Ok(tokens)
}

/// Recursive descent over `expr := term (('+'|'-') term)*`, `term := unary (('*'|'/') unary)*`,
/// `unary := '-' unary | atom`, `atom := NUMBER | '(' expr ')'`.
struct Parser<'a> {
    tokens: &'a [(Token, usize)],
    pos: usize,
    numbers: Vec<u64>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<Token> {
        self.tokens.get(self.pos).map(|&(t, _)| t)
    }

    fn expr(&mut self, depth: usize) -> Result<Rational, ExprError> {
        let mut value = self.term(depth)?;
        loop {
            match self.peek() {
                Some(Token::Plus) => {
                    self.pos += 1;
                    value = value.add(self.term(depth)?)?;
                }
                Some(Token::Minus) => {
                    self.pos += 1;
                    value = value.sub(self.term(depth)?)?;
                }
                _ => return Ok(value),
            }
        }
    }

    fn term(&mut self, depth: usize) -> Result<Rational, ExprError> {
        let mut value = self.unary(depth)?;
        loop {
            match self.peek() {
                Some(Token::Star) => {
                    self.pos += 1;
                    value = value.mul(self.unary(depth)?)?;
                }
                Some(Token::Slash) => {
                    self.pos += 1;
                    value = value.div(self.unary(depth)?)?;
                }
                _ => return Ok(value),
            }
        }
    }

    fn unary(&mut self, depth: usize) -> Result<Rational, ExprError> {
        if depth > MAX_DEPTH {
            return Err(ExprError::TooDeep);
        }
        if self.peek() == Some(Token::Minus) {
            self.pos += 1;
            return self.unary(depth + 1)?.neg();
        }
        self.atom(depth)
    }

    fn atom(&mut self, depth: usize) -> Result<Rational, ExprError> {
        let Some(&(token, at)) = self.tokens.get(self.pos) else {
            return Err(ExprError::UnexpectedEnd);
        };
        self.pos += 1;
        match token {
            Token::Num(n) => {
                self.numbers.push(n);
                Ok(Rational::integer(i128::from(n)))
            }
            Token::Open => {
                let value = self.expr(depth + 1)?;
                match self.tokens.get(self.pos) {
                    Some(&(Token::Close, _)) => {
                        self.pos += 1;
                        Ok(value)
                    }
                    Some(&(_, at)) => Err(ExprError::Unexpected { at }),
                    None => Err(ExprError::UnexpectedEnd),
                }
            }
            _ => Err(ExprError::Unexpected { at }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfroute_core::rng::SplitMix64;

    fn value(text: &str) -> Result<Rational, ExprError> {
        evaluate(text).map(|e| e.value)
    }

    fn int(v: i128) -> Result<Rational, ExprError> {
        Ok(Rational::integer(v))
    }

    #[test]
    fn evaluates_with_precedence_and_exact_fractions() {
        assert_eq!(value("1 + 2 * 3"), int(7));
        assert_eq!(value("(1 + 2) * 3"), int(9));
        assert_eq!(value("10 - 4 - 3"), int(3));
        assert_eq!(value("64 / 4 / 2"), int(8));
        assert_eq!(value("(7 / 2) * 2"), int(7));
        assert_eq!(value("-3 + 5"), int(2));
        assert_eq!(value("2 * -(3 - 5)"), int(4));
        assert_eq!(value("12 × 3 ÷ 4 − 1"), int(8));
        let half = value("1 / 2").unwrap();
        assert_eq!((half.numer(), half.denom()), (1, 2));
        assert_eq!(half.as_integer(), None);
        assert_eq!(half.to_string(), "1/2");
        assert_eq!(value("3 / -6").unwrap().to_string(), "-1/2");
    }

    #[test]
    fn records_the_numbers_used() {
        let e = evaluate("(12 + 7) * 3 - 07").unwrap();
        assert_eq!(e.numbers, vec![12, 7, 3, 7]);
    }

    #[test]
    fn rejects_malformed_input() {
        assert_eq!(value(""), Err(ExprError::Empty));
        assert_eq!(value("   "), Err(ExprError::Empty));
        assert_eq!(value("(1 + 2"), Err(ExprError::UnexpectedEnd));
        assert_eq!(value("1 + 2)"), Err(ExprError::Unexpected { at: 5 }));
        assert_eq!(value("1 +"), Err(ExprError::UnexpectedEnd));
        assert_eq!(value("1 2"), Err(ExprError::Unexpected { at: 2 }));
        assert_eq!(value("3(4)"), Err(ExprError::Unexpected { at: 1 }));
        assert_eq!(value("+3"), Err(ExprError::Unexpected { at: 0 }));
        assert_eq!(value("2 ^ 3"), Err(ExprError::Unexpected { at: 2 }));
        assert_eq!(value("1.5 * 2"), Err(ExprError::Unexpected { at: 1 }));
        assert_eq!(value("x + 1"), Err(ExprError::Unexpected { at: 0 }));
        assert_eq!(value("()"), Err(ExprError::Unexpected { at: 1 }));
    }

    #[test]
    fn division_by_zero_and_overflow_are_errors() {
        assert_eq!(value("5 / 0"), Err(ExprError::DivisionByZero));
        assert_eq!(value("5 / (3 - 3)"), Err(ExprError::DivisionByZero));
        assert_eq!(value("99999999999999999999"), Err(ExprError::Overflow));
        let huge = ["999999999999999999"; 8].join(" * ");
        assert_eq!(value(&huge), Err(ExprError::Overflow));
        let tiny = ["999999999999999999"; 8].join(" / ");
        assert_eq!(value(&format!("1 / {tiny}")), Err(ExprError::Overflow));
    }

    #[test]
    fn bounds_length_and_depth() {
        assert_eq!(value(&"1+".repeat(400)), Err(ExprError::TooLong));
        let nested = format!("{}1{}", "(".repeat(100), ")".repeat(100));
        assert_eq!(value(&nested), Err(ExprError::TooDeep));
        assert_eq!(
            value(&format!("{}1", "-".repeat(100))),
            Err(ExprError::TooDeep)
        );
        let ok = format!("{}1{}", "(".repeat(30), ")".repeat(30));
        assert_eq!(value(&ok), int(1));
    }

    #[test]
    fn never_panics_on_random_input() {
        const ALPHABET: [&str; 16] = [
            "(",
            ")",
            "+",
            "-",
            "*",
            "/",
            "0",
            "7",
            "99",
            "999999999999",
            " ",
            "÷",
            "×",
            "é",
            "=",
            "1",
        ];
        let mut rng = SplitMix64::new(5);
        for _ in 0..600 {
            let len = rng.below(60) as usize;
            let text: String = (0..len)
                .map(|_| ALPHABET[rng.below(ALPHABET.len() as u64) as usize])
                .collect();
            let _ = evaluate(&text);
        }
        // Raw bytes, lossily decoded, as a model's tokenizer might produce.
        for _ in 0..300 {
            let bytes: Vec<u8> = (0..rng.below(80)).map(|_| rng.next_u64() as u8).collect();
            let _ = evaluate(&String::from_utf8_lossy(&bytes));
        }
    }
}
