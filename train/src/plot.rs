//! PNG plots of the training metrics, with no plotting or image dependency.
//!
//! One panel per series (loss, forward KL when distilling, learning rate, gradient norm),
//! stacked vertically, each with its own y range. Every panel has its title above its frame;
//! inside the frame the range's maximum is written at the top left, its minimum at the bottom
//! left and the step range ("step a:b") at the bottom right, each on a white box over the
//! curves, in a 3×5 pixel font drawn at twice its size. [`plot_curves`] overlays several runs
//! per panel and puts a legend (a colour swatch and the run's name per run) at the top right of
//! the first panel, right of its title, wrapping onto extra rows under the title when the names
//! do not fit. The PNG uses stored (uncompressed) deflate blocks: plots are small, and a correct
//! encoder is a few dozen lines.

use std::path::Path;

use dgpo_core::{Error, Result};

use crate::checkpoint::StepMetrics;

const W: usize = 480;
const MARGIN: usize = 10;
/// Top of a title (and of the first legend row) below its panel's top.
const TITLE_Y: usize = 4;
/// Title row above a panel's frame.
const HEADER_H: usize = 18;
/// Each legend row that does not fit on the title row adds this much to the first panel.
const LEGEND_ROW_H: usize = 14;
/// Height of a panel's frame (the plot area with its range labels).
const FRAME_H: usize = 120;
/// A panel without extra legend rows: title row, frame, gap to the next panel.
const PANEL_H: usize = HEADER_H + FRAME_H + 6;
/// Horizontal distance between consecutive characters (glyphs are 6 pixels wide when drawn).
const ADVANCE: usize = 8;
/// Text is 5 glyph rows drawn at twice their size.
const TEXT_H: usize = 10;
/// Legend swatch: a short thick line in the run's colour, left of the run's name.
const SWATCH_W: usize = 14;
const SWATCH_H: usize = 4;
/// Swatch top below the top of its legend row's text (centres it on the text).
const SWATCH_DY: usize = 3;
const SWATCH_GAP: usize = 4;
/// Between legend entries, and between the title and the legend.
const ENTRY_GAP: usize = 12;
// The title row and each legend row clear the frame under them; swatches sit within their row.
const _: () = assert!(TITLE_Y + TEXT_H < HEADER_H && TEXT_H < LEGEND_ROW_H);
const _: () = assert!(SWATCH_DY + SWATCH_H <= TEXT_H);
const LINE: [u8; 3] = [31, 119, 180];
const FRAME: [u8; 3] = [160, 160, 160];
const TEXT: [u8; 3] = [40, 40, 40];

/// Titles of [`plot_curves`]' panels, top to bottom.
const CURVE_TITLES: [&str; 2] = ["mean reward per step", "kl to reference (nats/token)"];

/// The glyph drawn for characters outside the table.
const UNKNOWN: [u8; 5] = [7, 1, 2, 0, 2];

/// 3×5 glyphs, one row per u8 (3 low bits, left = 4). Lowercase letters sit on the bottom row
/// and use rows 1–4, letters with ascenders reach row 0, and g p q y keep their tails inside the
/// cell; uppercase letters are drawn with the lowercase glyphs. None for characters the table
/// does not know.
fn known_glyph(c: char) -> Option<[u8; 5]> {
    Some(match c.to_ascii_lowercase() {
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
        'a' => [0, 3, 5, 5, 3],
        'b' => [4, 7, 5, 5, 7],
        'c' => [0, 3, 4, 4, 3],
        'd' => [1, 7, 5, 5, 7],
        'e' => [0, 3, 5, 6, 3],
        'f' => [3, 2, 7, 2, 2],
        'g' => [0, 7, 5, 7, 3],
        'h' => [4, 6, 5, 5, 5],
        'i' => [2, 0, 2, 2, 2],
        'j' => [1, 0, 1, 1, 6],
        'k' => [4, 5, 6, 5, 5],
        'l' => [6, 2, 2, 2, 3],
        'm' => [0, 7, 7, 5, 5],
        'n' => [0, 6, 5, 5, 5],
        'o' => [0, 2, 5, 5, 2],
        'p' => [0, 6, 5, 6, 4],
        'q' => [0, 3, 5, 3, 1],
        'r' => [0, 3, 4, 4, 4],
        's' => [0, 3, 4, 1, 6],
        't' => [2, 7, 2, 2, 3],
        'u' => [0, 5, 5, 5, 3],
        'v' => [0, 5, 5, 5, 2],
        'w' => [0, 5, 5, 7, 7],
        'x' => [0, 5, 2, 2, 5],
        'y' => [0, 5, 5, 2, 4],
        'z' => [0, 7, 1, 4, 7],
        ' ' => [0, 0, 0, 0, 0],
        '.' => [0, 0, 0, 0, 2],
        ',' => [0, 0, 0, 2, 4],
        ':' => [0, 2, 0, 2, 0],
        '-' => [0, 0, 7, 0, 0],
        '+' => [0, 2, 7, 2, 0],
        '=' => [0, 7, 0, 7, 0],
        '_' => [0, 0, 0, 0, 7],
        '/' => [1, 1, 2, 4, 4],
        '(' => [1, 2, 2, 2, 1],
        ')' => [4, 2, 2, 2, 4],
        '?' => UNKNOWN,
        _ => return None,
    })
}

