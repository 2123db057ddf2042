//! SAML 2.0 sign-in: the control plane as a service provider of the
//! company's SAML IdP, in front of its own OpenID issuer at
//! `<public-url>/idp` ([`crate::issuer`], [`IssuerKind::Saml`]).
//!
//! | method | path | |
//! | --- | --- | --- |
//! | GET | `/idp/authorize` | an OIDC authorization request (code, PKCE S256) from the web page or `warden login`: checked, remembered, and the browser sent to the IdP with a SAML `AuthnRequest` (HTTP-Redirect binding) |
//! | POST | `/saml/acs` | the IdP's `SAMLResponse` (HTTP-POST binding): verified, mapped to a person, and the browser sent back to the client with a one-time code |
//! | GET | `/saml/metadata` | this service provider's metadata, to register at the IdP |
//!
//! So the web page, `warden login` and every gateway see one more OIDC
//! issuer; nothing after the ACS is SAML-specific.
//!
//! What a response must be to be accepted (verification is `saml-rs`'s;
//! the choices are ours):
//! - signed by a key in the IdP's metadata (the Response or the Assertion;
//!   XML signature wrapping is refused), RSA with SHA-256 or better and
//!   exclusive canonicalization only ([`XmlSignatureProfile::StrictRsaSha2`]:
//!   no SHA-1);
//! - from the IdP's entity id, to our ACS (`Destination`, `Recipient`), for
//!   our entity id (an `AudienceRestriction` is required), within its
//!   `NotBefore`/`NotOnOrAfter` on the server's clock ([`Clock`]);
//! - an answer to an `AuthnRequest` this server sent and has not seen
//!   answered (`InResponseTo` and `RelayState`): unsolicited (IdP-initiated)
//!   responses are refused, and a pending request is removed on first use,
//!   whatever the outcome;
//! - response and assertion ids not seen before ([`SeenMessages`], kept
//!   until the assertion's end);
//! - no DOCTYPE, bounded XML.
//!
//! The person is the `NameID` (as one text value: a comment inside it
//! cannot shorten it), their groups the values of the groups attribute, their
//! email the email attribute's first value; attributes are matched by their
//! exact name (AD FS and Entra ID name them with URIs: give the whole URI). A refused response gets a 400
//! page with the code `saml_refused` and no echo of the response; the reason
//! goes to the log.
//!
//! Sign-ins in flight and accepted ids are rows of the database
//! (`one_time_grants`): any replica finishes a sign-in another started, and
//! only one can.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore as _;
use saml_rs::{
    AcsEndpoint, AudienceValidationPolicy, AuthnRequest, BrowserInput, ClockSkew, EntityId,
    FormField, IdpDescriptor, MetadataTrustPolicy, PendingAuthnRequest, PendingSnapshot,
    RelayStateParam, ReplayCache, ReplayKey, ReplayPolicy, Saml, SamlError, SamlInstant,
    SamlValidationContext, SpConfig, SpValidationPolicy, SsoResponse, SsoSession, StartSso,
    XmlSignatureProfile,
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::fields::logged;
use crate::issuer::{
    redirect_with_code, see_other, sign_in_error, AuthorizeParams, Issuer, SignIn, ValidAuthorize,
};
use crate::store::Store;

/// Where the IdP posts its responses, under the public URL.
pub const ACS_PATH: &str = "/saml/acs";
/// This service provider's metadata, under the public URL; also its entity id.
pub const METADATA_PATH: &str = "/saml/metadata";
/// How long a browser has to come back from the IdP.
pub const PENDING_TTL_SECONDS: u64 = 600;
/// Most sign-ins waiting for the IdP; beyond it the oldest are dropped.
pub const MAX_PENDING: i64 = 10_000;
/// Clock skew allowed on an assertion's times, as on JWTs' (`saml-rs`
/// would allow five minutes).
const CLOCK_SKEW_MS: i64 = 60_000;
/// How long an assertion id is remembered when its own end is further away.
const MAX_SEEN_SECONDS: u64 = 24 * 3600;

/// How `warden serve` was told to use SAML.
#[derive(Clone)]
pub struct SamlSettings {
    /// The IdP's metadata XML: its entity id, SSO URL and signing certificates.
    pub idp_metadata_xml: String,
    /// The attribute whose values are the person's groups.
    pub groups_attribute: String,
    /// The attribute whose first value is the person's email.
    pub email_attribute: String,
}

impl fmt::Debug for SamlSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SamlSettings")
            .field("idp_metadata_bytes", &self.idp_metadata_xml.len())
            .field("groups_attribute", &self.groups_attribute)
            .field("email_attribute", &self.email_attribute)
            .finish()
    }
}

/// A sign-in sent to the IdP, as kept in the database until its answer:
/// the client's authorization request (checked again on the way back) and
/// `saml-rs`'s snapshot of what the response must answer.
#[derive(Serialize, Deserialize)]
struct PendingSignIn {
    params: AuthorizeParams,
    request_id: String,
    relay_state: String,
    idp_entity_id: String,
    expected_binding: String,
    request_binding: Option<String>,
    acs_url: String,
    acs_binding: String,
    acs_index: Option<u16>,
    acs_is_default: bool,
    issued_at: Option<String>,
    expires_at: Option<String>,
}

