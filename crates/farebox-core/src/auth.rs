//! RFC 9110 §11 `WWW-Authenticate` / `Authorization` grammar.
//!
//! ```text
//! challenge   = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
//! credentials = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
//! auth-param  = token BWS "=" BWS ( token / quoted-string )
//! token68     = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
//! ```
//!
//! Everything here is bounded and runs in time linear in the input: values longer than
//! [`MAX_HEADER_LEN`] are refused before any parsing, a field holds at most [`MAX_CHALLENGES`]
//! challenges and a challenge (or credential) at most [`MAX_PARAMS`] parameters, and each byte is
//! looked at a small constant number of times (there is no backtracking that re-scans input).
//! The criterion benchmark `benches/auth_grammar.rs` measures this on hostile shapes at 1, 4 and
//! 16 KiB (`cargo bench -p farebox-core --bench auth_grammar`): throughput stays flat as the
//! input grows.
//! The parsers never panic on any `&str`; non-ASCII text is only accepted inside quoted strings
//! (RFC 9110's `obs-text`), where it is kept as is.
//!
//! Deviations from the letter of the RFC, all in the lenient direction: `1*SP` after the scheme
//! also accepts horizontal tabs, and [`parse_credential`] accepts a credential that is neither
//! token68 nor an auth-param list (L402's `L402 <macaroon>:<preimage>`) as an opaque token.
//!
//! Two readers of `WWW-Authenticate`: [`parse_challenges`] is strict (any deviation fails the
//! whole value: what a conformance check of a server wants), [`read_challenges`] is what a
//! client uses: liberal, so that one malformed challenge (or field line) does not hide the
//! others, and it reports what it skipped. Both agree on every value the strict one accepts.

use std::fmt;

/// Largest header value this module parses (for [`parse_challenges`], the total of all fields).
pub const MAX_HEADER_LEN: usize = 16 * 1024;

/// Most challenges [`parse_challenges`] accepts across all the fields it is given.
pub const MAX_CHALLENGES: usize = 64;

/// Most parameters one challenge or credential may carry.
pub const MAX_PARAMS: usize = 64;

/// One challenge of a `WWW-Authenticate` field.
///
/// Either `token68` or `params` is used (or neither), never both. Parameter names keep the case
/// they were written or parsed in; look them up case-insensitively with [`AuthChallenge::get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthChallenge {
    pub scheme: String,
    pub token68: Option<String>,
    pub params: Vec<(String, String)>,
}

