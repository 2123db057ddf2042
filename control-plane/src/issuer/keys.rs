//! The dev issuer's signing keys: one RSA 2048 (RS256), one P-256 (ES256)
//! and one Ed25519 (EdDSA) key pair, kept as PEM files under
//! `<data-dir>/dev-issuer/`, their key ids, the JWKS, and signing.
//!
//! The key pairs are generated on first start and kept as PEM files (mode
//! 0600, in a 0700 directory), so tokens and the JWKS stay valid across
//! restarts. A key's `kid` is the first 16 hex digits of the SHA-256 of its
//! public key (the DER `SubjectPublicKeyInfo` for RSA, the uncompressed SEC1
//! point for P-256, the raw 32 bytes for Ed25519), so it is stable too.
//! Delete the directory to rotate the keys. A leaf of the dev issuer.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_simple::prelude::{
    ECDSAP256KeyPairLike, ECDSAP256PublicKeyLike, ES256KeyPair, Ed25519KeyPair, EdDSAKeyPairLike,
    JWTClaims, RS256KeyPair, RSAKeyPairLike,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Sub-directory of the data directory that holds the dev issuer's keys.
pub const DEV_KEY_DIR: &str = "dev-issuer";

const RSA_MODULUS_BITS: usize = 2048;
const RS256_FILE: &str = "rs256.pem";
const ES256_FILE: &str = "es256.pem";
const ED25519_FILE: &str = "ed25519.pem";

/// A JWS signing algorithm the dev issuer can sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum SigningAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit key.
    #[default]
    RS256,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

impl SigningAlg {
    /// Every algorithm, in the order the JWKS lists them.
    pub const ALL: [SigningAlg; 3] = [SigningAlg::RS256, SigningAlg::ES256, SigningAlg::EdDSA];

    /// The JOSE name: `RS256`, `ES256` or `EdDSA`.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlg::RS256 => "RS256",
            SigningAlg::ES256 => "ES256",
            SigningAlg::EdDSA => "EdDSA",
        }
    }
}

impl fmt::Display for SigningAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SigningAlg {
    type Err = String;

    /// Case-insensitive; `Ed25519` is accepted for `EdDSA`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "rs256" => Ok(SigningAlg::RS256),
            "es256" => Ok(SigningAlg::ES256),
            "eddsa" | "ed25519" => Ok(SigningAlg::EdDSA),
            _ => Err(format!(
                "unknown algorithm `{s}` (expected RS256, ES256 or EdDSA)"
            )),
        }
    }
}

/// Errors from loading or creating an issuer's keys.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    /// Reading or writing a key file or its directory failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A key file exists but does not hold a usable key.
    #[error("{path} does not hold a valid key ({reason}); delete it to generate a new one")]
    InvalidKey {
        /// The file.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// Generating or encoding a key failed.
    #[error("cannot create the {alg} key: {reason}")]
    Generate {
        /// Which key.
        alg: SigningAlg,
        /// Why.
        reason: String,
    },
}

/// The PEM text of three key pairs, as they are kept in the database
/// (the SAML issuer's generations, [`crate::key_rotation`]).
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPems {
    /// PKCS#8 RSA 2048.
    pub rs256: String,
    /// PKCS#8 P-256.
    pub es256: String,
    /// PKCS#8 Ed25519.
    pub ed25519: String,
}

// Hand-written: private keys are never printed.
impl fmt::Debug for KeyPems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyPems(<redacted>)")
    }
}

/// The three key pairs, their key ids and the JWKS that publishes them.
pub struct Keys {
    rs256: RS256KeyPair,
    es256: ES256KeyPair,
    eddsa: Ed25519KeyPair,
    kids: [String; 3],
    jwks: Value,
}

