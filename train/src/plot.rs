//! PNG plots of the training metrics, with no plotting or image dependency.
//!
//! One panel per series (loss, forward KL when distilling, learning rate, gradient norm),
//! stacked vertically, each with its own y range; the range's maximum is written at the top left
//! and its minimum at the bottom left in a 3×5 pixel font, and the step range at the bottom
//! right. The PNG uses stored (uncompressed) deflate blocks: plots are small, and a correct
//! encoder is a few dozen lines.

use std::path::Path;

use dgpo_core::{Error, Result};

use crate::checkpoint::StepMetrics;

const W: usize = 480;
const PANEL_H: usize = 140;
const MARGIN: usize = 10;
const LINE: [u8; 3] = [31, 119, 180];
const FRAME: [u8; 3] = [160, 160, 160];
const TEXT: [u8; 3] = [40, 40, 40];

/// 3×5 glyphs for the characters numbers need, one row per u8 (3 low bits, left = 4).
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        'e' => [0, 7, 7, 4, 7],
        ':' => [0, 2, 0, 2, 0],
        _ => [0; 5],
    }
}

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Canvas {
        Canvas {
            w,
            h,
            px: vec![255; w * h * 3],
        }
    }
    fn set(&mut self, x: usize, y: usize, c: [u8; 3]) {
        if x < self.w && y < self.h {
            let i = (y * self.w + x) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }
    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3]) {
        let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
        for i in 0..=n {
            let t = i as f64 / n as f64;
            let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
            self.set(x.round() as usize, y.round() as usize, c);
        }
    }
    fn text(&mut self, x: usize, y: usize, s: &str) {
        for (k, ch) in s.chars().enumerate() {
            for (r, bits) in glyph(ch).iter().enumerate() {
                for b in 0..3 {
                    if bits & (4 >> b) != 0 {
                        // Doubled pixels: readable at a glance.
                        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                            self.set(x + k * 8 + b * 2 + dx, y + r * 2 + dy, TEXT);
                        }
                    }
                }
            }
        }
    }
}

fn num(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-2 || v.abs() >= 1e4) {
        format!("{v:.2e}")
    } else {
        format!("{v:.3}")
    }
}

/// The series of a metrics log that get a panel, in order.
pub fn series(m: &[StepMetrics]) -> Vec<(&'static str, Vec<(f64, f64)>)> {
    let pts = |f: &dyn Fn(&StepMetrics) -> Option<f64>| -> Vec<(f64, f64)> {
        m.iter()
            .filter_map(|s| f(s).map(|v| (s.step as f64, v)))
            .filter(|p| p.1.is_finite())
            .collect()
    };
    let mut out = vec![("loss", pts(&|s| Some(s.loss)))];
    let kl = pts(&|s| s.kl);
    if !kl.is_empty() {
        out.push(("kl", kl));
    }
    out.push(("lr", pts(&|s| Some(s.lr))));
    out.push(("grad_norm", pts(&|s| Some(s.grad_norm))));
    out
}

/// One panel: coloured series of `(step, value)` points sharing its y range.
type Panel = Vec<([u8; 3], Vec<(f64, f64)>)>;

/// Render the metrics as stacked line plots into `path` (temporary file, then rename).
pub fn plot_metrics(metrics: &[StepMetrics], path: &Path) -> Result<()> {
    let panels: Vec<Panel> = series(metrics)
        .into_iter()
        .map(|(_, pts)| vec![(LINE, pts)])
        .collect();
    write_panels(&panels, path)
}

/// Line colours of [`plot_curves`], in the order the runs are given (blue, orange, green, red,
/// purple).
pub const PALETTE: [[u8; 3]; 5] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
];

/// Reward (top panel) and KL to the reference (bottom panel) of several RL runs, one colour per
/// run in [`PALETTE`] order, each panel with one y range shared by the runs (so they compare).
pub fn plot_curves(runs: &[(String, Vec<crate::rl::RlMetrics>)], path: &Path) -> Result<()> {
    let pts = |m: &[crate::rl::RlMetrics], f: &dyn Fn(&crate::rl::RlMetrics) -> Option<f64>| {
        m.iter()
            .filter_map(|s| f(s).map(|v| (s.step as f64, v)))
            .filter(|p| p.1.is_finite())
            .collect::<Vec<_>>()
    };
    let reward = runs
        .iter()
        .enumerate()
        .map(|(i, (_, m))| (PALETTE[i % PALETTE.len()], pts(m, &|s| Some(s.reward_mean))))
        .collect();
    let kl = runs
        .iter()
        .enumerate()
        .map(|(i, (_, m))| (PALETTE[i % PALETTE.len()], pts(m, &|s| s.kl)))
        .collect();
    write_panels(&[reward, kl], path)
}