/// The parsed value of one `Authorization` field; see [`parse_credential`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthCredential {
    pub scheme: String,
    /// Everything after the scheme when it is not an auth-param list: a token68 or, leniently,
    /// any run of visible ASCII and spaces (L402's `<base64>:<hex>`).
    pub token: Option<String>,
    pub params: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("header value longer than {MAX_HEADER_LEN} bytes")]
    TooLarge,
    /// `at` is a byte offset into the value (for several `WWW-Authenticate` fields, into the
    /// fields joined with `", "`, as RFC 9110 §5.3 combines them).
    #[error("syntax error at byte {at}: expected {expected}")]
    Syntax { at: usize, expected: &'static str },
    #[error("value cannot be sent in a header: {0}")]
    Unrepresentable(&'static str),
}

impl AuthChallenge {
    pub fn new(scheme: impl Into<String>) -> Self {
        AuthChallenge { scheme: scheme.into(), token68: None, params: Vec::new() }
    }
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }
    /// Sets the token68 form of the challenge (`Scheme token68`).
    pub fn with_token68(mut self, token68: impl Into<String>) -> Self {
        self.token68 = Some(token68.into());
        self
    }
    /// The value of parameter `name`, compared case-insensitively.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Checks that the challenge can be written as a valid field value, so that
    /// [`parse_challenges`] reads back exactly this challenge.
    ///
    /// The scheme and parameter names must be tokens, a token68 must match the token68 rule,
    /// token68 and parameters are mutually exclusive, names must be unique (case-insensitively)
    /// and at most [`MAX_PARAMS`], and values may hold only HTAB, SP and visible ASCII.
    pub fn validate(&self) -> Result<(), HeaderError> {
        if !is_token(&self.scheme) {
            return Err(HeaderError::Unrepresentable("auth-scheme is not an RFC 9110 token"));
        }
        if let Some(t) = &self.token68 {
            if !is_token68(t) {
                return Err(HeaderError::Unrepresentable("token68 is not an RFC 9110 token68"));
            }
            if !self.params.is_empty() {
                return Err(HeaderError::Unrepresentable(
                    "a challenge carries either a token68 or parameters, not both",
                ));
            }
        }
        if self.params.len() > MAX_PARAMS {
            return Err(HeaderError::Unrepresentable("more than MAX_PARAMS parameters"));
        }
        for (i, (name, value)) in self.params.iter().enumerate() {
            if !is_token(name) {
                return Err(HeaderError::Unrepresentable(
                    "parameter name is not an RFC 9110 token",
                ));
            }
            if !value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) {
                return Err(HeaderError::Unrepresentable(
                    "parameter value holds a control character or non-ASCII text",
                ));
            }
            if self.params[..i].iter().any(|(k, _)| k.eq_ignore_ascii_case(name)) {
                return Err(HeaderError::Unrepresentable("duplicate parameter name"));
            }
        }
        Ok(())
    }

    /// The challenge as a `WWW-Authenticate` field value: `Scheme`, `Scheme token68` or
    /// `Scheme name="value", name2="value2"`, values always quoted and escaped.
    ///
    /// Fails with [`HeaderError::Unrepresentable`] when [`validate`](Self::validate) does, and
    /// with [`HeaderError::TooLarge`] when the value would exceed [`MAX_HEADER_LEN`].
    pub fn to_header_value(&self) -> Result<http::HeaderValue, HeaderError> {
        self.validate()?;
        let text = self.to_string();
        if text.len() > MAX_HEADER_LEN {
            return Err(HeaderError::TooLarge);
        }
        http::HeaderValue::from_str(&text)
            .map_err(|_| HeaderError::Unrepresentable("invalid header value"))
    }
}

/// Writes the challenge as [`AuthChallenge::to_header_value`] does, **without validating it**:
/// for a challenge that passes [`AuthChallenge::validate`] the output is exactly the header
/// value; otherwise it is a best effort (quotes and backslashes are still escaped, but invalid
/// names or control characters are written as they are) and may not be a valid field value.
impl fmt::Display for AuthChallenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.scheme)?;
        let mut sep = " ";
        if let Some(t) = &self.token68 {
            write!(f, " {t}")?;
            sep = ", ";
        }
        for (name, value) in &self.params {
            write!(f, "{sep}{name}=\"")?;
            let mut run = 0;
            for (i, b) in value.bytes().enumerate() {
                if b == b'"' || b == b'\\' {
                    // `i` is an ASCII byte, hence a char boundary.
                    f.write_str(&value[run..i])?;
                    f.write_str("\\")?;
                    run = i;
                }
            }
            f.write_str(&value[run..])?;
            f.write_str("\"")?;
            sep = ", ";
        }
        Ok(())
    }
}

