//! CLEAR MOT and identity metrics with py-motmetrics' definitions (its `compare_to_groundtruth`
//! with IoU distance, threshold 0.5), so figures compare with MOTChallenge's and with the
//! trackers' papers:
//! - per frame, a ground-truth object keeps the hypothesis it was last matched to while their
//!   IoU is at least 0.5; the rest are matched by a minimum-distance assignment that first makes
//!   as many pairs as it can; a new pair for an object matched before is an identity switch;
//! - MOTA = 1 - (misses + false positives + switches) / ground-truth boxes;
//! - IDF1 = 2 IDTP / (ground-truth boxes + hypothesis boxes), IDTP from the one-to-one pairing
//!   of whole trajectories that shares the most frames (IoU at least 0.5).

use std::collections::{BTreeMap, HashMap};

use pathfinding::kuhn_munkres::kuhn_munkres;
use pathfinding::matrix::Matrix;
use thiserror::Error;

/// A box in MOTChallenge's form: left, top, width, height (pixels).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

impl Rect {
    pub fn from_corners([x0, y0, x1, y1]: [f32; 4]) -> Self {
        let [x0, y0, x1, y1] = [x0, y0, x1, y1].map(f64::from);
        Self { x: x0, y: y0, w: x1 - x0, h: y1 - y0 }
    }

    pub fn corners(&self) -> [f32; 4] {
        [self.x, self.y, self.x + self.w, self.y + self.h].map(|v| v as f32)
    }

    /// Intersection over union, as motmetrics computes it (no +1 pixel).
    pub fn iou(&self, other: &Rect) -> f64 {
        let ix = (self.x + self.w).min(other.x + other.w) - self.x.max(other.x);
        let iy = (self.y + self.h).min(other.y + other.h) - self.y.max(other.y);
        let inter = ix.max(0.0) * iy.max(0.0);
        let union = self.w * self.h + other.w * other.h - inter;
        if union <= 0.0 {
            0.0
        } else {
            inter / union
        }
    }
}

/// One line of a MOTChallenge file: a box of one object (or track) in one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MotBox {
    pub frame: i64,
    pub id: i64,
    pub rect: Rect,
}

#[derive(Debug, Error)]
pub enum MotError {
    #[error("line {line}: {problem}")]
    Parse { line: usize, problem: String },
}

/// Ground truth as py-motmetrics' `eval_motchallenge` reads it: a box whose seventh field
/// (MOTChallenge's "consider" flag) is 0 is not counted.
pub fn parse_truth(text: &str) -> Result<Vec<MotBox>, MotError> {
    read(text, true)
}

/// Reads `frame,id,left,top,width,height[,...]` lines (MOTChallenge 2D); blank lines skipped.
pub fn parse(text: &str) -> Result<Vec<MotBox>, MotError> {
    read(text, false)
}

fn read(text: &str, considered_only: bool) -> Result<Vec<MotBox>, MotError> {
    let mut boxes = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |problem: String| MotError::Parse { line: n + 1, problem };
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() < 6 {
            return Err(bad(format!("{} fields, want at least 6", fields.len())));
        }
        let num = |i: usize| fields[i].parse::<f64>().map_err(|e| bad(format!("field {}: {e}", i + 1)));
        let (frame, id) = (num(0)?, num(1)?);
        let rect = Rect { x: num(2)?, y: num(3)?, w: num(4)?, h: num(5)? };
        if rect.w < 0.0 || rect.h < 0.0 || !(frame.is_finite() && id.is_finite()) {
            return Err(bad("negative size or a frame or id that is not a number".into()));
        }
        if considered_only && fields.len() > 6 && num(6)? < 1.0 {
            continue;
        }
        boxes.push(MotBox { frame: frame as i64, id: id as i64, rect });
    }
    Ok(boxes)
}

