//! Zones and lines: from each track's position frame by frame to `object_entered`,
//! `object_left`, `dwell` and `line_crossed` events. Where an object is, is the bottom centre of
//! its box (where it stands), in normalised coordinates.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use vap_core::detection::Detection;
use vap_core::events::{Direction, SceneEvent, SceneEventKind};
use vap_core::options::{Line, Zone};

use crate::tracker::TrackView;

/// A tracked object in one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    pub track_id: i64,
    pub class: String,
    /// Bottom centre of its box, 0..1.
    pub at: [f64; 2],
}

/// The frame being looked at.
#[derive(Debug, Clone, Copy)]
pub struct FrameAt {
    pub number: i64,
    /// Seconds on the stream's clock (media time for files): dwell is measured on it.
    pub t: f64,
    pub timestamp: DateTime<Utc>,
}

#[derive(Debug, Clone)]
struct Visit {
    since: f64,
    dwell_reported: bool,
}

#[derive(Debug, Clone)]
struct Seen {
    class: String,
    /// Per line (same order as the lines), where it last was off the line: a point on it
    /// does not end a crossing, the next one off it does.
    off_line: Vec<Option<[f64; 2]>>,
    /// The frame it was last seen in.
    last: FrameAt,
    /// Per zone (same order as the zones), the visit going on.
    visits: Vec<Option<Visit>>,
}

pub struct Regions {
    scenario: Uuid,
    zones: Vec<Zone>,
    lines: Vec<Line>,
    tracks: HashMap<i64, Seen>,
    line_margin: f64,
    /// Per line, how far the picture reaches on each side of it (negative side, positive).
    room: Vec<(f64, f64)>,
}

/// A crossing counts once the object stands this far beyond the line (in picture widths and
/// heights): a person who stops on a line, or walks along it, is not counted at every wobble
/// of its box (docs/ACCURACY.md).
pub const LINE_MARGIN: f64 = 0.02;

fn counts(classes: &Option<Vec<String>>, class: &str) -> bool {
    classes.as_ref().is_none_or(|c| c.iter().any(|k| k == class))
}

/// Which side of the line `a -> b` point `p` is on: the sign of the cross product, in picture
/// coordinates (y down). Negative is the left of the way from `a` to `b` as shown.
fn side(a: [f64; 2], b: [f64; 2], p: [f64; 2]) -> f64 {
    (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])
}

/// Whether the move `p -> q` crosses the segment `a -> b`, and which way.
fn crossing(a: [f64; 2], b: [f64; 2], p: [f64; 2], q: [f64; 2]) -> Option<Direction> {
    let (sp, sq) = (side(a, b, p), side(a, b, q));
    // Touching the line is not crossing it; leaving it again to the same side neither.
    if sp == 0.0 || sq == 0.0 || (sp > 0.0) == (sq > 0.0) {
        return None;
    }
    // The move's own line must separate the segment's ends too (else it passes beside it).
    let (sa, sb) = (side(p, q, a), side(p, q, b));
    if (sa > 0.0) == (sb > 0.0) && sa != 0.0 && sb != 0.0 {
        return None;
    }
    Some(if sq < 0.0 { Direction::In } else { Direction::Out })
}