impl AuthCredential {
    /// The value of parameter `name`, compared case-insensitively.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// The auth-scheme token at the start of a credential field value (after optional leading
/// whitespace), or `None` if the value does not start with a token.
///
/// Only the scheme is looked at: the rest of the value is validated by [`parse_credential`].
pub fn scheme_of(value: &str) -> Option<&str> {
    let scheme = scheme_of_bytes(value.as_bytes());
    // The scheme is ASCII tchars at the start of `value`, so it is valid UTF-8 on its own.
    (!scheme.is_empty()).then(|| std::str::from_utf8(scheme).unwrap_or_default())
}

/// [`scheme_of`] on raw header bytes (which need not be UTF-8 or small): the leading token,
/// empty if there is none. Lets a caller see whose credential a field is before judging it.
pub fn scheme_of_bytes(value: &[u8]) -> &[u8] {
    let Some(start) = value.iter().position(|&c| !is_ows(c)) else {
        return &[];
    };
    let len = value[start..].iter().take_while(|&&c| is_tchar(c)).count();
    &value[start..start + len]
}

/// Parses one or more `WWW-Authenticate` field values into their challenges, in order.
///
/// Several field lines are combined as RFC 9110 §5.3 prescribes (joined with `", "`), so error
/// offsets refer to that combined value (for a single line: to the line itself). Empty list
/// elements are skipped; no challenges at all gives an empty list. Quoted strings are unescaped.
/// A parameter name occurring twice in one challenge is an error, as are more than
/// [`MAX_CHALLENGES`] challenges, more than [`MAX_PARAMS`] parameters in one challenge, or more
/// than [`MAX_HEADER_LEN`] bytes in total.
pub fn parse_challenges<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<AuthChallenge>, HeaderError> {
    let mut total = 0usize;
    let mut first: Option<&str> = None;
    let mut joined: Option<String> = None;
    for v in values {
        total = total.saturating_add(v.len());
        if total > MAX_HEADER_LEN {
            return Err(HeaderError::TooLarge);
        }
        // An all-whitespace line is an empty list: it contributes nothing. Skipping it also
        // bounds the joined length (each joined line adds at least one byte of its own).
        if v.bytes().all(is_ows) {
            continue;
        }
        match (&mut joined, first) {
            (Some(j), _) => {
                j.push_str(", ");
                j.push_str(v);
            }
            (None, Some(f)) => {
                let mut j = String::with_capacity(f.len() + 2 + v.len());
                j.push_str(f);
                j.push_str(", ");
                j.push_str(v);
                joined = Some(j);
            }
            (None, None) => first = Some(v),
        }
    }
    match (&joined, first) {
        (Some(j), _) => challenge_list(j),
        (None, Some(f)) => challenge_list(f),
        (None, None) => Ok(Vec::new()),
    }
}

/// What [`read_challenges`] makes of `WWW-Authenticate` field values: every challenge it could
/// read, in order, and why each other one (or each ignored piece of one) was skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadChallenges {
    pub challenges: Vec<AuthChallenge>,
    /// `Syntax` offsets are into the field line the problem is in.
    pub skipped: Vec<HeaderError>,
}

/// Reads `WWW-Authenticate` field values as a client should: liberally, so that one malformed
/// challenge does not void the others. Every value [`parse_challenges`] accepts reads the same
/// here, with nothing skipped. Beyond that:
///
/// * each field line is read on its own, so a broken line (an unterminated quote, say) cannot
///   swallow the next;
/// * a challenge that breaks the grammar (its scheme glued to other text, something after a
///   token68, a parameter name used twice, more than [`MAX_PARAMS`] parameters) is skipped with
///   all its parameters, up to the next element that starts a challenge;
/// * a parameter value followed by stray text is read up to where it ends, and the rest of that
///   list element ignored: `description="Pay "now" please"` reads `Pay ` (an unescaped quote, as
///   the MPP conformance vectors have it);
/// * a parameter without a usable value (`a=`, an unterminated or control-character-holding
///   quoted string) is dropped and its challenge kept; so is a list element that is neither a
///   parameter nor a challenge;
/// * bounds as [`parse_challenges`]: lines past [`MAX_HEADER_LEN`] bytes in total and
///   challenges past [`MAX_CHALLENGES`] are skipped. Time stays linear in the input.
///
/// Leniency costs the client nothing: whatever it reads, the server that wrote it could have
/// written on purpose; what a challenge asks for is still checked by the rail that reads it.
pub fn read_challenges<'a>(values: impl IntoIterator<Item = &'a str>) -> ReadChallenges {
    let mut read = ReadChallenges::default();
    let mut total = 0usize;
    for line in values {
        total = total.saturating_add(line.len());
        if total > MAX_HEADER_LEN {
            read.skipped.push(HeaderError::TooLarge);
            break;
        }
        if !read_line(line, &mut read) {
            break;
        }
    }
    read
}