// Hand-written: the key pairs must never be printed.
impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("kids", &self.kids)
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// Loads the keys from `dir` (`<data_dir>/dev-issuer/`), generating and
    /// saving any that are missing.
    ///
    /// This does blocking file I/O and, the first time, RSA key generation:
    /// call it from `spawn_blocking` in async code.
    pub fn load_or_generate(dir: &Path) -> Result<Self, IssuerError> {
        create_private_dir(dir)?;

        let rs256 = load_or_create(
            &dir.join(RS256_FILE),
            SigningAlg::RS256,
            || RS256KeyPair::generate(RSA_MODULUS_BITS).map_err(|e| e.to_string()),
            |key| key.to_pem().map_err(|e| e.to_string()),
            |pem| RS256KeyPair::from_pem(pem).map_err(|e| e.to_string()),
        )?;
        let es256 = load_or_create(
            &dir.join(ES256_FILE),
            SigningAlg::ES256,
            || Ok(ES256KeyPair::generate()),
            |key| key.to_pem().map_err(|e| e.to_string()),
            |pem| ES256KeyPair::from_pem(pem).map_err(|e| e.to_string()),
        )?;
        let eddsa = load_or_create(
            &dir.join(ED25519_FILE),
            SigningAlg::EdDSA,
            || Ok(Ed25519KeyPair::generate()),
            |key| Ok(key.to_pem()),
            |pem| Ed25519KeyPair::from_pem(pem).map_err(|e| e.to_string()),
        )?;

        Keys::assemble(rs256, es256, eddsa)
    }

    /// Three new key pairs, and their PEM text to keep them.
    ///
    /// RSA key generation takes a while: call it from `spawn_blocking`.
    pub fn generate() -> Result<(Self, KeyPems), IssuerError> {
        let generate_error = |alg| move |reason: String| IssuerError::Generate { alg, reason };
        let rs256 = RS256KeyPair::generate(RSA_MODULUS_BITS)
            .map_err(|e| generate_error(SigningAlg::RS256)(e.to_string()))?;
        let es256 = ES256KeyPair::generate();
        let eddsa = Ed25519KeyPair::generate();
        let pems = KeyPems {
            rs256: rs256
                .to_pem()
                .map_err(|e| generate_error(SigningAlg::RS256)(e.to_string()))?,
            es256: es256
                .to_pem()
                .map_err(|e| generate_error(SigningAlg::ES256)(e.to_string()))?,
            ed25519: eddsa.to_pem(),
        };
        Ok((Keys::assemble(rs256, es256, eddsa)?, pems))
    }

    /// The key pairs kept as `pems`.
    pub fn from_pems(pems: &KeyPems) -> Result<Self, String> {
        Keys::assemble(
            RS256KeyPair::from_pem(&pems.rs256).map_err(|e| format!("RS256 key: {e}"))?,
            ES256KeyPair::from_pem(&pems.es256).map_err(|e| format!("ES256 key: {e}"))?,
            Ed25519KeyPair::from_pem(&pems.ed25519).map_err(|e| format!("Ed25519 key: {e}"))?,
        )
        .map_err(|e| e.to_string())
    }

    /// The key ids and the JWKS of three key pairs.
    fn assemble(
        rs256: RS256KeyPair,
        es256: ES256KeyPair,
        eddsa: Ed25519KeyPair,
    ) -> Result<Self, IssuerError> {
        // Public key material for the JWKS and the key ids.
        let rsa_public = rs256.public_key();
        let rsa_der = rsa_public.to_der().map_err(|e| IssuerError::Generate {
            alg: SigningAlg::RS256,
            reason: e.to_string(),
        })?;
        let rsa_components = rsa_public.to_components();
        let ec_public = es256.public_key();
        let ec_point = ECDSAP256PublicKeyLike::public_key(&ec_public).to_bytes_uncompressed();
        let ed_public = eddsa.public_key().to_bytes();

        // An uncompressed SEC1 point is 0x04 || x (32 bytes) || y (32 bytes).
        let (ec_x, ec_y) = match ec_point.as_slice() {
            [0x04, rest @ ..] if rest.len() == 64 => rest.split_at(32),
            _ => {
                return Err(IssuerError::Generate {
                    alg: SigningAlg::ES256,
                    reason: "unexpected public point encoding".to_owned(),
                })
            }
        };

        let kids = [key_id(&rsa_der), key_id(&ec_point), key_id(&ed_public)];
        let [rs_kid, es_kid, ed_kid] = &kids;
        let jwks = json!({
            "keys": [
                {
                    "kty": "RSA",
                    "use": "sig",
                    "alg": "RS256",
                    "kid": rs_kid,
                    "n": URL_SAFE_NO_PAD.encode(&rsa_components.n),
                    "e": URL_SAFE_NO_PAD.encode(&rsa_components.e),
                },
                {
                    "kty": "EC",
                    "use": "sig",
                    "alg": "ES256",
                    "kid": es_kid,
                    "crv": "P-256",
                    "x": URL_SAFE_NO_PAD.encode(ec_x),
                    "y": URL_SAFE_NO_PAD.encode(ec_y),
                },
                {
                    "kty": "OKP",
                    "use": "sig",
                    "alg": "EdDSA",
                    "kid": ed_kid,
                    "crv": "Ed25519",
                    "x": URL_SAFE_NO_PAD.encode(ed_public),
                },
            ]
        });

        Ok(Keys {
            rs256: rs256.with_key_id(rs_kid),
            es256: es256.with_key_id(es_kid),
            eddsa: eddsa.with_key_id(ed_kid),
            kids,
            jwks,
        })
    }

    /// The `kid` of the key used for `alg`.
    pub fn key_id(&self, alg: SigningAlg) -> &str {
        match alg {
            SigningAlg::RS256 => &self.kids[0],
            SigningAlg::ES256 => &self.kids[1],
            SigningAlg::EdDSA => &self.kids[2],
        }
    }

    /// The key ids, in the order of [`SigningAlg::ALL`].
    pub fn kids(&self) -> &[String; 3] {
        &self.kids
    }

    /// The JWKS served at `/dev/jwks.json`.
    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    /// `claims` signed with the key of `alg`: every claim, registered ones
    /// included, is carried in the custom map so that a request's extra
    /// claims can replace generated ones.
    pub fn sign(&self, alg: SigningAlg, claims: Map<String, Value>) -> Result<String, String> {
        let mut jwt_claims = JWTClaims::<Map<String, Value>>::new();
        jwt_claims.custom = claims;
        let signed = match alg {
            SigningAlg::RS256 => self.rs256.sign(jwt_claims),
            SigningAlg::ES256 => self.es256.sign(jwt_claims),
            SigningAlg::EdDSA => self.eddsa.sign(jwt_claims),
        };
        signed.map_err(|e| e.to_string())
    }
}

