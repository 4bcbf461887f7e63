//! Bearer tokens: configured secrets, compared in constant time, never
//! printed.
//!
//! A token list comes from a variable (`SAGAFLOW_API_TOKENS=a,b`) or from a
//! file it names (`SAGAFLOW_API_TOKENS_FILE=/run/secrets/api-tokens`, one
//! token per line, `#` comments), never both: a file keeps the secrets out
//! of the process environment, which other processes of the same user can
//! read. A token is 16 to 256 visible ASCII characters, so it fits in a
//! header and is not trivially guessable; an error names the variable and
//! the token's position, never the token.

use std::fmt;

use subtle::ConstantTimeEq as _;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;

use crate::config;

/// Shortest and longest token accepted.
pub const MIN_TOKEN_LEN: usize = 16;
pub const MAX_TOKEN_LEN: usize = 256;

/// A secret string: `Debug` shows `***`, equality takes the same time
/// wherever the first difference is.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret without checking it (see [`parse_tokens`] for tokens).
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, to send it; never log this.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` equals the secret, in constant time for a given
    /// length (a length mismatch is all it reveals).
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Parse a token list: tokens separated by commas or newlines, blank lines
/// and `#` comment lines ignored. `var` names the setting in errors.
pub fn parse_tokens(var: &str, raw: &str) -> anyhow::Result<Vec<Secret>> {
    let mut tokens = Vec::new();
    let candidates = raw
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    for (i, token) in candidates.enumerate() {
        let n = i + 1;
        if !(MIN_TOKEN_LEN..=MAX_TOKEN_LEN).contains(&token.len()) {
            anyhow::bail!(
                "{var}: token {n} must be {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN} characters long"
            );
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            anyhow::bail!("{var}: token {n} must be visible ASCII characters only");
        }
        tokens.push(Secret::new(token));
    }
    anyhow::ensure!(!tokens.is_empty(), "{var}: no token given");
    Ok(tokens)
}

/// The tokens of `var` or of the file `var_FILE` names; `None` when neither
/// is set. Both set is an error (which one would win is a trap).
pub fn tokens_from_env(var: &str) -> anyhow::Result<Option<Vec<Secret>>> {
    let file_var = format!("{var}_FILE");
    match (config::var_opt(var), config::var_opt(&file_var)) {
        (Some(_), Some(_)) => anyhow::bail!("set {var} or {file_var}, not both"),
        (Some(raw), None) => parse_tokens(var, &raw).map(Some),
        (None, Some(path)) => {
            let raw = std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("{file_var}={path}: cannot read: {e}"))?;
            parse_tokens(&file_var, &raw).map(Some)
        }
        (None, None) => Ok(None),
    }
}

/// Exactly one token from `var` or `var_FILE` (a client's own token).
pub fn token_from_env(var: &str) -> anyhow::Result<Option<Secret>> {
    match tokens_from_env(var)? {
        None => Ok(None),
        Some(mut tokens) if tokens.len() == 1 => Ok(tokens.pop()),
        Some(_) => anyhow::bail!("{var}: give exactly one token"),
    }
}

/// The token a request presents in `authorization: Bearer <token>`.
pub fn bearer_of(header: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = header.split_at_checked(7)?;
    (scheme.eq_ignore_ascii_case(b"bearer ") && !token.is_empty()).then_some(token)
}

/// A client interceptor that sends `authorization: Bearer <token>` with
/// every call (nothing when built without a token, as in insecure mode).
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    pub fn new(token: Option<&Secret>) -> anyhow::Result<Self> {
        let value = match token {
            None => None,
            Some(t) => {
                let mut v: MetadataValue<Ascii> = format!("Bearer {}", t.expose())
                    .parse()
                    .map_err(|_| anyhow::anyhow!("a token must be visible ASCII"))?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        Ok(Bearer(value))
    }
}

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(_) => f.write_str("Bearer(***)"),
            None => f.write_str("Bearer(none)"),
        }
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "tok-aaaaaaaaaaaaaaaa";
    const B: &str = "tok-bbbbbbbbbbbbbbbb";

    #[test]
    fn token_lists_split_on_commas_and_lines_and_skip_comments() {
        let raw = format!("# operators\n{A}, {B}\n\n{A}\n");
        let tokens = parse_tokens("V", &raw).unwrap();
        let shown: Vec<&str> = tokens.iter().map(Secret::expose).collect();
        assert_eq!(shown, [A, B, A]);
    }

    #[test]
    fn bad_tokens_are_refused_without_echoing_them() {
        let short = parse_tokens("SAGAFLOW_API_TOKENS", &format!("{A},short"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            short,
            "SAGAFLOW_API_TOKENS: token 2 must be 16 to 256 characters long"
        );
        let spaced = parse_tokens("V", "has a space in it, ok?")
            .unwrap_err()
            .to_string();
        assert!(!spaced.contains("space"), "{spaced}");
        assert!(parse_tokens("V", &"x".repeat(257)).is_err());
        assert_eq!(
            parse_tokens("V", " , \n# only a comment")
                .unwrap_err()
                .to_string(),
            "V: no token given"
        );
    }

    #[test]
    fn secrets_never_print_and_compare_exactly() {
        let s = Secret::new(A);
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert!(s.matches(A.as_bytes()));
        assert!(!s.matches(B.as_bytes()));
        assert!(!s.matches(&A.as_bytes()[..10]));
        let bearer = Bearer::new(Some(&s)).unwrap();
        assert_eq!(format!("{bearer:?}"), "Bearer(***)");
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_needs_a_token() {
        assert_eq!(bearer_of(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_of(b"bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_of(b"Bearer "), None);
        assert_eq!(bearer_of(b"Basic abcdef"), None);
        assert_eq!(bearer_of(b"Bear"), None);
    }

    #[test]
    fn the_interceptor_sends_the_token() {
        let mut bearer = Bearer::new(Some(&Secret::new(A))).unwrap();
        let request = bearer.call(tonic::Request::new(())).unwrap();
        let sent = request.metadata().get("authorization").unwrap();
        assert_eq!(sent.to_str().unwrap(), format!("Bearer {A}"));
        let request = Bearer::default().call(tonic::Request::new(())).unwrap();
        assert!(request.metadata().get("authorization").is_none());
    }
}
