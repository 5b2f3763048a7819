//! Results are signed by the runner of their scenario: HMAC-SHA256 over the record's value
//! with the scenario's key, which PostgreSQL makes with the scenario and vap hands only to that
//! scenario's runner. The inbox stores only records that verify, so a process that can write to
//! `results` but holds no key (or another scenario's) cannot put results in a scenario.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The Kafka record header that carries the signature (lowercase hex).
pub const SIGNATURE_HEADER: &str = "vap-signature";

/// A scenario's results key. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ResultsKey(Vec<u8>);

impl ResultsKey {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// A key of at least 16 bytes, in hex.
    pub fn from_hex(text: &str) -> Option<Self> {
        hex::decode(text.trim()).ok().filter(|b| b.len() >= 16).map(Self)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts any key length")
    }

    /// The signature of `value`, as the header carries it.
    pub fn sign(&self, value: &[u8]) -> Vec<u8> {
        let mut mac = self.mac();
        mac.update(value);
        hex::encode(mac.finalize().into_bytes()).into_bytes()
    }

    /// Whether `signature` (the header's bytes) signs `value`; compared in constant time.
    pub fn verify(&self, value: &[u8], signature: &[u8]) -> bool {
        let Ok(raw) = hex::decode(signature) else { return false };
        let mut mac = self.mac();
        mac.update(value);
        mac.verify_slice(&raw).is_ok()
    }
}

impl fmt::Debug for ResultsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResultsKey(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_its_value_under_its_key() {
        let key = ResultsKey::from_hex(&"ab".repeat(32)).unwrap();
        let other = ResultsKey::from_hex(&"cd".repeat(32)).unwrap();
        let sig = key.sign(b"{\"frame_number\":1}");
        assert_eq!(sig.len(), 64);
        assert!(key.verify(b"{\"frame_number\":1}", &sig));
        assert!(!key.verify(b"{\"frame_number\":2}", &sig));
        assert!(!other.verify(b"{\"frame_number\":1}", &sig));
        assert!(!key.verify(b"{\"frame_number\":1}", b"not hex"));
        assert!(!key.verify(b"{\"frame_number\":1}", b""));
        assert_eq!(format!("{key:?}"), "ResultsKey(***)");
        assert_eq!(ResultsKey::from_hex(&key.to_hex()), Some(key));
        assert_eq!(ResultsKey::from_hex("abc"), None);
    }
}
