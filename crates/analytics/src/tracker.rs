//! A multi-object tracker of the SORT / ByteTrack family: a constant-velocity Kalman filter per
//! track; optimal IoU assignment per class (Kuhn-Munkres); a second pass that lets low-score
//! boxes keep tracks alive (ByteTrack's idea: an occluded person scores low before vanishing);
//! a box seen once has no id until the next frame sees it again (flickers make no tracks); lost
//! tracks and new ones found by nearness (C-BIoU's buffered IoU, grown with the time between
//! frames: at a scenario's 2 fps a walker moves a box width or more) for `max_lost`; and the
//! reported box is the filtered one, steadier than the detector's. Measured in docs/ACCURACY.md.
//!
//! Time is in seconds, not frames: vap samples at a scenario's `fps` and may skip frames, so the
//! filter predicts over the real gap.
//!
//! Track ids are `first frame number * 1000 + k` (the k-th track born in that frame): frame
//! numbers are unique per scenario and only grow, also across runner restarts, so ids are never
//! reused, and a file analysed again yields the same ids.

/// Box `[x_min, y_min, x_max, y_max]` in pixels.
pub use vap_core::detection::Bbox;
use vap_core::detection::Detection;

/// At most this many tracks are born in one frame (keeps ids unique per frame number).
pub const MAX_BIRTHS_PER_FRAME: u64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackerSettings {
    /// A detection at least this sure starts or continues a track (the scenario's confidence).
    pub high_score: f32,
    /// Below `high_score` down to this, a detection may only continue a track.
    pub low_score: f32,
    /// Least IoU between a track's prediction and a high-score detection to match.
    pub match_iou: f32,
    /// The same for the low-score pass (stricter: those boxes are less certain).
    pub low_match_iou: f32,
    /// How long a track survives without a match.
    pub max_lost_secs: f64,
}

impl Default for TrackerSettings {
    fn default() -> Self {
        // ByteTrack's defaults (track_thresh 0.5, low 0.1, match 0.8 -> IoU 0.2, second pass
        // 0.5); the buffer in time, 2 s (ByteTrack's is 30 frames at 30 fps: on PETS09-S2L1
        // 2 s finds more people again after an occlusion, docs/ACCURACY.md).
        Self { high_score: 0.5, low_score: 0.1, match_iou: 0.2, low_match_iou: 0.5, max_lost_secs: 2.0 }
    }
}

impl TrackerSettings {
    /// As the runner tracks: a detection as sure as the scenario's confidence starts a track;
    /// weaker ones, down to the low score, may extend one.
    pub fn for_confidence(min_confidence: f32) -> Self {
        let default = Self::default();
        Self { high_score: min_confidence, low_score: default.low_score.min(min_confidence), ..default }
    }
}

/// One detection handed to the tracker.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub class: String,
    pub score: f32,
    pub bbox: Bbox,
}

/// A track as of the last frame.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackView {
    pub id: u64,
    pub class: String,
    /// The last matched box.
    pub bbox: Bbox,
    /// When it was last matched (seconds, the caller's clock).
    pub seen_at: f64,
    pub seen_frame: i64,
}

/// What one frame did: the track of each observation (None: low score, matched nothing), and
/// the tracks that ended (lost longer than `max_lost_secs`) at this frame.
#[derive(Debug, Default, PartialEq)]
pub struct Update {
    pub assigned: Vec<Option<u64>>,
    pub ended: Vec<TrackView>,
}

/// Position and velocity along one axis, with their covariance.
#[derive(Debug, Clone, Copy)]
struct Axis {
    x: f64,
    v: f64,
    p: [[f64; 2]; 2],
}

impl Axis {
    fn new(x: f64, scale: f64) -> Self {
        // ByteTrack's initial uncertainty: 2 * (1/20) h for position, 10 * (1/160) h per frame
        // (at 30 fps) for velocity.
        let (sp, sv) = (2.0 * POS_INIT * scale, VEL_INIT * scale);
        Self { x, v: 0.0, p: [[sp * sp, 0.0], [0.0, sv * sv]] }
    }