/// One panel per entry, each holding coloured series over a shared range.
fn write_panels(panels: &[Panel], path: &Path) -> Result<()> {
    let mut c = Canvas::new(W, PANEL_H * panels.len().max(1));
    for (k, lines) in panels.iter().enumerate() {
        let top = k * PANEL_H;
        let (x0, x1) = (MARGIN as f64, (W - MARGIN) as f64);
        let (y0, y1) = ((top + PANEL_H - MARGIN) as f64, (top + MARGIN + 12) as f64);
        for x in MARGIN..=W - MARGIN {
            c.set(x, y0 as usize, FRAME);
            c.set(x, top + MARGIN, FRAME);
        }
        for y in top + MARGIN..=top + PANEL_H - MARGIN {
            c.set(MARGIN, y, FRAME);
            c.set(W - MARGIN, y, FRAME);
        }
        let all: Vec<(f64, f64)> = lines.iter().flat_map(|(_, p)| p.iter().copied()).collect();
        if all.is_empty() {
            continue;
        }
        let smin = all.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
        let smax = all.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
        let lo = all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let hi = all.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        let sx = |s: f64| {
            x0 + (x1 - x0)
                * if smax > smin {
                    (s - smin) / (smax - smin)
                } else {
                    0.5
                }
        };
        let sy = |v: f64| y0 + (y1 - y0) * if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
        for (colour, pts) in lines {
            for w in pts.windows(2) {
                c.line((sx(w[0].0), sy(w[0].1)), (sx(w[1].0), sy(w[1].1)), *colour);
            }
            if pts.len() == 1 {
                c.set(sx(pts[0].0) as usize, sy(pts[0].1) as usize, *colour);
            }
        }
        c.text(MARGIN + 4, top + MARGIN + 2, &num(hi));
        c.text(MARGIN + 4, top + PANEL_H - MARGIN - 12, &num(lo));
        let steps = format!("{}:{}", smin as usize, smax as usize);
        c.text(
            W - MARGIN - 4 - steps.len() * 8,
            top + PANEL_H - MARGIN - 12,
            &steps,
        );
    }
    let png = encode_png(c.w, c.h, &c.px);
    let tmp = path.with_extension("png.tmp");
    std::fs::write(&tmp, png).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + x as u32) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

/// An 8-bit RGB PNG of `rgb` (w × h × 3 bytes), zlib with stored blocks.
pub fn encode_png(w: usize, h: usize, rgb: &[u8]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(h * (w * 3 + 1));
    for row in rgb.chunks(w * 3) {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, b) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        let n = b.len() as u16;
        z.extend_from_slice(&n.to_le_bytes());
        z.extend_from_slice(&(!n).to_le_bytes());
        z.extend_from_slice(b);
    }
    z.extend_from_slice(&adler32(&raw).to_be_bytes());
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8; 4], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&(w as u32).to_be_bytes());
    ihdr.extend_from_slice(&(h as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit, RGB, deflate, no filter, no interlace
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &z);
    chunk(b"IEND", &[]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_and_adler_match_known_values() {
        // Standard check values for "123456789".
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(adler32(b"Wikipedia"), 0x11e6_0398);
    }

    #[test]
    fn plot_writes_a_decodable_png_with_the_curve() {
        let m: Vec<StepMetrics> = (1..=20)
            .map(|s| StepMetrics {
                step: s,
                loss: 10.0 / s as f64,
                kl: None,
                ce: None,
                lr: 1e-3,
                grad_norm: 1.0,
                tokens_per_s: 0.0,
                target_tokens: 0.0,
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.png");
        plot_metrics(&m, &p).unwrap();
        let png = std::fs::read(&p).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        // Decode our own stored blocks back and look at pixels.
        let len = u32::from_be_bytes(png[33..37].try_into().unwrap()) as usize;
        assert_eq!(&png[37..41], b"IDAT");
        let z = &png[41..41 + len];
        let mut raw = Vec::new();
        let mut i = 2;
        loop {
            let last = z[i] & 1 == 1;
            let n = u16::from_le_bytes([z[i + 1], z[i + 2]]) as usize;
            raw.extend_from_slice(&z[i + 5..i + 5 + n]);
            i += 5 + n;
            if last {
                break;
            }
        }
        let h = PANEL_H * 3; // loss, lr, grad_norm
        assert_eq!(raw.len(), h * (W * 3 + 1));
        let px = |x: usize, y: usize| -> [u8; 3] {
            let o = y * (W * 3 + 1) + 1 + x * 3;
            [raw[o], raw[o + 1], raw[o + 2]]
        };
        // The loss starts at its maximum (top-left of the plot area) and ends at its minimum.
        assert_eq!(px(MARGIN, MARGIN + 12), LINE);
        assert_eq!(px(W - MARGIN, PANEL_H - MARGIN), LINE);
        // A constant series is drawn mid-height.
        assert_eq!(
            px(W / 2, PANEL_H + (MARGIN + 12 + PANEL_H - MARGIN) / 2),
            LINE
        );
    }
}
