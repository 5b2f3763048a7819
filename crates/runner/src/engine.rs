//! What runs a model: a prepared input in, the model's outputs out. tract (pure Rust, the
//! default) or onnxruntime, whose library (from PyPI's `onnxruntime` wheel) is opened at run
//! time only when chosen: the runner links neither it nor anything it needs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tract_onnx::prelude::*;

use vap_core::config::{InferenceEngine, RunnerSettings};

/// An engine that cannot load its model or run it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("inference: {0}")]
    Inference(String),
}

/// Which engine runs the model, and how.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineChoice {
    /// Its threads are process-wide (`tract_linalg`'s executor, set by the runner).
    Tract,
    OnnxRuntime {
        library: PathBuf,
        threads: usize,
    },
}

impl EngineChoice {
    pub fn from_settings(rs: &RunnerSettings) -> Self {
        match rs.engine {
            InferenceEngine::Tract => Self::Tract,
            InferenceEngine::Onnxruntime => Self::OnnxRuntime {
                // Validated by the config: set when this engine is chosen.
                library: rs.onnxruntime_library.clone().unwrap_or_default(),
                threads: rs.inference_threads,
            },
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Tract => "tract",
            Self::OnnxRuntime { .. } => "onnxruntime",
        }
    }
}

/// One output tensor, copied out of the engine: at most a few hundred thousand values (boxes
/// and scores), a fraction of a millisecond against tens of milliseconds of inference.
pub struct Output {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Output {
    pub fn view(&self) -> Result<tract_ndarray::ArrayViewD<'_, f32>, EngineError> {
        tract_ndarray::ArrayViewD::from_shape(tract_ndarray::IxDyn(&self.shape), &self.data)
            .map_err(|e| EngineError::Inference(e.to_string()))
    }
}

/// A model loaded, optimised and planned for one input shape.
pub trait Engine: Send {
    /// The outputs named at load time, in that order.
    fn run(&mut self, input: &[f32]) -> Result<Vec<Output>, EngineError>;
    /// "tract" or "onnxruntime", as `runner.engine` names it.
    fn name(&self) -> &'static str;
}

/// Loads `model` (ONNX bytes) for a fixed input `shape`, keeping `outputs` by name.
pub fn load(
    choice: &EngineChoice,
    model: &[u8],
    path: &Path,
    shape: [usize; 4],
    outputs: &[&str],
) -> Result<Box<dyn Engine>, EngineError> {
    Ok(match choice {
        EngineChoice::Tract => Box::new(TractEngine::load(model, path, shape, outputs)?),
        EngineChoice::OnnxRuntime { library, threads } => {
            Box::new(OnnxRuntimeEngine::load(library, *threads, model, path, shape, outputs)?)
        }
    })
}

struct TractEngine {
    plan: Arc<TypedSimplePlan>,
    shape: [usize; 4],
}

impl TractEngine {
    fn load(model: &[u8], path: &Path, shape: [usize; 4], outputs: &[&str]) -> Result<Self, EngineError> {
        let load_err = |e: TractError| EngineError::Load { path: path.display().to_string(), reason: format!("{e:#}") };
        // Exported detectors often declare symbolic shapes: trust ours instead.
        let mut graph = tract_onnx::onnx()
            .with_ignore_output_shapes(true)
            .with_ignore_value_info(true)
            .model_for_read(&mut &model[..])
            .map_err(load_err)?;
        graph.select_outputs_by_name(outputs).map_err(load_err)?;
        let plan = graph
            .with_input_fact(0, f32::fact(shape).into())
            .map_err(load_err)?
            .into_optimized()
            .map_err(load_err)?
            .into_runnable()
            .map_err(load_err)?;
        Ok(Self { plan, shape })
    }
}

impl Engine for TractEngine {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn run(&mut self, input: &[f32]) -> Result<Vec<Output>, EngineError> {
        let err = |e: TractError| EngineError::Inference(format!("{e:#}"));
        let tensor = Tensor::from_shape(&self.shape, input).map_err(err)?;
        let outputs = self.plan.run(tvec!(tensor.into())).map_err(err)?;
        outputs
            .iter()
            .map(|t| {
                let view = t.to_plain_array_view::<f32>().map_err(err)?;
                Ok(Output { shape: view.shape().to_vec(), data: view.iter().copied().collect() })
            })
            .collect()
    }
}

struct OnnxRuntimeEngine {
    session: ort::session::Session,
    shape: [usize; 4],
    input: String,
    outputs: Vec<String>,
}