/// First 16 hex digits of the SHA-256 of `public_key`.
fn key_id(public_key: &[u8]) -> String {
    hex::encode(&Sha256::digest(public_key)[..8])
}

/// Loads the key at `path`, or generates one and saves it there.
///
/// Saving writes a private temporary file and hard-links it into place, so a
/// reader never sees a half-written key and, if two processes race on the
/// same data directory, both end up using the one that was linked first.
fn load_or_create<K>(
    path: &Path,
    alg: SigningAlg,
    generate: impl FnOnce() -> Result<K, String>,
    encode: impl Fn(&K) -> Result<String, String>,
    decode: impl Fn(&str) -> Result<K, String>,
) -> Result<K, IssuerError> {
    if let Some(key) = load_key(path, &decode)? {
        return Ok(key);
    }
    let key = generate().map_err(|reason| IssuerError::Generate { alg, reason })?;
    let pem = encode(&key).map_err(|reason| IssuerError::Generate { alg, reason })?;
    let tmp = path.with_extension(format!("pem.tmp-{}", std::process::id()));
    let io_error = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| IssuerError::Io {
            action,
            path,
            source,
        }
    };
    // A stale temporary file from a crash is ours to replace.
    match std::fs::remove_file(&tmp) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            return Err(io_error("cannot remove", &tmp)(error))
        }
        _ => {}
    }
    let mut file = private_file_options()
        .open(&tmp)
        .map_err(io_error("cannot create", &tmp))?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error("cannot write", &tmp))?;
    drop(file);
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::info!(alg = %alg, path = %path.display(), "generated a dev issuer key");
            Ok(key)
        }
        // Another process saved its key first: use that one.
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            load_key(path, &decode)?.ok_or_else(|| io_error("cannot read", path)(error))
        }
        Err(error) => Err(io_error("cannot save", path)(error)),
    }
}

