//! What one camera looks for: the model, how often, which classes, how sure, and which part of
//! the picture to ignore. The API checks them against the model catalogue (a 400 naming the
//! field), the orchestrator hands them to the runner, the runner applies them.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::detection::Detection;
use crate::models::{Catalogue, Manifest};

pub const FPS: RangeInclusive<f64> = 0.1..=30.0;
pub const MAX_POLYGONS: usize = 16;
pub const MAX_POINTS: usize = 64;
pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_ZONES: usize = 16;
pub const MAX_LINES: usize = 16;
pub const MAX_REGION_NAME_CHARS: usize = 100;
/// The longest dwell a zone may wait for: a day.
pub const DWELL_SECONDS: RangeInclusive<f64> = 1.0..=86_400.0;
/// The fields a request may set, in the order they are checked.
pub const FIELDS: [&str; 13] = [
    "name",
    "model",
    "fps",
    "classes",
    "min_confidence",
    "mask",
    "zones",
    "lines",
    "webhook_url",
    "snapshot_interval_s",
    "retention_days",
    "decode",
    "motion_gating",
];
/// Seconds between two snapshots of a scenario (besides those of its events).
pub const SNAPSHOT_INTERVAL_S: RangeInclusive<f64> = 0.5..=3600.0;
pub const DEFAULT_SNAPSHOT_INTERVAL_S: f64 = 2.0;
pub const MAX_WEBHOOK_URL_CHARS: usize = 2048;
/// Days a scenario's results, events and snapshots are kept, when shorter than
/// `retention.results_days` (which wins when it is shorter).
pub const RETENTION_DAYS: RangeInclusive<u32> = 1..=36_500;

/// A polygon in normalised image coordinates (0..1, origin top left), as `[[x, y], ...]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Polygon(pub Vec<[f64; 2]>);

impl Polygon {
    /// Even-odd rule: a point on the crossing count's odd side is inside.
    pub fn contains(&self, x: f64, y: f64) -> bool {
        let p = &self.0;
        let mut inside = false;
        let mut j = p.len() - 1;
        for i in 0..p.len() {
            let ([xi, yi], [xj, yj]) = (p[i], p[j]);
            if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
                inside = !inside;
            }
            j = i;
        }
        inside
    }
}

/// A scenario's options as stored. `model` and `fps` are resolved when the scenario is created;
/// `classes` and `min_confidence` stay unset until a request sets them, because their defaults
/// depend on the model (every class it has; its own threshold).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScenarioOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Unset only on scenarios created before options existed: the configured default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Unset only on scenarios created before options existed: `runner.sample_fps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// f64 like every number a request gives, so what is stored reads back as it was sent.
    pub min_confidence: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mask: Vec<Polygon>,
    /// Areas whose visitors are reported (entered, left, dwell).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<Zone>,
    /// Lines whose crossings are reported, with a direction.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<Line>,
    /// Where each of the scenario's events is POSTed (crates/relay/src/webhooks.rs), besides the global one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Unset: [`DEFAULT_SNAPSHOT_INTERVAL_S`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_interval_s: Option<f64>,
    /// Unset: `retention.results_days`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
    /// Unset: on. Off analyses every sampled frame, moving or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub motion_gating: Option<bool>,
    /// Unset: every frame. Set when the scenario is created; a PATCH can't change it (the
    /// runner sets its decoder up once, before its threads start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode: Option<DecodeMode>,
}

/// Which of a stream's frames the runner decodes; the analysed ones are sampled among them.
/// Decoding fewer costs less CPU, but the analysis can then be no more frequent than the frames
/// decoded (key frames: usually one every 1 to 4 s of a camera's stream).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecodeMode {
    #[default]
    All,
    /// Frames other frames refer to: skips only what nothing else needs (B-frames mostly), so
    /// every decoded frame is whole.
    Reference,
    /// Key frames only.
    Keyframes,
}

