//! Cluster authentication: one shared secret, the cluster token, that
//! every master, chunkserver and client of a cluster holds (a file each
//! is started with: `--auth-token-file`). With a token configured a
//! server refuses, before any handler runs, every gRPC call that does not
//! carry it (`authorization: Bearer <token>`, [`RequireToken`]) and every
//! data-plane connection that does not present it first
//! (`data::Op::Hello`). Without one, nothing is checked, as before.
//!
//! The token travels in the clear: it keeps out clients that do not hold
//! it (a stray job, a misdirected benchmark, another cluster's servers),
//! not an eavesdropper on the network, which needs TLS.

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::header::{AUTHORIZATION, HeaderValue};
use hyper::{Request, Response};

/// The environment variable naming a client's token file (`gfs`,
/// `gfs-bench` and every program on the client library).
pub const TOKEN_FILE_ENV: &str = "GFS_AUTH_TOKEN_FILE";

/// What a refused caller is told.
pub const REFUSAL: &str = "this cluster needs its token (--auth-token-file / GFS_AUTH_TOKEN_FILE)";

/// Shortest token accepted: a guessable secret is no secret.
pub const MIN_TOKEN_BYTES: usize = 16;
/// Longest token accepted (it rides in every call's headers).
pub const MAX_TOKEN_BYTES: usize = 1024;

/// The cluster token. Its `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Arc<str>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A token from its text: at least [`MIN_TOKEN_BYTES`] and at most
    /// [`MAX_TOKEN_BYTES`] of visible ASCII (it goes into a header).
    pub fn new(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.len() < MIN_TOKEN_BYTES || t.len() > MAX_TOKEN_BYTES {
            return Err(format!(
                "a cluster token is {MIN_TOKEN_BYTES} to {MAX_TOKEN_BYTES} bytes, not {}",
                t.len()
            ));
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("a cluster token is visible ASCII (no spaces)".into());
        }
        Ok(Self(t.into()))
    }

    /// The token in `path` (surrounding whitespace, such as a final
    /// newline, is not part of it).
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading the cluster token {}: {e}", path.display()))?;
        Self::new(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Whether `presented` is this token, in time that does not depend on
    /// where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let mine = self.0.as_bytes();
        let mut diff = mine.len() ^ presented.len();
        for (i, b) in mine.iter().enumerate() {
            diff |= usize::from(b ^ presented.get(i).copied().unwrap_or(0));
        }
        diff == 0
    }

    fn header(&self) -> Option<HeaderValue> {
        HeaderValue::from_str(&format!("Bearer {}", self.0)).ok()
    }
}

/// Whether the `authorization` header presents `token`.
pub fn presents(header: Option<&HeaderValue>, token: &Token) -> bool {
    header
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|t| token.matches(t))
}

/// The token in the file [`TOKEN_FILE_ENV`] names, if it is set.
pub fn token_from_env() -> Result<Option<Token>, String> {
    match std::env::var_os(TOKEN_FILE_ENV) {
        Some(path) if !path.is_empty() => Token::from_file(Path::new(&path)).map(Some),
        _ => Ok(None),
    }
}

// ---- client side -----------------------------------------------------------

/// A gRPC channel that sends the cluster token with every call (none
/// without one).
pub type AuthChannel = WithToken<tonic::transport::Channel>;

/// `inner` with the token's header added to every request.
#[derive(Clone, Debug)]
pub struct WithToken<S> {
    inner: S,
    header: Option<HeaderValue>,
}

/// `channel`, sending `token` with every call.
pub fn with_token(channel: tonic::transport::Channel, token: Option<&Token>) -> AuthChannel {
    WithToken {
        inner: channel,
        header: token.and_then(Token::header),
    }
}

impl<S, B> tower_service::Service<Request<B>> for WithToken<S>
where
    S: tower_service::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(h) = &self.header {
            req.headers_mut().insert(AUTHORIZATION, h.clone());
        }
        self.inner.call(req)
    }
}

// ---- server side -----------------------------------------------------------

/// A layer refusing, with `UNAUTHENTICATED` and before any handler runs,
/// every call that does not present the token; with none, it lets all
/// through.
#[derive(Clone, Debug)]
pub struct RequireToken(pub Option<Token>);

impl<S> tower_layer::Layer<S> for RequireToken {
    type Service = Checked<S>;

    fn layer(&self, inner: S) -> Checked<S> {
        Checked {
            inner,
            token: self.0.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Checked<S> {
    inner: S,
    token: Option<Token>,
}

impl<S, B, RB> tower_service::Service<Request<B>> for Checked<S>
where
    S: tower_service::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if let Some(t) = &self.token
            && !presents(req.headers().get(AUTHORIZATION), t)
        {
            let refusal = tonic::Status::unauthenticated(REFUSAL);
            return Box::pin(std::future::ready(Ok(refusal.into_http())));
        }
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_long_visible_ascii() {
        assert!(Token::new("0123456789abcdef").is_ok());
        assert!(Token::new("  0123456789abcdef\n").is_ok());
        assert!(Token::new("short").is_err());
        assert!(Token::new("0123456789 abcdef").is_err());
        assert!(Token::new("0123456789abcdé!").is_err());
        assert!(Token::new(&"x".repeat(MAX_TOKEN_BYTES + 1)).is_err());
        let t = Token::new("0123456789abcdef").unwrap();
        assert_eq!(format!("{t:?}"), "Token(..)");
    }

    #[test]
    fn only_the_token_itself_matches() {
        let t = Token::new("0123456789abcdef").unwrap();
        assert!(t.matches(b"0123456789abcdef"));
        assert!(!t.matches(b"0123456789abcdeF"));
        assert!(!t.matches(b"0123456789abcde"));
        assert!(!t.matches(b"0123456789abcdef0"));
        assert!(!t.matches(b""));
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(presents(Some(&h("Bearer 0123456789abcdef")), &t));
        assert!(!presents(Some(&h("Bearer 0123456789abcdeg")), &t));
        assert!(!presents(Some(&h("0123456789abcdef")), &t));
        assert!(!presents(Some(&h("Basic 0123456789abcdef")), &t));
        assert!(!presents(None, &t));
    }
}
