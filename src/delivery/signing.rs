//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256
//! of "id.timestamp.body">`, one `v1,...` per key, separated by spaces, so a
//! receiver that knows either the new or the previous key accepts the event
//! while the key rotates.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The Standard Webhooks prefix of a base64-encoded secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// A signing key. Its bytes never leave this type: it has no Debug, Display
/// or Serialize, so it cannot end up in a log line or a status.
pub struct SigningKey(Vec<u8>);

/// A secret that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the signing secret is empty")]
    Empty,
    #[error("the signing secret starts with whsec_ but the rest is not valid base64")]
    InvalidBase64,
}

impl SigningKey {
    /// Parses a secret as a Secret holds it: `whsec_<base64>` (the Standard
    /// Webhooks form) or, without the prefix, the raw bytes themselves. A
    /// trailing line ending (from `kubectl create secret --from-file`) is
    /// ignored.
    pub fn parse(secret: &[u8]) -> Result<Self, KeyError> {
        // Only line endings are trimmed from a raw key: any other byte may
        // belong to it.
        let mut raw = secret;
        while let [rest @ .., b'\n' | b'\r'] = raw {
            raw = rest;
        }
        let encoded = std::str::from_utf8(raw)
            .ok()
            .and_then(|t| t.trim().strip_prefix(SECRET_PREFIX));
        let key = match encoded {
            Some(encoded) => STANDARD
                .decode(encoded)
                .map_err(|_| KeyError::InvalidBase64)?,
            None => raw.to_vec(),
        };
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Self(key))
    }

    /// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The webhook-signature header value: one signature per key, in order.
pub fn signature_header(keys: &[SigningKey], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|key| key.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    // The published Standard Webhooks test vector.
    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TIMESTAMP: i64 = 1649367553;
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SIGNATURE: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    #[test]
    fn signs_the_standard_webhooks_test_vector() {
        let key = SigningKey::parse(SECRET.as_bytes()).unwrap();
        assert_eq!(key.sign(ID, TIMESTAMP, BODY), SIGNATURE);
    }

    #[test]
    fn a_raw_secret_is_its_own_bytes() {
        let decoded = STANDARD.decode(&SECRET[SECRET_PREFIX.len()..]).unwrap();
        let key = SigningKey::parse(&decoded).unwrap();
        assert_eq!(key.sign(ID, TIMESTAMP, BODY), SIGNATURE);
        let text = SigningKey::parse(b"my-raw-secret\n").unwrap();
        assert_eq!(
            text.sign(ID, TIMESTAMP, BODY),
            SigningKey(b"my-raw-secret".to_vec()).sign(ID, TIMESTAMP, BODY)
        );
    }

    #[test]
    fn a_change_anywhere_changes_the_signature() {
        let key = SigningKey::parse(SECRET.as_bytes()).unwrap();
        assert_ne!(key.sign("msg_other", TIMESTAMP, BODY), SIGNATURE);
        assert_ne!(key.sign(ID, TIMESTAMP + 1, BODY), SIGNATURE);
        assert_ne!(key.sign(ID, TIMESTAMP, b"{}"), SIGNATURE);
    }

    #[test]
    fn rotation_signs_with_every_key() {
        let keys = [
            SigningKey::parse(b"whsec_bmV3LXNlY3JldC1rZXk=").unwrap(),
            SigningKey::parse(SECRET.as_bytes()).unwrap(),
        ];
        let header = signature_header(&keys, ID, TIMESTAMP, BODY);
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1], SIGNATURE);
        assert!(parts[0].starts_with("v1,") && parts[0] != SIGNATURE);
    }

    #[test]
    fn unusable_secrets_are_refused() {
        assert_eq!(SigningKey::parse(b"").err(), Some(KeyError::Empty));
        assert_eq!(SigningKey::parse(b"\r\n").err(), Some(KeyError::Empty));
        assert_eq!(SigningKey::parse(b"whsec_").err(), Some(KeyError::Empty));
        assert_eq!(
            SigningKey::parse(b"whsec_!!!").err(),
            Some(KeyError::InvalidBase64)
        );
    }
}