impl DecodeMode {
    pub const ALL: [Self; 3] = [Self::All, Self::Reference, Self::Keyframes];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Reference => "reference",
            Self::Keyframes => "keyframes",
        }
    }
}

/// A named area. An object is in it when the bottom centre of its box is (where it stands).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Zone {
    pub name: String,
    pub polygon: Polygon,
    /// Only these classes count; unset: every class the scenario keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
    /// A `dwell` event when an object stays this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dwell_seconds: Option<f64>,
}

/// A named segment `[[x, y], [x, y]]`. Crossing it towards the left of the way from its first
/// point to its second, as the picture is shown, is `in`; the other way `out`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    pub name: String,
    pub points: [[f64; 2]; 2],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
}

/// An option a request got wrong: the field (a path such as `mask[0][2]`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct OptionError {
    pub field: String,
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> OptionError {
    OptionError { field: field.into(), reason: reason.into() }
}

/// Where omitted options come from.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub catalogue: Catalogue,
    /// `runner.sample_fps`.
    pub fps: f64,
    /// `runner.score_threshold`: the operator's confidence for every model, over each model's own.
    pub min_confidence: Option<f32>,
}

impl ScenarioOptions {
    /// The options of a new scenario: `fields` is the request body without `camera_url`.
    pub fn from_request(fields: &Map<String, Value>, defaults: &Defaults) -> Result<Self, OptionError> {
        let base = Self {
            model: Some(defaults.catalogue.default_name().to_string()),
            fps: Some(defaults.fps),
            ..Self::default()
        };
        base.patched(fields, defaults)
    }