/// Writes boxes as MOTChallenge lines (confidence 1, no world coordinates).
pub fn write(boxes: &[MotBox]) -> String {
    boxes
        .iter()
        .map(|b| {
            format!("{},{},{:.2},{:.2},{:.2},{:.2},1,-1,-1,-1\n", b.frame, b.id, b.rect.x, b.rect.y, b.rect.w, b.rect.h)
        })
        .collect()
}

/// The least IoU for a hypothesis to be on an object.
pub const MIN_IOU: f64 = 0.5;

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MotSummary {
    /// Ground-truth boxes and distinct objects.
    pub objects: usize,
    pub unique_objects: usize,
    /// Hypothesis boxes.
    pub predictions: usize,
    pub matches: usize,
    pub misses: usize,
    pub false_positives: usize,
    pub switches: usize,
    pub fragmentations: usize,
    /// Objects tracked for at least 80% of their life, 20-80%, under 20%.
    pub mostly_tracked: usize,
    pub partially_tracked: usize,
    pub mostly_lost: usize,
    pub mota: f64,
    /// Mean 1 - IoU of the matched pairs (motmetrics' MOTP: lower is better).
    pub motp: f64,
    pub recall: f64,
    pub precision: f64,
    pub idf1: f64,
    pub idp: f64,
    pub idr: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Match,
    Switch,
    Miss,
}

