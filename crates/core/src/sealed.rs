//! Job secrets sealed for systemd runners. A unit's properties, `Environment=` included, are
//! readable by every local user over D-Bus (`systemctl show`), and so is `SetCredential=`: the
//! camera URL and the results key travel there only sealed (ChaCha20-Poly1305, bound to the
//! scenario), and the key that opens them reaches the runner through `LoadCredential=` from a
//! file only root reads. Runners have no access to the system bus, so one runner can't read
//! another's sealed secrets either.

use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::job::JobSecrets;

/// The credential name the unit loads the key under (`$CREDENTIALS_DIRECTORY/<this>`).
pub const CREDENTIAL: &str = "vap-runner-key";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("runner key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("sealed job secrets do not open with this runner key for scenario {0}")]
    Open(Uuid),
    #[error("sealing failed")]
    Seal,
}

/// The runner key: SHA-256 of the key file's text (at least 32 characters, as Ansible makes it).
pub struct RunnerKey(LessSafeKey);

impl std::fmt::Debug for RunnerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunnerKey(***)")
    }
}

impl RunnerKey {
    pub fn load(path: &Path) -> Result<Self, SealError> {
        let bad = |reason: String| SealError::Key { path: path.display().to_string(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        Self::from_secret(text.trim()).ok_or_else(|| bad("holds fewer than 32 characters".into()))
    }

    pub fn from_secret(secret: &str) -> Option<Self> {
        if secret.len() < 32 {
            return None;
        }
        let digest = Sha256::digest(secret.as_bytes());
        UnboundKey::new(&CHACHA20_POLY1305, &digest).ok().map(|k| Self(LessSafeKey::new(k)))
    }

    /// Hex of nonce, ciphertext and tag; opens only for `scenario`.
    pub fn seal(&self, scenario: Uuid, secrets: &JobSecrets) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| SealError::Seal)?;
        let mut data = serde_json::to_vec(secrets).map_err(|_| SealError::Seal)?;
        self.0
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(scenario.as_bytes()), &mut data)
            .map_err(|_| SealError::Seal)?;
        Ok(hex::encode([&nonce[..], &data].concat()))
    }

    pub fn open(&self, scenario: Uuid, sealed: &str) -> Result<JobSecrets, SealError> {
        let bytes = hex::decode(sealed).ok().filter(|b| b.len() > NONCE_LEN).ok_or(SealError::Open(scenario))?;
        let (nonce, data) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SealError::Open(scenario))?;
        let mut data = data.to_vec();
        let plain = self
            .0
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(scenario.as_bytes()), &mut data)
            .map_err(|_| SealError::Open(scenario))?;
        serde_json::from_slice(plain).map_err(|_| SealError::Open(scenario))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_the_key_and_for_their_scenario() {
        let key = RunnerKey::from_secret(&"k".repeat(48)).unwrap();
        let other = RunnerKey::from_secret(&"j".repeat(48)).unwrap();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let secrets = JobSecrets {
            camera_url: "rtsp://admin:S3cret@cam/1".into(),
            results_key: "ab".repeat(32),
            kafka_password: None,
        };
        let sealed = key.seal(a, &secrets).unwrap();
        assert!(!sealed.contains("S3cret") && !sealed.contains(&"ab".repeat(32)));
        assert_ne!(sealed, key.seal(a, &secrets).unwrap(), "a fresh nonce each time");
        assert_eq!(key.open(a, &sealed).unwrap(), secrets);
        assert!(key.open(b, &sealed).is_err(), "bound to its scenario");
        assert!(other.open(a, &sealed).is_err());
        assert!(key.open(a, "zz").is_err() && key.open(a, &sealed[..30]).is_err());
        assert!(RunnerKey::from_secret("short").is_none());
    }
}
