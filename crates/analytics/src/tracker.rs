//! A multi-object tracker of the SORT / ByteTrack family: a constant-velocity Kalman filter per
//! track, IoU association per class, a second pass that lets low-score boxes keep existing tracks
//! alive (ByteTrack's idea: an occluded person scores low before vanishing), and tracks kept
//! through missed frames for `max_lost`.
//!
//! Time is in seconds, not frames: vap samples at a scenario's `fps` and may skip frames, so the
//! filter predicts over the real gap. Association is greedy by IoU (best pair first), which
//! equals an optimal assignment unless boxes of one class overlap heavily.
//!
//! Track ids are `first frame number * 1000 + k` (the k-th track born in that frame): frame
//! numbers are unique per scenario and only grow, also across runner restarts, so ids are never
//! reused, and a file analysed again yields the same ids.

/// Box `[x_min, y_min, x_max, y_max]` in pixels.
pub use vap_core::detection::Bbox;

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
        // 0.5), with the buffer in time: 30 frames at 30 fps.
        Self { high_score: 0.5, low_score: 0.1, match_iou: 0.2, low_match_iou: 0.5, max_lost_secs: 1.0 }
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
        let (sp, sv) = (2.0 * MEASURE * scale, VEL_INIT * scale);
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

/// A box's position is measured to about 1/20 of its height (ByteTrack's measurement noise).
const MEASURE: f64 = 1.0 / 20.0;
/// Process noise per second, as a share of the box height: ByteTrack's 1/20 (position) and
/// 1/160 (velocity, per frame) at 30 fps, accumulated over a second's 30 frames (variance
/// grows with time: std by sqrt(30)), velocity in height per second.
const POS_NOISE: f64 = 0.273_861_278_752_583; // sqrt(30) / 20
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
        let dt = self.last_t.map_or(0.0, |last| (t - last).max(0.0));
        self.last_t = Some(t);
        for track in &mut self.tracks {
            let scale = track.scale();
            track.axes.iter_mut().for_each(|a| a.predict(dt, scale));
        }
        let s = self.settings;
        let mut assigned = vec![None; observations.len()];
        let mut matched_tracks = vec![false; self.tracks.len()];
        let high: Vec<usize> = (0..observations.len()).filter(|&i| observations[i].score >= s.high_score).collect();
        let low: Vec<usize> =
            (0..observations.len()).filter(|&i| (s.low_score..s.high_score).contains(&observations[i].score)).collect();
        // Pass 1: sure detections against every track; pass 2: unsure ones against the tracks
        // that were followed until the last frame and found nothing sure in this one.
        self.associate(observations, &high, s.match_iou, false, &mut assigned, &mut matched_tracks, frame, t);
        self.associate(observations, &low, s.low_match_iou, true, &mut assigned, &mut matched_tracks, frame, t);
        for (track, matched) in self.tracks.iter_mut().zip(&matched_tracks) {
            track.tracked = *matched;
        }
        let mut ended = Vec::new();
        self.tracks.retain(|track| {
            let keep = t - track.seen_at <= s.max_lost_secs;
            if !keep {
                ended.push(track.view());
            }
            keep
        });
        // Births: sure detections nobody claimed.
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
            });
            assigned[i] = Some(id);
        }
        Update { assigned, ended }
    }

    #[allow(clippy::too_many_arguments)]
    fn associate(
        &mut self,
        observations: &[Observation],
        candidates: &[usize],
        min_iou: f32,
        only_tracked: bool,
        assigned: &mut [Option<u64>],
        matched_tracks: &mut [bool],
        frame: i64,
        t: f64,
    ) {
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for (ti, track) in self.tracks.iter().enumerate() {
            if matched_tracks[ti] || (only_tracked && !track.tracked) {
                continue;
            }
            let predicted = track.predicted();
            for &oi in candidates {
                let o = &observations[oi];
                if o.class != track.class || assigned[oi].is_some() {
                    continue;
                }
                let overlap = iou(&predicted, &o.bbox);
                if overlap >= min_iou {
                    pairs.push((overlap, ti, oi));
                }
            }
        }
        // Best overlap first; ties by track age (older first) then detection order, so the
        // result does not depend on the sort's stability.
        pairs.sort_by(|a, b| {
            b.0.total_cmp(&a.0).then(self.tracks[a.1].id.cmp(&self.tracks[b.1].id)).then(a.2.cmp(&b.2))
        });
        for (_, ti, oi) in pairs {
            if matched_tracks[ti] || assigned[oi].is_some() {
                continue;
            }
            matched_tracks[ti] = true;
            let track = &mut self.tracks[ti];
            let m = measure(&observations[oi].bbox);
            let scale = track.scale();
            for (axis, z) in track.axes.iter_mut().zip(m) {
                axis.correct(z, scale);
            }
            track.bbox = observations[oi].bbox;
            track.seen_at = t;
            track.seen_frame = frame;
            assigned[oi] = Some(track.id);
        }
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
        // The same place again: a new track, a new id.
        let again = t.update(3000, 3.0, &[person(100.0, 100.0, 0.9)]).assigned[0].unwrap();
        assert!(again > first);
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
