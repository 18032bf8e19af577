//! `${VAR}` expansion of configuration text, TOML-aware so that no value
//! becomes syntax.

/// Reads environment variables; injectable so tests need not touch the process environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

pub(crate) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Expands `${VAR}` and `${VAR:-default}` in `text`; `$${` stands for a literal `${`.
///
/// Expanded values are data, never syntax: inside a `"..."` string a value is
/// escaped (quotes, backslashes, line breaks and control characters all
/// arrive as written); inside a `'...'` string a value that such a string
/// cannot hold (a `'`, a line break) is an error; outside quotes a value must
/// be a number or `true`/`false`. So no variable can add a key or a table.
/// Comments (from a `#` outside a string to the end of the line) are left
/// alone, so a commented-out example does not demand its variables. An unset
/// variable without a default is an error naming it and its line.
pub fn expand_env(text: &str, env: EnvLookup<'_>) -> Result<String, (usize, String)> {
    #[derive(Clone, Copy, PartialEq)]
    enum At {
        Bare,
        Basic { multi: bool },
        Literal { multi: bool },
        Comment,
    }
    let mut out = String::with_capacity(text.len());
    let mut at = At::Bare;
    let mut line = 1;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let here = rest;
        let mut step = c.len_utf8();
        match (at, c) {
            (_, '\n') => {
                line += 1;
                if at == At::Comment {
                    at = At::Bare;
                }
                out.push(c);
            }
            (At::Comment, _) => out.push(c),
            (_, '$') if here.starts_with("$${") && at != At::Comment => {
                out.push_str("${");
                step = 3;
            }
            (_, '$') if here.starts_with("${") => {
                let body = &here[2..];
                let end = body
                    .find(['}', '\n'])
                    .filter(|&e| body[e..].starts_with('}'));
                let Some(end) = end else {
                    let this_line = here.lines().next().unwrap_or("");
                    return Err((
                        line,
                        format!("unterminated `${{` in `{}`", this_line.trim_end()),
                    ));
                };
                let expr = &body[..end];
                let value = lookup(expr, env).map_err(|m| (line, m))?;
                let name = expr.split_once(":-").map_or(expr, |(n, _)| n);
                match at {
                    At::Basic { .. } => push_basic_escaped(&mut out, &value),
                    At::Literal { multi } => {
                        if value.contains('\'')
                            || (!multi && value.contains(['\n', '\r']))
                            || value
                                .chars()
                                .any(|c| c.is_control() && c != '\t' && c != '\n')
                        {
                            return Err((line, format!(
                                "the value of {name} cannot stand in a '...' string (it holds a ', a line break or a control character); write \"${{{name}}}\" instead"
                            )));
                        }
                        out.push_str(&value);
                    }
                    _ => {
                        if !is_bare_scalar(&value) {
                            let key = text_line(text, line)
                                .split('=')
                                .next()
                                .unwrap_or("")
                                .trim()
                                .to_string();
                            return Err((line, format!(
                                "`${{{expr}}}` stands outside quotes, so its value must be a number or true/false, and {name} is {value:?}{}; put it in quotes (\"${{{name}}}\") for text",
                                if key.is_empty() { String::new() } else { format!(" (for `{key}`)") }
                            )));
                        }
                        out.push_str(value.trim());
                    }
                }
                step = 2 + end + 1;
            }
            (At::Bare, '#') => {
                at = At::Comment;
                out.push(c);
            }
            (At::Bare, '"') => {
                let multi = here.starts_with("\"\"\"");
                at = At::Basic { multi };
                step = if multi { 3 } else { 1 };
                out.push_str(&here[..step]);
            }
            (At::Bare, '\'') => {
                let multi = here.starts_with("\'\'\'");
                at = At::Literal { multi };
                step = if multi { 3 } else { 1 };
                out.push_str(&here[..step]);
            }
            (At::Basic { .. }, '\\') => {
                // An escape: the next character is never a closing quote.
                let next = here[1..].chars().next().map_or(0, char::len_utf8);
                step = 1 + next;
                if here[1..].starts_with('\n') {
                    line += 1;
                }
                out.push_str(&here[..step]);
            }
            (At::Basic { multi }, '"') | (At::Literal { multi }, '\'') => {
                let close = if multi { 3 } else { 1 };
                let quote = if c == '"' { "\"\"\"" } else { "\'\'\'" };
                if !multi || here.starts_with(quote) {
                    at = At::Bare;
                    step = close;
                }
                out.push_str(&here[..step]);
            }
            _ => out.push(c),
        }
        rest = &here[step..];
    }
    Ok(out)
}

/// The value of `${expr}`: `NAME` or `NAME:-default`.
fn lookup(expr: &str, env: EnvLookup<'_>) -> Result<String, String> {
    let (name, default) = match expr.split_once(":-") {
        Some((n, d)) => (n, Some(d)),
        None => (expr, None),
    };
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!(
            "`${{{expr}}}`: `{name}` is not a valid variable name"
        ));
    }
    match (
        env(name).filter(|v| !v.is_empty() || default.is_none()),
        default,
    ) {
        (Some(v), _) => Ok(v),
        (None, Some(d)) => Ok(d.to_string()),
        (None, None) => Err(format!(
            "environment variable {name} is not set; set it or write ${{{name}:-default}}"
        )),
    }
}

/// Appends `value` as the inside of a TOML `"..."` string.
fn push_basic_escaped(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = std::fmt::Write::write_fmt(out, format_args!("\\u{:04X}", c as u32));
            }
            c => out.push(c),
        }
    }
}

/// A value that may stand outside quotes: a TOML integer, float or boolean.
fn is_bare_scalar(value: &str) -> bool {
    let v = value.trim();
    !v.is_empty()
        && !v.contains(['\n', '\r', '#', '=', '[', ']', '{', '}', ',', '"', '\''])
        && toml::from_str::<toml::Table>(&format!("v = {v}"))
            .ok()
            .and_then(|t| t.get("v").cloned())
            .is_some_and(|x| x.is_integer() || x.is_float() || x.is_bool())
}

fn text_line(text: &str, line: usize) -> &str {
    text.lines().nth(line - 1).unwrap_or("")
}
