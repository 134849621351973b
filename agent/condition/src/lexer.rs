//! The lexer: splits a condition's source into tokens, each carrying the 1-based char column and
//! the byte range it came from. It owns the literal syntax (string escapes, number format) and the
//! errors about characters that are not part of the language.

use super::ConditionError;
use super::tree::CmpOp;

/// What a token is. Words are not classified here: whether `in` is a keyword or a key name
/// depends on where it stands (after a `.` it is a name), which only the parser knows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok<'a> {
    Word(&'a str),
    /// A string literal, escapes already resolved.
    Str(String),
    /// A number literal; `raw` is kept to tell an index (`[3]`) from `[3.0]` and for messages.
    Num {
        value: f64,
        raw: &'a str,
    },
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
    Cmp(CmpOp),
    /// `&&`
    AndSym,
    /// `||`
    OrSym,
    /// `!`
    Bang,
    Eof,
}

#[derive(Debug, Clone)]
pub(crate) struct Token<'a> {
    pub tok: Tok<'a>,
    /// 1-based column of the first char, in chars.
    pub col: usize,
    /// Byte range in the source.
    pub start: usize,
    pub end: usize,
}

/// Describes a token for an error message ("found ...").
pub(crate) fn describe(tok: &Tok<'_>) -> String {
    match tok {
        Tok::Word(word) => format!("`{word}`"),
        Tok::Str(text) => {
            // Long strings are cut so that the message stays readable.
            let shown: String = text.chars().take(24).collect();
            let ellipsis = if shown.len() < text.len() { "..." } else { "" };
            format!("the string {}{ellipsis}", super::printer::QuotedStr(&shown))
        }
        Tok::Num { raw, .. } => format!("the number {raw}"),
        Tok::LParen => "`(`".into(),
        Tok::RParen => "`)`".into(),
        Tok::LBracket => "`[`".into(),
        Tok::RBracket => "`]`".into(),
        Tok::Comma => "`,`".into(),
        Tok::Dot => "`.`".into(),
        Tok::Cmp(op) => format!("`{op}`"),
        Tok::AndSym => "`&&`".into(),
        Tok::OrSym => "`||`".into(),
        Tok::Bang => "`!`".into(),
        Tok::Eof => "end of input".into(),
    }
}

/// Splits `source` into tokens; the last one is always [`Tok::Eof`].
pub(crate) fn lex(source: &str) -> Result<Vec<Token<'_>>, ConditionError> {
    Lexer {
        source,
        chars: source.char_indices().collect(),
        pos: 0,
        tokens: Vec::new(),
    }
    .run()
}

struct Lexer<'a> {
    source: &'a str,
    /// Indexing by char position gives the column directly (column = position + 1).
    chars: Vec<(usize, char)>,
    pos: usize,
    tokens: Vec<Token<'a>>,
}

