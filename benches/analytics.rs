//! Tracker benchmark (docs/BENCHMARKS.md): `cargo bench --bench analytics`. Time per frame of
//! `analytics::tracker` with 5, 50 and 200 people walking in a 1920x1080 picture at 10 fps,
//! beside its floor measured in the same run: the IoU of every track and detection pair,
//! which any IoU tracker computes (the rest is the Kalman filter and the matching).

use std::hint::black_box;
use std::time::Instant;

use vap_analytics::regions::{FrameAt, Placed, Regions};
use vap_analytics::tracker::{iou, Observation, Tracker, TrackerSettings};
use vap_core::options::{Line, Polygon, Zone};

const FRAMES: usize = 1_000;

/// `n` people at fixed speeds, wrapping around the picture; some jitter in their boxes.
fn scene(n: usize) -> Vec<Vec<Observation>> {
    let mut rng = fastrand::Rng::with_seed(7);
    let people: Vec<([f32; 2], [f32; 2])> = (0..n)
        .map(|_| ([rng.f32() * 1880.0, rng.f32() * 980.0], [rng.f32() * 16.0 - 8.0, rng.f32() * 8.0 - 4.0]))
        .collect();
    (0..FRAMES)
        .map(|f| {
            people
                .iter()
                .map(|(start, v)| {
                    let x = (start[0] + v[0] * f as f32).rem_euclid(1880.0);
                    let y = (start[1] + v[1] * f as f32).rem_euclid(980.0);
                    let j = rng.f32() * 2.0;
                    Observation {
                        class: "person".into(),
                        score: 0.5 + rng.f32() * 0.5,
                        bbox: [x + j, y, x + 40.0 + j, y + 100.0],
                    }
                })
                .collect()
        })
        .collect()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("analytics benchmark: run with `cargo bench --bench analytics`");
        return;
    }
    println!("| people | tracker µs/frame | floor: all-pairs IoU µs/frame | tracker + zone and line events µs/frame |");
    println!("|---:|---:|---:|---:|");
    for n in [5, 50, 200] {
        let frames = scene(n);
        let started = Instant::now();
        let mut tracker = Tracker::new(TrackerSettings::default());
        for (f, obs) in frames.iter().enumerate() {
            black_box(tracker.update(f as i64 * 100, f as f64 * 0.1, obs));
        }
        let tracked = started.elapsed().as_secs_f64() * 1e6 / FRAMES as f64;

        let started = Instant::now();
        for pair in frames.windows(2) {
            let mut sum = 0.0;
            for a in &pair[0] {
                for b in &pair[1] {
                    sum += iou(&a.bbox, &b.bbox);
                }
            }
            black_box(sum);
        }
        let floor = started.elapsed().as_secs_f64() * 1e6 / (FRAMES - 1) as f64;

        let zone = Zone {
            name: "right".into(),
            polygon: Polygon(vec![[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]),
            classes: None,
            dwell_seconds: Some(5.0),
        };
        let line = Line { name: "middle".into(), points: [[0.5, 1.0], [0.5, 0.0]], classes: None };
        let mut regions = Regions::new(uuid::Uuid::nil(), vec![zone], vec![line]);
        let mut tracker = Tracker::new(TrackerSettings::default());
        let started = Instant::now();
        let mut events = 0;
        for (f, obs) in frames.iter().enumerate() {
            let up = tracker.update(f as i64 * 100, f as f64 * 0.1, obs);
            for ended in &up.ended {
                events += regions.ended(ended.id as i64).len();
            }
            let placed: Vec<Placed> = obs
                .iter()
                .zip(&up.assigned)
                .filter_map(|(o, id)| {
                    id.map(|id| Placed {
                        track_id: id as i64,
                        class: o.class.clone(),
                        at: [f64::from((o.bbox[0] + o.bbox[2]) / 2.0 / 1920.0), f64::from(o.bbox[3] / 1080.0)],
                    })
                })
                .collect();
            let at = FrameAt { number: f as i64 * 100, t: f as f64 * 0.1, timestamp: chrono::Utc::now() };
            events += regions.observe(&at, &placed).len();
        }
        let with_events = started.elapsed().as_secs_f64() * 1e6 / FRAMES as f64;
        println!("| {n} | {tracked:.1} | {floor:.1} | {with_events:.1} ({events} events) |");
    }
}
