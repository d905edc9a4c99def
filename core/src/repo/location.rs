//! Where a repository lives, parsed from what a user typed (`--repo`,
//! `repository =` in the settings file, a pipeline's `repository`
//! parameter): a local directory or `s3://BUCKET/PREFIX`.
//!
//! Anything that looks like a URL and is not `s3://` is refused: before this
//! module, `--repo s3://bucket/prefix` became a local folder `s3:` beside the
//! database, and a user who believed the backups were off the host had them
//! on the same disk. A URL carrying credentials (`s3://KEY:SECRET@bucket`) is
//! refused too, without repeating it, with where credentials go instead.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::repo::ids::validate_id;

/// Where a repository lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoLocation {
    /// A local (or mounted) directory.
    Local(PathBuf),
    /// A bucket and a key prefix of an S3-compatible object store.
    S3(S3Location),
}

/// `s3://BUCKET/PREFIX`: the bucket and the prefix (no leading or trailing
/// `/`, possibly empty) under which the repository's keys live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    pub prefix: String,
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

impl std::fmt::Display for RepoLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RepoLocation::Local(p) => write!(f, "{}", p.display()),
            RepoLocation::S3(s) => s.fmt(f),
        }
    }
}

const CREDENTIALS_GO: &str =
    "credentials never go in the repository URL: set AWS_ACCESS_KEY_ID and \
     AWS_SECRET_ACCESS_KEY in the environment, or access_key_id and secret_access_key in the [s3] \
     table of genesis-recovery.toml";

impl RepoLocation {
    /// Parses a repository as typed.
    ///
    /// # Errors
    /// `Error::Usage` for a URL of another scheme, a URL with credentials in
    /// it, or an `s3://` URL whose bucket or prefix is not valid.
    pub fn parse(text: &str) -> Result<RepoLocation> {
        let Some((scheme, rest)) = split_scheme(text) else {
            if text.is_empty() {
                return Err(Error::Usage(
                    "the backup repository is empty: give a directory or s3://BUCKET/PREFIX".into(),
                ));
            }
            return Ok(RepoLocation::Local(PathBuf::from(text)));
        };
        if !scheme.eq_ignore_ascii_case("s3") {
            if scheme.eq_ignore_ascii_case("file") {
                if let Some(path) = rest.strip_prefix("//") {
                    if path.starts_with('/') {
                        return Ok(RepoLocation::Local(PathBuf::from(path)));
                    }
                }
            }
            return Err(Error::Usage(format!(
                "the backup repository {:?} has the scheme {scheme:?}, which genesis-recovery does not \
                 know: a repository is a local directory or s3://BUCKET/PREFIX (an S3-compatible store; \
                 its endpoint comes from AWS_ENDPOINT_URL or endpoint in the [s3] table)",
                redacted(text)
            )));
        }
        let Some(rest) = rest.strip_prefix("//") else {
            return Err(Error::Usage(format!(
                "the backup repository {text:?} is not a valid S3 URL: write s3://BUCKET/PREFIX"
            )));
        };
        let (authority, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.contains('@') {
            return Err(Error::Usage(format!(
                "the backup repository s3://{} has credentials in it, refused; {CREDENTIALS_GO}",
                redacted(text).trim_start_matches("s3://")
            )));
        }
        validate_bucket(authority, text)?;
        let prefix = prefix.trim_end_matches('/');
        if !prefix.is_empty() {
            for part in prefix.split('/') {
                validate_id(part).map_err(|_| {
                    Error::Usage(format!(
                        "the backup repository {text:?} has the prefix segment {part:?}: prefix \
                         segments use only letters, digits, '_', '-' and '.', with no empty \
                         segment and no '..' (write s3://BUCKET/PREFIX)"
                    ))
                })?;
            }
        }
        Ok(RepoLocation::S3(S3Location {
            bucket: authority.to_string(),
            prefix: prefix.to_string(),
        }))
    }

    /// The parsed form of a path-typed repository (as the CLI and the
    /// restore options carry it).
    ///
    /// # Errors
    /// See [`RepoLocation::parse`].
    pub fn from_path(path: &Path) -> Result<RepoLocation> {
        RepoLocation::parse(&path.to_string_lossy())
    }

    /// The local directory, when it is one.
    pub fn local_path(&self) -> Option<&Path> {
        match self {
            RepoLocation::Local(p) => Some(p),
            RepoLocation::S3(_) => None,
        }
    }
}

/// `scheme` and the rest when `text` starts like a URL (`x:` followed by
/// `/`): a local name such as `backups:old` is not one.
fn split_scheme(text: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = text.split_once(':')?;
    let is_scheme = !scheme.is_empty()
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    (is_scheme && rest.starts_with('/')).then_some((scheme, rest))
}

/// The URL with anything before an `@` in its authority replaced, so that an
/// error never repeats a secret.
fn redacted(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_string();
    };
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, format!("/{p}")),
        None => (rest, String::new()),
    };
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{path}"),
        None => text.to_string(),
    }
}

