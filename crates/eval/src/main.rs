//! `vap-eval`: prints the accuracy tables of docs/ACCURACY.md.
//!
//! vap-eval mot --gt PETS09-S2L1/gt/gt.txt [--video vtest.avi] [--model NAME]... [--models-dir DIR] [--tracks-out DIR] [--engine onnxruntime --onnxruntime-library PATH]
//! vap-eval score --gt FILE --tracks FILE   (any tracker's output, MOTChallenge format)
//! vap-eval detection --gt PETS09-S2L1/gt/gt.txt [--video vtest.avi] [--model NAME]...
//! vap-eval labelled [--model NAME]...   (the hand-labelled pictures of tests/eval, per class)
//! vap-eval walker [--model NAME]...   (the 16:9 street clip of vap_eval::scenes)
//! vap-eval counting [--gt PETS09-S2L1/gt/gt.txt] [--model NAME]...   (the clips of vap_eval::scenes, and vtest.avi)
//! vap-eval tracker --data DIR [--tracks-out DIR]     (DIR holds TUD-Campus/gt.txt and TUD-Stadtmitte/gt.txt)

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use vap_eval::report;
use vap_runner::engine::EngineChoice;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let values =
        |flag: &str| -> Vec<String> { args.windows(2).filter(|w| w[0] == flag).map(|w| w[1].clone()).collect() };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let engine = match value("--engine").as_deref() {
        None | Some("tract") => EngineChoice::Tract,
        Some("onnxruntime") => EngineChoice::OnnxRuntime {
            library: value("--onnxruntime-library").context("--onnxruntime-library PATH")?.into(),
            threads: 1,
        },
        Some(other) => bail!("--engine {other}: tract or onnxruntime"),
    };
    let cache = value("--cache").map(PathBuf::from).unwrap_or_else(|| root.join("target/eval-cache"));
    match args.first().map(String::as_str) {
        Some("mot") => {
            let gt = value("--gt").context("--gt FILE (MOTChallenge ground truth)")?;
            let video = value("--video").unwrap_or_else(|| report::VTEST.into());
            let models = values("--model");
            let out = report::mot_table(&report::MotRun {
                truth: gt.into(),
                video: video.into(),
                models_dir: value("--models-dir").map(PathBuf::from).unwrap_or_else(|| root.join("models")),
                models,
                engine,
                cache,
                tracks_out: value("--tracks-out").map(PathBuf::from),
            })?;
            print!("{out}");
        }
        Some("score") => {
            let read = |flag: &str| -> Result<Vec<vap_eval::MotBox>> {
                let path = value(flag).with_context(|| format!("{flag} FILE"))?;
                Ok(vap_eval::mot::parse(&std::fs::read_to_string(&path).with_context(|| path.clone())?)?)
            };
            println!("{:#?}", vap_eval::evaluate(&read("--gt")?, &read("--tracks")?));
        }
        Some("detection") => {
            let gt = value("--gt").context("--gt FILE (MOTChallenge ground truth)")?;
            print!(
                "{}",
                report::detection_table(&report::MotRun {
                    truth: gt.into(),
                    video: value("--video").unwrap_or_else(|| report::VTEST.into()).into(),
                    models_dir: value("--models-dir").map(PathBuf::from).unwrap_or_else(|| root.join("models")),
                    models: values("--model"),
                    engine,
                    cache,
                    tracks_out: None,
                })?
            );
        }
        Some("labelled") => {
            let models_dir = value("--models-dir").map(PathBuf::from).unwrap_or_else(|| root.join("models"));
            let set = root.join("tests/eval/ground_truth.toml");
            print!("{}", report::labelled_table(&models_dir, &values("--model"), &set, &cache.join("labelled"))?);
        }
        Some("walker") => {
            let models_dir = value("--models-dir").map(PathBuf::from).unwrap_or_else(|| root.join("models"));
            print!("{}", report::walker_table(&models_dir, &values("--model"), &engine, &cache)?);
        }
        Some("counting") => {
            print!(
                "{}",
                report::counting_table(&report::CountRun {
                    models_dir: value("--models-dir").map(PathBuf::from).unwrap_or_else(|| root.join("models")),
                    models: values("--model"),
                    engine,
                    cache: cache.clone(),
                    clips: cache.join("clips"),
                    vtest_truth: value("--gt").map(PathBuf::from),
                })?
            );
        }
        Some("tracker") => {
            let data = value("--data").context("--data DIR (with TUD-Campus/gt.txt, TUD-Stadtmitte/gt.txt)")?;
            let tracks_out = value("--tracks-out").map(PathBuf::from);
            print!("{}", report::tracker_table(Path::new(&data), tracks_out.as_deref())?);
        }
        _ => bail!("usage: vap-eval mot --gt FILE [--video FILE] [--model NAME]... | vap-eval tracker --data DIR"),
    }
    Ok(())
}
