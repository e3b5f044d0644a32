//! How Go's `encoding/json` decoder reads a request body, which is what
//! etcd's JSON gateway answers with: the first JSON value is taken and
//! whatever follows it is ignored, and a malformed value gets Go's own
//! message ("invalid character 'x' looking for beginning of value",
//! "unexpected EOF"). A port of the syntax half of Go's scanner; values
//! that parse are then read by serde, so a well-formed value of the wrong
//! type is still reported in serde's words.

/// What the scanner expects next.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Step {
    BeginValue,
    BeginValueOrEmpty,
    BeginStringOrEmpty,
    BeginString,
    EndValue,
    InString,
    InStringEsc,
    /// In a `\u` escape, with this many hex digits still to come.
    InStringEscU(u8),
    Neg,
    Zero,
    One,
    Dot,
    Dot0,
    E,
    ESign,
    E0,
    /// In a literal (`true`, `false`, `null`): the literal and how many of
    /// its bytes were read.
    Literal(&'static str, usize),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Container {
    ObjectKey,
    ObjectValue,
    Array,
}

/// Go's `maxNestingDepth`: objects and arrays nest at most this deep.
const MAX_DEPTH: usize = 10_000;

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

/// Go's `quoteChar`: the byte as a Go string literal's content, in single
/// quotes (a byte above 0x7f is read as the code point of that number).
fn quote_char(c: u8) -> String {
    let inner = match c {
        b'\'' => "\\'".to_string(),
        b'"' => "\"".to_string(),
        0x07 => "\\a".into(),
        0x08 => "\\b".into(),
        0x0C => "\\f".into(),
        b'\n' => "\\n".into(),
        b'\r' => "\\r".into(),
        b'\t' => "\\t".into(),
        0x0B => "\\v".into(),
        b'\\' => "\\\\".into(),
        0x20..=0x7E => (c as char).to_string(),
        0x00..=0x1F | 0x7F => format!("\\x{c:02x}"),
        // Not printable in Go: the C1 controls, no-break space, soft hyphen.
        0x80..=0xA0 | 0xAD => format!("\\u{c:04x}"),
        _ => char::from(c).to_string(),
    };
    format!("'{inner}'")
}

fn invalid(c: u8, context: &str) -> String {
    format!("invalid character {} {context}", quote_char(c))
}