/// [`read_challenges`] over every `WWW-Authenticate` field of `headers`. A field that is not
/// UTF-8 (obs-text, e.g. a Latin-1 description) is read with U+FFFD in place of the bytes that
/// are not, rather than dropped.
pub fn read_challenges_from(headers: &http::HeaderMap) -> ReadChallenges {
    let lines: Vec<std::borrow::Cow<'_, str>> = headers
        .get_all(http::header::WWW_AUTHENTICATE)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
        .collect();
    read_challenges(lines.iter().map(|l| l.as_ref()))
}

/// Parses one `Authorization` field value: `scheme [ 1*SP ( token68 / #auth-param ) ]`.
///
/// Lenient on purpose: if what follows the scheme is a list of at least one `name=value`
/// (value a token or quoted string, empty elements allowed) that spans the whole rest, it fills
/// `params`; otherwise the whole rest, trimmed, is the `token`, which may hold any visible ASCII
/// and spaces (so `L402 <base64>,<base64>:<hex>` and `Payment eyJ...==` are tokens). A token68
/// ending in `=` padding is a token, not a parameter. Leading and trailing whitespace is ignored.
///
/// Errors: no scheme, no whitespace between scheme and the rest, control characters or
/// non-ASCII text in a token, and, for a parameter list, duplicate names or more than
/// [`MAX_PARAMS`] parameters.
pub fn parse_credential(value: &str) -> Result<AuthCredential, HeaderError> {
    if value.len() > MAX_HEADER_LEN {
        return Err(HeaderError::TooLarge);
    }
    let mut c = Cursor::new(value);
    c.skip_ows();
    let (s0, s1) = c.token();
    if s0 == s1 {
        return Err(c.err("auth-scheme"));
    }
    let mut cred =
        AuthCredential { scheme: value[s0..s1].to_owned(), token: None, params: Vec::new() };
    let had_ws = c.skip_ows();
    if c.at_end() {
        return Ok(cred);
    }
    if !had_ws {
        return Err(c.err("SP after auth-scheme"));
    }
    let rest = c.pos;
    if let Some(params) = credential_params(&mut c)? {
        cred.params = params;
        return Ok(cred);
    }
    let b = value.as_bytes();
    let mut end = b.len();
    while end > rest && is_ows(b[end - 1]) {
        end -= 1;
    }
    if let Some(bad) = b[rest..end].iter().position(|&x| !(is_ows(x) || is_vchar(x))) {
        return Err(syntax(rest + bad, "visible ASCII or space in credential"));
    }
    cred.token = Some(value[rest..end].to_owned());
    Ok(cred)
}

// ---------------------------------------------------------------------------------------------

