//! Clips with a known truth, made with ffmpeg from pictures opencv-doc ships: people (the person
//! of basketball1.png, 110 x 322 px: 60% of the height) walking paths over a 960x540 street
//! scene (building.jpg), at 10 fps. The truth (boxes, line crossings) is the paths themselves.

use std::path::{Path, PathBuf};
use std::process::Command;

use vap_core::detection::{iou, Detection};
use vap_core::options::Line;

use crate::counting::Counts;
use crate::mot::{MotBox, Rect};

pub const BUILDING: &str = "/usr/share/doc/opencv-doc/examples/data/building.jpg";
pub const PERSON: &str = "/usr/share/doc/opencv-doc/examples/data/basketball1.png";
pub const FPS: f64 = 10.0;
pub const SIZE: (f32, f32) = (960.0, 540.0);
/// The walker as drawn.
pub const WALKER: (f64, f64) = (110.0, 322.0);

/// A walker's left edge along time: straight moves between keys (seconds, x px), still before
/// the first and after the last.
#[derive(Debug, Clone)]
pub struct Walker {
    pub top: f64,
    pub keys: Vec<(f64, f64)>,
}

impl Walker {
    pub fn x(&self, t: f64) -> f64 {
        let keys = &self.keys;
        if t <= keys[0].0 {
            return keys[0].1;
        }
        for w in keys.windows(2) {
            let ((t0, x0), (t1, x1)) = (w[0], w[1]);
            if t <= t1 {
                return x0 + (x1 - x0) * (t - t0) / (t1 - t0).max(1e-9);
            }
        }
        keys[keys.len() - 1].1
    }

    /// The same path as an ffmpeg expression of `t`.
    fn expr(&self) -> String {
        let last = self.keys[self.keys.len() - 1].1;
        let mut expr = format!("{last}");
        for w in self.keys.windows(2).rev() {
            let ((t0, x0), (t1, x1)) = (w[0], w[1]);
            let slope = (x1 - x0) / (t1 - t0).max(1e-9);
            expr = format!("if(lt(t,{t1}),{x0}+({slope})*(t-{t0}),{expr})");
        }
        format!("if(lt(t,{}),{},{expr})", self.keys[0].0, self.keys[0].1)
    }
}

/// A clip: walkers drawn in order (the last nearest), and optionally a grey panel in front of
/// them (x, y, width, height).
#[derive(Debug, Clone)]
pub struct Scene {
    pub name: &'static str,
    pub seconds: f64,
    pub walkers: Vec<Walker>,
    pub panel: Option<[u32; 4]>,
}

impl Scene {
    pub fn frames(&self) -> i64 {
        (self.seconds * FPS).round() as i64
    }

    /// The clip (made once into `dir`).
    pub fn clip(&self, dir: &Path) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let out = dir.join(format!("{}.mp4", self.name));
        if out.exists() {
            return Ok(out);
        }
        let n = self.walkers.len();
        let mut filter = format!(
            "[0]crop=868:488:0:56,scale=960:540,format=yuv420p[bg];[1]crop=140:410:28:70,scale={}:{},format=yuv420p,split={n}",
            WALKER.0, WALKER.1
        );
        filter.extend((0..n).map(|i| format!("[p{i}]")));
        let mut below = "bg".to_string();
        for (i, walker) in self.walkers.iter().enumerate() {
            filter.push_str(&format!(";[{below}][p{i}]overlay=x='{}':y={}[v{i}]", walker.expr(), walker.top));
            below = format!("v{i}");
        }
        if let Some([x, y, w, h]) = self.panel {
            filter.push_str(&format!(";[{below}]drawbox=x={x}:y={y}:w={w}:h={h}:color=gray:t=fill[panel]"));
            below = "panel".into();
        }
        let tmp = dir.join(format!("{}.{}.tmp.mp4", self.name, std::process::id()));
        let status = Command::new("ffmpeg")
            .args(["-loglevel", "error", "-y", "-loop", "1", "-framerate", "10", "-i", BUILDING])
            .args(["-loop", "1", "-framerate", "10", "-i", PERSON, "-filter_complex", &filter])
            .args(["-map", &format!("[{below}]"), "-frames:v", &self.frames().to_string()])
            .args(["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-g", "10", "-an"])
            .arg(&tmp)
            .status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!("ffmpeg failed making {}", self.name)));
        }
        std::fs::rename(&tmp, &out)?;
        Ok(out)
    }

    /// Each walker's box in each frame (ids from 1, frames from 1).
    pub fn truth(&self) -> Vec<MotBox> {
        (0..self.frames())
            .flat_map(|n| {
                self.walkers.iter().enumerate().map(move |(i, w)| MotBox {
                    frame: n + 1,
                    id: i as i64 + 1,
                    rect: Rect { x: w.x(n as f64 / FPS), y: w.top, w: WALKER.0, h: WALKER.1 },
                })
            })
            .collect()
    }

    /// How often each walker's middle crosses the vertical line at `x` px, each way ("in": to
    /// the right, as [`vertical_line`] is drawn); a stop on the line and a walk on is one.
    pub fn crossings(&self, line: &str, x: f64) -> Counts {
        let mut counts = crate::counting::none_yet([line]);
        for w in &self.walkers {
            let mut side = 0.0f64;
            for &(_, left) in &w.keys {
                let now = (left + WALKER.0 / 2.0 - x).signum();
                if left + WALKER.0 / 2.0 == x {
                    continue;
                }
                if side != 0.0 && now != side {
                    *counts.entry((line.to_string(), if now > 0.0 { "in" } else { "out" })).or_default() += 1;
                }
                side = now;
            }
        }
        counts
    }
}

