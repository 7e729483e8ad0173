//! Signed, expiring tokens (JWT, via `jsonwebtoken`) for clients that
//! cannot hold a secret: browsers and short-lived jobs. A token's claims
//! carry what a `[[clients]]` entry does — a name (`sub`), a tenant and
//! publish / subscribe patterns — and an expiry (`exp`, required).
//!
//! ```json
//! {"sub":"dashboard","tenant":"default","publish":[],"subscribe":["database/*"],"exp":1767225600}
//! ```
//!
//! HS256 (a shared secret) and EdDSA (Ed25519: the node holds only the
//! issuer's public key) are accepted; every other algorithm is refused.
//! Expiry is checked with [`LEEWAY_SECS`] of leeway for clock skew.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

#[cfg(test)]
use super::DEFAULT_TENANT;
use super::{ClientEntry, ClientIdentity, permissions_of, validate_clients};

/// Seconds a token is still accepted after its `exp` (clock skew).
pub const LEEWAY_SECS: u64 = 30;

/// A token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// The client's name (logs, `/v1/clients`).
    pub sub: String,
    /// Its tenant; default [`DEFAULT_TENANT`].
    #[serde(default = "super::default_tenant")]
    pub tenant: String,
    /// Topics it may publish to: `queue/event`, `queue/*` or `*`.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Topics it may subscribe to.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// Why a token was refused (never told to the peer: it gets `auth_failed`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Bad signature, expired, malformed, or an algorithm not accepted.
    #[error("token refused: {0}")]
    Invalid(String),
    /// No key of the token's algorithm is configured.
    #[error("no {0:?} key is configured for tokens")]
    NoKey(Algorithm),
    /// The claims are not a valid client (names, patterns, tenant).
    #[error("token claims: {0}")]
    BadClaims(String),
    /// A configured key could not be read.
    #[error("token key: {0}")]
    BadKey(String),
}

/// The keys a node accepts tokens signed with.
#[derive(Clone, Default)]
pub struct TokenKeys {
    hs256: Vec<DecodingKey>,
    eddsa: Vec<DecodingKey>,
    /// Accept tokens over plaintext connections (development only).
    pub allow_plaintext: bool,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("hs256", &self.hs256.len())
            .field("eddsa", &self.eddsa.len())
            .field("allow_plaintext", &self.allow_plaintext)
            .finish()
    }
}