    fn predict(&mut self, dt: f64, scale: f64) {
        let [[a, b], [c, d]] = self.p;
        self.x += self.v * dt;
        // P = F P F^T + Q, F = [[1, dt], [0, 1]]; noise grows with the gap.
        let (qp, qv) = ((POS_NOISE * scale).powi(2) * dt, (VEL_NOISE * scale).powi(2) * dt);
        self.p = [[a + dt * (b + c) + dt * dt * d + qp, b + dt * d], [c + dt * d, d + qv]];
    }

    fn correct(&mut self, z: f64, scale: f64) {
        let r = (MEASURE * scale).powi(2);
        let [[a, b], [c, d]] = self.p;
        let s = a + r;
        let (k0, k1) = (a / s, c / s);
        let y = z - self.x;
        self.x += k0 * y;
        self.v += k1 * y;
        self.p = [[(1.0 - k0) * a, (1.0 - k0) * b], [c - k1 * a, d - k1 * b]];
    }
}

/// ByteTrack's initial position uncertainty: 1/20 of the box height (twice that, as its std).
const POS_INIT: f64 = 1.0 / 20.0;
/// A box's position is measured to about 3/20 of its height: three times ByteTrack's
/// assumption. The tiny models' boxes jitter more than its detectors' (legs, arms, half-hidden
/// people); trusting them less keeps tracks on their people through crossings (PETS09-S2L1
/// IDF1 73.6% -> 81.1%, and better on both TUD sequences: docs/ACCURACY.md).
const MEASURE: f64 = 3.0 / 20.0;
/// Process noise per second, as a share of the box height: half ByteTrack's 1/20 (position,
/// measured with `MEASURE` above) and its 1/160 (velocity, per frame) at 30 fps, accumulated
/// over a second's 30 frames (variance grows with time: std by sqrt(30)), velocity in height
/// per second.
const POS_NOISE: f64 = 0.136_930_639_376_291; // sqrt(30) / 40
const VEL_NOISE: f64 = 1.026_979_795_322_186; // sqrt(30) * 30 / 160
/// Initial velocity uncertainty: ByteTrack's 10/160 of the height per frame, per second.
const VEL_INIT: f64 = 10.0 * 30.0 / 160.0;

#[derive(Debug, Clone)]
struct Track {
    id: u64,
    class: String,
    /// Centre x, centre y, width, height.
    axes: [Axis; 4],
    bbox: Bbox,
    seen_at: f64,
    seen_frame: i64,
    /// Matched in the previous frame (the low-score pass only continues those).
    tracked: bool,
    /// Seen in two frames in a row (or in the tracker's first frame): only those have an id
    /// the caller sees.
    confirmed: bool,
}

impl Track {
    fn scale(&self) -> f64 {
        self.axes[3].x.max(1.0)
    }

    fn predicted(&self) -> Bbox {
        let [cx, cy, w, h] = self.axes.map(|a| a.x);
        let (w, h) = (w.max(1.0), h.max(1.0));
        [(cx - w / 2.0) as f32, (cy - h / 2.0) as f32, (cx + w / 2.0) as f32, (cy + h / 2.0) as f32]
    }

    fn view(&self) -> TrackView {
        TrackView {
            id: self.id,
            class: self.class.clone(),
            bbox: self.bbox,
            seen_at: self.seen_at,
            seen_frame: self.seen_frame,
        }
    }
}

fn measure(b: &Bbox) -> [f64; 4] {
    let [x0, y0, x1, y1] = b.map(f64::from);
    [(x0 + x1) / 2.0, (y0 + y1) / 2.0, (x1 - x0).max(1.0), (y1 - y0).max(1.0)]
}

pub use vap_core::detection::iou;

pub struct Tracker {
    settings: TrackerSettings,
    tracks: Vec<Track>,
    last_t: Option<f64>,
}

impl Tracker {
    pub fn new(settings: TrackerSettings) -> Self {
        Self { settings, tracks: Vec::new(), last_t: None }
    }