fn syntax(at: usize, expected: &'static str) -> HeaderError {
    HeaderError::Syntax { at, expected }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

fn is_token68_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn is_vchar(b: u8) -> bool {
    (b'!'..=b'~').contains(&b)
}

/// `qdtext` and the character of a `quoted-pair`, minus the special meaning of `"` and `\`:
/// HTAB, SP, VCHAR and obs-text (any byte of non-ASCII UTF-8).
fn is_quotable(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

/// Is `s` an RFC 9110 token (`1*tchar`)?
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// Is `s` an RFC 9110 token68 (`1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`)?
pub fn is_token68(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty() && body.bytes().all(is_token68_char)
}

/// A byte cursor over a `&str`. Every position it stops at borders an ASCII byte (or the end),
/// so slicing the string there is always on a char boundary.
struct Cursor<'a> {
    s: &'a str,
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(s: &'a str) -> Self {
        Cursor { s, b: s.as_bytes(), pos: 0 }
    }
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }
    fn at_end(&self) -> bool {
        self.pos >= self.b.len()
    }
    fn err(&self, expected: &'static str) -> HeaderError {
        syntax(self.pos, expected)
    }
    /// Skips OWS; returns whether there was any.
    fn skip_ows(&mut self) -> bool {
        let start = self.pos;
        while self.peek().is_some_and(is_ows) {
            self.pos += 1;
        }
        self.pos > start
    }
    /// Skips OWS and commas: the separators (and empty elements) of a `#` list.
    fn skip_list_separators(&mut self) {
        while self.peek().is_some_and(|b| is_ows(b) || b == b',') {
            self.pos += 1;
        }
    }
    /// Scans a (possibly empty) token; returns its span.
    fn token(&mut self) -> (usize, usize) {
        let start = self.pos;
        while self.peek().is_some_and(is_tchar) {
            self.pos += 1;
        }
        (start, self.pos)
    }
    /// Parses a quoted-string starting at the opening `"`, returning it unescaped.
    fn quoted(&mut self) -> Result<String, HeaderError> {
        debug_assert_eq!(self.peek(), Some(b'"'));
        let mut i = self.pos + 1;
        let mut run = i;
        let mut out = String::new();
        loop {
            match self.b.get(i) {
                None => return Err(syntax(i, "closing '\"' of quoted-string")),
                Some(b'"') => {
                    out.push_str(&self.s[run..i]);
                    self.pos = i + 1;
                    return Ok(out);
                }
                Some(b'\\') => match self.b.get(i + 1) {
                    None => return Err(syntax(i + 1, "character after '\\' in quoted-string")),
                    Some(&c) if is_quotable(c) => {
                        // Drop the backslash; the escaped character (which starts at `i + 1`,
                        // a char boundary since `\` is ASCII) begins the next run. Skipping its
                        // first byte keeps an escaped `"` or `\` literal; the continuation bytes
                        // of an escaped multibyte char are plain obs-text.
                        out.push_str(&self.s[run..i]);
                        run = i + 1;
                        i += 2;
                    }
                    Some(_) => return Err(syntax(i + 1, "HTAB, SP, VCHAR or obs-text after '\\'")),
                },
                Some(&c) if is_quotable(c) => i += 1,
                Some(_) => {
                    return Err(syntax(i, "qdtext (no control characters) in quoted-string"));
                }
            }
        }
    }
    /// Parses an auth-param value: a token or a quoted-string.
    fn param_value(&mut self) -> Result<String, HeaderError> {
        match self.peek() {
            Some(b'"') => self.quoted(),
            Some(b) if is_tchar(b) => {
                let (a, z) = self.token();
                Ok(self.s[a..z].to_owned())
            }
            _ => Err(self.err("token or quoted-string parameter value")),
        }
    }
}

/// Appends a parameter, enforcing [`MAX_PARAMS`] and unique (case-insensitive) names. `at` is
/// the offset of the name, for errors.
fn push_param(
    params: &mut Vec<(String, String)>,
    name: &str,
    value: String,
    at: usize,
) -> Result<(), HeaderError> {
    if params.len() >= MAX_PARAMS {
        return Err(syntax(at, "at most 64 parameters per challenge or credential"));
    }
    if params.iter().any(|(k, _)| k.eq_ignore_ascii_case(name)) {
        return Err(syntax(at, "a parameter name not already used (names must be unique)"));
    }
    params.push((name.to_owned(), value));
    Ok(())
}