/// The glyph drawn for `c`: its own, or a question mark when the table does not know it.
fn glyph(c: char) -> [u8; 5] {
    known_glyph(c).unwrap_or(UNKNOWN)
}

/// Width in pixels of `s`'s ink when drawn by [`Canvas::text`] (no trailing gap).
fn text_w(s: &str) -> usize {
    (s.chars().count() * ADVANCE).saturating_sub(ADVANCE - 6)
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
    fn fill(&mut self, x: usize, y: usize, w: usize, h: usize, c: [u8; 3]) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, c);
            }
        }
    }
    /// [`Canvas::text`] on a white box one pixel wider all round, so curves under a range
    /// label do not garble it.
    fn label(&mut self, x: usize, y: usize, s: &str) {
        self.fill(x - 1, y - 1, text_w(s) + 2, TEXT_H + 2, [255; 3]);
        self.text(x, y, s, TEXT);
    }
    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3]) {
        let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
        for i in 0..=n {
            let t = i as f64 / n as f64;
            let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
            self.set(x.round() as usize, y.round() as usize, c);
        }
    }
    /// `s` with its top left at `(x, y)`, each glyph pixel doubled: readable at a glance.
    fn text(&mut self, x: usize, y: usize, s: &str, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            for (r, bits) in glyph(ch).iter().enumerate() {
                for b in 0..3 {
                    if bits & (4 >> b) != 0 {
                        self.fill(x + k * ADVANCE + b * 2, y + r * 2, 2, 2, c);
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

/// The panel title of a [`series`] name.
fn series_title(name: &str) -> &str {
    match name {
        "kl" => "forward kl",
        "lr" => "learning rate",
        "grad_norm" => "grad norm",
        other => other,
    }
}

/// One coloured series of `(step, value)` points.
type Series = ([u8; 3], Vec<(f64, f64)>);

/// One panel: its title and the coloured series that share its y range.
struct Panel {
    title: String,
    lines: Vec<Series>,
}

/// Render the metrics as stacked line plots into `path` (temporary file, then rename), one
/// titled panel per [`series`] entry.
pub fn plot_metrics(metrics: &[StepMetrics], path: &Path) -> Result<()> {
    let titled: Vec<(&str, Vec<(f64, f64)>)> = series(metrics)
        .into_iter()
        .map(|(name, pts)| (series_title(name), pts))
        .collect();
    plot_panels(&titled, path)
}

/// Render one panel per `(title, points)` entry, stacked in order, each with its own y range
/// and the title above it (for series that are not [`series`]' own, e.g. RL metrics whose first
/// panel is a reward rather than a loss).
pub fn plot_panels(panels: &[(&str, Vec<(f64, f64)>)], path: &Path) -> Result<()> {
    let panels: Vec<Panel> = panels
        .iter()
        .map(|(title, pts)| Panel {
            title: title.to_string(),
            lines: vec![(LINE, pts.clone())],
        })
        .collect();
    write_png(&render(&panels, &[]), path)
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

/// One RL series as (step, value) points: steps where `f` gives no value, or a non-finite one,
/// are left out.
pub fn rl_series(
    m: &[crate::rl::RlMetrics],
    f: &dyn Fn(&crate::rl::RlMetrics) -> Option<f64>,
) -> Vec<(f64, f64)> {
    m.iter()
        .filter_map(|s| f(s).map(|v| (s.step as f64, v)))
        .filter(|p| p.1.is_finite())
        .collect()
}

/// Reward (top panel) and KL to the reference (bottom panel) of several RL runs, one colour per
/// run in [`PALETTE`] order, each panel with one y range shared by the runs (so they compare).
/// A legend at the top right of the reward panel names the run of each colour.
pub fn plot_curves(runs: &[(String, Vec<crate::rl::RlMetrics>)], path: &Path) -> Result<()> {
    let pts = rl_series;
    let colour = |i: usize| PALETTE[i % PALETTE.len()];
    let reward = runs
        .iter()
        .enumerate()
        .map(|(i, (_, m))| (colour(i), pts(m, &|s| Some(s.reward_mean))))
        .collect();
    let kl = runs
        .iter()
        .enumerate()
        .map(|(i, (_, m))| (colour(i), pts(m, &|s| s.kl)))
        .collect();
    let panels = [
        Panel {
            title: CURVE_TITLES[0].to_string(),
            lines: reward,
        },
        Panel {
            title: CURVE_TITLES[1].to_string(),
            lines: kl,
        },
    ];
    let legend: Vec<(String, [u8; 3])> = runs
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (name.clone(), colour(i)))
        .collect();
    write_png(&render(&panels, &legend), path)
}

/// Width of a legend entry: swatch, gap, name.
fn entry_w(name: &str) -> usize {
    SWATCH_W + SWATCH_GAP + text_w(name)
}

/// `name` cut to the longest prefix whose legend entry fits within the frame's width.
fn fit_name(name: &str) -> String {
    let max = (W - 2 * MARGIN - SWATCH_W - SWATCH_GAP + ADVANCE - 6) / ADVANCE;
    name.chars().take(max).collect()
}

/// Where [`render`] puts the legend entries named `names` (already cut by [`fit_name`]): per
/// entry, its row and the x of its swatch (the name starts `SWATCH_W + SWATCH_GAP` right of
/// it). Entries fill rows in order, each row ending at the frame's right edge; row 0 is the
/// first panel's title row, right of `title`, and each further row lies [`LEGEND_ROW_H`] under
/// the previous one.
fn legend_layout(title: &str, names: &[String]) -> Vec<(usize, usize)> {
    let full = W - 2 * MARGIN;
    let first = full.saturating_sub(text_w(title) + ENTRY_GAP);
    let mut rows: Vec<Vec<usize>> = vec![Vec::new()];
    let mut used = 0;
    for (i, name) in names.iter().enumerate() {
        let w = entry_w(name);
        let r = rows.len() - 1;
        let need = if rows[r].is_empty() {
            w
        } else {
            used + ENTRY_GAP + w
        };
        if need <= if r == 0 { first } else { full } || (r > 0 && rows[r].is_empty()) {
            rows[r].push(i);
            used = need;
        } else {
            rows.push(vec![i]);
            used = w;
        }
    }
    let mut out = vec![(0, 0); names.len()];
    for (r, row) in rows.iter().enumerate() {
        let total = row
            .iter()
            .map(|&i| entry_w(&names[i]) + ENTRY_GAP)
            .sum::<usize>();
        let mut x = (W - MARGIN + ENTRY_GAP).saturating_sub(total);
        for &i in row {
            out[i] = (r, x);
            x += entry_w(&names[i]) + ENTRY_GAP;
        }
    }
    out
}

/// Draw the panels stacked top to bottom, with `legend` (name, colour) in the first one.
fn render(panels: &[Panel], legend: &[(String, [u8; 3])]) -> Canvas {
    let names: Vec<String> = legend.iter().map(|(n, _)| fit_name(n)).collect();
    let layout = legend_layout(panels.first().map_or("", |p| &p.title), &names);
    let extra = layout.iter().map(|p| p.0).max().unwrap_or(0) * LEGEND_ROW_H;
    let mut c = Canvas::new(W, PANEL_H * panels.len().max(1) + extra);
    if !panels.is_empty() {
        for ((name, (_, colour)), &(row, x)) in names.iter().zip(legend).zip(&layout) {
            let y = TITLE_Y + row * LEGEND_ROW_H;
            c.fill(x, y + SWATCH_DY, SWATCH_W, SWATCH_H, *colour);
            c.text(x + SWATCH_W + SWATCH_GAP, y, name, TEXT);
        }
    }
    for (k, panel) in panels.iter().enumerate() {
        let top = k * PANEL_H + if k > 0 { extra } else { 0 };
        let frame_top = top + HEADER_H + if k == 0 { extra } else { 0 };
        let frame_bottom = frame_top + FRAME_H;
        c.text(MARGIN, top + TITLE_Y, &panel.title, TEXT);
        for x in MARGIN..=W - MARGIN {
            c.set(x, frame_top, FRAME);
            c.set(x, frame_bottom, FRAME);
        }
        for y in frame_top..=frame_bottom {
            c.set(MARGIN, y, FRAME);
            c.set(W - MARGIN, y, FRAME);
        }
        let all: Vec<(f64, f64)> = panel
            .lines
            .iter()
            .flat_map(|(_, p)| p.iter().copied())
            .collect();
        if all.is_empty() {
            let msg = "no data";
            c.text(
                (W - text_w(msg)) / 2,
                frame_top + (FRAME_H - TEXT_H) / 2,
                msg,
                TEXT,
            );
            continue;
        }
        let (x0, x1) = (MARGIN as f64, (W - MARGIN) as f64);
        let (y0, y1) = (frame_bottom as f64, (frame_top + 2 + TEXT_H) as f64);
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
        for (colour, pts) in &panel.lines {
            for w in pts.windows(2) {
                c.line((sx(w[0].0), sy(w[0].1)), (sx(w[1].0), sy(w[1].1)), *colour);
            }
            if pts.len() == 1 {
                c.set(sx(pts[0].0) as usize, sy(pts[0].1) as usize, *colour);
            }
        }
        let label_y = frame_bottom - 2 - TEXT_H;
        c.label(MARGIN + 4, frame_top + 2, &num(hi));
        c.label(MARGIN + 4, label_y, &num(lo));
        let steps = format!("step {}:{}", smin as usize, smax as usize);
        c.label(W - MARGIN - 4 - text_w(&steps), label_y, &steps);
    }
    c
}

/// Encode `c` into `path` through a temporary file and a rename.
fn write_png(c: &Canvas, path: &Path) -> Result<()> {
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

    /// A PNG written by [`encode_png`], decoded: width, height, RGB pixels.
    struct Img {
        w: usize,
        h: usize,
        px: Vec<u8>,
    }

    impl Img {
        /// Decode our own stored blocks back, checking the signature, IHDR and filter bytes.
        fn decode(png: &[u8]) -> Img {
            assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
            assert_eq!(&png[8..16], b"\0\0\0\x0dIHDR");
            let w = u32::from_be_bytes(png[16..20].try_into().unwrap()) as usize;
            let h = u32::from_be_bytes(png[20..24].try_into().unwrap()) as usize;
            assert_eq!(&png[24..29], &[8, 2, 0, 0, 0]);
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
            assert_eq!(adler32(&raw).to_be_bytes(), z[i..i + 4]);
            assert_eq!(raw.len(), h * (w * 3 + 1));
            let mut px = Vec::with_capacity(w * h * 3);
            for row in raw.chunks(w * 3 + 1) {
                assert_eq!(row[0], 0, "filter byte");
                px.extend_from_slice(&row[1..]);
            }
            Img { w, h, px }
        }
        fn read(path: &Path) -> Img {
            Img::decode(&std::fs::read(path).unwrap())
        }
        fn at(&self, x: usize, y: usize) -> [u8; 3] {
            let o = (y * self.w + x) * 3;
            [self.px[o], self.px[o + 1], self.px[o + 2]]
        }
        /// Pixels of colour `c` in the box `[x0, x1) × [y0, y1)`.
        fn count(&self, (x0, x1): (usize, usize), (y0, y1): (usize, usize), c: [u8; 3]) -> usize {
            (y0..y1)
                .flat_map(|y| (x0..x1).map(move |x| (x, y)))
                .filter(|&(x, y)| self.at(x, y) == c)
                .count()
        }
    }

    /// Pixels [`Canvas::text`] sets for `s`.
    fn ink(s: &str) -> usize {
        s.chars()
            .flat_map(glyph)
            .map(|row| row.count_ones() as usize * 4)
            .sum()
    }

    fn step_metrics(n: usize, kl: bool) -> Vec<StepMetrics> {
        (1..=n)
            .map(|s| StepMetrics {
                step: s,
                loss: 10.0 / s as f64,
                kl: kl.then_some(1.0 / s as f64),
                ce: None,
                lr: 1e-3,
                grad_norm: 1.0,
                tokens_per_s: 0.0,
                target_tokens: 0.0,
            })
            .collect()
    }

    /// A run whose reward rises linearly to `rate`, with (or without) a KL to the reference.
    fn rl_run(name: &str, n: usize, rate: f64, kl: bool) -> (String, Vec<crate::rl::RlMetrics>) {
        let m = (1..=n)
            .map(|s| {
                let mut v = serde_json::json!({
                    "step": s,
                    "reward_mean": rate * s as f64 / n as f64,
                    "kl": kl.then_some(rate * s as f64 / 10.0),
                });
                // Zero for every other field, so the helper survives new metrics.
                loop {
                    match serde_json::from_value(v.clone()) {
                        Ok(m) => break m,
                        Err(e) => {
                            let msg = e.to_string();
                            let field = msg
                                .strip_prefix("missing field `")
                                .and_then(|r| r.split('`').next())
                                .unwrap_or_else(|| panic!("{msg}"));
                            v[field] = serde_json::json!(0);
                        }
                    }
                }
            })
            .collect();
        (name.to_string(), m)
    }

    #[test]
    fn crc_and_adler_match_known_values() {
        // Standard check values for "123456789".
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(adler32(b"Wikipedia"), 0x11e6_0398);
    }

    #[test]
    fn glyphs_cover_titles_legends_and_labels() {
        let mut texts: Vec<String> = CURVE_TITLES.iter().map(|s| s.to_string()).collect();
        for name in ["loss", "kl", "lr", "grad_norm"] {
            texts.push(series_title(name).to_string());
        }
        texts.extend(
            [
                "dgpo ppo grpo",
                "step 0123456789:",
                "1.23e-4 -0.500",
                "no data",
                "abcdefghijklmnopqrstuvwxyz",
                "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
                " ()/=_,+?",
            ]
            .map(String::from),
        );
        for ch in texts.iter().flat_map(|t| t.chars()) {
            let g = known_glyph(ch).unwrap_or_else(|| panic!("no glyph for {ch:?}"));
            assert_eq!(g == [0; 5], ch == ' ', "glyph of {ch:?}");
            assert!(g.iter().all(|&r| r < 8), "glyph of {ch:?} wider than 3");
            assert_eq!(g, glyph(ch.to_ascii_lowercase()), "case of {ch:?}");
        }
        for ch in ['#', 'é', '\n'] {
            assert_eq!(known_glyph(ch), None);
            assert_eq!(glyph(ch), UNKNOWN);
        }
    }

    #[test]
    fn glyphs_are_pairwise_distinct() {
        let chars: Vec<char> = ('a'..='z')
            .chain('0'..='9')
            .chain(" .,:-+=_/()?".chars())
            .collect();
        for (i, &a) in chars.iter().enumerate() {
            for &b in &chars[i + 1..] {
                assert_ne!(glyph(a), glyph(b), "{a:?} and {b:?} look the same");
            }
        }
    }

    #[test]
    fn plot_writes_a_decodable_png_with_the_curve() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.png");
        plot_metrics(&step_metrics(20, false), &p).unwrap();
        let img = Img::read(&p);
        assert_eq!((img.w, img.h), (W, PANEL_H * 3)); // loss, lr, grad_norm
        // The loss starts at its maximum (top-left of the plot area) and ends at its minimum.
        assert_eq!(img.at(MARGIN, HEADER_H + 12), LINE);
        assert_eq!(img.at(W - MARGIN, HEADER_H + FRAME_H), LINE);
        // A constant series is drawn mid-height.
        let frame_top = PANEL_H + HEADER_H;
        assert_eq!(
            img.at(W / 2, (frame_top + 12 + frame_top + FRAME_H) / 2),
            LINE
        );
        assert!(!dir.path().join("m.png.tmp").exists());
    }

    #[test]
    fn metrics_panels_have_titles_and_step_labels() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.png");
        plot_metrics(&step_metrics(20, true), &p).unwrap();
        let img = Img::read(&p);
        let titles = ["loss", "forward kl", "learning rate", "grad norm"];
        assert_eq!((img.w, img.h), (W, PANEL_H * titles.len()));
        for (k, title) in titles.iter().enumerate() {
            let top = k * PANEL_H;
            let header = (top, top + HEADER_H);
            // Exactly the title's pixels in the title row, starting at the frame's left edge and
            // ending where the title's last glyph ends.
            let (x0, x1) = (MARGIN, MARGIN + text_w(title));
            assert_eq!(img.count((x0, x1), header, TEXT), ink(title), "{title}");
            assert_eq!(img.count((0, W), header, TEXT), ink(title), "{title}");
            assert!(img.count((x0, x0 + 2), header, TEXT) > 0, "{title}");
            assert!(img.count((x1 - 2, x1), header, TEXT) > 0, "{title}");
            // "step 1:20" at the bottom right inside the frame.
            let steps = "step 1:20";
            let y = top + HEADER_H + FRAME_H - 2 - TEXT_H;
            let x = W - MARGIN - 4 - text_w(steps);
            assert_eq!(
                img.count((x, x + text_w(steps)), (y, y + TEXT_H), TEXT),
                ink(steps)
            );
        }
    }

    #[test]
    fn curves_legend_shows_each_run_colour_next_to_its_name() {
        let runs = vec![
            rl_run("dgpo", 30, 0.4, true),
            rl_run("ppo", 30, 0.2, true),
            rl_run("grpo", 30, 0.1, true),
        ];
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("curves.png");
        plot_curves(&runs, &p).unwrap();
        let img = Img::read(&p);
        assert_eq!((img.w, img.h), (W, 2 * PANEL_H));
        // Right-aligned at the frame's right edge, in run order: swatch, gap, name, gap, ...
        let mut right = W - MARGIN;
        let mut swatches = Vec::new();
        for (i, (name, _)) in runs.iter().enumerate().rev() {
            let name_x = right - text_w(name);
            let x = name_x - SWATCH_GAP - SWATCH_W;
            swatches.push((i, name.as_str(), x, name_x));
            right = x - ENTRY_GAP;
        }
        let swatch_rows = (TITLE_Y + SWATCH_DY, TITLE_Y + SWATCH_DY + SWATCH_H);
        for &(i, name, x, name_x) in &swatches {
            let c = PALETTE[i];
            assert_eq!(
                img.count((x, x + SWATCH_W), swatch_rows, c),
                SWATCH_W * SWATCH_H
            );
            // Nothing of that colour just left or right of the swatch: a bounded swatch.
            assert_eq!(img.at(x - 1, swatch_rows.0), [255; 3], "{name}");
            assert_eq!(img.at(x + SWATCH_W, swatch_rows.0), [255; 3], "{name}");
            let rows = (TITLE_Y, TITLE_Y + TEXT_H);
            assert_eq!(
                img.count((name_x, name_x + text_w(name)), rows, TEXT),
                ink(name)
            );
            // The run's curve is drawn in both panels, in the same colour.
            for k in 0..2 {
                let frame_top = k * PANEL_H + HEADER_H;
                let frame = (frame_top + 1, frame_top + FRAME_H);
                assert!(
                    img.count((MARGIN + 1, W - MARGIN), frame, c) > 0,
                    "{name} {k}"
                );
            }
        }
        // The legend lies right of the title and above the frame: no range label under it.
        let legend_x = swatches.last().unwrap().2;
        assert!(legend_x >= MARGIN + text_w(CURVE_TITLES[0]) + ENTRY_GAP);
        assert_eq!(img.count((0, W), (0, HEADER_H), TEXT), {
            ink(CURVE_TITLES[0]) + runs.iter().map(|(n, _)| ink(n)).sum::<usize>()
        });
        // Same input, same bytes.
        let q = dir.path().join("again.png");
        plot_curves(&runs, &q).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&q).unwrap());
    }

    #[test]
    fn long_legends_wrap_into_rows_under_the_title() {
        let names = [
            "student + kd, seed 1",
            "dgpo (selective kl)",
            "ppo",
            "grpo (group=8)",
            "dgpo_full_kl",
            "a very long run name that cannot fit on a single legend row at all",
        ];
        let runs: Vec<_> = names.iter().map(|n| rl_run(n, 10, 0.3, true)).collect();
        let cut: Vec<String> = names.iter().map(|n| fit_name(n)).collect();
        assert_eq!(cut[..5], names[..5]);
        assert!(cut[5].len() < names[5].len());
        let layout = legend_layout(CURVE_TITLES[0], &cut);
        let rows = layout.iter().map(|p| p.0).max().unwrap();
        assert!(rows >= 2, "{layout:?}");
        for (i, &(row, x)) in layout.iter().enumerate() {
            let end = x + entry_w(&cut[i]);
            assert!(end <= W - MARGIN && x >= MARGIN, "{i}: {layout:?}");
            if row == 0 {
                assert!(x >= MARGIN + text_w(CURVE_TITLES[0]) + ENTRY_GAP);
            }
            if let Some(&(next_row, next_x)) = layout.get(i + 1) {
                // In order, left to right within a row, and rows only grow.
                assert!(next_row > row || next_x >= end + ENTRY_GAP, "{layout:?}");
                assert!(next_row == row || next_row == row + 1, "{layout:?}");
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("curves.png");
        plot_curves(&runs, &p).unwrap();
        let img = Img::read(&p);
        let extra = rows * LEGEND_ROW_H;
        assert_eq!((img.w, img.h), (W, 2 * PANEL_H + extra));
        for (i, &(row, x)) in layout.iter().enumerate() {
            let y = TITLE_Y + row * LEGEND_ROW_H + SWATCH_DY;
            let c = PALETTE[i % PALETTE.len()];
            assert_eq!(
                img.count((x, x + SWATCH_W), (y, y + SWATCH_H), c),
                SWATCH_W * SWATCH_H
            );
        }
        // The first frame moved down under the last legend row; the second panel follows.
        let frame_top = HEADER_H + extra;
        assert!(TITLE_Y + rows * LEGEND_ROW_H + TEXT_H <= frame_top);
        assert_eq!(
            img.count((MARGIN, W - MARGIN + 1), (frame_top, frame_top + 1), FRAME),
            { W - 2 * MARGIN + 1 }
        );
        let second = PANEL_H + extra;
        let title = CURVE_TITLES[1];
        let header = (second, second + HEADER_H);
        assert_eq!(img.count((0, W), header, TEXT), ink(title));
    }

    #[test]
    fn empty_panel_keeps_its_title_and_says_no_data() {
        let runs = vec![rl_run("ppo", 10, 0.3, false)];
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("curves.png");
        plot_curves(&runs, &p).unwrap();
        let img = Img::read(&p);
        let top = PANEL_H;
        let title = CURVE_TITLES[1];
        assert_eq!(img.count((0, W), (top, top + HEADER_H), TEXT), ink(title));
        let msg = "no data";
        let (x, y) = (
            (W - text_w(msg)) / 2,
            top + HEADER_H + (FRAME_H - TEXT_H) / 2,
        );
        assert_eq!(
            img.count((x, x + text_w(msg)), (y, y + TEXT_H), TEXT),
            ink(msg)
        );
    }

    #[test]
    fn range_labels_sit_on_a_white_box_over_curves() {
        // A flat run just above the minimum passes right through the minimum's label.
        let mut pts = vec![(1.0, 1.0)];
        pts.extend((2..=20).map(|s| (s as f64, 0.05)));
        pts.push((21.0, 0.0));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.png");
        plot_panels(&[("custom title", pts)], &p).unwrap();
        let img = Img::read(&p);
        assert_eq!((img.w, img.h), (W, PANEL_H));
        let y = HEADER_H + FRAME_H - 2 - TEXT_H;
        let (x0, x1) = (MARGIN + 3, MARGIN + 5 + text_w("0.000"));
        let rows = (y - 1, y + TEXT_H + 1);
        assert_eq!(img.count((x0, x1), rows, TEXT), ink("0.000"));
        let white = img.count((x0, x1), rows, [255; 3]);
        assert_eq!(white + ink("0.000"), (x1 - x0) * (TEXT_H + 2));
        assert!(img.count((x1, x1 + 20), rows, LINE) > 0);
        assert_eq!(img.count((0, W), (0, HEADER_H), TEXT), ink("custom title"));
    }
}