    /// A JSON merge patch (RFC 7396) of these options: a field given replaces, a `null` goes
    /// back to the default, an absent field stays.
    pub fn patched(&self, patch: &Map<String, Value>, defaults: &Defaults) -> Result<Self, OptionError> {
        if let Some(unknown) = patch.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(invalid(unknown.as_str(), format!("not an option; options are {}", FIELDS.join(", "))));
        }
        let mut next = self.clone();
        for field in FIELDS {
            let Some(value) = patch.get(field) else { continue };
            let null = value.is_null();
            match field {
                "name" => next.name = if null { None } else { Some(name(value)?) },
                "model" => {
                    next.model = Some(if null {
                        defaults.catalogue.default_name().to_string()
                    } else {
                        model(value, &defaults.catalogue)?
                    })
                }
                "fps" => next.fps = Some(if null { defaults.fps } else { number(field, value, FPS)? }),
                "classes" => next.classes = if null { None } else { Some(strings(field, value)?) },
                "min_confidence" => {
                    next.min_confidence = if null { None } else { Some(number(field, value, 0.0..=1.0)?) }
                }
                "mask" => next.mask = if null { Vec::new() } else { mask(value)? },
                "zones" => next.zones = if null { Vec::new() } else { zones(value)? },
                "lines" => next.lines = if null { Vec::new() } else { lines(value)? },
                "webhook_url" => next.webhook_url = if null { None } else { Some(webhook_url(value)?) },
                "snapshot_interval_s" => {
                    next.snapshot_interval_s =
                        if null { None } else { Some(number(field, value, SNAPSHOT_INTERVAL_S)?) }
                }
                "retention_days" => {
                    next.retention_days = if null { None } else { Some(whole(field, value, RETENTION_DAYS)?) }
                }
                "decode" => {
                    next.decode = match value {
                        Value::Null => None,
                        Value::String(name) => {
                            Some(DecodeMode::ALL.into_iter().find(|m| m.as_str() == name).ok_or_else(|| {
                                let names = DecodeMode::ALL.map(DecodeMode::as_str).join(", ");
                                invalid(field, format!("must be one of {names}, got '{name}'"))
                            })?)
                        }
                        other => return Err(invalid(field, format!("must be a string, got {}", kind(other)))),
                    }
                }
                _ => {
                    next.motion_gating = match value {
                        Value::Null => None,
                        Value::Bool(b) => Some(*b),
                        other => return Err(invalid(field, format!("must be true or false, got {}", kind(other)))),
                    }
                }
            }
        }
        // Checked after the model is known: a patch may change both.
        let model = next.model_name(&defaults.catalogue).to_string();
        let manifest = defaults.catalogue.get(&model).ok_or_else(|| invalid("model", "not in the catalogue"))?;
        let class_lists = std::iter::once(("classes".to_string(), next.classes.as_mut()))
            .chain(next.zones.iter_mut().enumerate().map(|(i, z)| (format!("zones[{i}].classes"), z.classes.as_mut())))
            .chain(next.lines.iter_mut().enumerate().map(|(i, l)| (format!("lines[{i}].classes"), l.classes.as_mut())));
        for (field, classes) in class_lists {
            let Some(classes) = classes else { continue };
            for class in classes.iter_mut() {
                // darknet's names for COCO classes (motorbike, sofa, ...) still work, as COCO's.
                match manifest.class_named(class) {
                    Some(known) => *class = known.to_string(),
                    None => {
                        let known: Vec<&str> = manifest.classes().collect();
                        let hint =
                            if known.len() <= 12 { format!("; it has {}", known.join(", ")) } else { String::new() };
                        let reason = format!("model '{}' has no class '{class}'{hint}", manifest.name);
                        return Err(invalid(field, reason));
                    }
                }
            }
            let mut seen = std::collections::HashSet::new();
            classes.retain(|c| seen.insert(c.clone()));
        }
        Ok(next)
    }

    /// The model, falling back to the catalogue's default for scenarios older than options.
    pub fn model_name<'c>(&'c self, catalogue: &'c Catalogue) -> &'c str {
        self.model.as_deref().unwrap_or(catalogue.default_name())
    }

    pub fn manifest<'c>(&'c self, catalogue: &'c Catalogue) -> Option<&'c Manifest> {
        catalogue.get(self.model_name(catalogue))
    }

    pub fn motion_gating(&self) -> bool {
        self.motion_gating.unwrap_or(true)
    }

    pub fn decode(&self) -> DecodeMode {
        self.decode.unwrap_or_default()
    }

    pub fn snapshot_interval(&self) -> std::time::Duration {
        let secs = self.snapshot_interval_s.unwrap_or(DEFAULT_SNAPSHOT_INTERVAL_S);
        // Checked options hold a valid interval; any other value means the default, never a panic.
        std::time::Duration::try_from_secs_f64(secs)
            .unwrap_or_else(|_| std::time::Duration::from_secs_f64(DEFAULT_SNAPSHOT_INTERVAL_S))
    }

    /// Options that arrive from elsewhere (a control record), checked by the rules a request's
    /// options meet.
    pub fn checked(&self, defaults: &Defaults) -> Result<Self, OptionError> {
        match serde_json::to_value(self) {
            Ok(Value::Object(fields)) => Self::default().patched(&fields, defaults),
            _ => Err(invalid("options", "must be an object")),
        }
    }

    /// The confidence a detection needs: the scenario's, else the operator's, else the model's.
    pub fn effective_min_confidence(&self, manifest: &Manifest, operator: Option<f32>) -> f32 {
        self.min_confidence.map(|c| c as f32).or(operator).unwrap_or(manifest.thresholds.score)
    }

    /// A digest of what the runner is asked to do: equal options, equal digest.
    pub fn digest(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        format!("{:x}", Sha256::digest(&canonical))[..16].to_string()
    }

    /// Whether a detection in a `width` x `height` frame passes the class list and the mask
    /// (a box whose centre lies in a mask polygon is dropped).
    pub fn keeps(&self, d: &Detection, width: f32, height: f32) -> bool {
        if self.classes.as_ref().is_some_and(|allowed| !allowed.contains(&d.class)) {
            return false;
        }
        if self.mask.is_empty() || width <= 0.0 || height <= 0.0 {
            return true;
        }
        let centre = |a: f32, b: f32, size: f32| f64::from((a + b) / 2.0 / size);
        let (cx, cy) = (centre(d.bbox[0], d.bbox[2], width), centre(d.bbox[1], d.bbox[3], height));
        !self.mask.iter().any(|p| p.contains(cx, cy))
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn name(v: &Value) -> Result<String, OptionError> {
    let s = v.as_str().ok_or_else(|| invalid("name", format!("must be a string, got {}", kind(v))))?;
    let n = s.chars().count();
    if n == 0 || n > MAX_NAME_CHARS {
        return Err(invalid("name", format!("must be 1 to {MAX_NAME_CHARS} characters, got {n}")));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid("name", "must not contain control characters"));
    }
    Ok(s.to_string())
}