/// `#challenge` over one (combined) field value.
fn challenge_list(s: &str) -> Result<Vec<AuthChallenge>, HeaderError> {
    let mut c = Cursor::new(s);
    let mut out: Vec<AuthChallenge> = Vec::new();
    // A scheme already scanned by the look-ahead that ended the previous challenge's parameters.
    let mut pending: Option<(usize, usize)> = None;
    'challenges: loop {
        let (s0, s1) = match pending.take() {
            Some(span) => span,
            None => {
                c.skip_list_separators();
                if c.at_end() {
                    break;
                }
                let span = c.token();
                if span.0 == span.1 {
                    return Err(c.err("auth-scheme"));
                }
                span
            }
        };
        if out.len() >= MAX_CHALLENGES {
            return Err(syntax(s0, "at most 64 challenges"));
        }
        let mut ch = AuthChallenge::new(&s[s0..s1]);

        // After the scheme: end, a list separator, or 1*SP then token68 / #auth-param.
        let had_ws = c.skip_ows();
        match c.peek() {
            None | Some(b',') => {
                out.push(ch);
                continue;
            }
            Some(_) if !had_ws => return Err(c.err("SP, ',' or end after auth-scheme")),
            Some(_) => {}
        }

        let (r0, r1) = match challenge_start(&mut c)? {
            ChallengeStart::Token68(t) => {
                ch.token68 = Some(t);
                out.push(ch);
                continue;
            }
            ChallengeStart::Param(r0, r1) => (r0, r1),
        };
        // `c` is at the first parameter's value.
        let (mut n0, mut n1) = (r0, r1);
        loop {
            let value = c.param_value()?;
            push_param(&mut ch.params, &s[n0..n1], value, n0)?;
            c.skip_ows();
            match c.peek() {
                None => {
                    out.push(ch);
                    break 'challenges;
                }
                Some(b',') => {}
                Some(_) => return Err(c.err("',' or end after parameter")),
            }
            c.skip_list_separators();
            if c.at_end() {
                out.push(ch);
                break 'challenges;
            }
            // `token BWS "="` continues this challenge's parameters; any other token starts
            // the next challenge (and is its scheme).
            let (t0, t1) = c.token();
            if t0 == t1 {
                return Err(c.err("parameter name or auth-scheme"));
            }
            c.skip_ows();
            if c.peek() == Some(b'=') {
                c.pos += 1;
                c.skip_ows();
                (n0, n1) = (t0, t1);
                continue;
            }
            c.pos = t1;
            pending = Some((t0, t1));
            out.push(ch);
            continue 'challenges;
        }
    }
    Ok(out)
}

/// Tries to read the rest of a credential (from `c.pos`) as `#auth-param` with at least one
/// parameter spanning all of it. `Ok(None)` when it is not such a list (the caller then takes
/// the rest as an opaque token); an error only for a well-formed list that breaks the limits
/// (duplicate names, more than [`MAX_PARAMS`]).
fn credential_params(c: &mut Cursor<'_>) -> Result<Option<Vec<(String, String)>>, HeaderError> {
    let mut params = Vec::new();
    // Limit violations are only reported if the whole rest turns out to be a parameter list.
    let mut violation: Option<HeaderError> = None;
    loop {
        c.skip_list_separators();
        if c.at_end() {
            break;
        }
        let (n0, n1) = c.token();
        if n0 == n1 {
            return Ok(None);
        }
        c.skip_ows();
        if c.peek() != Some(b'=') {
            return Ok(None);
        }
        c.pos += 1;
        c.skip_ows();
        let Ok(value) = c.param_value() else {
            return Ok(None);
        };
        if violation.is_none()
            && let Err(e) = push_param(&mut params, &c.s[n0..n1], value, n0)
        {
            violation = Some(e);
        }
        c.skip_ows();
        match c.peek() {
            None => break,
            Some(b',') => {}
            Some(_) => return Ok(None),
        }
    }
    if let Some(e) = violation {
        return Err(e);
    }
    Ok((!params.is_empty()).then_some(params))
}

// ---- the liberal reader -----------------------------------------------------------------------

/// Where [`read_line`] is in a line's challenge list.
enum Current {
    /// Before the first challenge.
    Nothing,
    /// A challenge taking parameters.
    Open(AuthChallenge),
    /// A bare or token68 challenge, already kept: a parameter now belongs to no challenge.
    Closed,
    /// A malformed challenge: its parameters are skipped until the next challenge starts.
    Skipping,
}