/// S3's bucket naming rules: 3 to 63 of lowercase letters, digits, `.` and
/// `-`, starting and ending with a letter or digit.
fn validate_bucket(bucket: &str, text: &str) -> Result<()> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-'))
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric())
        && !bucket.contains("..");
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "the backup repository {text:?} names the bucket {bucket:?}: a bucket name is 3 to 63 \
             lowercase letters, digits, '.' and '-'; write s3://BUCKET/PREFIX"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_stay_local() {
        for p in [
            ".genesis/backups",
            "/var/backups/genesis",
            "backups:old",
            "a:b/c",
        ] {
            assert_eq!(
                RepoLocation::parse(p).unwrap(),
                RepoLocation::Local(PathBuf::from(p))
            );
        }
        assert_eq!(
            RepoLocation::parse("file:///srv/b").unwrap(),
            RepoLocation::Local(PathBuf::from("/srv/b"))
        );
    }

    #[test]
    fn s3_urls_parse() {
        let l = RepoLocation::parse("s3://genesis-backups/prod/").unwrap();
        assert_eq!(
            l,
            RepoLocation::S3(S3Location {
                bucket: "genesis-backups".into(),
                prefix: "prod".into()
            })
        );
        assert_eq!(l.to_string(), "s3://genesis-backups/prod");
        let l = RepoLocation::parse("s3://b12/a/b.c").unwrap();
        assert_eq!(l.to_string(), "s3://b12/a/b.c");
        assert_eq!(
            RepoLocation::parse("s3://b12").unwrap().to_string(),
            "s3://b12"
        );
    }

    #[test]
    fn other_schemes_are_refused() {
        for u in [
            "gs://bucket/x",
            "http://host/x",
            "S3:/genesis-backups/prod",
            "file://relative",
        ] {
            let e = RepoLocation::parse(u).unwrap_err().to_string();
            assert!(
                e.contains("scheme") || e.contains("not a valid S3 URL"),
                "{u}: {e}"
            );
        }
    }

    #[test]
    fn bad_buckets_and_prefixes_are_refused() {
        for u in [
            "s3://",
            "s3://B/x",
            "s3://ab/x",
            "s3://-ab/x",
            "s3://bucket/a/../b",
            "s3://bucket/a//b",
        ] {
            assert!(RepoLocation::parse(u).is_err(), "{u}");
        }
    }

    #[test]
    fn credentials_in_the_url_are_refused_and_not_repeated() {
        let e = RepoLocation::parse("s3://AKIAEXAMPLE:sekrit@bucket/prod")
            .unwrap_err()
            .to_string();
        assert!(e.contains("AWS_ACCESS_KEY_ID"), "{e}");
        assert!(e.contains("[s3]"), "{e}");
        assert!(!e.contains("sekrit") && !e.contains("AKIAEXAMPLE"), "{e}");
        let e = RepoLocation::parse("gs://user:pw@bucket/x")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("pw@"), "{e}");
    }
}