    pub fn settings(&self) -> &TrackerSettings {
        &self.settings
    }

    /// New thresholds (the scenario's confidence changed); the tracks go on.
    pub fn set_settings(&mut self, settings: TrackerSettings) {
        self.settings = settings;
    }

    pub fn tracks(&self) -> impl Iterator<Item = TrackView> + '_ {
        self.tracks.iter().map(Track::view)
    }

    /// Tracks the observations of the frame numbered `frame` at time `t` (seconds, increasing).
    pub fn update(&mut self, frame: i64, t: f64, observations: &[Observation]) -> Update {
        let first_frame = self.last_t.is_none();
        let dt = self.last_t.map_or(0.0, |last| (t - last).max(0.0));
        self.last_t = Some(t);
        let s = self.settings;
        // Tracks lost too long end before this frame is matched: after a gap in the stream,
        // nobody new inherits an old id (or its zone visits).
        let mut ended = Vec::new();
        self.tracks.retain(|track| {
            let keep = t - track.seen_at <= s.max_lost_secs;
            if !keep && track.confirmed {
                ended.push(track.view());
            }
            keep
        });
        for track in &mut self.tracks {
            let scale = track.scale();
            if !track.tracked {
                // Lost: its size stops changing (ByteTrack), only its position runs on.
                track.axes[2].v = 0.0;
                track.axes[3].v = 0.0;
            }
            track.axes.iter_mut().for_each(|a| a.predict(dt, scale));
        }
        let mut assigned = vec![None; observations.len()];
        let mut matched = vec![false; self.tracks.len()];
        let high: Vec<usize> = (0..observations.len()).filter(|&i| observations[i].score >= s.high_score).collect();
        let low: Vec<usize> =
            (0..observations.len()).filter(|&i| (s.low_score..s.high_score).contains(&observations[i].score)).collect();
        // ByteTrack's order: sure detections against the confirmed tracks (followed or lost),
        // unsure ones against the confirmed tracks followed until the last frame; then by
        // nearness (C-BIoU), the sure ones left against the confirmed tracks still unmatched,
        // and last against the tracks born in the last frame (a duplicate box next to a
        // walker who stopped must not start a new track and take the walker's box).
        let confirmed = |tr: &Track| tr.confirmed;
        let followed = |tr: &Track| tr.confirmed && tr.tracked;
        let tentative = |tr: &Track| !tr.confirmed;
        let mut pass = Pass { observations, assigned: &mut assigned, matched: &mut matched, frame, t };
        self.associate(&mut pass, &high, s.match_iou, confirmed);
        self.associate(&mut pass, &low, s.low_match_iou, followed);
        // A lost track's prediction drifts, and a track born in the last frame has no velocity
        // yet: both are matched by nearness, the more generously the longer the gap (at a
        // scenario's 2 fps a walker moves about a box width between frames), up to a second's.
        let grow = NEAR_BUFFER_PER_SEC * dt.min(1.0) as f32;
        let near = Overlap::Buffered(NEAR_BUFFER + grow, NEAR_MATCH_IOU);
        // Every confirmed track the overlap missed: lost ones, and followed ones that stopped
        // or turned between two frames far apart.
        let missed = |tr: &Track| tr.confirmed;
        self.associate(&mut pass, &high, near, missed);
        self.associate(&mut pass, &high, near, tentative);
        let mut kept = Vec::with_capacity(self.tracks.len());
        for (mut track, matched) in std::mem::take(&mut self.tracks).into_iter().zip(matched) {
            track.tracked = matched;
            if matched && !track.confirmed {
                track.confirmed = true;
            }
            if !track.confirmed && !matched {
                // A box seen once is a flicker until it is seen again in the next frame.
                continue;
            }
            kept.push(track);
        }
        self.tracks = kept;
        // Births: sure detections nobody claimed. Confirmed at once only in the first frame;
        // otherwise the box is reported without an id until the next frame confirms it.
        let mut born = 0;
        for &i in &high {
            if assigned[i].is_some() || born >= MAX_BIRTHS_PER_FRAME {
                continue;
            }
            let o = &observations[i];
            let id = (frame.max(0) as u64) * MAX_BIRTHS_PER_FRAME + born;
            born += 1;
            let m = measure(&o.bbox);
            let scale = m[3];
            self.tracks.push(Track {
                id,
                class: o.class.clone(),
                axes: m.map(|x| Axis::new(x, scale)),
                bbox: o.bbox,
                seen_at: t,
                seen_frame: frame,
                tracked: true,
                confirmed: first_frame,
            });
            if first_frame {
                assigned[i] = Some(id);
            }
        }
        Update { assigned, ended }
    }

    /// The runner's step on one analysed frame: every detection is tracked (unsure ones can
    /// only extend a track), each gets its track's id and filtered box (kept inside the
    /// `width` x `height` picture), and those under `min_confidence` are dropped (kept, they
    /// cost more false boxes than they find people: docs/ACCURACY.md). Returns the tracks that
    /// ended.
    pub fn track(
        &mut self,
        frame: i64,
        t: f64,
        detections: &mut Vec<Detection>,
        min_confidence: f32,
        (width, height): (f32, f32),
    ) -> Vec<TrackView> {
        let observations: Vec<Observation> = detections
            .iter()
            .map(|d| Observation { class: d.class.clone(), score: d.confidence, bbox: d.bbox })
            .collect();
        let update = self.update(frame, t, &observations);
        for (d, id) in detections.iter_mut().zip(&update.assigned) {
            d.track_id = id.and_then(|id| i64::try_from(id).ok());
            // The filtered box: steadier than the detector's (legs, arms, partial occlusion).
            if let Some(track) = id.and_then(|id| self.tracks.iter().find(|tr| tr.id == id)) {
                let [x0, y0, x1, y1] = track.predicted();
                d.bbox = [x0.clamp(0.0, width), y0.clamp(0.0, height), x1.clamp(0.0, width), y1.clamp(0.0, height)];
            }
        }
        detections.retain(|d| d.confidence >= min_confidence);
        update.ended
    }

    /// One association pass: the candidates against the tracks `eligible` picks that no earlier
    /// pass matched, by the assignment with the largest total IoU (at least `min_iou` per pair,
    /// same class).
    fn associate(
        &mut self,
        pass: &mut Pass<'_>,
        candidates: &[usize],
        overlap: impl Into<Overlap>,
        eligible: impl Fn(&Track) -> bool,
    ) {
        let (buffer, min_iou) = match overlap.into() {
            Overlap::Plain(min) => (0.0, min),
            Overlap::Buffered(buffer, min) => (buffer, min),
        };
        let tracks: Vec<usize> =
            (0..self.tracks.len()).filter(|&ti| !pass.matched[ti] && eligible(&self.tracks[ti])).collect();
        let free: Vec<usize> = candidates.iter().copied().filter(|&oi| pass.assigned[oi].is_none()).collect();
        if tracks.is_empty() || free.is_empty() {
            return;
        }
        let predicted: Vec<Bbox> = tracks.iter().map(|&ti| grown(self.tracks[ti].predicted(), buffer)).collect();
        let overlap = |a: usize, b: usize| {
            let (track, o) = (&self.tracks[tracks[a]], &pass.observations[free[b]]);
            let v = if o.class == track.class { iou(&predicted[a], &grown(o.bbox, buffer)) } else { 0.0 };
            if v >= min_iou {
                v
            } else {
                0.0
            }
        };
        for (a, b) in best_pairs(tracks.len(), free.len(), overlap) {
            let (ti, oi) = (tracks[a], free[b]);
            pass.matched[ti] = true;
            let track = &mut self.tracks[ti];
            let m = measure(&pass.observations[oi].bbox);
            let scale = track.scale();
            for (axis, z) in track.axes.iter_mut().zip(m) {
                axis.correct(z, scale);
            }
            track.bbox = pass.observations[oi].bbox;
            track.seen_at = pass.t;
            track.seen_frame = pass.frame;
            pass.assigned[oi] = Some(track.id);
        }
    }
}