impl Cursor<'_> {
    /// Moves to the end of the current list element: the next `,` outside a quoted string, or
    /// the end (an unterminated quoted string runs to the end).
    fn skip_element(&mut self) {
        while let Some(b) = self.peek() {
            match b {
                b',' => return,
                b'"' => self.skip_quoted(),
                _ => self.pos += 1,
            }
        }
    }

    /// Moves past the quoted-string at the cursor, or to the end if it does not end.
    fn skip_quoted(&mut self) {
        self.pos += 1;
        while let Some(b) = self.peek() {
            self.pos += 1;
            match b {
                b'"' => return,
                b'\\' => self.pos = (self.pos + 1).min(self.b.len()),
                _ => {}
            }
        }
    }

    /// A parameter value read liberally (the cursor is after `=` and BWS), then the rest of
    /// the list element skipped. `Err` says why the parameter is not usable; text after a
    /// usable value (an unescaped quote ended it early) is ignored.
    fn param_value_liberal(&mut self) -> Result<String, HeaderError> {
        let at = self.pos;
        let value = match self.peek() {
            Some(b'"') => self.quoted().inspect_err(|_| {
                // Unterminated, or a character no quoted-string holds: find its end anyway.
                self.pos = at;
                self.skip_quoted();
            }),
            Some(b) if is_tchar(b) => {
                let (a, z) = self.token();
                Ok(self.s[a..z].to_owned())
            }
            _ => Err(syntax(at, "token or quoted-string parameter value")),
        };
        self.skip_element();
        value
    }
}

/// What follows `scheme 1*SP` in a list element.
enum ChallengeStart {
    Token68(String),
    /// The first parameter's name (its span); the cursor is at its value.
    Param(usize, usize),
}

/// Reads what follows `scheme 1*SP`: a token68 (up to the end of its list element) or the name
/// of the first parameter, told apart by what follows the run of token / token68 characters:
/// `BWS "=" BWS (token / DQUOTE)` makes it a parameter name, anything else a token68.
fn challenge_start(c: &mut Cursor<'_>) -> Result<ChallengeStart, HeaderError> {
    let r0 = c.pos;
    // The first character that disqualifies the run as a token, and as a token68.
    let (mut not_token, mut not_token68) = (None, None);
    while let Some(b) = c.peek() {
        let (t, t68) = (is_tchar(b), is_token68_char(b));
        if !t && !t68 {
            break;
        }
        if !t {
            not_token.get_or_insert(c.pos);
        }
        if !t68 {
            not_token68.get_or_insert(c.pos);
        }
        c.pos += 1;
    }
    let r1 = c.pos;
    if r0 == r1 {
        return Err(c.err("token68 or auth-param"));
    }
    c.skip_ows();
    let is_param = c.peek() == Some(b'=') && {
        c.pos += 1;
        c.skip_ows();
        c.peek().is_some_and(|b| b == b'"' || is_tchar(b))
    };
    if !is_param {
        if let Some(at) = not_token68 {
            return Err(syntax(at, "token68 character or '='"));
        }
        c.pos = r1;
        while c.peek() == Some(b'=') {
            c.pos += 1;
        }
        let token68 = c.s[r0..c.pos].to_owned();
        c.skip_ows();
        return match c.peek() {
            None | Some(b',') => Ok(ChallengeStart::Token68(token68)),
            Some(_) => Err(c.err("',' or end after token68")),
        };
    }
    if let Some(at) = not_token {
        return Err(syntax(at, "token character in parameter name"));
    }
    Ok(ChallengeStart::Param(r0, r1))
}

/// Keeps a finished challenge, if there is room; `false` once [`MAX_CHALLENGES`] are kept.
fn keep(ch: AuthChallenge, read: &mut ReadChallenges, at: usize) -> bool {
    if read.challenges.len() >= MAX_CHALLENGES {
        read.skipped.push(syntax(at, "at most 64 challenges"));
        return false;
    }
    read.challenges.push(ch);
    true
}

