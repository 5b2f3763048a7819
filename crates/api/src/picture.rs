//! Snapshots as the API serves them: the stored JPEG, or the same with the frame's boxes drawn
//! (class, confidence, track id), in pure Rust: the API links neither OpenCV nor tract.

use std::io::Cursor;

use image::{ImageFormat, ImageReader, Limits, Rgb, RgbImage};

use vap_core::db::snapshots::StoredSnapshot;
use vap_core::events::MAX_SNAPSHOT_SIDE;

#[derive(Debug, thiserror::Error)]
pub enum PictureError {
    #[error("stored snapshot is not a readable JPEG: {0}")]
    Decode(#[from] image::ImageError),
    #[error("the snapshot is {0}x{1} pixels; boxes are drawn on at most {MAX_DRAWN_PIXELS} pixels: ask without boxes")]
    TooLarge(u32, u32),
}

/// The most pixels boxes are drawn on (a 4K frame): decoding and re-encoding costs memory and
/// CPU per request, whatever size a stored snapshot claims.
pub const MAX_DRAWN_PIXELS: u64 = 3840 * 2160;

/// The most boxes drawn on one picture.
pub const MAX_DRAWN_BOXES: usize = 256;

/// Box colours, one per class (by its name), readable on dark and light pictures.
const PALETTE: [[u8; 3]; 6] =
    [[255, 64, 64], [64, 200, 255], [255, 200, 0], [120, 255, 120], [255, 120, 255], [255, 160, 60]];

fn colour_of(class: &str) -> Rgb<u8> {
    let h = class.bytes().fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    Rgb(PALETTE[h as usize % PALETTE.len()])
}

/// The snapshot's JPEG with its detections drawn on it, re-encoded.
pub fn with_boxes(snapshot: &StoredSnapshot) -> Result<Vec<u8>, PictureError> {
    let (width, height) = ImageReader::with_format(Cursor::new(&snapshot.jpeg), ImageFormat::Jpeg).into_dimensions()?;
    if u64::from(width) * u64::from(height) > MAX_DRAWN_PIXELS {
        return Err(PictureError::TooLarge(width, height));
    }
    let mut reader = ImageReader::with_format(Cursor::new(&snapshot.jpeg), ImageFormat::Jpeg);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SNAPSHOT_SIDE);
    limits.max_image_height = Some(MAX_SNAPSHOT_SIDE);
    reader.limits(limits);
    let mut img = reader.decode()?.to_rgb8();
    let sx = img.width() as f32 / snapshot.frame_width.max(1) as f32;
    let sy = img.height() as f32 / snapshot.frame_height.max(1) as f32;
    for d in snapshot.detections.iter().take(MAX_DRAWN_BOXES) {
        let colour = colour_of(&d.class);
        let [x0, y0, x1, y1] =
            [d.bbox[0] * sx, d.bbox[1] * sy, d.bbox[2] * sx, d.bbox[3] * sy].map(|v| v.round() as i64);
        for inset in 0..2 {
            rectangle(&mut img, (x0 + inset, y0 + inset, x1 - inset, y1 - inset), colour);
        }
        let mut label = format!("{} {:.2}", d.class, d.confidence);
        if let Some(id) = d.track_id {
            label.push_str(&format!(" #{id}"));
        }
        // Above the box, or inside it at the picture's top edge.
        let top = if y0 >= 10 { y0 - 10 } else { y0 + 2 };
        let width = label.chars().count() as i64 * 8 + 2;
        fill(&mut img, (x0, top, x0 + width, top + 10), colour);
        text(&mut img, x0 + 1, top + 1, &label, Rgb([0, 0, 0]));
    }
    let mut out = Vec::with_capacity(snapshot.jpeg.len() * 2);
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85).encode_image(&img)?;
    Ok(out)
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

fn rectangle(img: &mut RgbImage, (x0, y0, x1, y1): (i64, i64, i64, i64), c: Rgb<u8>) {
    let (w, h) = (i64::from(img.width()), i64::from(img.height()));
    for x in x0.max(0)..=x1.min(w - 1) {
        put(img, x, y0, c);
        put(img, x, y1, c);
    }
    for y in y0.max(0)..=y1.min(h - 1) {
        put(img, x0, y, c);
        put(img, x1, y, c);
    }
}

fn fill(img: &mut RgbImage, (x0, y0, x1, y1): (i64, i64, i64, i64), c: Rgb<u8>) {
    let (w, h) = (i64::from(img.width()), i64::from(img.height()));
    for y in y0.max(0)..y1.min(h) {
        for x in x0.max(0)..x1.min(w) {
            put(img, x, y, c);
        }
    }
}

/// `s` in the 8x8 bitmap font; characters it lacks are drawn as '?'.
fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, c: Rgb<u8>) {
    use font8x8::UnicodeFonts;
    for (i, ch) in s.chars().enumerate() {
        let glyph = font8x8::BASIC_FONTS.get(ch).or_else(|| font8x8::BASIC_FONTS.get('?')).unwrap_or([0; 8]);
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) != 0 {
                    put(img, x + i as i64 * 8 + col, y + row as i64, c);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vap_core::events::Detection;

    fn grey_jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_pixel(w, h, Rgb([128, 128, 128]));
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&img).unwrap();
        out
    }

    #[test]
    fn boxes_are_drawn_where_the_detections_are_at_the_pictures_scale() {
        let snapshot = StoredSnapshot {
            frame_number: 1,
            captured_at: chrono::Utc::now(),
            jpeg: grey_jpeg(320, 240),
            width: 320,
            height: 240,
            frame_width: 640,
            frame_height: 480,
            detections: vec![Detection {
                class: "person".into(),
                confidence: 0.9,
                bbox: [100.0, 100.0, 300.0, 400.0],
                track_id: Some(3),
            }],
            event_ids: Vec::new(),
        };
        let drawn = image::load_from_memory(&with_boxes(&snapshot).unwrap()).unwrap().to_rgb8();
        assert_eq!(drawn.dimensions(), (320, 240));
        let colour = colour_of("person").0;
        let near = |p: &Rgb<u8>| p.0.iter().zip(colour).all(|(a, b)| (i32::from(*a) - i32::from(b)).abs() < 60);
        // The box's left edge at x 50 (100 / 2), from y 50 to 200; the grey stays grey elsewhere.
        assert!((60..190).all(|y| near(drawn.get_pixel(50, y))), "left edge drawn");
        assert!(!near(drawn.get_pixel(10, 120)) && !near(drawn.get_pixel(100, 120)));
        let huge = StoredSnapshot { jpeg: grey_jpeg(4096, 2048), ..snapshot.clone() };
        assert!(matches!(with_boxes(&huge), Err(PictureError::TooLarge(4096, 2048))));
        let garbage = StoredSnapshot { jpeg: vec![0xFF, 0xD8, 0xFF, 0, 1], ..snapshot };
        assert!(with_boxes(&garbage).is_err());
    }
}
