//! The model catalogue: every manifest in `runner.models_dir`, by name. The API reads it to
//! check and show what a scenario may ask for; the runner to find the model a scenario names.
//! Neither links a model runtime here: manifests are TOML, digests are sha256.

pub mod manifest;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use manifest::{Manifest, ManifestError};

#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("models directory {dir}: {source}")]
    Dir { dir: PathBuf, source: std::io::Error },
    #[error("models directory {0} holds no model manifest (*.toml)")]
    Empty(PathBuf),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("model manifest {0}: no sha256; a catalogued model must name its file's digest")]
    NoDigest(PathBuf),
    #[error("model manifest {manifest}: cannot read {onnx}: {source}")]
    File { manifest: PathBuf, onnx: PathBuf, source: std::io::Error },
    #[error("model manifest {manifest}: {onnx} has sha256 {actual}, the manifest expects {expected}")]
    Digest { manifest: PathBuf, onnx: PathBuf, actual: String, expected: String },
    #[error("model name '{name}' is used by both {first} and {second}")]
    Duplicate { name: String, first: PathBuf, second: PathBuf },
    #[error("default model '{name}' is not in {dir} (it has: {have})")]
    NoDefault { name: String, dir: PathBuf, have: String },
}

/// How much of each model is checked when the catalogue loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Manifests, and each model file against its sha256 (services, once at start).
    Files,
    /// Manifests only: the runner checks the one model it loads.
    Manifests,
}

#[derive(Debug, Clone)]
pub struct Catalogue {
    dir: PathBuf,
    models: BTreeMap<String, Catalogued>,
    default: String,
}

#[derive(Debug, Clone)]
struct Catalogued {
    manifest: Manifest,
    path: PathBuf,
}

impl Catalogue {
    /// Reads every `*.toml` in `dir`; any manifest that fails makes the whole load fail, naming it.
    pub fn load(dir: &Path, default: &str, check: Check) -> Result<Self, CatalogueError> {
        let dir_err = |source| CatalogueError::Dir { dir: dir.into(), source };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(dir_err)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(dir_err)?;
        paths.retain(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file());
        paths.sort();
        if paths.is_empty() {
            return Err(CatalogueError::Empty(dir.into()));
        }
        let mut models: BTreeMap<String, Catalogued> = BTreeMap::new();
        for path in paths {
            let manifest = Manifest::load(&path)?;
            let Some(expected) = manifest.sha256.clone() else { return Err(CatalogueError::NoDigest(path)) };
            let file_err =
                |source| CatalogueError::File { manifest: path.clone(), onnx: manifest.onnx.clone(), source };
            if !manifest.onnx.is_file() {
                return Err(file_err(std::io::Error::from(std::io::ErrorKind::NotFound)));
            }
            if check == Check::Files {
                let actual = file_sha256(&manifest.onnx).map_err(file_err)?;
                if !actual.eq_ignore_ascii_case(&expected) {
                    return Err(CatalogueError::Digest { manifest: path, onnx: manifest.onnx, actual, expected });
                }
            }
            if let Some(first) = models.get(&manifest.name) {
                return Err(CatalogueError::Duplicate { name: manifest.name, first: first.path.clone(), second: path });
            }
            models.insert(manifest.name.clone(), Catalogued { manifest, path });
        }
        if !models.contains_key(default) {
            let have = models.keys().cloned().collect::<Vec<_>>().join(", ");
            return Err(CatalogueError::NoDefault { name: default.into(), dir: dir.into(), have });
        }
        Ok(Self { dir: dir.into(), models, default: default.into() })
    }

    pub fn get(&self, name: &str) -> Option<&Manifest> {
        self.models.get(name).map(|c| &c.manifest)
    }

    /// The manifest file of a model, for the runner's loader.
    pub fn manifest_path(&self, name: &str) -> Option<&Path> {
        self.models.get(name).map(|c| c.path.as_path())
    }

    pub fn default_name(&self) -> &str {
        &self.default
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Models by name.
    pub fn iter(&self) -> impl Iterator<Item = &Manifest> {
        self.models.values().map(|c| &c.manifest)
    }

    pub fn names(&self) -> Vec<&str> {
        self.models.keys().map(String::as_str).collect()
    }
}

/// A file's sha256, lowercase hex, read in blocks (models are tens of megabytes).
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut block)?;
        if n == 0 {
            break;
        }
        hasher.update(&block[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models")
    }

    /// A copy of the shipped person model's manifest, changed by `edit`, in a directory of its own.
    fn dir_with(edit: impl Fn(String) -> String) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(shipped().join("ssdlite_person_300.toml")).unwrap();
        let onnx = shipped().join("ssdlite_person_300.onnx");
        let text =
            text.replace("onnx = \"ssdlite_person_300.onnx\"", &format!("onnx = {:?}", onnx.display().to_string()));
        std::fs::write(dir.path().join("person.toml"), edit(text)).unwrap();
        dir
    }

    #[test]
    fn the_shipped_models_load_with_their_digests_checked() {
        let c = Catalogue::load(&shipped(), "ssdlite_person_300", Check::Files).unwrap();
        assert_eq!(c.names(), ["ssdlite_person_300", "yolov3_tiny_coco_416", "yolov4_tiny_coco_416"]);
        let coco = c.get("yolov3_tiny_coco_416").unwrap();
        assert_eq!((coco.labels.len(), coco.labels[2].as_str()), (80, "car"));
        assert_eq!(c.default_name(), "ssdlite_person_300");
    }

    #[test]
    fn each_bad_catalogue_is_an_error_naming_the_problem() {
        type Edit = Box<dyn Fn(String) -> String>;
        let cases: [(&str, Edit, &str); 5] = [
            ("wrong digest", Box::new(|t| t.replace("sha256 = \"849c", "sha256 = \"0000")), "has sha256 849c"),
            (
                "no digest",
                Box::new(|t| t.lines().filter(|l| !l.starts_with("sha256")).collect::<Vec<_>>().join("\n")),
                "no sha256",
            ),
            ("missing file", Box::new(|t| t.replace("ssdlite_person_300.onnx", "gone.onnx")), "gone.onnx"),
            ("no labels", Box::new(|t| t.replace("labels = [\"background\", \"person\"]", "labels = []")), "labels"),
            (
                "unknown default",
                Box::new(|t| t.replace("name = \"ssdlite_person_300\"", "name = \"other\"")),
                "default model 'ssdlite_person_300' is not in",
            ),
        ];
        for (what, edit, expected) in cases {
            let dir = dir_with(edit);
            let err = Catalogue::load(dir.path(), "ssdlite_person_300", Check::Files).unwrap_err().to_string();
            assert!(err.contains(expected), "{what}: {err}");
            if what != "unknown default" {
                assert!(err.contains("person.toml"), "{what} names the manifest: {err}");
            }
        }
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(Catalogue::load(empty.path(), "x", Check::Files), Err(CatalogueError::Empty(_))));
    }
}
