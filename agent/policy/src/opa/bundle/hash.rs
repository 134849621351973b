//! How OPA hashes a bundle's files for `.signatures.json` (its `bundle/hash.go`): a file whose
//! name is structured (`data.json`, `data.yaml`, `.manifest`, `signatures.json`) is hashed over a
//! canonical form of its JSON (object keys sorted, no whitespace, numbers as written, strings as
//! Go's encoder writes them without HTML escaping); any other file over its bytes. So a signature
//! holds whatever the whitespace and key order of a data file.
//!
//! The canonical form is written by a small JSON reader of its own: the number literals must be
//! kept as written (OPA decodes with `json.Number`), which `serde_json::Value` does not do.

use ring::digest::{Context, SHA256, SHA384, SHA512, SHA512_256};

/// Nesting past this is refused (serde_json refuses data past 128 levels anyway).
const MAX_DEPTH: usize = 512;

/// Whether OPA hashes the file at `path` as structured JSON (its `IsStructuredDoc`).
pub fn is_structured(path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or(path);
    matches!(
        base,
        "data.json" | "data.yaml" | "signatures.json" | ".manifest"
    )
}

/// The digest of `bytes` (the file at `path`) under OPA's hashing algorithm name, lowercase hex.
pub fn file_digest(algorithm: &str, path: &str, bytes: &[u8]) -> Result<String, String> {
    let algorithm = match algorithm {
        "SHA-256" => &SHA256,
        "SHA-384" => &SHA384,
        "SHA-512" => &SHA512,
        "SHA-512-256" => &SHA512_256,
        other => {
            return Err(format!(
                "unsupported hashing algorithm: {other} (SHA-256, SHA-384, SHA-512 and SHA-512-256 are)"
            ));
        }
    };
    let mut context = Context::new(algorithm);
    if is_structured(path) {
        let text = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
        let mut out = Vec::with_capacity(text.len());
        canonical(text, &mut out)?;
        context.update(&out);
    } else {
        context.update(bytes);
    }
    Ok(hex(context.finish().as_ref()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes the canonical form of the JSON text `input` into `out`.
pub fn canonical(input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let mut reader = Reader { input, at: 0 };
    reader.skip_ws();
    let value = reader.value(0)?;
    reader.skip_ws();
    if reader.at != input.len() {
        return Err(format!(
            "invalid JSON: unexpected data after the value at byte {}",
            reader.at
        ));
    }
    value.write(out);
    Ok(())
}

enum Node {
    Literal(Vec<u8>),
    Text(String),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl Node {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Node::Literal(bytes) => out.extend_from_slice(bytes),
            Node::Text(text) => write_string(text, out),
            Node::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.write(out);
                }
                out.push(b']');
            }
            Node::Object(members) => {
                out.push(b'{');
                for (i, (key, value)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_string(key, out);
                    out.push(b':');
                    value.write(out);
                }
                out.push(b'}');
            }
        }
    }
}