impl<'a> Lexer<'a> {
    fn peek_at(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).map(|&(_, c)| c)
    }

    fn byte_at(&self, pos: usize) -> usize {
        self.chars
            .get(pos)
            .map_or(self.source.len(), |&(byte, _)| byte)
    }

    fn push(&mut self, tok: Tok<'a>, start_pos: usize) {
        let token = Token {
            tok,
            col: start_pos + 1,
            start: self.byte_at(start_pos),
            end: self.byte_at(self.pos),
        };
        self.tokens.push(token);
    }

    /// Emits a token of `len` chars made of punctuation.
    fn symbol(&mut self, tok: Tok<'a>, len: usize) {
        let start = self.pos;
        self.pos += len;
        self.push(tok, start);
    }

    fn error(&self, pos: usize, message: impl Into<String>) -> ConditionError {
        ConditionError::new(pos + 1, message)
    }

    fn run(mut self) -> Result<Vec<Token<'a>>, ConditionError> {
        while let Some(c) = self.peek_at(0) {
            let next = self.peek_at(1);
            match c {
                c if c.is_whitespace() => self.pos += 1,
                '(' => self.symbol(Tok::LParen, 1),
                ')' => self.symbol(Tok::RParen, 1),
                '[' => self.symbol(Tok::LBracket, 1),
                ']' => self.symbol(Tok::RBracket, 1),
                ',' => self.symbol(Tok::Comma, 1),
                '.' => self.symbol(Tok::Dot, 1),
                '=' if next == Some('=') => self.symbol(Tok::Cmp(CmpOp::Eq), 2),
                '=' => {
                    return Err(self.error(self.pos, "`=` is not an operator; did you mean `==`?"));
                }
                '!' if next == Some('=') => self.symbol(Tok::Cmp(CmpOp::Ne), 2),
                '!' => self.symbol(Tok::Bang, 1),
                '<' if next == Some('=') => self.symbol(Tok::Cmp(CmpOp::Le), 2),
                '<' if next == Some('>') => {
                    return Err(self.error(self.pos, "`<>` is not an operator; did you mean `!=`?"));
                }
                '<' => self.symbol(Tok::Cmp(CmpOp::Lt), 1),
                '>' if next == Some('=') => self.symbol(Tok::Cmp(CmpOp::Ge), 2),
                '>' => self.symbol(Tok::Cmp(CmpOp::Gt), 1),
                '&' if next == Some('&') => self.symbol(Tok::AndSym, 2),
                '&' => {
                    return Err(self.error(
                        self.pos,
                        "`&` is not an operator; did you mean `and` (or `&&`)?",
                    ));
                }
                '|' if next == Some('|') => self.symbol(Tok::OrSym, 2),
                '|' => {
                    return Err(self.error(
                        self.pos,
                        "`|` is not an operator; did you mean `or` (or `||`)?",
                    ));
                }
                '\'' | '"' => self.string(c)?,
                '-' if next.is_some_and(|n| n.is_ascii_digit()) => self.number()?,
                c if c.is_ascii_digit() => self.number()?,
                '-' => {
                    return Err(self.error(
                        self.pos,
                        "`-` can only start a negative number such as -5; conditions have no arithmetic",
                    ));
                }
                c if c.is_ascii_alphabetic() || c == '_' => self.word(),
                c => {
                    return Err(self.error(
                        self.pos,
                        format!("unexpected character `{}`", c.escape_debug()),
                    ));
                }
            }
        }
        let end = self.chars.len();
        self.tokens.push(Token {
            tok: Tok::Eof,
            col: end + 1,
            start: self.source.len(),
            end: self.source.len(),
        });
        Ok(self.tokens)
    }

    fn word(&mut self) {
        let start = self.pos;
        while self
            .peek_at(0)
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            self.pos += 1;
        }
        let word = &self.source[self.byte_at(start)..self.byte_at(self.pos)];
        self.push(Tok::Word(word), start);
    }

    fn digits(&mut self) {
        while self.peek_at(0).is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
    }

    /// `-?digits(.digits)?([eE][+-]?digits)?`
    fn number(&mut self) -> Result<(), ConditionError> {
        let start = self.pos;
        if self.peek_at(0) == Some('-') {
            self.pos += 1;
        }
        self.digits();
        // A `.` not followed by a digit is a path dot (`disks[0].usage`), not part of the number.
        if self.peek_at(0) == Some('.') && self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
            self.digits();
        }
        if matches!(self.peek_at(0), Some('e' | 'E')) {
            let sign = usize::from(matches!(self.peek_at(1), Some('+' | '-')));
            if self.peek_at(1 + sign).is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1 + sign;
                self.digits();
            }
        }
        let raw = &self.source[self.byte_at(start)..self.byte_at(self.pos)];
        // Catches `95%`, `10ms`, `1e` and the like instead of a confusing error further on.
        if let Some(c) = self
            .peek_at(0)
            .filter(|c| c.is_alphanumeric() || *c == '_' || *c == '%')
        {
            return Err(self.error(
                self.pos,
                format!("unexpected `{c}` right after the number {raw}"),
            ));
        }
        let value: f64 = raw
            .parse()
            .map_err(|_| self.error(start, format!("`{raw}` is not a valid number")))?;
        if !value.is_finite() {
            return Err(self.error(start, format!("the number {raw} is too large")));
        }
        self.push(Tok::Num { value, raw }, start);
        Ok(())
    }

    fn string(&mut self, quote: char) -> Result<(), ConditionError> {
        let start = self.pos;
        self.pos += 1;
        let mut text = String::new();
        loop {
            let Some(c) = self.peek_at(0) else {
                return Err(self.error(start, format!("unterminated string: no closing {quote}")));
            };
            self.pos += 1;
            match c {
                c if c == quote => break,
                '\\' => text.push(self.escape()?),
                c => text.push(c),
            }
        }
        self.push(Tok::Str(text), start);
        Ok(())
    }

    /// Reads the escape after a `\` (already consumed).
    fn escape(&mut self) -> Result<char, ConditionError> {
        let backslash = self.pos - 1;
        let unknown = |this: &Self, shown: &str| {
            this.error(
                backslash,
                format!(
                    "unknown escape `\\{shown}` in a string; the escapes are \\\\, \\', \\\", \\n, \\t, \\r and \\u{{HEX}}"
                ),
            )
        };
        let Some(c) = self.peek_at(0) else {
            return Err(self.error(backslash, "unterminated string: it ends in a `\\`"));
        };
        self.pos += 1;
        Ok(match c {
            '\\' => '\\',
            '\'' => '\'',
            '"' => '"',
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            'u' => return self.unicode_escape(backslash),
            other => return Err(unknown(self, &other.escape_debug().to_string())),
        })
    }

    /// `\u{HEX}`: 1 to 6 hex digits naming a Unicode scalar value.
    fn unicode_escape(&mut self, backslash: usize) -> Result<char, ConditionError> {
        let bad = |this: &Self| {
            this.error(backslash, "invalid `\\u` escape: write \\u{HEX} with 1 to 6 hex digits of a Unicode scalar value")
        };
        if self.peek_at(0) != Some('{') {
            return Err(bad(self));
        }
        self.pos += 1;
        let mut value: u32 = 0;
        let mut count = 0;
        while let Some(digit) = self.peek_at(0).and_then(|c| c.to_digit(16)) {
            count += 1;
            if count > 6 {
                return Err(bad(self));
            }
            value = value * 16 + digit;
            self.pos += 1;
        }
        if count == 0 || self.peek_at(0) != Some('}') {
            return Err(bad(self));
        }
        self.pos += 1;
        char::from_u32(value).ok_or_else(|| bad(self))
    }
}