fn model(v: &Value, catalogue: &Catalogue) -> Result<String, OptionError> {
    let s = v.as_str().ok_or_else(|| invalid("model", format!("must be a string, got {}", kind(v))))?;
    match catalogue.get(s) {
        Some(m) => Ok(m.name.clone()),
        None => {
            Err(invalid("model", format!("unknown model '{s}'; the catalogue has {}", catalogue.names().join(", "))))
        }
    }
}

fn number(field: &str, v: &Value, range: RangeInclusive<f64>) -> Result<f64, OptionError> {
    let n = v.as_f64().ok_or_else(|| invalid(field, format!("must be a number, got {}", kind(v))))?;
    if !range.contains(&n) {
        return Err(invalid(field, format!("must be from {} to {}, got {n}", range.start(), range.end())));
    }
    Ok(n)
}

fn whole(field: &str, v: &Value, range: RangeInclusive<u32>) -> Result<u32, OptionError> {
    let n = v.as_u64().ok_or_else(|| invalid(field, format!("must be a whole number, got {}", kind(v))))?;
    match u32::try_from(n) {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(invalid(field, format!("must be from {} to {}, got {n}", range.start(), range.end()))),
    }
}

fn strings(field: &str, v: &Value) -> Result<Vec<String>, OptionError> {
    let items = v.as_array().ok_or_else(|| invalid(field, format!("must be an array of strings, got {}", kind(v))))?;
    if items.is_empty() {
        return Err(invalid(field, "must name at least one class (null: every class)"));
    }
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let s = item
            .as_str()
            .ok_or_else(|| invalid(format!("{field}[{i}]"), format!("must be a string, got {}", kind(item))))?;
        if !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    }
    Ok(out)
}

fn mask(v: &Value) -> Result<Vec<Polygon>, OptionError> {
    list("mask", v, MAX_POLYGONS, "polygons")?
        .iter()
        .enumerate()
        .map(|(i, polygon)| polygon_at(&format!("mask[{i}]"), polygon))
        .collect()
}

fn polygon_at(field: &str, polygon: &Value) -> Result<Polygon, OptionError> {
    let points = polygon
        .as_array()
        .ok_or_else(|| invalid(field, format!("must be an array of [x, y] points, got {}", kind(polygon))))?;
    if !(3..=MAX_POINTS).contains(&points.len()) {
        return Err(invalid(field, format!("must have 3 to {MAX_POINTS} points, got {}", points.len())));
    }
    let points = points
        .iter()
        .enumerate()
        .map(|(j, point)| point_at(format!("{field}[{j}]"), point))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Polygon(points))
}

/// A point `[x, y]` in normalised coordinates.
fn point_at(field: String, point: &Value) -> Result<[f64; 2], OptionError> {
    let xy: Vec<f64> = point.as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default();
    match xy.as_slice() {
        [x, y] if point.as_array().is_some_and(|a| a.len() == 2) => {
            if (0.0..=1.0).contains(x) && (0.0..=1.0).contains(y) {
                Ok([*x, *y])
            } else {
                Err(invalid(field, format!("coordinates are normalised to 0..1, got [{x}, {y}]")))
            }
        }
        _ => Err(invalid(field, format!("must be a point [x, y] of two numbers, got {point}"))),
    }
}

