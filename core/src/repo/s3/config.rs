//! The object store's connection settings: the standard AWS environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`), overridden by the
//! `[s3]` table of `genesis-recovery.toml`.
//!
//! Secrets are never printed: `Debug` says only whether they are set, and no
//! message, log line or manifest carries them. Plain http is refused unless
//! asked for (`AWS_ALLOW_HTTP=true` or `allow_http = true`), and warned about
//! when the endpoint is not on this machine.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::{BackoffConfig, ClientOptions, RetryConfig};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::repo::location::S3Location;

/// The `[s3]` table of the settings file. Every field is optional; the
/// environment supplies what is missing.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// `https://host[:port]` of an S3-compatible server (default: AWS).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Allow a plain-http endpoint (a local test server).
    pub allow_http: Option<bool>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |v: &Option<String>| if v.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .field("access_key_id", &set(&self.access_key_id))
            .field("secret_access_key", &set(&self.secret_access_key))
            .field("session_token", &set(&self.session_token))
            .finish()
    }
}

static CONFIGURED: RwLock<Option<Arc<S3Settings>>> = RwLock::new(None);

/// Sets the `[s3]` settings every `s3://` repository of this process opens
/// with (the CLI calls it once with the settings file's table, so that
/// pipelines naming an `s3://` repository need no secrets in their
/// parameters).
pub fn configure(settings: S3Settings) {
    if let Ok(mut g) = CONFIGURED.write() {
        *g = Some(Arc::new(settings));
    }
}

/// The settings given to [`configure`], or none.
pub(crate) fn configured() -> Arc<S3Settings> {
    CONFIGURED
        .read()
        .ok()
        .and_then(|g| g.clone())
        .unwrap_or_default()
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Whether a URL's host is this machine (loopback).
fn is_loopback(endpoint: &str) -> bool {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Checks the endpoint: no credentials in it; plain http only when allowed.
fn check_endpoint(endpoint: &str, allow_http: bool) -> Result<()> {
    let authority = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, r)| r)
        .split('/')
        .next()
        .unwrap_or_default();
    if authority.contains('@') {
        return Err(Error::Usage(
            "the S3 endpoint has credentials in it, refused: set AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY in the environment, or access_key_id and secret_access_key in \
             the [s3] table of genesis-recovery.toml"
                .into(),
        ));
    }
    let lower = endpoint.to_ascii_lowercase();
    if lower.starts_with("http://") {
        if !allow_http {
            return Err(Error::Usage(format!(
                "the S3 endpoint {endpoint} is plain http, refused: TLS is the default; use \
                 https, or for a test server on this machine set AWS_ALLOW_HTTP=true (or \
                 allow_http = true in the [s3] table)"
            )));
        }
        if !is_loopback(endpoint) {
            tracing::warn!(%endpoint, "the S3 endpoint is plain http on another host: backups and credentials cross the network unencrypted");
        }
    } else if !lower.starts_with("https://") {
        return Err(Error::Usage(format!(
            "the S3 endpoint {endpoint} is not an http(s) URL: write https://HOST[:PORT]"
        )));
    }
    Ok(())
}

/// Builds the client of `loc` from the environment and `s`.
///
/// # Errors
/// `Error::Usage` for an endpoint that is refused or settings the client
/// rejects.
pub(crate) fn build_store(loc: &S3Location, s: &S3Settings) -> Result<AmazonS3> {
    let endpoint = s
        .endpoint
        .clone()
        .or_else(|| env("AWS_ENDPOINT_URL_S3"))
        .or_else(|| env("AWS_ENDPOINT_URL"))
        .or_else(|| env("AWS_ENDPOINT"));
    let allow_http = s.allow_http.unwrap_or_else(|| {
        env("AWS_ALLOW_HTTP").is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
    });
    if let Some(e) = &endpoint {
        check_endpoint(e, allow_http)?;
    }
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(&loc.bucket)
        .with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: 2,
            retry_timeout: Duration::from_secs(5),
        })
        .with_client_options(
            ClientOptions::new()
                .with_allow_http(allow_http)
                .with_connect_timeout(Duration::from_secs(3))
                .with_timeout(Duration::from_secs(120)),
        );
    if let Some(e) = endpoint {
        b = b.with_endpoint(e);
    }
    if let Some(r) = s.region.clone().or_else(|| env("AWS_REGION")) {
        b = b.with_region(r);
    } else if env("AWS_DEFAULT_REGION").is_none() {
        b = b.with_region("us-east-1");
    }
    if let Some(k) = &s.access_key_id {
        b = b.with_access_key_id(k);
    }
    if let Some(k) = &s.secret_access_key {
        b = b.with_secret_access_key(k);
    }
    if let Some(t) = &s.session_token {
        b = b.with_token(t);
    }
    b.build().map_err(|e| {
        Error::Usage(format!(
            "cannot set up the S3 client for {loc}: {e}; check the AWS_* environment and the [s3] table"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let s = S3Settings {
            access_key_id: Some("AKIAEXAMPLE".into()),
            secret_access_key: Some("sekrit".into()),
            ..S3Settings::default()
        };
        let d = format!("{s:?}");
        assert!(!d.contains("sekrit") && !d.contains("AKIAEXAMPLE"), "{d}");
        assert!(d.contains("<set>"), "{d}");
    }

    #[test]
    fn plain_http_needs_allowing() {
        assert!(check_endpoint("https://s3.example.com", false).is_ok());
        let e = check_endpoint("http://127.0.0.1:9000", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("AWS_ALLOW_HTTP"), "{e}");
        assert!(check_endpoint("http://127.0.0.1:9000", true).is_ok());
        assert!(check_endpoint("ftp://host", true).is_err());
        let e = check_endpoint("https://k:secret@host", false)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret@"), "{e}");
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("http://127.0.0.1:5000"));
        assert!(is_loopback("http://localhost:5000/x"));
        assert!(is_loopback("http://[::1]:5000"));
        assert!(!is_loopback("http://10.0.0.2:5000"));
        assert!(!is_loopback("http://s3.example.com"));
    }
}
