//! Motion gating: the detector runs on a frame only when enough of the picture changed, or when
//! `detect_interval_s` passed without a run. On a still frame the runner carries the boxes of the
//! last analysed one (nothing moved, so neither did they), which keeps still objects followed and
//! reported, and checks them again at the interval. The change is measured on a small blurred
//! grey copy of the frame against a running average of the earlier ones (as Frigate's motion
//! detector does): well under a millisecond, against tens of milliseconds of inference.

use opencv::core::{self, Mat, Size};
use opencv::imgproc;
use opencv::prelude::*;

/// What the gate compares and how much change counts (`runner.motion_*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MotionSettings {
    /// Width of the grey copy compared (its height keeps the frame's aspect).
    pub width: i32,
    /// A pixel changed when it differs from the background by more than this (0..255).
    pub pixel_delta: f64,
    /// The changed share of the picture (0..1) that counts as motion.
    pub min_area: f64,
    /// How fast the background takes in the picture: the weight of each new frame.
    pub background_weight: f64,
    /// Seconds of stream time after which the detector runs even on a still picture.
    pub detect_interval_s: f64,
}

impl Default for MotionSettings {
    fn default() -> Self {
        Self { width: 160, pixel_delta: 25.0, min_area: 0.002, background_weight: 0.2, detect_interval_s: 10.0 }
    }
}

/// Why the detector ran on a frame, or that it did not.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gate {
    /// The first frame, or one after the picture changed size.
    Start,
    Motion(f64),
    /// `detect_interval_s` passed since the last run.
    Interval(f64),
    /// Nothing moved: not analysed.
    Still(f64),
}

impl Gate {
    pub fn analyse(&self) -> bool {
        !matches!(self, Gate::Still(_))
    }

    /// The changed share of the picture (none for the first frame).
    pub fn motion(&self) -> Option<f64> {
        match *self {
            Gate::Start => None,
            Gate::Motion(m) | Gate::Interval(m) | Gate::Still(m) => Some(m),
        }
    }
}

pub struct MotionGate {
    settings: MotionSettings,
    small: Mat,
    grey: Mat,
    blurred: Mat,
    /// Running average, 32-bit float.
    background: Mat,
    background_8u: Mat,
    diff: Mat,
    changed: Mat,
    last_run: Option<f64>,
}

impl MotionGate {
    pub fn new(settings: MotionSettings) -> Self {
        Self {
            settings,
            small: Mat::default(),
            grey: Mat::default(),
            blurred: Mat::default(),
            background: Mat::default(),
            background_8u: Mat::default(),
            diff: Mat::default(),
            changed: Mat::default(),
            last_run: None,
        }
    }

    /// Whether to run the detector on `frame` (BGR or grey) at stream time `t` seconds. Every
    /// frame updates the background.
    pub fn decide(&mut self, frame: &Mat, t: f64) -> opencv::Result<Gate> {
        let gate = match self.measure(frame)? {
            None => Gate::Start,
            Some(m) if m >= self.settings.min_area => Gate::Motion(m),
            Some(m) if self.last_run.is_none_or(|last| t - last >= self.settings.detect_interval_s || t < last) => {
                Gate::Interval(m)
            }
            Some(m) => Gate::Still(m),
        };
        if gate.analyse() {
            self.last_run = Some(t);
        }
        Ok(gate)
    }

    /// The share of the picture that changed from the background (`None`: no background yet).
    fn measure(&mut self, frame: &Mat) -> opencv::Result<Option<f64>> {
        let width = self.settings.width.min(frame.cols()).max(1);
        let height = ((frame.rows() as f64 * width as f64 / frame.cols().max(1) as f64).round() as i32).max(1);
        imgproc::resize(frame, &mut self.small, Size::new(width, height), 0.0, 0.0, imgproc::INTER_AREA)?;
        if self.small.channels() == 1 {
            self.small.copy_to(&mut self.grey)?;
        } else {
            imgproc::cvt_color(&self.small, &mut self.grey, imgproc::COLOR_BGR2GRAY, 0)?;
        }
        imgproc::gaussian_blur(&self.grey, &mut self.blurred, Size::new(5, 5), 0.0, 0.0, core::BORDER_DEFAULT)?;
        if self.background.empty() || self.background.size()? != self.blurred.size()? {
            self.blurred.convert_to(&mut self.background, core::CV_32F, 1.0, 0.0)?;
            return Ok(None);
        }
        self.background.convert_to(&mut self.background_8u, core::CV_8U, 1.0, 0.0)?;
        core::absdiff(&self.blurred, &self.background_8u, &mut self.diff)?;
        imgproc::threshold(&self.diff, &mut self.changed, self.settings.pixel_delta, 255.0, imgproc::THRESH_BINARY)?;
        let share = f64::from(core::count_non_zero(&self.changed)?) / f64::from(width * height);
        imgproc::accumulate_weighted(
            &self.blurred,
            &mut self.background,
            self.settings.background_weight,
            &core::no_array(),
        )?;
        Ok(Some(share))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opencv::core::{Rect, Scalar, CV_8UC3};

    fn picture(person_at: Option<i32>) -> Mat {
        let mut m = Mat::new_rows_cols_with_default(480, 640, CV_8UC3, Scalar::all(90.0)).unwrap();
        if let Some(x) = person_at {
            imgproc::rectangle(&mut m, Rect::new(x, 200, 40, 120), Scalar::new(20.0, 200.0, 240.0, 0.0), -1, 8, 0)
                .unwrap();
        }
        m
    }

    #[test]
    fn a_still_picture_is_skipped_until_the_interval_and_movement_is_analysed() {
        let mut gate = MotionGate::new(MotionSettings::default());
        let still = picture(None);
        assert_eq!(gate.decide(&still, 0.0).unwrap(), Gate::Start);
        for i in 1..20 {
            let g = gate.decide(&still, f64::from(i) * 0.5).unwrap();
            assert_eq!(g, Gate::Still(0.0), "frame {i}");
        }
        assert!(matches!(gate.decide(&still, 10.0).unwrap(), Gate::Interval(_)));
        assert!(matches!(gate.decide(&still, 10.5).unwrap(), Gate::Still(_)));
        // Someone walks in.
        let g = gate.decide(&picture(Some(300)), 11.0).unwrap();
        assert!(matches!(g, Gate::Motion(m) if m > 0.01), "{g:?}");
        let g = gate.decide(&picture(Some(330)), 11.5).unwrap();
        assert!(matches!(g, Gate::Motion(_)), "{g:?}");
        // A step back in the stream's clock (a file started again) runs the detector.
        let mut gate = MotionGate::new(MotionSettings::default());
        assert_eq!(gate.decide(&still, 5.0).unwrap(), Gate::Start);
        assert_eq!(gate.decide(&still, 5.5).unwrap(), Gate::Still(0.0));
        assert!(matches!(gate.decide(&still, 1.0).unwrap(), Gate::Interval(_)));
    }
}