impl PendingSignIn {
    fn new(params: AuthorizeParams, request: &PendingAuthnRequest) -> Self {
        let snapshot = request.snapshot();
        PendingSignIn {
            params,
            request_id: snapshot.id,
            relay_state: snapshot
                .relay_state
                .as_deref()
                .unwrap_or_default()
                .to_owned(),
            idp_entity_id: snapshot.peer_entity_id,
            expected_binding: snapshot.expected_binding,
            request_binding: snapshot.request_binding,
            acs_url: snapshot.acs_url,
            acs_binding: snapshot.acs_binding,
            acs_index: snapshot.acs_index,
            acs_is_default: snapshot.acs_is_default,
            issued_at: snapshot.issued_at.map(|at| at.as_str().to_owned()),
            expires_at: snapshot.expires_at.map(|at| at.as_str().to_owned()),
        }
    }

    /// `saml-rs`'s pending request again.
    fn request(&self) -> Result<PendingAuthnRequest, SamlError> {
        let mut snapshot = PendingSnapshot::<AuthnRequest>::authn_request(
            self.request_id.clone(),
            RelayStateParam::try_from_option(Some(self.relay_state.clone()))?,
            self.idp_entity_id.clone(),
            self.expected_binding.clone(),
            self.acs_url.clone(),
            self.acs_binding.clone(),
        );
        snapshot.request_binding = self.request_binding.clone();
        snapshot.acs_index = self.acs_index;
        snapshot.acs_is_default = self.acs_is_default;
        snapshot.issued_at = self
            .issued_at
            .clone()
            .map(SamlInstant::try_new)
            .transpose()?;
        snapshot.expires_at = self
            .expires_at
            .clone()
            .map(SamlInstant::try_new)
            .transpose()?;
        PendingAuthnRequest::from_snapshot(snapshot)
    }
}

/// Kinds of `one_time_grants` rows.
const PENDING_KIND: &str = "saml_request";
const SEEN_KIND: &str = "saml_seen";

/// The service provider: its `saml-rs` configuration, the IdP it trusts,
/// the issuer it signs people in to, and the sign-ins in flight.
pub struct SamlSignIn {
    sp: Saml<saml_rs::Sp>,
    idp: IdpDescriptor,
    issuer: Arc<Issuer>,
    groups_attribute: String,
    email_attribute: String,
    /// Sign-ins in flight and message ids seen (`one_time_grants`), so any
    /// replica can finish a sign-in another started.
    store: Store,
    /// Most sign-ins waiting for the IdP ([`MAX_PENDING`]).
    max_pending: i64,
    clock: Clock,
}

impl fmt::Debug for SamlSignIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SamlSignIn")
            .field("idp", &self.idp.entity_id().as_str())
            .field("issuer", &self.issuer.issuer())
            .finish_non_exhaustive()
    }
}

/// Why a response was refused: for the log, never for the browser.
#[derive(Debug, thiserror::Error)]
pub enum SamlRefusal {
    /// No `SAMLResponse` field, or the form is malformed.
    #[error("the form has no SAMLResponse")]
    Malformed,
    /// The `RelayState` names no sign-in in flight: unsolicited, replayed,
    /// expired, or sent to another replica.
    #[error("no sign-in in flight matches its RelayState (unsolicited, replayed or expired)")]
    NotPending,
    /// `saml-rs` refused it (signature, audience, time, replay, …).
    #[error("{0}")]
    Invalid(#[from] SamlError),
    /// The database failed: nothing was judged.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The assertion names nobody usable.
    #[error("{0}")]
    Person(String),
}

impl SamlSignIn {
    /// The service provider for `settings`, with entity id
    /// `<public_url>/saml/metadata` and ACS `<public_url>/saml/acs`, signing
    /// people in to `issuer`.
    pub fn new(
        settings: &SamlSettings,
        public_url: &str,
        issuer: Arc<Issuer>,
        store: Store,
        clock: Clock,
    ) -> Result<Self, String> {
        let public_url = public_url.trim_end_matches('/');
        let entity_id = EntityId::try_new(format!("{public_url}{METADATA_PATH}"))
            .map_err(|e| format!("SAML entity id: {e}"))?;
        let config = SpConfig::builder(entity_id)
            .acs_endpoint(
                AcsEndpoint::post(format!("{public_url}{ACS_PATH}"))
                    .map_err(|e| format!("SAML ACS URL: {e}"))?,
            )
            .validation(validation_policy())
            .build()
            .map_err(|e| format!("SAML service provider: {e}"))?;
        let sp = Saml::sp(config).map_err(|e| format!("SAML service provider: {e}"))?;
        // The metadata is a file the operator chose and pinned: its
        // certificates are the trust anchor, so its own signature is not
        // required.
        let idp = IdpDescriptor::from_metadata_xml(
            &settings.idp_metadata_xml,
            MetadataTrustPolicy::UnsignedForCompatibility,
        )
        .map_err(|e| format!("the SAML IdP metadata: {e}"))?;
        if settings.groups_attribute.trim().is_empty() || settings.email_attribute.trim().is_empty()
        {
            return Err("the SAML groups and email attribute names must not be empty".to_owned());
        }
        Ok(SamlSignIn {
            sp,
            idp,
            issuer,
            groups_attribute: settings.groups_attribute.trim().to_owned(),
            email_attribute: settings.email_attribute.trim().to_owned(),
            store,
            max_pending: MAX_PENDING,
            clock,
        })
    }

