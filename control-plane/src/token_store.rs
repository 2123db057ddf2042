//! Where `warden login` keeps a person's tokens: one JSON file per issuer
//! and client under the user's configuration directory
//! (`$XDG_CONFIG_HOME/warden/` or `~/.config/warden/`), named by a hash of
//! the pair, so logging in to a second IdP never overwrites the first.
//!
//! The directory is created `0700` and each file `0600` (on Unix); a file is
//! written to a temporary name in the same directory, synced, and renamed
//! over the old one, so a reader sees the old tokens or the new, never half
//! of either. [`StoredLogin`]'s `Debug` never shows a token.
//!
//! Refresh tokens rotate (each use returns a new one and the old one is
//! dead), so two processes refreshing at once would lose: [`lock`] takes an
//! exclusive advisory lock on a side file for the read-refresh-write cycle.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// What is kept of one login.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredLogin {
    /// The issuer, exactly as discovery confirmed it.
    pub issuer: String,
    /// The OAuth client the tokens were issued to.
    pub client_id: String,
    /// The bearer token the gateway checks.
    pub access_token: String,
    /// When the access token stops being valid (Unix seconds).
    pub expires_at: u64,
    /// When it was issued (Unix seconds): the refresh margin is a share of
    /// the lifetime for short-lived tokens.
    pub issued_at: u64,
    /// Absent when the IdP gave none: then `warden login` again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The scopes asked for at login, asked again on refresh.
    #[serde(default)]
    pub scope: String,
    /// RFC 8707 resource indicators asked for at login.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// The `audience` parameter some IdPs (Auth0, Okta) take instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

impl std::fmt::Debug for StoredLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredLogin")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("expires_at", &self.expires_at)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

/// The directory of stored logins: `$XDG_CONFIG_HOME/warden`, else
/// `$HOME/.config/warden`.
pub fn default_dir() -> Result<PathBuf, String> {
    if let Some(config) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        let config = PathBuf::from(config);
        // The XDG spec: a relative value is invalid and must be ignored.
        if config.is_absolute() {
            return Ok(config.join("warden"));
        }
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .ok_or("neither XDG_CONFIG_HOME nor HOME is set: no place to keep tokens")?;
    Ok(PathBuf::from(home).join(".config").join("warden"))
}

/// The file of one issuer and client inside `dir`.
pub fn file_for(dir: &Path, issuer: &str, client_id: &str) -> PathBuf {
    let mut hasher = Sha256::new();
    hasher.update(issuer.as_bytes());
    hasher.update([0]);
    hasher.update(client_id.as_bytes());
    let digest = hex::encode(hasher.finalize());
    dir.join(format!("login-{}.json", &digest[..24]))
}

/// Every stored login in `dir` (for commands run without `--issuer`).
pub fn list(dir: &Path) -> Result<Vec<(PathBuf, StoredLogin)>, String> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(format!("cannot read {}: {error}", dir.display())),
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let is_login = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("login-") && n.ends_with(".json"));
        if is_login {
            if let Some(login) = read(&path)? {
                found.push((path, login));
            }
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

/// Reads a stored login; `None` when there is none.
pub fn read(path: &Path) -> Result<Option<StoredLogin>, String> {
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
    };
    serde_json::from_slice(&text).map(Some).map_err(|error| {
        format!(
            "{} is not a stored login ({error}): delete it and run `warden login`",
            path.display()
        )
    })
}

/// Writes `login` to `path` atomically, the file `0600` and its directory
/// `0700`.
pub fn write(path: &Path, login: &StoredLogin) -> Result<(), String> {
    let dir = path
        .parent()
        .ok_or_else(|| format!("{} has no directory", path.display()))?;
    create_private_dir(dir)?;
    let text =
        serde_json::to_vec_pretty(login).map_err(|e| format!("cannot encode the login: {e}"))?;
    let temporary = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("login"),
        std::process::id()
    ));
    let written = (|| {
        let mut file = private_file(&temporary)?;
        file.write_all(&text)?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    if let Err(error) = written {
        let _ = fs::remove_file(&temporary);
        return Err(format!("cannot write {}: {error}", path.display()));
    }
    Ok(())
}

/// Deletes a stored login; `false` when there was none.
pub fn delete(path: &Path) -> Result<bool, String> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(false),
        Err(error) => Err(format!("cannot delete {}: {error}", path.display())),
    }
}

/// An exclusive lock on the login at `path`, held until dropped (the lock
/// file stays, empty, beside it).
pub fn lock(path: &Path) -> Result<File, String> {
    let dir = path
        .parent()
        .ok_or_else(|| format!("{} has no directory", path.display()))?;
    create_private_dir(dir)?;
    let lock_path = path.with_extension("lock");
    let file = private_file_keep(&lock_path)
        .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
    file.lock()
        .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
    Ok(file)
}

fn create_private_dir(dir: &Path) -> Result<(), String> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// A new file, `0600` from its creation (never readable by others, not even
/// for a moment); an old temporary file of the same name is replaced.
fn private_file(path: &Path) -> std::io::Result<File> {
    let _ = fs::remove_file(path);
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)
}

fn private_file_keep(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn login() -> StoredLogin {
        StoredLogin {
            issuer: "https://idp.example".into(),
            client_id: "warden-cli".into(),
            access_token: "access-secret".into(),
            expires_at: 2000,
            issued_at: 1000,
            refresh_token: Some("refresh-secret".into()),
            scope: "openid offline_access".into(),
            resources: vec![],
            audience: None,
        }
    }

    #[test]
    fn written_private_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("warden");
        let path = file_for(&dir, "https://idp.example", "warden-cli");
        write(&path, &login()).unwrap();
        assert_eq!(read(&path).unwrap(), Some(login()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
            assert_eq!(
                fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
                0o700
            );
        }
        // Overwritten in place, no temporary file left.
        let mut newer = login();
        newer.access_token = "newer".into();
        write(&path, &newer).unwrap();
        assert_eq!(read(&path).unwrap().unwrap().access_token, "newer");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert_eq!(list(&dir).unwrap().len(), 1);
        assert!(delete(&path).unwrap());
        assert!(!delete(&path).unwrap());
        assert_eq!(read(&path).unwrap(), None);
    }

    #[test]
    fn one_file_per_issuer_and_client() {
        let dir = Path::new("/x");
        let a = file_for(dir, "https://a", "cli");
        assert_ne!(a, file_for(dir, "https://b", "cli"));
        assert_ne!(a, file_for(dir, "https://a", "other"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(file_for(dir, "ab", "c"), file_for(dir, "a", "bc"));
    }

    #[test]
    fn debug_hides_tokens() {
        let shown = format!("{:?}", login());
        assert!(!shown.contains("secret"), "{shown}");
    }
}