/// In how many frames a person box of at least `threshold` overlaps the walker's true box
/// (IoU 0.5), and the best score any box on the walker got.
pub fn walker_found(frames: &[(i64, Vec<Detection>)], truth: &[MotBox], threshold: f32) -> (usize, f32) {
    let (mut hits, mut best) = (0, 0.0f32);
    for (frame, detections) in frames {
        let Some(want) = truth.iter().find(|t| t.frame == *frame) else { continue };
        let want = want.rect.corners();
        let on: Vec<f32> = detections
            .iter()
            .filter(|d| d.class == "person" && iou(&d.bbox, &want) >= 0.5)
            .map(|d| d.confidence)
            .collect();
        best = on.iter().copied().fold(best, f32::max);
        hits += usize::from(on.iter().any(|&c| c >= threshold));
    }
    (hits, best)
}

/// A line from the top to the bottom of the picture at `x` (0..1): crossing it to the right is
/// "in" (vap's lines: in is to the left of the way from the first point to the second, as shown).
pub fn vertical_line(name: &str, x: f64) -> Line {
    Line { name: name.into(), points: [[x, 0.0], [x, 1.0]], classes: None }
}

/// The walker's left edge that puts its middle at `x` px.
fn at(x: f64) -> f64 {
    x - WALKER.0 / 2.0
}

/// One walker crossing the scene three times in 15 s, at 162 px/s.
pub fn walker_scene() -> Scene {
    let keys = vec![(0.0, 20.0), (5.0, 830.0), (10.0, 20.0), (15.0, 830.0)];
    Scene { name: "walker_16x9", seconds: 15.0, walkers: vec![Walker { top: 200.0, keys }], panel: None }
}

/// Two walkers crossing each other four times in 20 s; the second is nearer and hides the first.
pub fn crossing_scene() -> Scene {
    let there = vec![(0.0, 20.0), (5.0, 830.0), (10.0, 20.0), (15.0, 830.0), (20.0, 20.0)];
    let back: Vec<(f64, f64)> = there.iter().map(|&(t, x)| (t, 850.0 - x)).collect();
    Scene {
        name: "crossing_16x9",
        seconds: 20.0,
        walkers: vec![Walker { top: 190.0, keys: there }, Walker { top: 210.0, keys: back }],
        panel: None,
    }
}

/// Every scene, by name.
pub fn all() -> Vec<Scene> {
    let mut scenes = vec![walker_scene(), crossing_scene()];
    scenes.extend(counting_scenes());
    scenes
}

/// The counting clips: speeds, two together, a stop on the line, half hidden. The line is at
/// the middle (x 480).
pub fn counting_scenes() -> Vec<Scene> {
    let (l, r) = (at(120.0), at(840.0));
    // Left to right and back at 90, 180, 360 and 720 px/s (720 px each way).
    let mut t = 0.5;
    let mut keys = vec![(t, l)];
    for (i, speed) in [90.0, 180.0, 360.0, 720.0].into_iter().enumerate() {
        t += 720.0 / speed;
        keys.push((t, if i % 2 == 0 { r } else { l }));
        t += 0.5;
        keys.push((t, if i % 2 == 0 { r } else { l }));
    }
    let speeds =
        Scene { name: "count_speeds", seconds: t + 0.5, walkers: vec![Walker { top: 200.0, keys }], panel: None };
    // Two side by side (their boxes overlap by half), over and back, at 160 px/s.
    let pair = |top: f64, offset: f64| Walker {
        top,
        keys: vec![(0.5, l + offset), (5.0, r + offset), (6.0, r + offset), (10.5, l + offset)],
    };
    let together = Scene {
        name: "count_together",
        seconds: 11.5,
        walkers: vec![pair(190.0, -30.0), pair(205.0, 30.0)],
        panel: None,
    };
    // Walks onto the line, stands there 3 s, walks on; later back the same way.
    let stop = Walker {
        top: 200.0,
        keys: vec![
            (0.5, l),
            (3.0, at(480.0)),
            (6.0, at(480.0)),
            (8.5, r),
            (9.5, r),
            (12.0, at(480.0)),
            (15.0, at(480.0)),
            (17.5, l),
        ],
    };
    let stops = Scene { name: "count_stops", seconds: 18.5, walkers: vec![stop], panel: None };
    // Over and back twice behind a panel that hides the legs (the lower 40%) around the line.
    let hidden = Scene {
        name: "count_hidden",
        seconds: 19.0,
        walkers: vec![Walker {
            top: 200.0,
            keys: vec![(0.5, l), (5.0, r), (5.5, r), (10.0, l), (10.5, l), (14.0, r), (14.5, r), (18.5, l)],
        }],
        panel: Some([380, 392, 200, 148]),
    };
    vec![speeds, together, stops, hidden]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_their_crossings() {
        let w = Walker { top: 0.0, keys: vec![(1.0, 0.0), (3.0, 200.0), (4.0, 200.0)] };
        assert_eq!((w.x(0.0), w.x(2.0), w.x(3.5), w.x(9.0)), (0.0, 100.0, 200.0, 200.0));
        let scenes = counting_scenes();
        let want = |scene: &Scene| {
            let c = scene.crossings("middle", 480.0);
            (c[&("middle".to_string(), "in")], c[&("middle".to_string(), "out")])
        };
        let by_name: Vec<(&str, (u32, u32))> = scenes.iter().map(|s| (s.name, want(s))).collect();
        assert_eq!(
            by_name,
            [("count_speeds", (2, 2)), ("count_together", (2, 2)), ("count_stops", (1, 1)), ("count_hidden", (2, 2))]
        );
    }
}