/// Reads one field line into `read`; `false` once a challenge past [`MAX_CHALLENGES`] is met.
fn read_line(line: &str, read: &mut ReadChallenges) -> bool {
    let mut c = Cursor::new(line);
    let mut current = Current::Nothing;
    loop {
        c.skip_list_separators();
        let at = c.pos;
        if c.at_end() {
            break;
        }
        let (t0, t1) = c.token();
        let had_ws = c.skip_ows();
        match c.peek() {
            _ if t0 == t1 => {
                read.skipped.push(syntax(at, "auth-scheme or auth-param"));
                c.skip_element();
            }
            // `name = value`: a parameter of the current challenge.
            Some(b'=') => {
                c.pos += 1;
                c.skip_ows();
                let value = c.param_value_liberal();
                match (&mut current, value) {
                    (Current::Skipping, _) => {}
                    (_, Err(e)) => read.skipped.push(e),
                    (Current::Open(ch), Ok(v)) => {
                        if let Err(e) = push_param(&mut ch.params, &line[t0..t1], v, t0) {
                            read.skipped.push(e);
                            current = Current::Skipping;
                        }
                    }
                    (Current::Nothing | Current::Closed, Ok(_)) => {
                        read.skipped.push(syntax(at, "a challenge before its parameters"));
                    }
                }
            }
            // A token glued to something else: neither a parameter nor a challenge.
            Some(b) if b != b',' && !had_ws => {
                read.skipped.push(syntax(c.pos, "SP, '=' or ',' after a token"));
                c.skip_element();
            }
            // A new challenge: bare (`scheme` then `,` or the end) or `scheme 1*SP ...`.
            next => {
                if let Current::Open(ch) = std::mem::replace(&mut current, Current::Skipping)
                    && !keep(ch, read, at)
                {
                    return false;
                }
                let mut ch = AuthChallenge::new(&line[t0..t1]);
                let start = match next {
                    None | Some(b',') => Ok(None),
                    Some(_) => challenge_start(&mut c).map(Some),
                };
                match start {
                    Ok(None) => {
                        current = Current::Closed;
                        if !keep(ch, read, at) {
                            return false;
                        }
                    }
                    Ok(Some(ChallengeStart::Token68(t))) => {
                        current = Current::Closed;
                        if !keep(ch.with_token68(t), read, at) {
                            return false;
                        }
                    }
                    Ok(Some(ChallengeStart::Param(n0, n1))) => {
                        match c.param_value_liberal() {
                            Ok(v) => ch.params.push((line[n0..n1].to_owned(), v)),
                            Err(e) => read.skipped.push(e),
                        }
                        current = Current::Open(ch);
                    }
                    Err(e) => {
                        read.skipped.push(e);
                        c.skip_element();
                    }
                }
            }
        }
    }
    match current {
        Current::Open(ch) => keep(ch, read, c.pos),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_escapes_quotes_and_backslashes() {
        let ch = AuthChallenge::new("X").param("a", r#"q"b\s"#).param("b", "");
        assert_eq!(ch.to_string(), r#"X a="q\"b\\s", b="""#);
        assert_eq!(ch.to_header_value().unwrap(), r#"X a="q\"b\\s", b="""#);
    }

    #[test]
    fn cursor_positions_stay_on_char_boundaries() {
        // Escaped multibyte obs-text inside a quoted string is kept.
        let v = parse_challenges(["X a=\"\\é\u{1F600}\\\u{1F600}\""]).unwrap();
        assert_eq!(v[0].get("a"), Some("é\u{1F600}\u{1F600}"));
        assert!(parse_challenges(["X\u{1F600} a=b"]).is_err());
        assert!(parse_credential("X \u{1F600}").is_err());
        assert_eq!(scheme_of("\u{1F600}X"), None);
    }
}
