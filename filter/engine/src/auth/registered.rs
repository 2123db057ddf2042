//! What a token's registered claims (RFC 7519 §4.1) must be: one set of rules
//! ([`ClaimRules`]), applied by jwt-simple for the algorithms it verifies and
//! by [`ClaimRules::check`] for RSA, whose signature this crate checks itself
//! (see `jwks.rs`: jwt-simple's RSA arithmetic is the slow part of a cold
//! token in wasm).
//!
//! [`ClaimRules::check`] decodes the claims with jwt-simple's own types (so a
//! timestamp or an audience parses the same way) and makes jwt-simple's
//! comparisons in jwt-simple's order, for the options Warden sets; the tests
//! hold it to jwt-simple's verdict on the same tokens and clocks.

use std::collections::HashSet;

use jwt_simple::prelude::{Duration, JWTClaims, NoCustomClaims, VerificationOptions};

use super::AuthError;

/// The claims a token from one issuer must carry at one moment.
pub(crate) struct ClaimRules<'a> {
    pub issuer: &'a str,
    /// The token must name at least one of these.
    pub audiences: &'a HashSet<String>,
    pub skew_seconds: u64,
    pub max_token_bytes: usize,
    /// Seconds since the epoch.
    pub now: u64,
}

impl ClaimRules<'_> {
    /// The same rules as jwt-simple's options.
    pub(crate) fn options(&self) -> VerificationOptions {
        VerificationOptions {
            allowed_issuers: Some(HashSet::from([self.issuer.to_owned()])),
            allowed_audiences: Some(self.audiences.clone()),
            time_tolerance: Some(Duration::from_secs(self.skew_seconds)),
            max_token_length: Some(self.max_token_bytes),
            artificial_time: Some(Duration::from_secs(self.now)),
            accept_future: false,
            ..Default::default()
        }
    }

    /// Checks the claims in `payload` (the decoded payload of a token whose
    /// signature has verified) as jwt-simple does with [`Self::options`]:
    /// issued no later than now (with the skew), valid from `nbf`, not
    /// expired, from the issuer, for one of the audiences. They are read from
    /// the payload's bytes as jwt-simple reads them, so a claim given twice
    /// is refused, as there.
    pub(crate) fn check(&self, payload: &[u8]) -> Result<(), AuthError> {
        let claims: JWTClaims<NoCustomClaims> =
            serde_json::from_slice(payload).map_err(|_| AuthError::BadSignature)?;
        let now = Duration::from_secs(self.now);
        let skew = Duration::from_secs(self.skew_seconds);
        if claims.issued_at.is_some_and(|iat| iat > now + skew) {
            return Err(AuthError::NotYetValid);
        }
        if claims.invalid_before.is_some_and(|nbf| now + skew < nbf) {
            return Err(AuthError::NotYetValid);
        }
        if claims
            .expires_at
            .is_some_and(|exp| now < skew || now - skew > exp)
        {
            return Err(AuthError::Expired);
        }
        if claims.issuer.as_deref() != Some(self.issuer) {
            return Err(AuthError::UnknownIssuer);
        }
        match &claims.audiences {
            Some(audiences) if audiences.contains(self.audiences) => Ok(()),
            _ => Err(AuthError::WrongAudience),
        }
    }
}

/// jwt-simple's refusal as Warden's reason.
pub(crate) fn classify(err: &jwt_simple::Error) -> AuthError {
    use jwt_simple::JWTError as E;
    match err.downcast_ref::<E>() {
        Some(E::TokenHasExpired) => AuthError::Expired,
        Some(E::TokenNotValidYet | E::ClockDrift) => AuthError::NotYetValid,
        Some(E::RequiredAudienceMismatch | E::RequiredAudienceMissing) => AuthError::WrongAudience,
        Some(E::RequiredIssuerMismatch | E::RequiredIssuerMissing) => AuthError::UnknownIssuer,
        Some(E::TokenTooLong) => AuthError::TooLarge,
        _ => AuthError::BadSignature,
    }
}