    /// The issuer people are signed in to.
    pub fn issuer(&self) -> &Arc<Issuer> {
        &self.issuer
    }

    /// The IdP's entity id.
    pub fn idp_entity_id(&self) -> &str {
        self.idp.entity_id().as_str()
    }

    /// This service provider's metadata XML.
    pub fn metadata_xml(&self) -> &str {
        self.sp.metadata_xml()
    }

    /// Checks an authorization request and starts a SAML sign-in for it:
    /// the URL to send the browser to (the IdP's SSO URL with a
    /// `SAMLRequest` and a fresh `RelayState`).
    pub async fn start(&self, params: &AuthorizeParams) -> Result<String, String> {
        self.issuer
            .check_authorize(params)
            .map_err(|e| e.to_string())?;
        // 256 bits from the OS generator: the only link between the browser's
        // return and this request.
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let relay = URL_SAFE_NO_PAD.encode(bytes);
        let relay_state = RelayStateParam::try_from_option(Some(relay.clone()))
            .map_err(|e| format!("cannot start a SAML sign-in: {e}"))?;
        let started = self
            .sp
            .start_sso(&self.idp, StartSso::redirect().relay_state(relay_state))
            .map_err(|e| format!("cannot start a SAML sign-in: {e}"))?;
        let location = started
            .outbound
            .redirect_url()
            .map_err(|e| format!("cannot start a SAML sign-in: {e}"))?
            .to_owned();
        let pending = serde_json::to_string(&PendingSignIn::new(params.clone(), &started.pending))
            .map_err(|e| format!("cannot start a SAML sign-in: {e}"))?;
        let now_ms = self.clock.now_ms();
        let ttl_ms = i64::try_from(PENDING_TTL_SECONDS * 1000).unwrap_or(i64::MAX);
        self.store
            .put_grant(
                &hash_of(&relay),
                PENDING_KIND,
                &pending,
                now_ms.saturating_add(ttl_ms),
                now_ms,
                // Anyone can start sign-ins: beyond this many the oldest go
                // (their people sign in again) rather than new ones being
                // refused, which would let a flood lock everyone out.
                Some(self.max_pending),
            )
            .await
            .map_err(|error| {
                tracing::error!(%error, "SAML: cannot keep a sign-in");
                "sign-in is unavailable for a moment; try again in a minute".to_owned()
            })?;
        Ok(location)
    }

