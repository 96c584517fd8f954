//! The lexical and grammatical layer of xl.cfg: statements `key = value` or
//! `key += value`, separated by newlines or `;`; values are strings ('..' or ".."
//! with backslash escapes), integers (decimal or 0x hex), or lists `[v, v, ...]`
//! that may span lines; `#` starts a comment.

use std::fmt;

/// A value in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    String(String),
    Number(i64),
    List(Vec<Value>),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::String(s) => write!(f, "{s:?}"),
            Value::Number(n) => write!(f, "{n}"),
            Value::List(v) => {
                write!(f, "[")?;
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{x}")?;
                }
                write!(f, "]")
            }
        }
    }
}

/// One `key = value` statement, with where it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    pub value: Value,
    /// `+=`: append to an earlier value of the key.
    pub append: bool,
    pub line: usize,
    pub col: usize,
}

/// A syntax error at a line and column (both 1-based).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {col}: {msg}")]
pub struct ParseError {
    pub line: usize,
    pub col: usize,
    pub msg: String,
}

/// Longest file accepted.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;
/// Deepest list nesting accepted.
const MAX_DEPTH: usize = 8;

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    line: usize,
    col: usize,
    _src: &'a str,
}

impl<'a> Lexer<'a> {
    fn err<T>(&self, msg: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            line: self.line,
            col: self.col,
            msg: msg.into(),
        })
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    /// Skips blanks and comments; with `newlines`, also line breaks.
    fn skip(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            if c == '#' {
                while let Some(c) = self.peek() {
                    if c == '\n' {
                        break;
                    }
                    self.bump();
                }
            } else if c == ' ' || c == '\t' || c == '\r' || (newlines && c == '\n') {
                self.bump();
            } else {
                break;
            }
        }
    }

    fn ident(&mut self) -> Result<String, ParseError> {
        let mut s = String::new();
        match self.peek() {
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
            Some(c) => return self.err(format!("expected a setting name, found {c:?}")),
            None => return self.err("expected a setting name"),
        }
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                s.push(c);
                self.bump();
            } else {
                break;
            }
        }
        Ok(s)
    }

    fn string(&mut self, quote: char) -> Result<String, ParseError> {
        let (line, col) = (self.line, self.col);
        self.bump();
        let mut s = String::new();
        loop {
            match self.bump() {
                None | Some('\n') => {
                    return Err(ParseError {
                        line,
                        col,
                        msg: "unterminated string".into(),
                    })
                }
                Some(c) if c == quote => return Ok(s),
                Some('\\') => match self.bump() {
                    Some('n') => s.push('\n'),
                    Some('t') => s.push('\t'),
                    Some('\\') => s.push('\\'),
                    Some('\'') => s.push('\''),
                    Some('"') => s.push('"'),
                    Some(c) => return self.err(format!("unknown escape \\{c}")),
                    None => {
                        return Err(ParseError {
                            line,
                            col,
                            msg: "unterminated string".into(),
                        })
                    }
                },
                Some(c) => s.push(c),
            }
        }
    }

    fn number(&mut self) -> Result<i64, ParseError> {
        let (line, col) = (self.line, self.col);
        let mut s = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '-' || c == '+' {
                s.push(c);
                self.bump();
            } else {
                break;
            }
        }
        let parsed = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            i64::from_str_radix(h, 16).ok()
        } else {
            s.parse::<i64>().ok()
        };
        parsed.ok_or(ParseError {
            line,
            col,
            msg: format!("invalid number {s:?}"),
        })
    }

    fn value(&mut self, depth: usize) -> Result<Value, ParseError> {
        match self.peek() {
            Some(q @ ('"' | '\'')) => self.string(q).map(Value::String),
            Some(c) if c.is_ascii_digit() || c == '-' => self.number().map(Value::Number),
            Some('[') => {
                if depth >= MAX_DEPTH {
                    return self.err("lists nested too deeply");
                }
                self.bump();
                let mut items = Vec::new();
                loop {
                    self.skip(true);
                    match self.peek() {
                        Some(']') => {
                            self.bump();
                            return Ok(Value::List(items));
                        }
                        None => return self.err("unterminated list: missing ']'"),
                        _ => {}
                    }
                    items.push(self.value(depth + 1)?);
                    self.skip(true);
                    match self.peek() {
                        Some(',') => {
                            self.bump();
                        }
                        Some(']') => {}
                        Some(c) => {
                            return self.err(format!("expected ',' or ']' in list, found {c:?}"))
                        }
                        None => return self.err("unterminated list: missing ']'"),
                    }
                }
            }
            Some(c) => self.err(format!(
                "expected a value (string, number or list), found {c:?}"
            )),
            None => self.err("expected a value"),
        }
    }
}

