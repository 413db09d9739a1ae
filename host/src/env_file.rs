//! `--env-file` syntax: `NAME=VALUE` lines read as python-dotenv reads them.
//!
//! Written here rather than taken from the `dotenvy` crate: dotenvy expands
//! `$NAME` in unquoted and double-quoted values from the server's own
//! environment first, so a password holding `$` would silently change, and
//! the host's variables would reach the app, which nothing else lets them.
//! Nothing is expanded here.

/// A line the parser could not read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct EnvFileError {
    /// 1-based line where the entry starts.
    pub line: usize,
    /// What is wrong.
    pub reason: &'static str,
}

/// The entries of an env file, in order: blank lines and `#` comments
/// skipped; `export NAME=VALUE` taken as `NAME=VALUE`; spaces around `=`
/// ignored; a value in single quotes taken as it is (`\'` and `\\` aside),
/// one in double quotes with its backslash escapes (`\n`, `\t`, `\"`, ...),
/// either may span lines; an unquoted value ends at the line's end or at
/// a `#` after whitespace, trailing spaces dropped; a name alone on its
/// line sets nothing.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, EnvFileError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut p = Parser {
        rest: text,
        line: 1,
    };
    let mut out = Vec::new();
    loop {
        p.skip(|c| c.is_whitespace());
        match p.peek() {
            None => return Ok(out),
            Some('#') => {
                p.skip(|c| c != '\n');
                continue;
            }
            Some(_) => {}
        }
        let start = p.line;
        let fail = |reason| EnvFileError {
            line: start,
            reason,
        };
        if let Some(after) = p.rest.strip_prefix("export") {
            if after.starts_with([' ', '\t']) {
                p.rest = after;
                p.skip(|c| c == ' ' || c == '\t');
            }
        }
        let name = p.take(|c| !c.is_whitespace() && c != '=' && c != '#');
        if name.is_empty() {
            return Err(fail("expected NAME=VALUE"));
        }
        p.skip(|c| c == ' ' || c == '\t');
        if matches!(p.peek(), None | Some('\n' | '\r' | '#')) {
            // A bare name: python-dotenv reads it as a name without a
            // value, which `load_dotenv` leaves unset; so is it here.
            p.skip(|c| c != '\n');
            continue;
        }
        if !p.eat('=') {
            return Err(fail("expected `=` after the name (names have no spaces)"));
        }
        p.skip(|c| c == ' ' || c == '\t');
        let value = match p.peek() {
            Some(q @ ('"' | '\'')) => {
                p.eat(q);
                let value = p
                    .quoted(q)
                    .ok_or_else(|| fail("a quoted value is not closed"))?;
                p.skip(|c| c == ' ' || c == '\t');
                if p.peek() == Some('#') {
                    p.skip(|c| c != '\n');
                }
                if !matches!(p.peek(), None | Some('\n' | '\r')) {
                    return Err(fail("text after the closing quote"));
                }
                value
            }
            _ => {
                let raw = p.take(|c| c != '\n');
                let raw = raw.strip_suffix('\r').unwrap_or(raw);
                let cut = raw
                    .char_indices()
                    .find(|&(i, c)| c == '#' && raw[..i].ends_with([' ', '\t']))
                    .map_or(raw.len(), |(i, _)| i);
                raw[..cut].trim_end().to_owned()
            }
        };
        out.push((name.to_owned(), value));
    }
}

struct Parser<'t> {
    rest: &'t str,
    /// The line `rest` starts on.
    line: usize,
}

impl<'t> Parser<'t> {
    fn peek(&self) -> Option<char> {
        self.rest.chars().next()
    }

    fn eat(&mut self, c: char) -> bool {
        self.rest.strip_prefix(c).map(|r| self.rest = r).is_some()
    }

    /// The longest prefix whose characters pass `keep`, consumed.
    fn take(&mut self, keep: impl Fn(char) -> bool) -> &'t str {
        let end = self.rest.find(|c| !keep(c)).unwrap_or(self.rest.len());
        let (taken, rest) = self.rest.split_at(end);
        self.line += taken.matches('\n').count();
        self.rest = rest;
        taken
    }

    fn skip(&mut self, drop: impl Fn(char) -> bool) {
        self.take(drop);
    }

    /// The rest of a value opened by quote `q`, up to its closing quote
    /// (consumed); `None` if it never closes.
    fn quoted(&mut self, q: char) -> Option<String> {
        let mut value = String::new();
        let mut chars = self.rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                c if c == q => {
                    self.line += self.rest[..i].matches('\n').count();
                    self.rest = &self.rest[i + 1..];
                    return Some(value);
                }
                '\\' => {
                    let (_, next) = chars.next()?;
                    match (q, next) {
                        (_, '\\') => value.push('\\'),
                        (_, n) if n == q => value.push(q),
                        ('"', 'n') => value.push('\n'),
                        ('"', 't') => value.push('\t'),
                        ('"', 'r') => value.push('\r'),
                        ('"', '\'') => value.push('\''),
                        (_, n) => {
                            value.push('\\');
                            value.push(n);
                        }
                    }
                }
                c => value.push(c),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(text: &str) -> Vec<(String, String)> {
        parse(text).unwrap()
    }

    #[test]
    fn reads_what_python_dotenv_reads() {
        let text = "\u{feff}A=1\nB=\"two words\"\nC='single'\n  F = spaced\nexport G=g\n\
                    export\tH=h\nexport  I=i\n# note\nJ=3 # note\nK=a#b\nL=\"x\\ny\"\n\
                    M='x\\ny'\nN=\"multi\nline\" # after\nO=\nP=\"\"\nQ=$HOME\nexport=e\nR=\"it\\'s\"\r\nS=t\r\n\
                    BARE\nexport BARE2 # no value\nBARE3\r\nT=t\nBARE4";
        let want = [
            ("A", "1"),
            ("B", "two words"),
            ("C", "single"),
            ("F", "spaced"),
            ("G", "g"),
            ("H", "h"),
            ("I", "i"),
            ("J", "3"),
            ("K", "a#b"),
            ("L", "x\ny"),
            ("M", "x\\ny"),
            ("N", "multi\nline"),
            ("O", ""),
            ("P", ""),
            ("Q", "$HOME"),
            ("export", "e"),
            ("R", "it's"),
            ("S", "t"),
            ("T", "t"),
        ];
        let got = pairs(text);
        let got: Vec<(&str, &str)> = got.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn says_which_line_is_wrong() {
        for (text, line, says) in [
            ("A=1\nB C=2\n", 2, "expected `=`"),
            ("A=1\nB=\"open\nC=3\n", 2, "not closed"),
            ("A='x' y\n", 1, "after the closing quote"),
            ("=x\n", 1, "expected NAME=VALUE"),
            ("A=\"multi\nline\"\nB C\n", 3, "expected `=`"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.reason.contains(says), "{text:?}: {e}");
        }
    }
}
