//! Validation of object ids and repository keys. Nothing read from a manifest
//! or typed by a user becomes a path before passing through here: no path
//! separators, no `..`, nothing absolute, only `[A-Za-z0-9_.-]`.

use crate::error::{Error, Result};

/// Checks that `id` is a safe object id.
///
/// # Errors
/// `Error::Usage` naming the id and the allowed characters.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 200
        && id != "."
        && !id.contains("..")
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "{id:?} is not a valid backup id: ids use only letters, digits, '_', '-' and '.', \
             with no path separators and no '..' (see `genesis-recovery list-backups` for the ids that exist)"
        )))
    }
}

/// Checks a repository key: `/`-separated segments, each a valid id.
///
/// # Errors
/// `Error::Usage` naming the key.
pub fn validate_key(key: &str) -> Result<()> {
    if key.starts_with('/') || key.is_empty() {
        return Err(Error::Usage(format!(
            "{key:?} is not a valid repository key"
        )));
    }
    for part in key.split('/') {
        validate_id(part)
            .map_err(|_| Error::Usage(format!("{key:?} is not a valid repository key")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_traversal_and_separators() {
        for bad in [
            "",
            "..",
            "../x",
            "a/b",
            "/etc/passwd",
            "a\\b",
            ".hidden",
            "x..y",
            "a b",
        ] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
        for good in [
            "full_20250115T120000-ab12_0000000001",
            "incr_x_1_2",
            "a.json",
        ] {
            assert!(validate_id(good).is_ok(), "{good}");
        }
        assert!(validate_key("manifests/a.json").is_ok());
        assert!(validate_key("manifests/../x").is_err());
        assert!(validate_key("/abs").is_err());
    }
}