/// Compares a tracker's boxes with the truth over every frame either names.
pub fn evaluate(truth: &[MotBox], hypotheses: &[MotBox]) -> MotSummary {
    let by_frame = |boxes: &[MotBox]| {
        let mut frames: BTreeMap<i64, Vec<MotBox>> = BTreeMap::new();
        for b in boxes {
            frames.entry(b.frame).or_default().push(*b);
        }
        frames
    };
    let (truth_frames, hyp_frames) = (by_frame(truth), by_frame(hypotheses));
    let mut frames: Vec<i64> = truth_frames.keys().chain(hyp_frames.keys()).copied().collect();
    frames.sort_unstable();
    frames.dedup();

    let mut last_match: HashMap<i64, i64> = HashMap::new();
    // Per object, its event in each frame it appears in (in frame order).
    let mut history: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
    // Frames in which an object and a hypothesis overlap enough (identity metrics).
    let mut overlaps: HashMap<(i64, i64), usize> = HashMap::new();
    let (mut false_positives, mut distance_sum, mut matched) = (0usize, 0.0f64, 0usize);
    let empty = Vec::new();
    for frame in frames {
        let objects = truth_frames.get(&frame).unwrap_or(&empty);
        let hyps = hyp_frames.get(&frame).unwrap_or(&empty);
        let distance: Vec<Vec<Option<f64>>> = objects
            .iter()
            .map(|o| {
                hyps.iter()
                    .map(|h| {
                        let d = 1.0 - o.rect.iou(&h.rect);
                        (d <= 1.0 - MIN_IOU).then_some(d)
                    })
                    .collect()
            })
            .collect();
        for (i, o) in objects.iter().enumerate() {
            for (j, h) in hyps.iter().enumerate() {
                if distance[i][j].is_some() {
                    *overlaps.entry((o.id, h.id)).or_default() += 1;
                }
            }
        }
        let mut object_taken = vec![false; objects.len()];
        let mut hyp_taken = vec![false; hyps.len()];
        let mut events: Vec<Option<Event>> = vec![None; objects.len()];
        // Pairs that continue the last frame's match stay together.
        for (i, o) in objects.iter().enumerate() {
            let Some(&last) = last_match.get(&o.id) else { continue };
            if let Some(j) = (0..hyps.len()).find(|&j| !hyp_taken[j] && hyps[j].id == last && distance[i][j].is_some())
            {
                object_taken[i] = true;
                hyp_taken[j] = true;
                events[i] = Some(Event::Match);
                distance_sum += distance[i][j].unwrap_or_default();
                matched += 1;
            }
        }
        let free_objects: Vec<usize> = (0..objects.len()).filter(|&i| !object_taken[i]).collect();
        let free_hyps: Vec<usize> = (0..hyps.len()).filter(|&j| !hyp_taken[j]).collect();
        for (i, j) in assign(&free_objects, &free_hyps, |i, j| distance[i][j]) {
            let (o, h) = (&objects[i], &hyps[j]);
            hyp_taken[j] = true;
            let switched = last_match.get(&o.id).is_some_and(|&last| last != h.id);
            events[i] = Some(if switched { Event::Switch } else { Event::Match });
            last_match.insert(o.id, h.id);
            distance_sum += distance[i][j].unwrap_or_default();
            matched += 1;
        }
        for (o, event) in objects.iter().zip(events) {
            history.entry(o.id).or_default().push(event.unwrap_or(Event::Miss));
        }
        false_positives += hyp_taken.iter().filter(|t| !**t).count();
    }

    let count = |e: Event| history.values().flatten().filter(|&&x| x == e).count();
    let (switches, misses) = (count(Event::Switch), count(Event::Miss));
    let objects = truth.len();
    let mut summary = MotSummary {
        objects,
        unique_objects: history.len(),
        predictions: hypotheses.len(),
        matches: matched,
        misses,
        false_positives,
        switches,
        ..Default::default()
    };
    for events in history.values() {
        let tracked = events.iter().filter(|&&e| e != Event::Miss).count() as f64 / events.len() as f64;
        match tracked {
            r if r >= 0.8 => summary.mostly_tracked += 1,
            r if r < 0.2 => summary.mostly_lost += 1,
            _ => summary.partially_tracked += 1,
        }
        // Interruptions within the object's tracked span: a step from found to missed.
        let found = |e: &&Event| **e != Event::Miss;
        if let (Some(first), Some(last)) =
            (events.iter().position(|e| found(&e)), events.iter().rposition(|e| found(&e)))
        {
            summary.fragmentations +=
                events[first..=last].windows(2).filter(|w| w[0] != Event::Miss && w[1] == Event::Miss).count();
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    summary.mota = 1.0 - ratio(misses + false_positives + switches, objects);
    summary.motp = if matched == 0 { 0.0 } else { distance_sum / matched as f64 };
    summary.recall = ratio(matched, objects);
    summary.precision = ratio(matched, matched + false_positives);
    let idtp = identity_true_positives(&overlaps);
    summary.idf1 = ratio(2 * idtp, objects + hypotheses.len());
    summary.idp = ratio(idtp, hypotheses.len());
    summary.idr = ratio(idtp, objects);
    summary
}

/// The pairs of a minimum-distance assignment among the allowed ones (`distance` None: not
/// allowed) that has as many pairs as any can.
fn assign(rows: &[usize], cols: &[usize], distance: impl Fn(usize, usize) -> Option<f64>) -> Vec<(usize, usize)> {
    if rows.is_empty() || cols.is_empty() {
        return Vec::new();
    }
    const SCALE: f64 = 1e6;
    let transpose = rows.len() > cols.len();
    let (r, c) = if transpose { (cols, rows) } else { (rows, cols) };
    // Each allowed pair is worth more than any sum of distances, so the most pairs win first.
    let pair = SCALE as i64 * (r.len() as i64 + 1);
    let weight = |a: usize, b: usize| {
        let d = if transpose { distance(c[b], r[a]) } else { distance(r[a], c[b]) };
        d.map_or(0, |d| pair - (d * SCALE).round() as i64)
    };
    let matrix = Matrix::from_fn(r.len(), c.len(), |(a, b)| weight(a, b));
    let (_, chosen) = kuhn_munkres(&matrix);
    chosen
        .into_iter()
        .enumerate()
        .filter(|&(a, b)| weight(a, b) > 0)
        .map(|(a, b)| if transpose { (c[b], r[a]) } else { (r[a], c[b]) })
        .collect()
}

/// The most frames a one-to-one pairing of objects with hypotheses can share.
fn identity_true_positives(overlaps: &HashMap<(i64, i64), usize>) -> usize {
    let mut objects: Vec<i64> = overlaps.keys().map(|k| k.0).collect();
    let mut hyps: Vec<i64> = overlaps.keys().map(|k| k.1).collect();
    for ids in [&mut objects, &mut hyps] {
        ids.sort_unstable();
        ids.dedup();
    }
    if objects.is_empty() {
        return 0;
    }
    let transpose = objects.len() > hyps.len();
    let (rows, cols) = if transpose { (&hyps, &objects) } else { (&objects, &hyps) };
    let matrix = Matrix::from_fn(rows.len(), cols.len(), |(a, b)| {
        let key = if transpose { (cols[b], rows[a]) } else { (rows[a], cols[b]) };
        overlaps.get(&key).copied().unwrap_or(0) as i64
    });
    let (total, _) = kuhn_munkres(&matrix);
    total as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(frame: i64, id: i64, x: f64) -> MotBox {
        MotBox { frame, id, rect: Rect { x, y: 0.0, w: 10.0, h: 10.0 } }
    }

    #[test]
    fn a_perfect_tracker_scores_one() {
        let truth: Vec<MotBox> = (1..=5).flat_map(|f| [b(f, 1, 0.0), b(f, 2, 50.0)]).collect();
        let s = evaluate(&truth, &truth);
        assert_eq!((s.mota, s.idf1, s.switches, s.misses, s.false_positives), (1.0, 1.0, 0, 0, 0));
        assert_eq!(s.mostly_tracked, 2);
    }

    #[test]
    fn a_swapped_identity_is_one_switch_and_costs_identity_frames() {
        let truth: Vec<MotBox> = (1..=4).map(|f| b(f, 1, 0.0)).collect();
        // The tracker calls the object 7 for two frames, then 8.
        let hyps = vec![b(1, 7, 0.0), b(2, 7, 1.0), b(3, 8, 0.0), b(4, 8, 0.0)];
        let s = evaluate(&truth, &hyps);
        assert_eq!((s.switches, s.misses, s.false_positives), (1, 0, 0));
        assert!((s.mota - 0.75).abs() < 1e-9);
        // Best pairing: object 1 with 7 (or 8) shares 2 of 4 frames.
        assert!((s.idf1 - 0.5).abs() < 1e-9, "{}", s.idf1);
    }

    #[test]
    fn a_box_off_the_object_is_a_miss_and_a_false_positive() {
        let truth = vec![b(1, 1, 0.0), b(2, 1, 0.0), b(3, 1, 0.0)];
        // IoU of two 10x10 boxes 4 px apart is 60/140 < 0.5.
        let hyps = vec![b(1, 5, 0.0), b(2, 5, 4.0), b(3, 5, 0.0)];
        let s = evaluate(&truth, &hyps);
        assert_eq!((s.misses, s.false_positives, s.switches, s.fragmentations), (1, 1, 0, 1));
    }

    #[test]
    fn parses_motchallenge_lines_and_says_which_line_is_bad() {
        let boxes = parse("1,9,499,158,31.03,75.17,1,-4.1,-7.3,0\n\n2,9,497,158,31,75,1,-1,-1,-1\n").unwrap();
        assert_eq!(boxes.len(), 2);
        assert_eq!(boxes[0].rect, Rect { x: 499.0, y: 158.0, w: 31.03, h: 75.17 });
        assert_eq!(parse(&write(&boxes)).unwrap(), boxes);
        let err = parse("1,9,499,158,31\n").unwrap_err().to_string();
        assert_eq!(parse_truth("1,9,499,158,31,75,0,-1,-1,-1\n2,9,497,158,31,75,1,-1,-1,-1\n").unwrap().len(), 1);
        assert!(err.contains("line 1"), "{err}");
    }
}