/// onnxruntime allows one environment per process, and its library is opened once: the first
/// library that loads serves the process, and asking for another is an error. A failed attempt
/// is not kept.
fn environment(library: &Path) -> Result<ort::environment::Environment, EngineError> {
    static ENVIRONMENT: Mutex<Option<(PathBuf, ort::environment::Environment)>> = Mutex::new(None);
    let failed = |reason: String| EngineError::Load { path: library.display().to_string(), reason };
    if !library.is_file() {
        return Err(failed(
            "no such file: runner.onnxruntime_library must name onnxruntime's library (from PyPI's \
             onnxruntime wheel; VAP_ONNXRUNTIME=1 scripts/setup installs it, as Ansible does on workers)"
                .into(),
        ));
    }
    let mut environment = vap_core::sys::lock(&ENVIRONMENT);
    match &*environment {
        Some((loaded, e)) if loaded == library => return Ok(e.clone()),
        Some((loaded, _)) => {
            return Err(failed(format!("this process already runs onnxruntime from {}", loaded.display())))
        }
        None => {}
    }
    let built = ort::init_from(library)
        .map_err(|e| failed(e.to_string()))?
        .with_name("vap-runner")
        .with_logger(std::sync::Arc::new(log_onnxruntime))
        .build()
        .map_err(|e| failed(e.to_string()))?;
    *environment = Some((library.to_path_buf(), built.clone()));
    Ok(built)
}

/// onnxruntime's own messages, into the runner's log (JSON when configured).
fn log_onnxruntime(level: ort::logging::LogLevel, category: &str, _id: &str, location: &str, message: &str) {
    use ort::logging::LogLevel;
    match level {
        LogLevel::Error | LogLevel::Fatal => tracing::error!(target: "onnxruntime", category, location, "{message}"),
        LogLevel::Warning => tracing::warn!(target: "onnxruntime", category, location, "{message}"),
        LogLevel::Info | LogLevel::Verbose => tracing::debug!(target: "onnxruntime", category, location, "{message}"),
    }
}

impl OnnxRuntimeEngine {
    fn load(
        library: &Path,
        threads: usize,
        model: &[u8],
        path: &Path,
        shape: [usize; 4],
        outputs: &[&str],
    ) -> Result<Self, EngineError> {
        let load_err =
            |e: &dyn std::fmt::Display| EngineError::Load { path: path.display().to_string(), reason: e.to_string() };
        let environment = environment(library)?;
        let builder = ort::session::Session::builder(&environment).map_err(|e| load_err(&e))?;
        // Spinning threads would burn the CPU a camera pays for between frames.
        let mut builder = builder
            .with_optimization_level(ort::session::builder::GraphOptimizationLevel::All)
            .map_err(|e| load_err(&e))?
            .with_intra_threads(threads)
            .map_err(|e| load_err(&e))?
            .with_inter_threads(1)
            .map_err(|e| load_err(&e))?
            .with_intra_op_spinning(false)
            .map_err(|e| load_err(&e))?;
        let session = builder.commit_from_memory(model).map_err(|e| load_err(&e))?;
        let input = session
            .inputs()
            .first()
            .map(|i| i.name().to_string())
            .ok_or_else(|| load_err(&"the model has no input"))?;
        if let Some(name) = outputs.iter().find(|name| !session.outputs().iter().any(|o| o.name() == **name)) {
            return Err(load_err(&format!("the model has no output '{name}'")));
        }
        let mut engine = Self { session, shape, input, outputs: outputs.iter().map(|s| s.to_string()).collect() };
        // A manifest whose input size the model does not take fails here, not on every frame.
        engine.run(&vec![0.0; shape.iter().product()]).map_err(|e| load_err(&e))?;
        Ok(engine)
    }
}

impl Engine for OnnxRuntimeEngine {
    fn name(&self) -> &'static str {
        "onnxruntime"
    }

    fn run(&mut self, input: &[f32]) -> Result<Vec<Output>, EngineError> {
        let err = |e: ort::Error| EngineError::Inference(e.to_string());
        let tensor = ort::value::TensorRef::from_array_view((self.shape, input)).map_err(err)?;
        let results = self.session.run(ort::inputs![self.input.as_str() => tensor]).map_err(err)?;
        self.outputs
            .iter()
            .map(|name| {
                let (shape, data) = results[name.as_str()].try_extract_tensor::<f32>().map_err(err)?;
                Ok(Output { shape: shape.iter().map(|&d| d.max(0) as usize).collect(), data: data.to_vec() })
            })
            .collect()
    }
}