/// `field` of an object, which must be one; its keys must be among `known`.
fn object<'v>(field: &str, v: &'v Value, known: &[&str]) -> Result<&'v Map<String, Value>, OptionError> {
    let o = v.as_object().ok_or_else(|| invalid(field, format!("must be an object, got {}", kind(v))))?;
    if let Some(unknown) = o.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(invalid(format!("{field}.{unknown}"), format!("not a field; fields are {}", known.join(", "))));
    }
    Ok(o)
}

/// The `name` of a zone or line: given, short, printable, unique among `taken`.
fn region_name(field: &str, o: &Map<String, Value>, taken: &[String]) -> Result<String, OptionError> {
    let field = format!("{field}.name");
    let v = o.get("name").ok_or_else(|| invalid(&field, "is required"))?;
    let s = v.as_str().ok_or_else(|| invalid(&field, format!("must be a string, got {}", kind(v))))?;
    let n = s.chars().count();
    if n == 0 || n > MAX_REGION_NAME_CHARS || s.chars().any(char::is_control) {
        return Err(invalid(field, format!("must be 1 to {MAX_REGION_NAME_CHARS} printable characters")));
    }
    if taken.iter().any(|t| t == s) {
        return Err(invalid(field, format!("'{s}' is used twice")));
    }
    Ok(s.to_string())
}

fn list<'v>(field: &str, v: &'v Value, max: usize, what: &str) -> Result<&'v Vec<Value>, OptionError> {
    let items = v.as_array().ok_or_else(|| invalid(field, format!("must be an array of {what}, got {}", kind(v))))?;
    if items.len() > max {
        return Err(invalid(field, format!("at most {max} {what}, got {}", items.len())));
    }
    Ok(items)
}