/// The length of the first JSON value in `body` (with the whitespace
/// before it), as Go's decoder reads it; `Ok(None)` if the body holds only
/// whitespace (Go's `io.EOF`); or Go's error message.
pub fn first_value(body: &[u8]) -> Result<Option<usize>, String> {
    let mut step = Step::BeginValue;
    let mut stack: Vec<Container> = Vec::new();
    let mut started = false;
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        // A value ends when a byte that cannot continue it is seen (numbers)
        // or at its closing byte; `EndValue` with an empty stack is the end.
        if step == Step::EndValue && stack.is_empty() {
            return Ok(Some(i));
        }
        let mut reread = false;
        step = match step {
            Step::BeginValue | Step::BeginValueOrEmpty if is_space(c) => step,
            Step::BeginValueOrEmpty if c == b']' => {
                stack.pop();
                Step::EndValue
            }
            Step::BeginValue | Step::BeginValueOrEmpty => {
                started = true;
                if matches!(c, b'{' | b'[') && stack.len() == MAX_DEPTH {
                    return Err(invalid(c, "exceeded max depth"));
                }
                match c {
                    b'{' => {
                        stack.push(Container::ObjectKey);
                        Step::BeginStringOrEmpty
                    }
                    b'[' => {
                        stack.push(Container::Array);
                        Step::BeginValueOrEmpty
                    }
                    b'"' => Step::InString,
                    b'-' => Step::Neg,
                    b'0' => Step::Zero,
                    b'1'..=b'9' => Step::One,
                    b't' => Step::Literal("true", 1),
                    b'f' => Step::Literal("false", 1),
                    b'n' => Step::Literal("null", 1),
                    _ => return Err(invalid(c, "looking for beginning of value")),
                }
            }
            Step::BeginStringOrEmpty | Step::BeginString if is_space(c) => step,
            Step::BeginStringOrEmpty if c == b'}' => {
                stack.pop();
                Step::EndValue
            }
            Step::BeginStringOrEmpty | Step::BeginString => match c {
                b'"' => Step::InString,
                _ => return Err(invalid(c, "looking for beginning of object key string")),
            },
            Step::EndValue if is_space(c) => step,
            Step::EndValue => match (stack.last_mut(), c) {
                (Some(top @ Container::ObjectKey), b':') => {
                    *top = Container::ObjectValue;
                    Step::BeginValue
                }
                (Some(Container::ObjectKey), _) => return Err(invalid(c, "after object key")),
                (Some(top @ Container::ObjectValue), b',') => {
                    *top = Container::ObjectKey;
                    Step::BeginString
                }
                (Some(Container::ObjectValue), b'}') => {
                    stack.pop();
                    Step::EndValue
                }
                (Some(Container::ObjectValue), _) => {
                    return Err(invalid(c, "after object key:value pair"))
                }
                (Some(Container::Array), b',') => Step::BeginValue,
                (Some(Container::Array), b']') => {
                    stack.pop();
                    Step::EndValue
                }
                (Some(Container::Array), _) => return Err(invalid(c, "after array element")),
                (None, _) => unreachable!("the value ended before this byte"),
            },
            Step::InString => match c {
                b'"' => Step::EndValue,
                b'\\' => Step::InStringEsc,
                0x00..=0x1F => return Err(invalid(c, "in string literal")),
                _ => Step::InString,
            },
            Step::InStringEsc => match c {
                b'b' | b'f' | b'n' | b'r' | b't' | b'\\' | b'/' | b'"' => Step::InString,
                b'u' => Step::InStringEscU(4),
                _ => return Err(invalid(c, "in string escape code")),
            },
            Step::InStringEscU(left) => {
                if !c.is_ascii_hexdigit() {
                    return Err(invalid(c, "in \\u hexadecimal character escape"));
                }
                if left == 1 {
                    Step::InString
                } else {
                    Step::InStringEscU(left - 1)
                }
            }
            Step::Neg => match c {
                b'0' => Step::Zero,
                b'1'..=b'9' => Step::One,
                _ => return Err(invalid(c, "in numeric literal")),
            },
            Step::One if c.is_ascii_digit() => Step::One,
            Step::One | Step::Zero => match c {
                b'.' => Step::Dot,
                b'e' | b'E' => Step::E,
                _ => {
                    reread = true;
                    Step::EndValue
                }
            },
            Step::Dot if c.is_ascii_digit() => Step::Dot0,
            Step::Dot => return Err(invalid(c, "after decimal point in numeric literal")),
            Step::Dot0 => match c {
                b'0'..=b'9' => Step::Dot0,
                b'e' | b'E' => Step::E,
                _ => {
                    reread = true;
                    Step::EndValue
                }
            },
            Step::E if c == b'+' || c == b'-' => Step::ESign,
            Step::E | Step::ESign if c.is_ascii_digit() => Step::E0,
            Step::E | Step::ESign => return Err(invalid(c, "in exponent of numeric literal")),
            Step::E0 if c.is_ascii_digit() => Step::E0,
            Step::E0 => {
                reread = true;
                Step::EndValue
            }
            Step::Literal(word, read) => {
                let want = word.as_bytes()[read];
                if c != want {
                    return Err(invalid(
                        c,
                        &format!("in literal {word} (expecting {})", quote_char(want)),
                    ));
                }
                if read + 1 == word.len() {
                    Step::EndValue
                } else {
                    Step::Literal(word, read + 1)
                }
            }
        };
        if !reread {
            i += 1;
        }
    }
    // The body ended: a value is whole if nothing is open and it is not in
    // the middle of a token that needs more bytes.
    let whole = stack.is_empty()
        && matches!(
            step,
            Step::EndValue | Step::Zero | Step::One | Step::Dot0 | Step::E0
        );
    match (started, whole) {
        (false, _) => Ok(None),
        (true, true) => Ok(Some(body.len())),
        (true, false) => Err("unexpected EOF".into()),
    }
}

