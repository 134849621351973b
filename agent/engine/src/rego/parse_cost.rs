//! Refuses Rego modules that regorus would take too long to parse, before it parses them.
//!
//! regorus's parser tries every `[` and `{` as a comprehension first and re-parses it as a literal
//! when that fails, so each level of nesting doubles the work below it: 16 levels take seconds,
//! 100 never end, and the parse cannot be interrupted. Its cost is close to one *unit* per opening
//! bracket at depth 1, two at depth 2, 2^d at depth d (measured: about 6.5 µs per unit on this
//! project's 2-core machine, see BENCHMARKS.md). This scan adds up those units over the text, in
//! linear time (brackets inside strings, raw strings and comments do not count), and refuses a
//! module past [`MAX_NESTING`] levels or [`MAX_UNITS`] units.

use super::{CompileError, Location};

/// The deepest nesting of `[` and `{` accepted in a module (a literal this deep parses in about
/// 0.35 s, an object in 0.7 s). Rule bodies count as a level; test fixtures written inline
/// (`with input as {...}`) reach 12 or 13.
pub const MAX_NESTING: usize = 14;

/// Parse units one module may cost (about 0.65 s at worst). A 5,000-line module of flat literals
/// costs about 10,000.
pub const MAX_UNITS: u64 = 100_000;

/// Parse units a whole set of modules may cost (they are parsed together on every change).
pub const MAX_SET_UNITS: u64 = 4 * MAX_UNITS;

/// Checks `text` (the module `file`) against [`MAX_NESTING`] and [`MAX_UNITS`]; returns its units.
pub fn check(file: &str, text: &str) -> Result<u64, CompileError> {
    let mut depth = 0usize;
    let mut units = 0u64;
    let (mut row, mut col) = (1u32, 0u32);
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        col += 1;
        match c {
            '\n' => {
                row += 1;
                col = 0;
            }
            '#' => {
                // A comment runs to the end of the line.
                for c in chars.by_ref() {
                    if c == '\n' {
                        row += 1;
                        col = 0;
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    col += 1;
                    match c {
                        '\\' if !escaped => escaped = true,
                        '"' if !escaped => break,
                        '\n' => {
                            row += 1;
                            col = 0;
                            escaped = false;
                        }
                        _ => escaped = false,
                    }
                }
            }
            '`' => {
                for c in chars.by_ref() {
                    col += 1;
                    match c {
                        '`' => break,
                        '\n' => {
                            row += 1;
                            col = 0;
                        }
                        _ => {}
                    }
                }
            }
            '[' | '{' => {
                depth += 1;
                let location = || Location {
                    file: file.to_owned(),
                    row,
                    col,
                };
                if depth > MAX_NESTING {
                    return Err(CompileError {
                        code: "rego_parse_error",
                        message: format!(
                            "brackets nest deeper than {MAX_NESTING} levels here (each level \
                             doubles the parse); move the value into a data document \
                             (PUT /v1/data) instead"
                        ),
                        location: location(),
                    });
                }
                units += 1 << depth;
                if units > MAX_UNITS {
                    return Err(CompileError {
                        code: "rego_parse_error",
                        message: format!(
                            "the module's nested literals would take too long to parse (over \
                             {MAX_UNITS} units by here; a bracket at depth d costs 2^d); \
                             split the module, flatten its literals, or move them into data \
                             documents"
                        ),
                        location: location(),
                    });
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(units)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_brackets_outside_strings_and_comments() {
        let deep = format!("package p\nq := {}1{}\n", "[".repeat(15), "]".repeat(15));
        let err = check("m.rego", &deep).unwrap_err();
        assert_eq!((err.location.row, err.location.col), (2, 20));
        let ok = format!("package p\nq := {}1{}\n", "[".repeat(14), "]".repeat(14));
        assert_eq!(check("m.rego", &ok).unwrap(), (1 << 15) - 2);
        let quoted = format!(
            "package p\n# {}\nq := \"{}\\\"{}\"\nr := `{}`\n",
            "[".repeat(50),
            "{".repeat(50),
            "[".repeat(50),
            "[".repeat(50)
        );
        assert_eq!(check("m.rego", &quoted).unwrap(), 0);
    }

    #[test]
    fn many_nested_literals_exhaust_the_budget() {
        // 100 literals 10 deep: 100 x 2,046 units.
        let line = format!("{}1{}", "[".repeat(10), "]".repeat(10));
        let text: String = (0..100).map(|i| format!("q{i} := {line}\n")).collect();
        let err = check("m.rego", &format!("package p\n{text}")).unwrap_err();
        assert!(err.message.contains("too long to parse"), "{err}");
        // Flat literals are cheap: 5,000 of them.
        let flat: String = (0..5000).map(|i| format!("q{i} := [1, 2]\n")).collect();
        assert_eq!(check("m.rego", &flat).unwrap(), 10_000);
    }
}
