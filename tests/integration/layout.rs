//! The workspace's layout is the architecture: OpenCV and the inference engines are
//! dependencies of vap-runner alone.

use std::process::Command;

/// Every package `krate` depends on for its code (not its tests), by name.
fn normal_dependencies(krate: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "--offline", "--locked", "-e", "normal", "--prefix", "none", "--format", "{p}", "-p", krate])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "cargo tree -p {krate}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

const RUNNER_ONLY: [&str; 4] = ["opencv", "tract-onnx", "tract-linalg", "ort"];

#[test]
fn only_the_runner_links_opencv_and_the_inference_engines() {
    for krate in ["vap-core", "vap-api", "vap-relay", "vap-orchestrator", "vap-analytics", "vap-dev"] {
        let deps = normal_dependencies(krate);
        assert!(deps.iter().any(|d| d == krate), "cargo tree -p {krate} lists the crate itself: {deps:?}");
        let linked: Vec<_> = RUNNER_ONLY.iter().filter(|r| deps.iter().any(|d| d == *r)).collect();
        assert!(linked.is_empty(), "{krate} depends on {linked:?}");
    }
    // The check can fail: the runner does depend on all of them.
    let runner = normal_dependencies("vap-runner");
    for r in RUNNER_ONLY {
        assert!(runner.iter().any(|d| d == r), "vap-runner should depend on {r}");
    }
}

#[test]
fn every_metric_name_has_one_meaning() {
    let families = vap_api::metrics::FAMILIES
        .iter()
        .chain(&vap_relay::metrics::FAMILIES)
        .chain(&vap_orchestrator::metrics::FAMILIES);
    let mut seen = std::collections::BTreeMap::new();
    for f in families {
        assert!(f.name.starts_with("vap_"), "{} is not in vap's namespace", f.name);
        if let Some(other) = seen.insert(f.name, f) {
            panic!("{} is declared twice: {other:?} and {f:?}", f.name);
        }
    }
    assert!(seen.len() >= 30, "{} metrics declared", seen.len());
}