impl TokenKeys {
    /// HS256 secrets (at least 32 bytes each) and Ed25519 public keys (PEM).
    pub fn new(
        hs256_secrets: &[Vec<u8>],
        ed25519_public_pems: &[Vec<u8>],
        allow_plaintext: bool,
    ) -> Result<TokenKeys, TokenError> {
        if let Some(short) = hs256_secrets.iter().find(|secret| secret.len() < 32) {
            return Err(TokenError::BadKey(format!(
                "an HS256 secret is {} bytes; use at least 32",
                short.len()
            )));
        }
        let eddsa = ed25519_public_pems
            .iter()
            .map(|pem| {
                DecodingKey::from_ed_pem(pem).map_err(|error| TokenError::BadKey(error.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(TokenKeys {
            hs256: hs256_secrets
                .iter()
                .map(|secret| DecodingKey::from_secret(secret))
                .collect(),
            eddsa,
            allow_plaintext,
        })
    }

    /// Whether no key is configured (tokens are then refused).
    pub fn is_empty(&self) -> bool {
        self.hs256.is_empty() && self.eddsa.is_empty()
    }

    /// The client a token names, if it verifies with one of the keys and
    /// has not expired.
    pub fn verify(&self, token: &str) -> Result<ClientIdentity, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let keys = match header.alg {
            Algorithm::HS256 => &self.hs256,
            Algorithm::EdDSA => &self.eddsa,
            other => {
                return Err(TokenError::Invalid(format!(
                    "algorithm {other:?} is not accepted"
                )));
            }
        };
        if keys.is_empty() {
            return Err(TokenError::NoKey(header.alg));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let mut last = None;
        for key in keys {
            match jsonwebtoken::decode::<TokenClaims>(token, key, &validation) {
                Ok(data) => return identity_of(data.claims),
                Err(error) => last = Some(error),
            }
        }
        Err(TokenError::Invalid(
            last.map_or_else(String::new, |error| error.to_string()),
        ))
    }
}

fn identity_of(claims: TokenClaims) -> Result<ClientIdentity, TokenError> {
    let entry = ClientEntry {
        name: claims.sub,
        tenant: claims.tenant,
        // Checked like an entry's; the token itself is the proof.
        secrets: vec!["0123456789abcdef".into()],
        publish: claims.publish,
        subscribe: claims.subscribe,
    };
    validate_clients(std::slice::from_ref(&entry))
        .map_err(|error| TokenError::BadClaims(error.to_string()))?;
    Ok(ClientIdentity {
        name: entry.name.as_str().into(),
        tenant: entry.tenant.as_str().into(),
        permissions: Arc::new(permissions_of(&entry)),
    })
}

/// Signs `claims` with an HS256 secret.
pub fn mint_hs256(secret: &[u8], claims: &TokenClaims) -> Result<String, TokenError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|error| TokenError::BadKey(error.to_string()))
}

/// Signs `claims` with an Ed25519 private key (PKCS#8 PEM).
pub fn mint_eddsa(private_pem: &[u8], claims: &TokenClaims) -> Result<String, TokenError> {
    let key = EncodingKey::from_ed_pem(private_pem)
        .map_err(|error| TokenError::BadKey(error.to_string()))?;
    jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &key)
        .map_err(|error| TokenError::BadKey(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJHzcBtmM3Cwc2DLqfdVdrEk05SH6loR+e8g4iKWtLzN\n-----END PRIVATE KEY-----\n";
    const PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAJ3y2mIY/4QCjmrDIDW9hoFsc/DzNte0YBv4/4TQSzr0=\n-----END PUBLIC KEY-----\n";
    const SECRET: &[u8] = b"an-hs256-secret-of-32-bytes-or-more!";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn claims(exp: u64) -> TokenClaims {
        TokenClaims {
            sub: "dashboard".into(),
            tenant: DEFAULT_TENANT.into(),
            publish: vec![],
            subscribe: vec!["database/*".into()],
            exp,
        }
    }

    fn keys() -> TokenKeys {
        TokenKeys::new(&[SECRET.to_vec()], &[PUBLIC.as_bytes().to_vec()], false).unwrap()
    }

    #[test]
    fn tokens_verify_or_are_refused() {
        let valid_hs = mint_hs256(SECRET, &claims(now() + 600)).unwrap();
        let valid_ed = mint_eddsa(PRIVATE.as_bytes(), &claims(now() + 600)).unwrap();
        for token in [&valid_hs, &valid_ed] {
            let identity = keys().verify(token).unwrap();
            assert_eq!(&*identity.name, "dashboard");
            let filter = crate::TopicFilter::parse("database/*").unwrap();
            assert!(identity.permissions.may_subscribe(&filter));
            assert!(!identity.permissions.may_publish_text("database/create"));
        }
        let expired = mint_hs256(SECRET, &claims(now() - LEEWAY_SECS - 60)).unwrap();
        let wrong_key = mint_hs256(
            b"another-secret-of-32-bytes-or-more!!",
            &claims(now() + 600),
        )
        .unwrap();
        let mut tampered = valid_hs.clone();
        tampered.insert(tampered.find('.').unwrap() + 2, 'x');
        let mut bad_claims = claims(now() + 600);
        bad_claims.subscribe = vec!["a/b/c".into()];
        let bad_claims = mint_hs256(SECRET, &bad_claims).unwrap();
        let cases = [
            (expired.as_str(), "expired"),
            (wrong_key.as_str(), "signature"),
            (tampered.as_str(), "tampered"),
            ("not-a-token", "garbage"),
            (bad_claims.as_str(), "bad claims"),
        ];
        for (token, what) in cases {
            assert!(keys().verify(token).is_err(), "{what} accepted");
        }
        // No EdDSA key configured: EdDSA tokens are refused.
        let hs_only = TokenKeys::new(&[SECRET.to_vec()], &[], false).unwrap();
        assert!(matches!(
            hs_only.verify(&valid_ed),
            Err(TokenError::NoKey(Algorithm::EdDSA))
        ));
        assert!(TokenKeys::new(&[b"short".to_vec()], &[], false).is_err());
    }
}