/// Parses an xl.cfg file into its settings, in order.
pub fn parse(src: &str) -> Result<Vec<Setting>, ParseError> {
    if src.len() > MAX_CONFIG_BYTES {
        return Err(ParseError {
            line: 1,
            col: 1,
            msg: format!("file is larger than {MAX_CONFIG_BYTES} bytes"),
        });
    }
    let mut lx = Lexer {
        chars: src.chars().collect(),
        pos: 0,
        line: 1,
        col: 1,
        _src: src,
    };
    let mut out = Vec::new();
    loop {
        lx.skip(true);
        while lx.peek() == Some(';') {
            lx.bump();
            lx.skip(true);
        }
        if lx.peek().is_none() {
            return Ok(out);
        }
        let (line, col) = (lx.line, lx.col);
        let key = lx.ident()?;
        lx.skip(false);
        let append = match (lx.peek(), lx.chars.get(lx.pos + 1).copied()) {
            (Some('='), _) => {
                lx.bump();
                false
            }
            (Some('+'), Some('=')) => {
                lx.bump();
                lx.bump();
                true
            }
            (Some(c), _) => return lx.err(format!("expected '=' after {key:?}, found {c:?}")),
            (None, _) => return lx.err(format!("expected '=' after {key:?}")),
        };
        lx.skip(false);
        let value = lx.value(0)?;
        lx.skip(false);
        match lx.peek() {
            None | Some('\n') | Some(';') => {}
            Some(c) => return lx.err(format!("unexpected {c:?} after the value of {key:?}")),
        }
        out.push(Setting {
            key,
            value,
            append,
            line,
            col,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_xl_syntax() {
        let src = "# a domain\nname = \"web\"\nmemory = 512 # MiB\nvcpus=0x2; kernel='/k'\n\
                   disk = [ 'phy:/dev/vg/web,xvda,w',\n  \"file:/img,xvdb,r\", ]\nextra += \"quiet\"\n";
        let s = parse(src).unwrap();
        assert_eq!(s.len(), 6);
        assert_eq!(
            s[0],
            Setting {
                key: "name".into(),
                value: Value::String("web".into()),
                append: false,
                line: 2,
                col: 1
            }
        );
        assert_eq!(s[1].value, Value::Number(512));
        assert_eq!(s[2].value, Value::Number(2));
        assert_eq!((s[3].key.as_str(), s[3].line, s[3].col), ("kernel", 4, 12));
        assert_eq!(
            s[4].value,
            Value::List(vec![
                Value::String("phy:/dev/vg/web,xvda,w".into()),
                Value::String("file:/img,xvdb,r".into())
            ])
        );
        assert!(s[5].append);
        assert_eq!(
            parse("s = 'a\\'b\\n'").unwrap()[0].value,
            Value::String("a'b\n".into())
        );
        assert_eq!(parse("").unwrap(), vec![]);
    }

    #[test]
    fn errors_name_line_and_column() {
        let cases = [
            ("name = \"web\nmemory = 5", 1, 8, "unterminated string"),
            ("memory 512", 1, 8, "expected '='"),
            ("memory = 12abc", 1, 10, "invalid number"),
            ("a = 1\n  = 2", 2, 3, "expected a setting name"),
            ("disk = ['a' 'b']", 1, 13, "expected ',' or ']'"),
            ("disk = ['a',", 1, 13, "unterminated list"),
            ("x = 1 2", 1, 7, "unexpected"),
            ("x = ", 1, 5, "expected a value"),
            ("x = 'a\\q'", 1, 9, "unknown escape"),
            ("x = 99999999999999999999", 1, 5, "invalid number"),
        ];
        for (src, line, col, msg) in cases {
            let e = parse(src).unwrap_err();
            assert_eq!((e.line, e.col), (line, col), "{src:?}: {e}");
            assert!(e.msg.contains(msg), "{src:?}: {e}");
        }
        let deep = format!("x = {}1{}", "[".repeat(20), "]".repeat(20));
        assert!(parse(&deep).unwrap_err().msg.contains("nested"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in ".{0,200}") {
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_on_config_like_text(parts in proptest::collection::vec(proptest::sample::select(vec!["name", "=", "'x'", "\"y\"", "[", "]", ",", "\n", "#c", "12", "0x1f", "+=", ";", " ", "\\", "-"]), 0..40)) {
            let _ = parse(&parts.concat());
        }
    }
}