/// An http(s) URL with a host and no credentials (the signature authenticates vap instead).
/// Whether its host may be reached is the destination policy's to say (the API checks literal
/// addresses, the sender every address it connects to).
fn webhook_url(v: &Value) -> Result<String, OptionError> {
    let field = "webhook_url";
    let s = v.as_str().ok_or_else(|| invalid(field, format!("must be a string, got {}", kind(v))))?;
    if s.chars().count() > MAX_WEBHOOK_URL_CHARS || s.chars().any(|c| c.is_control() || c == '\\') {
        return Err(invalid(field, format!("must be at most {MAX_WEBHOOK_URL_CHARS} printable characters")));
    }
    let url = url::Url::parse(s).map_err(|e| invalid(field, format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(field, format!("must be http or https, got {}", url.scheme())));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(field, "must name a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(field, "must not carry credentials; receivers check the signature"));
    }
    Ok(url.to_string())
}

fn zones(v: &Value) -> Result<Vec<Zone>, OptionError> {
    let mut out: Vec<Zone> = Vec::new();
    for (i, item) in list("zones", v, MAX_ZONES, "zones")?.iter().enumerate() {
        let field = format!("zones[{i}]");
        let o = object(&field, item, &["name", "polygon", "classes", "dwell_seconds"])?;
        let name = region_name(&field, o, &out.iter().map(|z| z.name.clone()).collect::<Vec<_>>())?;
        let polygon_field = format!("{field}.polygon");
        let polygon = o.get("polygon").ok_or_else(|| invalid(&polygon_field, "is required"))?;
        let polygon = polygon_at(&polygon_field, polygon)?;
        let classes = match o.get("classes") {
            None | Some(Value::Null) => None,
            Some(c) => Some(strings(&format!("{field}.classes"), c)?),
        };
        let dwell_seconds = match o.get("dwell_seconds") {
            None | Some(Value::Null) => None,
            Some(d) => Some(number(&format!("{field}.dwell_seconds"), d, DWELL_SECONDS)?),
        };
        out.push(Zone { name, polygon, classes, dwell_seconds });
    }
    Ok(out)
}

fn lines(v: &Value) -> Result<Vec<Line>, OptionError> {
    let mut out: Vec<Line> = Vec::new();
    for (i, item) in list("lines", v, MAX_LINES, "lines")?.iter().enumerate() {
        let field = format!("lines[{i}]");
        let o = object(&field, item, &["name", "points", "classes"])?;
        let name = region_name(&field, o, &out.iter().map(|l| l.name.clone()).collect::<Vec<_>>())?;
        let points_field = format!("{field}.points");
        let points = o.get("points").ok_or_else(|| invalid(&points_field, "is required"))?;
        let points = match points.as_array().map(Vec::as_slice) {
            Some([a, b]) => [point_at(format!("{points_field}[0]"), a)?, point_at(format!("{points_field}[1]"), b)?],
            _ => return Err(invalid(points_field, format!("must be two points [[x, y], [x, y]], got {points}"))),
        };
        if points[0] == points[1] {
            return Err(invalid(points_field, "the two points must differ"));
        }
        let classes = match o.get("classes") {
            None | Some(Value::Null) => None,
            Some(c) => Some(strings(&format!("{field}.classes"), c)?),
        };
        out.push(Line { name, points, classes });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::Check;
    use serde_json::json;

    fn catalogue() -> Catalogue {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
        Catalogue::load(&dir, "ssdlite_person_300", Check::Manifests).unwrap()
    }

    fn defaults() -> Defaults {
        Defaults { catalogue: catalogue(), fps: 2.0, min_confidence: None }
    }

    fn parse(body: Value) -> Result<ScenarioOptions, OptionError> {
        ScenarioOptions::from_request(body.as_object().unwrap(), &defaults())
    }

    #[test]
    fn options_from_elsewhere_meet_the_request_rules_and_never_panic_on_a_value() {
        let good = parse(json!({"fps": 3, "classes": ["person"], "snapshot_interval_s": 5})).unwrap();
        assert_eq!(good.checked(&defaults()).unwrap(), good);
        let forged: ScenarioOptions =
            serde_json::from_value(json!({"model": "ssdlite_person_300", "snapshot_interval_s": -1})).unwrap();
        assert_eq!(forged.checked(&defaults()).unwrap_err().field, "snapshot_interval_s");
        assert_eq!(forged.snapshot_interval(), std::time::Duration::from_secs_f64(DEFAULT_SNAPSHOT_INTERVAL_S));
        let unknown: ScenarioOptions = serde_json::from_value(json!({"model": "no_such_model"})).unwrap();
        assert_eq!(unknown.checked(&defaults()).unwrap_err().field, "model");
    }

    #[test]
    fn decode_defaults_to_every_frame_and_round_trips_through_the_runner_s_json() {
        assert_eq!(parse(json!({})).unwrap().decode(), DecodeMode::All);
        for mode in DecodeMode::ALL {
            let o = parse(json!({"decode": mode.as_str()})).unwrap();
            assert_eq!(o.decode, Some(mode));
            // What the orchestrator hands the runner (VAP_SCENARIO_OPTIONS) reads back the same.
            let back: ScenarioOptions = serde_json::from_str(&serde_json::to_string(&o).unwrap()).unwrap();
            assert_eq!(back.decode(), mode);
        }
        assert_eq!(parse(json!({"decode": null})).unwrap().decode, None);
        let err = parse(json!({"decode": "Reference"})).unwrap_err();
        assert_eq!(err.field, "decode");
    }

    #[test]
    fn omitted_options_take_the_defaults_and_given_ones_are_kept() {
        let o = parse(json!({})).unwrap();
        assert_eq!(
            (o.model.as_deref(), o.fps, &o.classes, o.mask.len()),
            (Some("ssdlite_person_300"), Some(2.0), &None, 0)
        );
        let o = parse(
            json!({"name": "gate", "model": "yolov3_tiny_coco_416", "fps": 5, "classes": ["car", "truck", "car"],
            "min_confidence": 0.3, "mask": [[[0, 0], [0.5, 0], [0.5, 1], [0, 1]]]}),
        )
        .unwrap();
        assert_eq!(o.classes.as_deref(), Some(&["car".to_string(), "truck".to_string()][..]));
        assert_eq!((o.fps, o.min_confidence, o.name.as_deref()), (Some(5.0), Some(0.3), Some("gate")));
        // Stored and read back unchanged; the digest follows the content.
        let back: ScenarioOptions = serde_json::from_value(serde_json::to_value(&o).unwrap()).unwrap();
        assert_eq!((back.digest(), back), (o.digest(), o.clone()));
        assert_ne!(o.digest(), parse(json!({})).unwrap().digest());
    }

    #[test]
    fn every_bad_option_names_its_field() {
        let cases = [
            (json!({"model": "nope"}), "model", "unknown model 'nope'"),
            (json!({"model": 7}), "model", "must be a string"),
            (json!({"classes": ["car"]}), "classes", "has no class 'car'"),
            (json!({"classes": ["background"]}), "classes", "has no class 'background'"),
            (json!({"classes": []}), "classes", "at least one"),
            (json!({"classes": ["person", 3]}), "classes[1]", "must be a string"),
            (json!({"fps": 0}), "fps", "from 0.1 to 30"),
            (json!({"fps": 31}), "fps", "from 0.1 to 30"),
            (json!({"fps": "2"}), "fps", "must be a number"),
            (json!({"min_confidence": 1.5}), "min_confidence", "from 0 to 1"),
            (json!({"name": ""}), "name", "1 to 200"),
            (json!({"mask": [[[0, 0], [1, 0]]]}), "mask[0]", "3 to 64 points"),
            (json!({"mask": [[[0, 0], [1, 0], [1, 1.5]]]}), "mask[0][2]", "0..1"),
            (json!({"mask": [[[0, 0], [1, 0], [1]]]}), "mask[0][2]", "[x, y]"),
            (json!({"mask": vec![json!([[0, 0], [1, 0], [1, 1]]); 17]}), "mask", "at most 16"),
            (json!({"mask": {"x": 1}}), "mask", "array of polygons"),
            (json!({"colour": "red"}), "colour", "not an option"),
            (json!({"zones": {"name": "a"}}), "zones", "array of zones"),
            (json!({"zones": [{"polygon": [[0, 0], [1, 0], [1, 1]]}]}), "zones[0].name", "is required"),
            (json!({"zones": [{"name": "a"}]}), "zones[0].polygon", "is required"),
            (json!({"zones": [{"name": "a", "polygon": [[0, 0], [1, 0]]}]}), "zones[0].polygon", "3 to 64 points"),
            (json!({"zones": [{"name": "a", "polygon": [[0, 0], [1, 0], [1, 2]]}]}), "zones[0].polygon[2]", "0..1"),
            (
                json!({"zones": [{"name": "a", "polygon": [[0, 0], [1, 0], [1, 1]]}, {"name": "a", "polygon": [[0, 0], [1, 0], [1, 1]]}]}),
                "zones[1].name",
                "used twice",
            ),
            (
                json!({"zones": [{"name": "a", "polygon": [[0, 0], [1, 0], [1, 1]], "dwell_seconds": 0}]}),
                "zones[0].dwell_seconds",
                "from 1",
            ),
            (
                json!({"zones": [{"name": "a", "polygon": [[0, 0], [1, 0], [1, 1]], "classes": ["car"]}]}),
                "zones[0].classes",
                "no class 'car'",
            ),
            (
                json!({"zones": [{"name": "a", "polygon": [[0, 0], [1, 0], [1, 1]], "colour": 1}]}),
                "zones[0].colour",
                "not a field",
            ),
            (
                json!({"zones": vec![json!({"name": "z", "polygon": [[0, 0], [1, 0], [1, 1]]}); 17]}),
                "zones",
                "at most 16",
            ),
            (json!({"lines": [{"name": "gate", "points": [[0, 0]]}]}), "lines[0].points", "two points"),
            (
                json!({"lines": [{"name": "gate", "points": [[0.5, 0.5], [0.5, 0.5]]}]}),
                "lines[0].points",
                "must differ",
            ),
            (json!({"lines": [{"name": "gate", "points": [[0, 0], [1, -1]]}]}), "lines[0].points[1]", "0..1"),
            (json!({"lines": [{"name": "", "points": [[0, 0], [1, 1]]}]}), "lines[0].name", "1 to 100"),
            (
                json!({"lines": [{"name": "g", "points": [[0, 0], [1, 1]], "classes": []}]}),
                "lines[0].classes",
                "at least one",
            ),
        ];
        for (body, field, reason) in cases {
            let err = parse(body.clone()).unwrap_err();
            assert_eq!(err.field, field, "{body}: {err}");
            assert!(err.reason.contains(reason), "{body}: {err}");
        }
    }

    #[test]
    fn zones_and_lines_are_kept_as_given_and_read_back() {
        let o = parse(json!({
            "zones": [{"name": "door", "polygon": [[0.5, 0], [1, 0], [1, 1], [0.5, 1]], "dwell_seconds": 120}],
            "lines": [{"name": "gate", "points": [[0.5, 1], [0.5, 0]], "classes": ["person"]}],
        }))
        .unwrap();
        assert_eq!((o.zones[0].name.as_str(), o.zones[0].dwell_seconds), ("door", Some(120.0)));
        assert_eq!(o.lines[0].points, [[0.5, 1.0], [0.5, 0.0]]);
        let back: ScenarioOptions = serde_json::from_value(serde_json::to_value(&o).unwrap()).unwrap();
        assert_eq!(back, o);
        let cleared = o.patched(json!({"zones": null}).as_object().unwrap(), &defaults()).unwrap();
        assert!(cleared.zones.is_empty() && cleared.lines.len() == 1);
    }

    #[test]
    fn a_patch_replaces_resets_and_rechecks_classes_against_a_new_model() {
        let d = defaults();
        let o = parse(json!({"classes": ["person"], "fps": 4})).unwrap();
        let p = o.patched(json!({"model": "yolov3_tiny_coco_416", "fps": null}).as_object().unwrap(), &d).unwrap();
        assert_eq!(
            (p.model.as_deref(), p.fps, p.classes.clone()),
            (Some("yolov3_tiny_coco_416"), Some(2.0), Some(vec!["person".into()]))
        );
        let p = p.patched(json!({"classes": ["car"]}).as_object().unwrap(), &d).unwrap();
        // Back to the person model with `car` still asked for: refused, naming classes.
        let err = p.patched(json!({"model": "ssdlite_person_300"}).as_object().unwrap(), &d).unwrap_err();
        assert_eq!(err.field, "classes", "{err}");
    }

    #[test]
    fn the_filter_keeps_allowed_classes_outside_the_mask() {
        let o = parse(json!({"model": "yolov3_tiny_coco_416", "classes": ["car"], "mask": [[[0, 0], [0.5, 0], [0.5, 1], [0, 1]]]}))
            .unwrap();
        let det = |class: &str, x: f32| Detection {
            class: class.into(),
            confidence: 0.9,
            bbox: [x, 10.0, x + 20.0, 50.0],
            track_id: None,
        };
        assert!(o.keeps(&det("car", 400.0), 640.0, 480.0));
        assert!(!o.keeps(&det("car", 100.0), 640.0, 480.0), "centre in the left half");
        assert!(!o.keeps(&det("person", 400.0), 640.0, 480.0), "not an allowed class");
        let triangle = Polygon(vec![[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]);
        assert!(triangle.contains(0.2, 0.2) && !triangle.contains(0.8, 0.8));
    }
}