/// What the passes of one frame share.
struct Pass<'a> {
    observations: &'a [Observation],
    assigned: &'a mut [Option<u64>],
    matched: &'a mut [bool],
    frame: i64,
    t: f64,
}

/// How a pass measures a track against a detection: IoU of the boxes, at least this much; or
/// IoU of both boxes grown by a share of their size on every side (C-BIoU's buffered IoU: a
/// lost track's prediction drifts, so nearness counts, not only overlap).
#[derive(Debug, Clone, Copy)]
enum Overlap {
    Plain(f32),
    Buffered(f32, f32),
}

impl From<f32> for Overlap {
    fn from(min_iou: f32) -> Self {
        Overlap::Plain(min_iou)
    }
}

fn grown(b: Bbox, share: f32) -> Bbox {
    let (w, h) = (b[2] - b[0], b[3] - b[1]);
    [b[0] - share * w, b[1] - share * h, b[2] + share * w, b[3] + share * h]
}

/// Matching by nearness grows both boxes by half their size on every side, plus twice their
/// size per second since the last frame, and wants a buffered IoU of 0.2 (docs/ACCURACY.md:
/// measured on PETS09-S2L1, TUD and the counting clips at 10, 2 and 1 fps).
const NEAR_BUFFER: f32 = 0.5;
const NEAR_BUFFER_PER_SEC: f32 = 2.0;
const NEAR_MATCH_IOU: f32 = 0.2;