    /// Verifies a posted response (its form fields) and maps it to a
    /// person: the checked request it answers and who signed in. The
    /// sign-in it answers is spent whatever the outcome.
    pub async fn finish(
        self: &Arc<Self>,
        fields: Vec<(String, String)>,
    ) -> Result<(ValidAuthorize, SignIn), SamlRefusal> {
        if !fields.iter().any(|(name, _)| name == "SAMLResponse") {
            return Err(SamlRefusal::Malformed);
        }
        let relay = fields
            .iter()
            .find(|(name, _)| name == "RelayState")
            .map(|(_, value)| value.clone())
            .ok_or(SamlRefusal::NotPending)?;
        let now_ms = self.clock.now_ms();
        let (payload, expires_ms) = self
            .store
            .take_grant(&hash_of(&relay), PENDING_KIND)
            .await
            .map_err(|e| SamlRefusal::Unavailable(e.to_string()))?
            .ok_or(SamlRefusal::NotPending)?;
        if expires_ms <= now_ms {
            return Err(SamlRefusal::NotPending);
        }
        let pending: PendingSignIn = serde_json::from_str(&payload)
            .map_err(|e| SamlRefusal::Unavailable(format!("a stored sign-in: {e}")))?;
        let authorize = self
            .issuer
            .check_authorize(&pending.params)
            .map_err(|e| SamlRefusal::Person(e.to_string()))?;
        let request = pending.request()?;
        // Verification parses XML and checks RSA signatures: off the
        // runtime's threads.
        let verifier = self.clone();
        let (who, seen) =
            tokio::task::spawn_blocking(move || verifier.verify(&request, fields, now_ms))
                .await
                .map_err(|e| SamlRefusal::Unavailable(e.to_string()))??;
        // Ids this response carries that were accepted before: a replay.
        for (key, until) in seen.0 {
            let until_ms = until
                .duration_since(UNIX_EPOCH)
                .map_or(now_ms, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            let first = self
                .store
                .put_grant(&key, SEEN_KIND, "", until_ms, now_ms, None)
                .await
                .map_err(|e| SamlRefusal::Unavailable(e.to_string()))?;
            if !first {
                return Err(SamlRefusal::Invalid(SamlError::ReplayDetected { key }));
            }
        }
        Ok((authorize, who))
    }

    /// Checks the response against `request` at `now_ms`: who it names, and
    /// the message ids to remember.
    fn verify(
        &self,
        request: &PendingAuthnRequest,
        fields: Vec<(String, String)>,
        now_ms: i64,
    ) -> Result<(SignIn, SeenMessages), SamlRefusal> {
        let input = BrowserInput::<SsoResponse>::post(
            fields
                .into_iter()
                .map(|(name, value)| FormField::new(name, value))
                .collect(),
        );
        let now = UNIX_EPOCH + Duration::from_millis(u64::try_from(now_ms).unwrap_or_default());
        let mut seen = SeenMessages::default();
        let context = SamlValidationContext::new(now, ReplayPolicy::RequireCache(&mut seen))
            .with_clock_skew(ClockSkew::from_millis(-CLOCK_SKEW_MS, CLOCK_SKEW_MS))
            .with_replay_retention(Duration::from_secs(MAX_SEEN_SECONDS));
        let session = self.sp.finish_sso(&self.idp, request, input, context)?;
        Ok((self.person(&session)?, seen))
    }

    /// Who the assertion names: the NameID, the groups and email attributes.
    fn person(&self, session: &SsoSession) -> Result<SignIn, SamlRefusal> {
        let sub = session.name_id().value().trim();
        if sub.is_empty() {
            return Err(SamlRefusal::Person(
                "the assertion's NameID is empty".into(),
            ));
        }
        let values = |name: &str| -> Vec<String> {
            session
                .attributes()
                .as_slice()
                .iter()
                .filter(|attribute| attribute.name() == name)
                .flat_map(|attribute| attribute.values())
                .map(|value| value.as_str().trim().to_owned())
                .filter(|value| !value.is_empty())
                .collect()
        };
        let mut groups = values(&self.groups_attribute);
        groups.sort();
        groups.dedup();
        Ok(SignIn {
            sub: sub.to_owned(),
            email: values(&self.email_attribute).into_iter().next(),
            groups,
        })
    }
}

/// The SP's validation: `saml-rs`'s recommended preset, plus RSA-SHA2
/// signatures only and a required audience restriction.
fn validation_policy() -> SpValidationPolicy {
    SpValidationPolicy {
        xml_signatures: XmlSignatureProfile::StrictRsaSha2,
        audience: AudienceValidationPolicy::Validate,
        ..SpValidationPolicy::recommended()
    }
}

/// The message and assertion ids one response carries, and until when to
/// remember them: `saml-rs` asks for each; they are then kept in the
/// database ([`SamlSignIn::finish`]), where an id already there is a replay.
#[derive(Default)]
pub struct SeenMessages(Vec<(String, SystemTime)>);

impl ReplayCache for SeenMessages {
    fn check_and_store(&mut self, key: ReplayKey, expires_at: SystemTime) -> Result<(), SamlError> {
        let key = key.cache_key();
        if self.0.iter().any(|(seen, _)| *seen == key) {
            return Err(SamlError::ReplayDetected { key });
        }
        self.0.push((key, expires_at));
        Ok(())
    }
}

/// Where a RelayState is kept: its SHA-256 (the database holds no value
/// that would finish someone's sign-in).
fn hash_of(relay: &str) -> String {
    hex::encode(Sha256::digest(relay.as_bytes()))
}

/// The SAML routes, for a router of any state (they carry their own).
pub fn routes<S>(saml: Arc<SamlSignIn>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route(
            &format!("{}/authorize", saml.issuer.kind().path()),
            get(authorize),
        )
        .route(ACS_PATH, post(acs))
        .route(METADATA_PATH, get(metadata))
        .with_state(saml)
}

async fn authorize(
    State(saml): State<Arc<SamlSignIn>>,
    query: Result<Query<AuthorizeParams>, QueryRejection>,
) -> Response {
    let Ok(Query(params)) = query else {
        return sign_in_error("the authorization request is malformed");
    };
    match saml.start(&params).await {
        Ok(location) => see_other(&location)
            .unwrap_or_else(|| sign_in_error("the identity provider's sign-in URL cannot be used")),
        Err(message) => sign_in_error(&message),
    }
}

async fn acs(
    State(saml): State<Arc<SamlSignIn>>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let fields = form.map(|Form(fields)| fields).unwrap_or_default();
    let (authorize, who) = match saml.finish(fields).await {
        Ok(accepted) => accepted,
        Err(refusal) => {
            tracing::warn!(reason = %logged(&refusal.to_string()), idp = saml.idp_entity_id(), "SAML response refused");
            return refused();
        }
    };
    let code = match saml.issuer.issue_code(&authorize, who.clone()).await {
        Ok(code) => code,
        Err(error) => {
            tracing::warn!(reason = %error, "SAML sign-in: cannot issue a code");
            return refused();
        }
    };
    tracing::info!(
        sub = %logged(&who.sub),
        groups = who.groups.len(),
        client_id = %logged(&authorize.client_id),
        "signed in with SAML"
    );
    redirect_with_code(authorize.redirect_uri, &code, authorize.state.as_deref())
        .unwrap_or_else(refused)
}

/// The answer to every refused response: the same for every reason, so the
/// page teaches an attacker nothing.
fn refused() -> Response {
    sign_in_error(
        "saml_refused: the identity provider's answer was not accepted. \
         Go back to the application and sign in again.",
    )
}

async fn metadata(State(saml): State<Arc<SamlSignIn>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/samlmetadata+xml"),
        )],
        saml.metadata_xml().to_owned(),
    )
        .into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    //! Responses from a real SAML IdP (`saml-rs`'s own identity provider,
    //! signing with the test keys in `tests/fixtures/saml/`), and the
    //! classic attacks made from them by editing their XML.

    use super::*;
    use crate::clock::ManualClock;
    use crate::issuer::{IssuerKind, KeyRing, Keys};
    use base64::engine::general_purpose::STANDARD;
    use saml_rs::{
        AuthnRequest, CertificatePem, Credentials, IdpConfig, IdpValidationPolicy, NameId,
        PrivateKeyPem, RespondSso, SpDescriptor, SsoEndpoint, Subject,
    };

    const IDP_KEY: &str = include_str!("../tests/fixtures/saml/idp-key.pem");
    const IDP_CERT: &str = include_str!("../tests/fixtures/saml/idp-cert.pem");
    const OTHER_KEY: &str = include_str!("../tests/fixtures/saml/other-idp-key.pem");
    const OTHER_CERT: &str = include_str!("../tests/fixtures/saml/other-idp-cert.pem");
    const IDP_ENTITY: &str = "https://idp.example.test/metadata";
    const PUBLIC_URL: &str = "http://127.0.0.1:8080";

    fn idp_with(key: &str, cert: &str, lifetime: Duration) -> Saml<saml_rs::Idp> {
        Saml::idp(
            IdpConfig::builder(EntityId::try_new(IDP_ENTITY).unwrap())
                .sso_endpoint(SsoEndpoint::redirect("https://idp.example.test/sso").unwrap())
                .credentials(Credentials {
                    signing_key: Some(PrivateKeyPem::new(key)),
                    signing_certificate: Some(CertificatePem::new(cert)),
                    ..Credentials::default()
                })
                .validation(IdpValidationPolicy::recommended())
                .issuance_lifetime(lifetime)
                .build()
                .unwrap(),
        )
        .unwrap()
    }

    struct Fixture {
        sp: Arc<SamlSignIn>,
        idp: Saml<saml_rs::Idp>,
        sp_descriptor: SpDescriptor,
        time: ManualClock,
        _dir: tempfile::TempDir,
    }

    /// The SP and an IdP that signs the Response.
    async fn fixture() -> Fixture {
        fixture_signing(false).await
    }

    /// The SP and an IdP that signs the Assertion (`assertion_signed`; the
    /// SP's metadata as the IdP reads it then asks for it) or the Response.
    async fn fixture_signing(assertion_signed: bool) -> Fixture {
        let idp = idp_with(IDP_KEY, IDP_CERT, Duration::from_secs(300));
        // The IdP dates its responses on the system clock: the server's starts there.
        let time = ManualClock::at(Clock::system().now_ms());
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&crate::store::DatabaseTarget::SqliteFile(
            dir.path().join("warden.db"),
        ))
        .await
        .unwrap();
        let issuer = Issuer::with_ring(
            IssuerKind::Saml,
            format!("{PUBLIC_URL}/idp"),
            KeyRing::single(Keys::generate().unwrap().0).unwrap(),
            time.clock(),
            store.clone(),
        );
        let sp = SamlSignIn::new(
            &SamlSettings {
                idp_metadata_xml: idp.metadata_xml().to_owned(),
                groups_attribute: "groups".into(),
                email_attribute: "email".into(),
            },
            PUBLIC_URL,
            Arc::new(issuer),
            store,
            time.clock(),
        )
        .unwrap();
        let metadata = if assertion_signed {
            sp.metadata_xml().replace(
                "WantAssertionsSigned=\"false\"",
                "WantAssertionsSigned=\"true\"",
            )
        } else {
            sp.metadata_xml().to_owned()
        };
        let sp_descriptor = SpDescriptor::from_metadata_xml(
            &metadata,
            MetadataTrustPolicy::UnsignedForCompatibility,
        )
        .unwrap();
        Fixture {
            sp: Arc::new(sp),
            idp,
            sp_descriptor,
            time,
            _dir: dir,
        }
    }

    fn params() -> AuthorizeParams {
        AuthorizeParams {
            response_type: Some("code".into()),
            client_id: Some("warden-cli".into()),
            redirect_uri: Some("http://127.0.0.1:53117/callback".into()),
            state: Some("st".into()),
            nonce: None,
            // RFC 7636 appendix B.
            code_challenge: Some("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into()),
            code_challenge_method: Some("S256".into()),
            scope: Some("openid offline_access".into()),
        }
    }

    /// Starts a sign-in at the SP and has `idp` answer it for `name`: the
    /// fields the browser would post to the ACS.
    async fn answered_by(
        f: &Fixture,
        idp: &Saml<saml_rs::Idp>,
        name: &str,
    ) -> Vec<(String, String)> {
        let location = f.sp.start(&params()).await.unwrap();
        assert!(
            location.starts_with("https://idp.example.test/sso?"),
            "{location}"
        );
        let query = location.split_once('?').unwrap().1;
        let received = idp
            .receive_sso(
                &f.sp_descriptor,
                BrowserInput::<AuthnRequest>::redirect(query),
                SamlValidationContext::new(
                    SystemTime::now(),
                    ReplayPolicy::DisabledForCompatibility,
                ),
            )
            .unwrap();
        let response = idp
            .respond_sso(
                &f.sp_descriptor,
                &received,
                Subject::new(NameId::new(name, None), Vec::new()),
                RespondSso::post(),
            )
            .unwrap();
        // The IdP dates the response on the system clock; the server's
        // clock catches up with it (never goes back), however long the key
        // generation or a loaded machine took.
        let lag = Clock::system().now_ms() - f.time.now_ms();
        if lag > 0 {
            f.time
                .advance(Duration::from_millis(u64::try_from(lag).unwrap()));
        }
        response
            .post_form()
            .unwrap()
            .fields()
            .iter()
            .map(|field| (field.name().to_owned(), field.value().to_owned()))
            .collect()
    }

    async fn answered(f: &Fixture, name: &str) -> Vec<(String, String)> {
        answered_by(f, &f.idp, name).await
    }

    fn xml_of(fields: &[(String, String)]) -> String {
        let (_, value) = fields.iter().find(|(n, _)| n == "SAMLResponse").unwrap();
        String::from_utf8(STANDARD.decode(value).unwrap()).unwrap()
    }

    fn with_xml(fields: &[(String, String)], xml: &str) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|(name, value)| {
                if name == "SAMLResponse" {
                    (name.clone(), STANDARD.encode(xml))
                } else {
                    (name.clone(), value.clone())
                }
            })
            .collect()
    }

    /// Whether `saml-rs` refused `fields` (signature, audience, time, …).
    async fn invalid(f: &Fixture, fields: Vec<(String, String)>) -> bool {
        matches!(refused(f, fields).await, SamlRefusal::Invalid(_))
    }

    async fn refused(f: &Fixture, fields: Vec<(String, String)>) -> SamlRefusal {
        match f.sp.finish(fields).await {
            Ok((_, who)) => panic!("accepted, as {}", who.sub),
            Err(refusal) => refusal,
        }
    }

    /// The assertion element, from its start tag to its end tag.
    fn assertion_of(xml: &str) -> &str {
        let start = xml.find("<saml:Assertion").expect("an assertion");
        let end = xml.find("</saml:Assertion>").expect("its end") + "</saml:Assertion>".len();
        &xml[start..end]
    }

    #[tokio::test]
    async fn a_signed_answer_signs_the_person_in_once() {
        let f = fixture().await;
        let fields = answered(&f, "alice@example.com").await;
        let (authorize, who) = f.sp.finish(fields.clone()).await.unwrap();
        assert_eq!(who.sub, "alice@example.com");
        assert_eq!(authorize.client_id, "warden-cli");
        assert_eq!(authorize.state.as_deref(), Some("st"));
        // The same response again: its sign-in is spent.
        assert!(matches!(refused(&f, fields).await, SamlRefusal::NotPending));
    }

    #[tokio::test]
    async fn an_old_response_cannot_answer_a_new_request() {
        let f = fixture().await;
        let old = answered(&f, "alice@example.com").await;
        f.sp.finish(old.clone()).await.unwrap();
        // A new sign-in is pending; the captured response is posted with its RelayState.
        let new = answered(&f, "bob@example.com").await;
        let relay = new.iter().find(|(n, _)| n == "RelayState").unwrap().clone();
        let replayed: Vec<_> = old
            .into_iter()
            .map(|field| {
                if field.0 == "RelayState" {
                    relay.clone()
                } else {
                    field
                }
            })
            .collect();
        assert!(invalid(&f, replayed).await);
    }

    #[tokio::test]
    async fn an_unsigned_or_changed_answer_is_refused() {
        for assertion_signed in [false, true] {
            let f = fixture_signing(assertion_signed).await;
            let fields = answered(&f, "alice@example.com").await;
            let xml = without_signatures(&xml_of(&fields));
            assert!(!xml.contains("Signature"));
            assert!(invalid(&f, with_xml(&fields, &xml)).await);

            let fields = answered(&f, "alice@example.com").await;
            let xml = xml_of(&fields).replace("alice@example.com", "admin@example.com");
            assert!(invalid(&f, with_xml(&fields, &xml)).await);
        }
    }

    #[tokio::test]
    async fn a_comment_inside_the_name_id_cannot_shorten_it() {
        for assertion_signed in [false, true] {
            let f = fixture_signing(assertion_signed).await;
            let fields = answered(&f, "alice@example.com.evil.test").await;
            let xml = xml_of(&fields).replace(
                "alice@example.com.evil.test",
                "alice@example.com<!---->.evil.test",
            );
            // Comments are outside the signed canonical form: the signature
            // still verifies, so what matters is the name read.
            match f.sp.finish(with_xml(&fields, &xml)).await {
                Ok((_, who)) => assert_eq!(who.sub, "alice@example.com.evil.test"),
                Err(refusal) => assert!(matches!(refusal, SamlRefusal::Invalid(_))),
            }
        }
    }

    /// Removes every `ds:Signature` element from `xml`.
    fn without_signatures(xml: &str) -> String {
        let mut xml = xml.to_owned();
        while let Some(start) = xml.find("<ds:Signature ") {
            let end =
                xml[start..].find("</ds:Signature>").unwrap() + start + "</ds:Signature>".len();
            xml.replace_range(start..end, "");
        }
        xml
    }

    #[tokio::test]
    async fn both_signature_placements_are_accepted() {
        for assertion_signed in [false, true] {
            let f = fixture_signing(assertion_signed).await;
            let fields = answered(&f, "alice@example.com").await;
            let xml = xml_of(&fields);
            // Exactly one signature, where this IdP puts it.
            assert_eq!(xml.matches("<ds:Signature ").count(), 1);
            assert_eq!(
                assertion_of(&xml).contains("<ds:Signature "),
                assertion_signed
            );
            assert_eq!(
                f.sp.finish(fields).await.unwrap().1.sub,
                "alice@example.com"
            );
        }
    }

    #[tokio::test]
    async fn signature_wrapping_of_a_signed_assertion_is_refused() {
        let f = fixture_signing(true).await;
        // The classic placements of a forged, unsigned assertion for admin
        // beside the genuinely signed one for alice.
        for variant in 0..4 {
            let fields = answered(&f, "alice@example.com").await;
            let xml = xml_of(&fields);
            let signed = assertion_of(&xml).to_owned();
            let forged = without_signatures(
                &signed
                    .replace("alice@example.com", "admin@example.com")
                    .replacen(" ID=\"", " ID=\"forged-", 1),
            );
            let attacked = match variant {
                // The forged assertion first, the signed one after it.
                0 => xml.replace(&signed, &format!("{forged}{signed}")),
                // The signed one first, the forged one after it.
                1 => xml.replace(&signed, &format!("{signed}{forged}")),
                // The signed assertion hidden in the forged one's Advice.
                2 => xml.replace(
                    &signed,
                    &forged.replace(
                        "</saml:Assertion>",
                        &format!("<saml:Advice>{signed}</saml:Advice></saml:Assertion>"),
                    ),
                ),
                // The signed assertion hidden in the Response's Extensions.
                _ => xml.replace(&signed, &forged).replace(
                    "<samlp:Status>",
                    &format!("<samlp:Extensions>{signed}</samlp:Extensions><samlp:Status>"),
                ),
            };
            assert_ne!(attacked, xml, "variant {variant}");
            assert!(
                invalid(&f, with_xml(&fields, &attacked)).await,
                "variant {variant}"
            );
        }
    }

    #[tokio::test]
    async fn signature_wrapping_of_a_signed_response_is_refused() {
        let f = fixture().await;
        for variant in 0..2 {
            let fields = answered(&f, "alice@example.com").await;
            let xml = xml_of(&fields);
            let body_start = xml.find("<saml:Issuer>").unwrap();
            let open_tag = &xml[..body_start];
            let signed_assertion = assertion_of(&xml);
            let forged_assertion =
                signed_assertion.replace("alice@example.com", "admin@example.com");
            let forged_open = open_tag.replacen(" ID=\"", " ID=\"forged-", 1);
            let issuer_end = xml.find("</saml:Issuer>").unwrap() + "</saml:Issuer>".len();
            let issuer = &xml[body_start..issuer_end];
            let attacked = match variant {
                // A forged root around the signed original, in its Extensions.
                0 => format!(
                    "{forged_open}{issuer}<samlp:Extensions>{xml}</samlp:Extensions>\
                     <samlp:Status><samlp:StatusCode Value=\"urn:oasis:names:tc:SAML:2.0:status:Success\"/></samlp:Status>\
                     {forged_assertion}</samlp:Response>"
                ),
                // The original's signature on a forged root, the signed
                // original inside the signature's Object.
                _ => {
                    let sig_start = xml.find("<ds:Signature ").unwrap();
                    let sig_end = xml.find("</ds:Signature>").unwrap();
                    let signature = &xml[sig_start..sig_end];
                    format!(
                        "{forged_open}{issuer}{signature}<ds:Object>{xml}</ds:Object></ds:Signature>\
                         <samlp:Status><samlp:StatusCode Value=\"urn:oasis:names:tc:SAML:2.0:status:Success\"/></samlp:Status>\
                         {forged_assertion}</samlp:Response>"
                    )
                }
            };
            assert!(
                invalid(&f, with_xml(&fields, &attacked)).await,
                "variant {variant}"
            );
        }
    }

    #[tokio::test]
    async fn an_expired_assertion_is_refused() {
        let f = fixture().await;
        // The IdP's assertions live 300 s, and a minute of skew is allowed;
        // the sign-in itself waits 600 s.
        let fields = answered(&f, "alice@example.com").await;
        f.time.advance(Duration::from_secs(350));
        assert!(f.sp.finish(fields).await.is_ok());
        let fields = answered(&f, "alice@example.com").await;
        f.time.advance(Duration::from_secs(361));
        assert!(invalid(&f, fields).await);
    }

    #[tokio::test]
    async fn another_key_is_not_trusted() {
        let f = fixture().await;
        let impostor = idp_with(OTHER_KEY, OTHER_CERT, Duration::from_secs(300));
        let fields = answered_by(&f, &impostor, "admin@example.com").await;
        assert!(invalid(&f, fields).await);
    }

    #[tokio::test]
    async fn unsolicited_and_unknown_responses_are_refused() {
        let f = fixture().await;
        let unsolicited = f
            .idp
            .initiate_sso(
                &f.sp_descriptor,
                Subject::new(NameId::new("alice@example.com", None), Vec::new()),
                RespondSso::post(),
            )
            .unwrap();
        let fields: Vec<(String, String)> = unsolicited
            .post_form()
            .unwrap()
            .fields()
            .iter()
            .map(|field| (field.name().to_owned(), field.value().to_owned()))
            .collect();
        assert!(matches!(
            refused(&f, fields.clone()).await,
            SamlRefusal::NotPending
        ));
        // With a pending sign-in's RelayState it still answers no request.
        let pending = answered(&f, "bob@example.com").await;
        let relay = pending
            .iter()
            .find(|(n, _)| n == "RelayState")
            .unwrap()
            .clone();
        let mut forged: Vec<_> = fields
            .into_iter()
            .filter(|(n, _)| n != "RelayState")
            .collect();
        forged.push(relay);
        assert!(invalid(&f, forged).await);
        assert!(matches!(
            refused(&f, vec![("RelayState".into(), "x".into())]).await,
            SamlRefusal::Malformed
        ));
    }

    #[tokio::test]
    async fn a_doctype_is_refused() {
        let f = fixture().await;
        let fields = answered(&f, "alice@example.com").await;
        let xml = xml_of(&fields);
        let laughs = format!(
            "<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY a \"aaaaaaaaaa\">\
             <!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\">]>{}",
            xml.trim_start_matches(|c| c != '<')
                .replacen("alice@example.com", "&b;", 1)
        );
        assert!(invalid(&f, with_xml(&fields, &laughs)).await);
    }

    #[tokio::test]
    async fn a_flood_of_sign_ins_pushes_out_the_oldest_not_the_newest() {
        let mut f = fixture().await;
        Arc::get_mut(&mut f.sp).unwrap().max_pending = 5;
        let first = answered(&f, "alice@example.com").await;
        f.time.advance(Duration::from_secs(1));
        for _ in 0..5 {
            f.sp.start(&params()).await.unwrap();
        }
        assert!(matches!(refused(&f, first).await, SamlRefusal::NotPending));
        // Someone signing in now still can.
        let fresh = answered(&f, "bob@example.com").await;
        assert_eq!(f.sp.finish(fresh).await.unwrap().1.sub, "bob@example.com");
    }

    #[tokio::test]
    async fn an_assertion_accepted_before_is_a_replay_on_any_replica() {
        let f = fixture().await;
        let fields = answered(&f, "alice@example.com").await;
        let xml = xml_of(&fields);
        let assertion = assertion_of(&xml);
        let id_start = assertion.find(" ID=\"").unwrap() + 5;
        let id_len = assertion[id_start..].find('"').unwrap();
        let key = format!("assertion_id:{}", &assertion[id_start..id_start + id_len]);
        // As another replica would have kept it.
        let now = f.time.clock().now_ms();
        assert!(f
            .sp
            .store
            .put_grant(&key, SEEN_KIND, "", now + 60_000, now, None)
            .await
            .unwrap());
        match refused(&f, fields).await {
            SamlRefusal::Invalid(SamlError::ReplayDetected { key: seen }) => assert_eq!(seen, key),
            other => panic!("{other}"),
        }
    }
}