fn load_key<K>(
    path: &Path,
    decode: &impl Fn(&str) -> Result<K, String>,
) -> Result<Option<K>, IssuerError> {
    let pem = match std::fs::read_to_string(path) {
        Ok(pem) => pem,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(IssuerError::Io {
                action: "cannot read",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    restrict_permissions(path);
    decode(&pem)
        .map(Some)
        .map_err(|reason| IssuerError::InvalidKey {
            path: path.to_path_buf(),
            reason,
        })
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> Result<(), IssuerError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| IssuerError::Io {
            action: "cannot create",
            path: dir.to_path_buf(),
            source,
        })?;
    // `recursive` leaves an existing directory's mode alone.
    if let Err(error) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
        tracing::warn!(path = %dir.display(), %error, "cannot restrict the dev issuer key directory to its owner");
    }
    Ok(())
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> Result<(), IssuerError> {
    std::fs::create_dir_all(dir).map_err(|source| IssuerError::Io {
        action: "cannot create",
        path: dir.to_path_buf(),
        source,
    })
}

#[cfg(unix)]
fn private_file_options() -> std::fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true).mode(0o600);
    options
}

#[cfg(not(unix))]
fn private_file_options() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    options
}

/// Brings a key file that is readable by others back to mode 0600.
#[cfg(unix)]
fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(metadata) = std::fs::metadata(path) else {
        return;
    };
    if metadata.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "dev issuer key file was accessible to others; restricting it to mode 0600");
        if let Err(error) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
            tracing::warn!(path = %path.display(), %error, "cannot restrict the dev issuer key file");
        }
    }
}

#[cfg(not(unix))]
fn restrict_permissions(_path: &Path) {}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn alg_names_parse_case_insensitively() {
        assert_eq!("RS256".parse::<SigningAlg>().unwrap(), SigningAlg::RS256);
        assert_eq!("es256".parse::<SigningAlg>().unwrap(), SigningAlg::ES256);
        assert_eq!("EdDSA".parse::<SigningAlg>().unwrap(), SigningAlg::EdDSA);
        assert_eq!("ed25519".parse::<SigningAlg>().unwrap(), SigningAlg::EdDSA);
        assert!("HS256".parse::<SigningAlg>().is_err());
        assert_eq!(serde_json::to_value(SigningAlg::EdDSA).unwrap(), "EdDSA");
        assert_eq!(
            serde_json::from_value::<SigningAlg>(json!("ES256")).unwrap(),
            SigningAlg::ES256
        );
    }

    #[test]
    fn key_id_is_16_hex_digits() {
        let kid = key_id(b"abc");
        // SHA-256("abc") = ba7816bf8f01cfea...
        assert_eq!(kid, "ba7816bf8f01cfea");
    }

    #[cfg(unix)]
    #[test]
    fn keys_are_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key_dir = dir.path().join(DEV_KEY_DIR);
        let first = Keys::load_or_generate(&key_dir).unwrap();
        let dir_mode = std::fs::metadata(&key_dir).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        for name in [RS256_FILE, ES256_FILE, ED25519_FILE] {
            let mode = std::fs::metadata(key_dir.join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(&key_dir).unwrap().count(), 3);

        let second = Keys::load_or_generate(&key_dir).unwrap();
        assert_eq!(first.kids, second.kids);
        assert_eq!(first.jwks, second.jwks);
        assert!(!format!("{first:?}").contains("PRIVATE"));
    }

    #[test]
    fn a_corrupt_key_file_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let key_dir = dir.path().join(DEV_KEY_DIR);
        std::fs::create_dir_all(&key_dir).unwrap();
        std::fs::write(key_dir.join(ES256_FILE), "not a key").unwrap();
        let error = Keys::load_or_generate(&key_dir).unwrap_err();
        assert!(matches!(error, IssuerError::InvalidKey { .. }), "{error}");
        assert_eq!(
            std::fs::read_to_string(key_dir.join(ES256_FILE)).unwrap(),
            "not a key"
        );
    }
}