/// The request message's JSON in `body`, read as grpc-gateway reads it
/// (jsonpb, through Go's decoder): the first value, which must be an
/// object or `null`; `None` for the empty message (an empty body, `null`).
pub fn request_object(body: &[u8]) -> Result<Option<&[u8]>, String> {
    let Some(end) = first_value(body)? else {
        return Ok(None);
    };
    let value = body[..end].trim_ascii_start();
    let kind = match value.first() {
        Some(b'{') => return Ok(Some(value)),
        Some(b'n') => return Ok(None),
        Some(b'[') => "array",
        Some(b'"') => "string",
        Some(b't' | b'f') => "bool",
        _ => "number",
    };
    Err(format!(
        "json: cannot unmarshal {kind} into Go value of type map[string]json.RawMessage"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each body with what Go 1.x's `json.Decoder` says of it (checked
    /// against etcd 3.4.23's gateway where the gateway passes it on).
    #[test]
    fn go_decoder_messages() {
        let cases: &[(&str, Result<Option<usize>, &str>)] = &[
            ("", Ok(None)),
            (" \n\t", Ok(None)),
            ("{}", Ok(Some(2))),
            (r#" {"key":"YQ=="} trailing"#, Ok(Some(15))),
            (
                r#"{"a":[1,-2.5e+3,true,false,null,"\u00e9\n"]}"#,
                Ok(Some(44)),
            ),
            ("12", Ok(Some(2))),
            ("12x", Ok(Some(2))),
            ("[]", Ok(Some(2))),
            (r#"{"key":"#, Err("unexpected EOF")),
            ("{", Err("unexpected EOF")),
            ("-", Err("unexpected EOF")),
            ("1.", Err("unexpected EOF")),
            (
                "xyz",
                Err("invalid character 'x' looking for beginning of value"),
            ),
            (
                r#"{"key":"YQ==",}"#,
                Err("invalid character '}' looking for beginning of object key string"),
            ),
            (
                r#"{"key" 1}"#,
                Err("invalid character '1' after object key"),
            ),
            (
                r#"{"key":1 2}"#,
                Err("invalid character '2' after object key:value pair"),
            ),
            ("[1 2]", Err("invalid character '2' after array element")),
            (
                "{'a':1}",
                Err("invalid character '\\'' looking for beginning of object key string"),
            ),
            ("\"a\nb\"", Err("invalid character '\\n' in string literal")),
            (
                r#""\x""#,
                Err("invalid character 'x' in string escape code"),
            ),
            (
                r#""\u12g4""#,
                Err("invalid character 'g' in \\u hexadecimal character escape"),
            ),
            ("-a", Err("invalid character 'a' in numeric literal")),
            (
                "1.e",
                Err("invalid character 'e' after decimal point in numeric literal"),
            ),
            (
                "1e+x",
                Err("invalid character 'x' in exponent of numeric literal"),
            ),
            ("tru", Err("unexpected EOF")),
            (
                "trUe",
                Err("invalid character 'U' in literal true (expecting 'u')"),
            ),
            (
                "nul1",
                Err("invalid character '1' in literal null (expecting 'l')"),
            ),
            (
                "\u{1}",
                Err("invalid character '\\x01' looking for beginning of value"),
            ),
            (
                "é",
                Err("invalid character 'Ã' looking for beginning of value"),
            ),
        ];
        for (body, want) in cases {
            let got = first_value(body.as_bytes());
            let want = want.map_err(str::to_string);
            assert_eq!(got, want, "{body:?}");
        }
        let deep = |n: usize| "[".repeat(n) + &"]".repeat(n);
        assert_eq!(
            first_value(deep(MAX_DEPTH).as_bytes()),
            Ok(Some(2 * MAX_DEPTH))
        );
        assert_eq!(
            first_value(deep(MAX_DEPTH + 1).as_bytes()),
            Err("invalid character '[' exceeded max depth".into())
        );
    }

    #[test]
    fn only_an_object_is_a_request() {
        assert_eq!(request_object(b" {} x"), Ok(Some(&b"{}"[..])));
        assert_eq!(request_object(b" null x"), Ok(None));
        assert_eq!(request_object(b""), Ok(None));
        for (body, kind) in [
            ("12x", "number"),
            ("[]", "array"),
            ("\"s\"", "string"),
            ("true", "bool"),
        ] {
            assert_eq!(
                request_object(body.as_bytes()),
                Err(format!(
                    "json: cannot unmarshal {kind} into Go value of type map[string]json.RawMessage"
                )),
                "{body}"
            );
        }
        assert_eq!(request_object(b"{"), Err("unexpected EOF".into()));
    }
}