impl Regions {
    pub fn new(scenario: Uuid, zones: Vec<Zone>, lines: Vec<Line>) -> Self {
        let room = lines
            .iter()
            .map(|line| {
                let [a, b] = line.points;
                let length = ((b[0] - a[0]).powi(2) + (b[1] - a[1]).powi(2)).sqrt().max(f64::MIN_POSITIVE);
                let corners = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]].map(|c| side(a, b, c) / length);
                (-corners.iter().copied().fold(0.0, f64::min), corners.iter().copied().fold(0.0, f64::max))
            })
            .collect();
        Self { scenario, zones, lines, tracks: HashMap::new(), line_margin: LINE_MARGIN, room }
    }

    /// Every move over a line counts, however small (for truth made from exact paths).
    pub fn exact(mut self) -> Self {
        self.line_margin = 0.0;
        self
    }

    pub fn is_empty(&self) -> bool {
        self.zones.is_empty() && self.lines.is_empty()
    }

    fn event(&self, kind: SceneEventKind, region: &str, track: i64, class: &str, frame: &FrameAt) -> SceneEvent {
        SceneEvent {
            version: vap_core::events::RECORD_VERSION,
            event_id: SceneEvent::id_for(self.scenario, kind, region, Some(track), frame.number),
            scenario_uuid: self.scenario,
            kind,
            frame_number: frame.number,
            timestamp: frame.timestamp,
            zone: None,
            line: None,
            direction: None,
            track_id: Some(track),
            class: Some(class.to_string()),
            dwell_seconds: None,
            detail: None,
        }
    }

    /// The events of one analysed frame as the runner derives them: the tracks that ended
    /// leave their zones, then each tracked detection is placed where it stands (the bottom
    /// centre of its box in a `width` x `height` picture).
    pub fn frame_events(
        &mut self,
        at: &FrameAt,
        ended: &[TrackView],
        detections: &[Detection],
        (width, height): (f32, f32),
    ) -> Vec<SceneEvent> {
        if self.is_empty() {
            return Vec::new();
        }
        let mut events: Vec<SceneEvent> = ended.iter().flat_map(|e| self.ended(e.id as i64)).collect();
        let placed: Vec<Placed> = detections
            .iter()
            .filter_map(|d| {
                let foot = [(d.bbox[0] + d.bbox[2]) / 2.0 / width, d.bbox[3] / height];
                d.track_id.map(|track_id| Placed {
                    track_id,
                    class: d.class.clone(),
                    // A box on the picture's edge stands inside a zone drawn to it.
                    at: foot.map(|v| f64::from(v).clamp(0.0, 1.0 - 1e-9)),
                })
            })
            .collect();
        events.extend(self.observe(at, &placed));
        events
    }

    /// The events of one frame: its tracked objects where they are now.
    pub fn observe(&mut self, frame: &FrameAt, objects: &[Placed]) -> Vec<SceneEvent> {
        let mut out = Vec::new();
        for o in objects {
            let previous = self.tracks.get(&o.track_id).cloned();
            let mut visits = previous.as_ref().map_or_else(|| vec![None; self.zones.len()], |s| s.visits.clone());
            for (zi, zone) in self.zones.iter().enumerate() {
                if !counts(&zone.classes, &o.class) {
                    continue;
                }
                let inside = zone.polygon.contains(o.at[0], o.at[1]);
                match (&mut visits[zi], inside) {
                    (None, true) => {
                        let mut e = self.event(SceneEventKind::ObjectEntered, &zone.name, o.track_id, &o.class, frame);
                        e.zone = Some(zone.name.clone());
                        out.push(e);
                        visits[zi] = Some(Visit { since: frame.t, dwell_reported: false });
                    }
                    (Some(visit), true) => {
                        let stayed = frame.t - visit.since;
                        if !visit.dwell_reported && zone.dwell_seconds.is_some_and(|d| stayed >= d) {
                            visit.dwell_reported = true;
                            let mut e = self.event(SceneEventKind::Dwell, &zone.name, o.track_id, &o.class, frame);
                            (e.zone, e.dwell_seconds) = (Some(zone.name.clone()), Some(stayed));
                            out.push(e);
                        }
                    }
                    (Some(visit), false) => {
                        let mut e = self.event(SceneEventKind::ObjectLeft, &zone.name, o.track_id, &o.class, frame);
                        (e.zone, e.dwell_seconds) = (Some(zone.name.clone()), Some(frame.t - visit.since));
                        out.push(e);
                        visits[zi] = None;
                    }
                    (None, false) => {}
                }
            }
            let mut off_line = previous.as_ref().map_or_else(|| vec![None; self.lines.len()], |s| s.off_line.clone());
            for (li, line) in self.lines.iter().enumerate() {
                if !counts(&line.classes, &o.class) {
                    continue;
                }
                let [a, b] = line.points;
                let length = ((b[0] - a[0]).powi(2) + (b[1] - a[1]).powi(2)).sqrt().max(f64::MIN_POSITIVE);
                let beyond = side(a, b, o.at) / length;
                // Near the picture's edge the margin shrinks: the far side must be reachable.
                let room = if beyond > 0.0 { self.room[li].1 } else { self.room[li].0 };
                if beyond == 0.0 || beyond.abs() < self.line_margin.min(room / 2.0) {
                    continue;
                }
                if let Some(direction) = off_line[li].and_then(|p| crossing(a, b, p, o.at)) {
                    let mut e = self.event(SceneEventKind::LineCrossed, &line.name, o.track_id, &o.class, frame);
                    (e.line, e.direction) = (Some(line.name.clone()), Some(direction));
                    out.push(e);
                }
                off_line[li] = Some(o.at);
            }
            self.tracks.insert(o.track_id, Seen { class: o.class.clone(), off_line, last: *frame, visits });
        }
        out
    }

    /// A track ended (lost for good): it leaves every zone it was in, as of the frame it was
    /// last seen in.
    pub fn ended(&mut self, track_id: i64) -> Vec<SceneEvent> {
        let Some(seen) = self.tracks.remove(&track_id) else { return Vec::new() };
        let last_seen = &seen.last;
        let mut out = Vec::new();
        for (zone, visit) in self.zones.iter().zip(&seen.visits) {
            if let Some(visit) = visit {
                let mut e = self.event(SceneEventKind::ObjectLeft, &zone.name, track_id, &seen.class, last_seen);
                (e.zone, e.dwell_seconds) = (Some(zone.name.clone()), Some(last_seen.t - visit.since));
                out.push(e);
            }
        }
        out
    }

    /// Every track still followed ends (the stream ended): their visits end where last seen.
    pub fn tracked(&self) -> impl Iterator<Item = i64> + '_ {
        self.tracks.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vap_core::options::Polygon;

    fn frame(n: i64) -> FrameAt {
        FrameAt { number: n * 500, t: n as f64 * 0.5, timestamp: DateTime::UNIX_EPOCH }
    }

    fn right_half(dwell: Option<f64>) -> Zone {
        Zone {
            name: "right".into(),
            polygon: Polygon(vec![[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]),
            classes: None,
            dwell_seconds: dwell,
        }
    }

    fn middle_line() -> Line {
        // Drawn upwards: going right to left is `in`.
        Line { name: "gate".into(), points: [[0.5, 1.0], [0.5, 0.0]], classes: Some(vec!["person".into()]) }
    }

    fn walker(track: i64, x: f64) -> Placed {
        Placed { track_id: track, class: "person".into(), at: [x, 0.8] }
    }

    #[test]
    fn a_walk_across_and_back_enters_leaves_and_crosses_both_ways() {
        let mut r = Regions::new(Uuid::nil(), vec![right_half(None)], vec![middle_line()]);
        let xs = [0.1, 0.3, 0.45, 0.6, 0.8, 0.9, 0.7, 0.4, 0.2];
        let mut events = Vec::new();
        for (n, x) in xs.into_iter().enumerate() {
            events.extend(r.observe(&frame(n as i64), &[walker(7, x)]));
        }
        let seen: Vec<(SceneEventKind, Option<Direction>, i64)> =
            events.iter().map(|e| (e.kind, e.direction, e.frame_number / 500)).collect();
        assert_eq!(
            seen,
            vec![
                (SceneEventKind::ObjectEntered, None, 3),
                (SceneEventKind::LineCrossed, Some(Direction::Out), 3),
                (SceneEventKind::ObjectLeft, None, 7),
                (SceneEventKind::LineCrossed, Some(Direction::In), 7),
            ]
        );
        assert_eq!(events[2].dwell_seconds, Some(2.0));
        // Ids follow what the event is: the same walk again gives the same ids.
        let mut again = Regions::new(Uuid::nil(), vec![right_half(None)], vec![middle_line()]);
        let ids: Vec<Uuid> = xs
            .into_iter()
            .enumerate()
            .flat_map(|(n, x)| again.observe(&frame(n as i64), &[walker(7, x)]))
            .map(|e| e.event_id)
            .collect();
        assert_eq!(ids, events.iter().map(|e| e.event_id).collect::<Vec<_>>());
    }

    #[test]
    fn dwell_is_reported_once_per_visit_and_a_lost_track_leaves() {
        let mut r = Regions::new(Uuid::nil(), vec![right_half(Some(2.0))], vec![]);
        let mut kinds = Vec::new();
        for n in 0..10 {
            kinds.extend(r.observe(&frame(n), &[walker(1, 0.7)]).into_iter().map(|e| (e.kind, e.frame_number / 500)));
        }
        assert_eq!(kinds, vec![(SceneEventKind::ObjectEntered, 0), (SceneEventKind::Dwell, 4)]);
        let left = r.ended(1);
        assert_eq!((left.len(), left[0].kind, left[0].dwell_seconds), (1, SceneEventKind::ObjectLeft, Some(4.5)));
        assert!(r.ended(1).is_empty(), "ends once");
    }

    #[test]
    fn a_stop_on_the_line_does_not_hide_the_crossing() {
        let mut r = Regions::new(Uuid::nil(), vec![], vec![middle_line()]);
        let crossed: Vec<Option<Direction>> = [0.4, 0.5, 0.5, 0.6]
            .iter()
            .enumerate()
            .flat_map(|(n, x)| r.observe(&frame(n as i64), &[walker(1, *x)]))
            .map(|e| e.direction)
            .collect();
        assert_eq!(crossed, vec![Some(Direction::Out)]);
    }

    #[test]
    fn a_person_wobbling_on_the_line_is_counted_once_and_an_exact_truth_counts_every_wobble() {
        // Stands on the line, its box's foot wobbling 1% of the picture either side, then walks on.
        let xs = [0.3, 0.49, 0.51, 0.49, 0.51, 0.49, 0.51, 0.7];
        let count = |mut r: Regions| {
            xs.iter().enumerate().flat_map(|(n, x)| r.observe(&frame(n as i64), &[walker(1, *x)])).count()
        };
        assert_eq!(count(Regions::new(Uuid::nil(), vec![], vec![middle_line()])), 1);
        assert_eq!(count(Regions::new(Uuid::nil(), vec![], vec![middle_line()]).exact()), 5);
    }

    #[test]
    fn a_line_close_to_the_picture_edge_still_counts() {
        // 1% from the bottom: the far side has less room than the margin.
        let low = Line { name: "low".into(), points: [[0.0, 0.99], [1.0, 0.99]], classes: None };
        let mut r = Regions::new(Uuid::nil(), vec![], vec![low]);
        let at = |y: f64| Placed { track_id: 1, class: "person".into(), at: [0.5, y] };
        r.observe(&frame(0), &[at(0.9)]);
        assert_eq!(r.observe(&frame(1), &[at(1.0 - 1e-9)]).len(), 1);
    }

    #[test]
    fn a_move_beside_the_segment_or_of_another_class_does_not_cross() {
        let short = Line { name: "short".into(), points: [[0.5, 0.0], [0.5, 0.5]], classes: None };
        let mut r = Regions::new(Uuid::nil(), vec![], vec![short, middle_line()]);
        r.observe(&frame(0), &[walker(1, 0.4), Placed { track_id: 2, class: "car".into(), at: [0.4, 0.8] }]);
        let events =
            r.observe(&frame(1), &[walker(1, 0.6), Placed { track_id: 2, class: "car".into(), at: [0.6, 0.8] }]);
        // y = 0.8 passes below the short line; the car does not count for the gate.
        let named: Vec<(&str, i64)> =
            events.iter().map(|e| (e.line.as_deref().unwrap(), e.track_id.unwrap())).collect();
        assert_eq!(named, vec![("gate", 1)]);
    }
}