/// A string as Go's `json.Encoder` writes it with `SetEscapeHTML(false)`.
fn write_string(text: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for c in text.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            c if (c as u32) < 0x20 => {
                let b = c as u8;
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
            '\u{2028}' => out.extend_from_slice(b"\\u2028"),
            '\u{2029}' => out.extend_from_slice(b"\\u2029"),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

struct Reader<'a> {
    input: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn error(&self, what: &str) -> String {
        format!("invalid JSON at byte {}: {what}", self.at)
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.at).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn expect(&mut self, literal: &[u8]) -> Result<(), String> {
        if self.input[self.at..].starts_with(literal) {
            self.at += literal.len();
            Ok(())
        } else {
            Err(self.error("unexpected token"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Node, String> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        match self.peek() {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => Ok(Node::Text(self.string()?)),
            Some(b't') => self
                .expect(b"true")
                .map(|_| Node::Literal(b"true".to_vec())),
            Some(b'f') => self
                .expect(b"false")
                .map(|_| Node::Literal(b"false".to_vec())),
            Some(b'n') => self
                .expect(b"null")
                .map(|_| Node::Literal(b"null".to_vec())),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("unexpected character")),
            None => Err(self.error("unexpected end")),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Node, String> {
        self.at += 1;
        let mut members: Vec<(String, Node)> = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(Node::Object(members));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a member name"));
            }
            let key = self.string()?;
            self.skip_ws();
            self.expect(b":")?;
            self.skip_ws();
            let value = self.value(depth + 1)?;
            // As Go's map: a repeated key keeps the last value.
            members.retain(|(k, _)| *k != key);
            members.push((key, value));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    break;
                }
                _ => return Err(self.error("expected `,` or `}`")),
            }
        }
        members.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Node::Object(members))
    }

    fn array(&mut self, depth: usize) -> Result<Node, String> {
        self.at += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(Node::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    break;
                }
                _ => return Err(self.error("expected `,` or `]`")),
            }
        }
        Ok(Node::Array(items))
    }

    fn number(&mut self) -> Result<Node, String> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                while matches!(self.peek(), Some(b'0'..=b'9')) {
                    self.at += 1;
                }
            }
            _ => return Err(self.error("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("invalid number"));
            }
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.at += 1;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("invalid number"));
            }
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.at += 1;
            }
        }
        Ok(Node::Literal(self.input[start..self.at].to_vec()))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self
            .input
            .get(self.at..self.at + 4)
            .ok_or_else(|| self.error("short \\u escape"))?;
        let text = std::str::from_utf8(digits).map_err(|_| self.error("bad \\u escape"))?;
        let value = u32::from_str_radix(text, 16).map_err(|_| self.error("bad \\u escape"))?;
        self.at += 4;
        Ok(value)
    }

    fn string(&mut self) -> Result<String, String> {
        self.at += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(b) = self.peek() else {
                return Err(self.error("unterminated string"));
            };
            self.at += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let Some(e) = self.peek() else {
                        return Err(self.error("unterminated escape"));
                    };
                    self.at += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let first = self.hex4()?;
                            let code = if (0xd800..0xdc00).contains(&first)
                                && self.input[self.at..].starts_with(b"\\u")
                            {
                                let save = self.at;
                                self.at += 2;
                                let second = self.hex4()?;
                                if (0xdc00..0xe000).contains(&second) {
                                    0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00)
                                } else {
                                    // Not a pair: Go replaces the lone half, then reads on.
                                    self.at = save;
                                    0xfffd
                                }
                            } else {
                                first
                            };
                            char::from_u32(code).unwrap_or('\u{fffd}')
                        }
                        _ => return Err(self.error("invalid escape")),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                0x00..=0x1f => return Err(self.error("control character in a string")),
                other => out.push(other),
            }
        }
        // Invalid UTF-8 becomes U+FFFD, as Go's decoder makes it.
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(text: &str) -> String {
        let mut out = Vec::new();
        canonical(text.as_bytes(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn canonical_form_is_gos() {
        assert_eq!(
            canon(" { \"b\" : [1.50, -0, 2e10], \"a\": {\"y\": null, \"x\": true} } "),
            r#"{"a":{"x":true,"y":null},"b":[1.50,-0,2e10]}"#
        );
        // Go escapes control characters, quotes, backslashes and the line separators; not `<`,
        // `/`, or other non-ASCII.
        assert_eq!(
            canon(r#""<a>\/\u00e9\u2028\b\u0001\"\\""#),
            "\"<a>/é\\u2028\\b\\u0001\\\"\\\\\""
        );
        assert_eq!(canon(r#"{"k":1,"k":2}"#), r#"{"k":2}"#);
        assert_eq!(canon(r#""\ud83d\ude00""#), "\"😀\"");
        for bad in ["{", "[1,]", "01", "\"a", "{} x", "tru", "1.", "\"\u{1}\""] {
            let mut out = Vec::new();
            assert!(canonical(bad.as_bytes(), &mut out).is_err(), "{bad}");
        }
        let deep = "[".repeat(MAX_DEPTH + 2);
        assert!(canonical(deep.as_bytes(), &mut Vec::new()).is_err());
    }

    #[test]
    fn structured_files_hash_their_canonical_form() {
        let a = file_digest("SHA-256", "x/data.json", b"{\"b\": 1, \"a\": 2}").unwrap();
        let b = file_digest("SHA-256", "x/data.json", b"{\"a\":2,\"b\":1}").unwrap();
        assert_eq!(a, b);
        let raw = file_digest("SHA-256", "x/policy.rego", b"{\"a\":2,\"b\":1}").unwrap();
        // Over the raw bytes: the same canonical text hashes the same.
        assert_eq!(raw, a);
        let spaced = file_digest("SHA-256", "x/policy.rego", b"{\"b\": 1, \"a\": 2}").unwrap();
        assert_ne!(spaced, a);
        // sha256 of `{"a":2,"b":1}`, computed apart (sha256sum).
        assert_eq!(
            a,
            "d3626ac30a87e6f7a6428233b3c68299976865fa5508e4267c5415c76af7a772"
        );
        assert!(file_digest("MD5", "a.rego", b"").is_err());
    }
}
