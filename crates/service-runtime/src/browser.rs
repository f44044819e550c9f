//! Browsers on the gRPC port: gRPC-Web (tonic-web) beside native gRPC, and CORS (tower-http)
//! for the origins allowed. A request from another origin gets no CORS grant, so the browser
//! withholds the answer from the page; native gRPC clients send no `Origin` and are unaffected.

use http::{HeaderName, HeaderValue, Method};
use std::time::Duration;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Browser settings of a gRPC service.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BrowserArgs {
    /// Comma-separated origins (`https://app.example.com`) whose pages may call the service
    /// with gRPC-Web. Default: CLERK_AUTHORIZED_PARTIES.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub cors_allowed_origins: Vec<String>,
}

/// Headers a gRPC-Web client sends besides the simple ones.
const REQUEST_HEADERS: [&str; 7] = [
    "authorization",
    crate::read_after::LSN_METADATA,
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "grpc-accept-encoding",
];

/// Headers a gRPC-Web client must be able to read (the status travels in them when the
/// answer has no body; a write's answer says where it committed; a refusal says when to
/// try again, in seconds and as gRPC's retry pushback).
const EXPOSED_HEADERS: [&str; 6] = [
    crate::read_after::LSN_METADATA,
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "retry-after",
    "grpc-retry-pushback-ms",
];

/// Checks one origin: `scheme://host[:port]`, nothing after it, no wildcard.
fn origin(raw: &str) -> Result<HeaderValue, String> {
    let o = raw.trim().trim_end_matches('/');
    let rest = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"))
        .ok_or_else(|| {
            format!("CORS_ALLOWED_ORIGINS: {o:?} must start with https:// or http://")
        })?;
    if rest.is_empty()
        || rest.contains(['/', '*', '?', '#', ' ', '@'])
        || !rest.chars().all(|c| c.is_ascii_graphic())
    {
        return Err(format!(
            "CORS_ALLOWED_ORIGINS: {o:?} must be an origin (scheme://host[:port]), without a path or wildcard"
        ));
    }
    HeaderValue::from_str(o).map_err(|_| format!("CORS_ALLOWED_ORIGINS: {o:?} is not header text"))
}

impl BrowserArgs {
    /// The allowed origins: these settings, or `authorized_parties` when none are set.
    pub fn origins(&self, authorized_parties: &[String]) -> Result<Vec<HeaderValue>, String> {
        let list = if self
            .cors_allowed_origins
            .iter()
            .any(|o| !o.trim().is_empty())
        {
            &self.cors_allowed_origins
        } else {
            authorized_parties
        };
        list.iter()
            .filter(|o| !o.trim().is_empty())
            .map(|o| origin(o))
            .collect()
    }
}

/// The CORS layer for `origins` (none: no page may call).
pub fn cors(origins: Vec<HeaderValue>) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers(REQUEST_HEADERS.map(HeaderName::from_static))
        .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static))
        .max_age(Duration::from_secs(86_400))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked_and_default_to_the_authorized_parties() {
        let none = BrowserArgs::default();
        let parties = vec!["https://app.example.com".to_owned()];
        assert_eq!(none.origins(&parties).unwrap(), ["https://app.example.com"]);
        let set = BrowserArgs {
            cors_allowed_origins: vec![
                "http://localhost:5173/".into(),
                " https://a.example ".into(),
            ],
        };
        assert_eq!(
            set.origins(&parties).unwrap(),
            ["http://localhost:5173", "https://a.example"]
        );
        for bad in [
            "*",
            "app.example.com",
            "https://*.example.com",
            "https://a.example/path",
            "ftp://a",
        ] {
            let args = BrowserArgs {
                cors_allowed_origins: vec![bad.into()],
            };
            assert!(args.origins(&[]).is_err(), "{bad}");
        }
    }
}