/// The pairs (row, column) with positive `weight` of the assignment with the largest total.
fn best_pairs(rows: usize, cols: usize, weight: impl Fn(usize, usize) -> f32) -> Vec<(usize, usize)> {
    use pathfinding::kuhn_munkres::kuhn_munkres;
    use pathfinding::matrix::Matrix;
    // Integer weights (the solver needs exact sums); transposed when there are more rows.
    let scaled = |a: usize, b: usize| (weight(a, b) * 1e6).round() as i64;
    if rows <= cols {
        let (_, chosen) = kuhn_munkres(&Matrix::from_fn(rows, cols, |(a, b)| scaled(a, b)));
        chosen.into_iter().enumerate().filter(|&(a, b)| scaled(a, b) > 0).collect()
    } else {
        let (_, chosen) = kuhn_munkres(&Matrix::from_fn(cols, rows, |(b, a)| scaled(a, b)));
        chosen.into_iter().enumerate().map(|(b, a)| (a, b)).filter(|&(a, b)| scaled(a, b) > 0).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(x: f32, y: f32, score: f32) -> Observation {
        Observation { class: "person".into(), score, bbox: [x, y, x + 40.0, y + 100.0] }
    }

    #[test]
    fn one_walker_keeps_one_id_and_two_crossing_walkers_keep_theirs() {
        let mut t = Tracker::new(TrackerSettings::default());
        // Two people (40 px wide) walk towards each other, 12 px per frame, and pass.
        let mut ids = (None, None);
        for f in 0..40 {
            let (a, b) = (person(10.0 + 12.0 * f as f32, 50.0, 0.9), person(490.0 - 12.0 * f as f32, 80.0, 0.9));
            let up = t.update(f * 500, f as f64 * 0.5, &[a, b]);
            let (ia, ib) = (up.assigned[0].unwrap(), up.assigned[1].unwrap());
            if f == 0 {
                ids = (Some(ia), Some(ib));
                assert_eq!((ia, ib), (0, 1), "ids from the birth frame");
            }
            // They overlap around frame 20: the filter's velocity keeps them apart.
            assert_eq!((Some(ia), Some(ib)), ids, "frame {f}");
        }
    }

    #[test]
    fn a_low_score_box_keeps_a_track_alive_but_never_starts_one() {
        let mut t = Tracker::new(TrackerSettings::default());
        let id = t.update(0, 0.0, &[person(100.0, 100.0, 0.9)]).assigned[0].unwrap();
        // Occluded: it scores 0.3 for a while (below 0.5): same track.
        for f in 1..5 {
            let up = t.update(f * 100, f as f64 * 0.1, &[person(100.0 + 5.0 * f as f32, 100.0, 0.3)]);
            assert_eq!(up.assigned, vec![Some(id)], "frame {f}");
        }
        // An unsure box far away from any track is nobody.
        let up = t.update(500, 0.5, &[person(100.0 + 25.0, 100.0, 0.9), person(900.0, 500.0, 0.3)]);
        assert_eq!(up.assigned, vec![Some(id), None]);
    }

    #[test]
    fn a_track_lost_longer_than_max_lost_ends_and_its_id_is_never_reused() {
        let mut t = Tracker::new(TrackerSettings { max_lost_secs: 1.0, ..TrackerSettings::default() });
        let first = t.update(1000, 1.0, &[person(100.0, 100.0, 0.9)]).assigned[0].unwrap();
        assert_eq!(first, 1000 * MAX_BIRTHS_PER_FRAME);
        assert!(t.update(1500, 1.5, &[]).ended.is_empty(), "missed for 0.5 s: still kept");
        let up = t.update(2500, 2.5, &[]);
        assert_eq!(up.ended.iter().map(|v| v.id).collect::<Vec<_>>(), vec![first]);
        assert_eq!(up.ended[0].seen_frame, 1000);
        // The same place again: a new track, a new id, once a second frame confirms it.
        assert_eq!(t.update(3000, 3.0, &[person(100.0, 100.0, 0.9)]).assigned, vec![None]);
        let again = t.update(3100, 3.1, &[person(100.0, 100.0, 0.9)]).assigned[0].unwrap();
        assert_eq!(again, 3000 * MAX_BIRTHS_PER_FRAME);
    }

    #[test]
    fn a_box_seen_once_gets_no_id_and_a_second_sighting_confirms_it() {
        let mut t = Tracker::new(TrackerSettings::default());
        assert!(t.update(0, 0.0, &[]).assigned.is_empty());
        // A flicker: one frame only. No id, and it ends without a trace.
        assert_eq!(t.update(100, 0.1, &[person(300.0, 100.0, 0.9)]).assigned, vec![None]);
        let up = t.update(200, 0.2, &[]);
        assert!(up.ended.is_empty() && t.tracks().next().is_none(), "{up:?}");
        // Two frames in a row: the id of the first sighting, from the second on.
        assert_eq!(t.update(300, 0.3, &[person(100.0, 100.0, 0.9)]).assigned, vec![None]);
        assert_eq!(t.update(400, 0.4, &[person(104.0, 100.0, 0.9)]).assigned, vec![Some(300 * MAX_BIRTHS_PER_FRAME)]);
    }

    #[test]
    fn a_walker_hidden_for_a_second_is_found_again_with_the_same_id() {
        let mut t = Tracker::new(TrackerSettings::default());
        let at = |f: i64| person(100.0 + 8.0 * f as f32, 100.0, 0.9);
        let id = t.update(0, 0.0, &[at(0)]).assigned[0].unwrap();
        for f in 1..6 {
            assert_eq!(t.update(f * 100, f as f64 * 0.1, &[at(f)]).assigned, vec![Some(id)]);
        }
        // Behind a pillar for 1 s (10 frames at 10 fps); it walks a little slower meanwhile, so
        // the prediction has drifted away from where it comes out (no plain overlap left).
        for f in 6..16 {
            t.update(f * 100, f as f64 * 0.1, &[]);
        }
        let out = person(100.0 + 8.0 * 16.0 - 45.0, 104.0, 0.9);
        assert_eq!(t.update(1600, 1.6, &[out]).assigned, vec![Some(id)]);
    }

    #[test]
    fn at_two_frames_a_second_a_walker_keeps_one_id_through_a_sudden_stop() {
        let mut t = Tracker::new(TrackerSettings::default());
        // 40 px wide, 160 px a second: 80 px (two widths) between frames; stops at x 500.
        let x = |f: i64| (100.0 + 80.0 * f as f32).min(500.0);
        let ids: Vec<Option<u64>> =
            (0..12).map(|f| t.update(f * 500, f as f64 * 0.5, &[person(x(f), 100.0, 0.9)]).assigned[0]).collect();
        assert_eq!(ids[0], Some(0));
        assert!(ids.iter().all(|id| *id == Some(0)), "{ids:?}");
    }

    #[test]
    fn after_a_gap_longer_than_max_lost_a_new_person_gets_a_new_id() {
        let mut t = Tracker::new(TrackerSettings::default());
        let first = t.update(0, 0.0, &[person(100.0, 100.0, 0.9)]).assigned[0].unwrap();
        t.update(500, 0.5, &[person(100.0, 100.0, 0.9)]);
        // The stream comes back 5 minutes later: someone else, elsewhere.
        let up = t.update(300_000, 300.0, &[person(550.0, 300.0, 0.9)]);
        assert_eq!((up.assigned.clone(), up.ended.iter().map(|v| v.id).collect::<Vec<_>>()), (vec![None], vec![first]));
    }

    #[test]
    fn a_duplicate_box_beside_a_walker_who_stops_does_not_take_the_walkers_id() {
        let mut t = Tracker::new(TrackerSettings::default());
        let x = |f: i64| 100.0 + 80.0 * f as f32;
        for f in 0..3 {
            t.update(f * 500, f as f64 * 0.5, &[person(x(f), 100.0, 0.9)]);
        }
        // Frame 3: the walker, and a duplicate box 25 px ahead; frame 4: the walker stopped.
        let up = t.update(1500, 1.5, &[person(x(3), 100.0, 0.9), person(x(3) + 25.0, 100.0, 0.6)]);
        assert_eq!(up.assigned[0], Some(0));
        let ids: Vec<Option<u64>> =
            (4..8).map(|f| t.update(f * 500, f as f64 * 0.5, &[person(x(3), 100.0, 0.9)]).assigned[0]).collect();
        assert!(ids.iter().all(|id| *id == Some(0)), "{ids:?}");
    }

    #[test]
    fn the_reported_box_is_steadier_than_the_detectors() {
        let mut t = Tracker::new(TrackerSettings::default());
        let mut rng = fastrand::Rng::with_seed(3);
        let (mut raw, mut reported) = (0.0f64, 0.0f64);
        for f in 0..100 {
            // A standing person whose box width jumps by up to +-8 px (legs, arms).
            let jitter = 16.0 * rng.f32() - 8.0;
            let d = Detection {
                class: "person".into(),
                confidence: 0.9,
                bbox: [100.0, 100.0, 140.0 + jitter, 200.0],
                track_id: None,
            };
            let mut detections = vec![d];
            t.track(f * 100, f as f64 * 0.1, &mut detections, 0.5, (640.0, 480.0));
            if f >= 10 {
                raw += f64::from(jitter).powi(2);
                reported += f64::from(detections[0].bbox[2] - 140.0).powi(2);
            }
        }
        assert!(reported < 0.85 * raw, "width variance: reported {reported:.0}, detector {raw:.0}");
    }

    #[test]
    fn classes_never_share_a_track() {
        let mut t = Tracker::new(TrackerSettings::default());
        let p = t.update(0, 0.0, &[person(100.0, 100.0, 0.9)]).assigned[0].unwrap();
        let car = Observation { class: "car".into(), score: 0.9, bbox: [100.0, 100.0, 140.0, 200.0] };
        let up = t.update(500, 0.5, &[car]);
        assert_ne!(up.assigned[0], Some(p));
    }

    #[test]
    fn the_same_input_gives_the_same_ids() {
        let run = || {
            let mut t = Tracker::new(TrackerSettings::default());
            (0..30)
                .map(|f| {
                    let obs: Vec<Observation> = (0..5)
                        .map(|k| person(50.0 * k as f32 + 3.0 * f as f32, 20.0 * k as f32, 0.6 + 0.05 * k as f32))
                        .collect();
                    t.update(f * 100, f as f64 * 0.1, &obs).assigned
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }
}
