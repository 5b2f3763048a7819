//! Results are signed by the runner of their scenario: HMAC-SHA256 over the record's value
//! with the scenario's key, which PostgreSQL makes with the scenario and vap hands only to that
//! scenario's runner. The inbox stores only records that verify, so a process that can write to
//! `results` but holds no key (or another scenario's) cannot put results in a scenario.
//!
//! Fencing: each placement of a scenario's runner has an epoch, and its runner is given only
//! the key of that placement (derived from the scenario's key), never the scenario's own. A
//! record names its placement in a header; it verifies only under that placement's key, so a
//! runner cannot claim a later placement, and the inbox stores only the current placement's.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The Kafka record header that carries the signature (lowercase hex).
pub const SIGNATURE_HEADER: &str = "vap-signature";

/// The Kafka record header that names the placement a record comes from (decimal); absent: 0.
pub const PLACEMENT_HEADER: &str = "vap-placement";

/// Which placement of its scenario a runner is: strictly increasing, from PostgreSQL. 0 is a
/// runner started by hand (or before placements had epochs), which holds the scenario's key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PlacementEpoch(pub i64);

impl PlacementEpoch {
    /// The epoch a record's headers name: 0 without the header, None when it is not a number.
    pub fn of_record(headers: &std::collections::BTreeMap<String, Vec<u8>>) -> Option<Self> {
        match headers.get(PLACEMENT_HEADER) {
            None => Some(Self(0)),
            Some(v) => std::str::from_utf8(v).ok()?.parse().ok().filter(|e: &i64| *e >= 0).map(Self),
        }
    }
}

impl fmt::Display for PlacementEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Signs what one placement's runner produces: the signature and the placement's header.
#[derive(Debug, Clone)]
pub struct RecordSigner {
    /// The placement's key (what the runner was given).
    pub key: ResultsKey,
    pub placement: PlacementEpoch,
}

impl RecordSigner {
    pub fn sign(&self, headers: &mut std::collections::BTreeMap<String, Vec<u8>>, value: &[u8]) {
        headers.insert(SIGNATURE_HEADER.to_string(), self.key.sign(value));
        if self.placement.0 != 0 {
            headers.insert(PLACEMENT_HEADER.to_string(), self.placement.0.to_string().into_bytes());
        }
    }
}

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

    /// The key of one placement, which is all its runner is given. Placement 0 is the key itself.
    pub fn for_placement(&self, placement: PlacementEpoch) -> ResultsKey {
        if placement.0 == 0 {
            return self.clone();
        }
        let mut mac = self.mac();
        mac.update(b"vap placement ");
        mac.update(&placement.0.to_be_bytes());
        Self(mac.finalize().into_bytes().to_vec())
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

    #[test]
    fn a_placement_signs_only_as_itself() {
        let key = ResultsKey::from_hex(&"ab".repeat(32)).unwrap();
        let (first, second) = (key.for_placement(PlacementEpoch(1)), key.for_placement(PlacementEpoch(2)));
        assert_eq!(key.for_placement(PlacementEpoch(0)), key);
        assert_ne!(first, second);
        assert_ne!(first, key);
        let signer = RecordSigner { key: first.clone(), placement: PlacementEpoch(1) };
        let mut headers = std::collections::BTreeMap::new();
        signer.sign(&mut headers, b"v");
        assert_eq!(PlacementEpoch::of_record(&headers), Some(PlacementEpoch(1)));
        // Verifies under its own placement's key only.
        assert!(key.for_placement(PlacementEpoch(1)).verify(b"v", &headers[SIGNATURE_HEADER]));
        assert!(!second.verify(b"v", &headers[SIGNATURE_HEADER]));
        assert!(!key.verify(b"v", &headers[SIGNATURE_HEADER]));
        assert_eq!(PlacementEpoch::of_record(&Default::default()), Some(PlacementEpoch(0)));
        for bad in [&b"-1"[..], b"x", b""] {
            let headers = std::collections::BTreeMap::from([(PLACEMENT_HEADER.to_string(), bad.to_vec())]);
            assert_eq!(PlacementEpoch::of_record(&headers), None);
        }
    }
}
