//! Matrix–vector kernels for the GGML block formats that candle 0.11 computes with scalar code:
//! Q4_1, Q5_0 and Q5_1.
//!
//! Why they matter: llama.cpp's quantiser can use K-quants only on rows whose length is a multiple
//! of 256. Qwen2.5-0.5B's hidden size is 896, so its "Q4_K_M" file stores most matrices as Q5_0
//! (266 of its 485 MB; the rest is Q8_0, Q6_K and Q4_K), and SmolLM2's small GGUFs use Q4_1.
//! candle has AVX2/NEON dot products for Q4_0, Q8_0 and the K-quants, but takes these three
//! formats one element at a time with bit shifts, which made candle decode that file at 0.57× of
//! llama.cpp's speed while it reached 0.9× on a Q8_0 file of the same weights.
//!
//! The scheme is ggml's (what llama.cpp computes, so both backends agree): the activation row is
//! quantised to blocks of 32 signed bytes with one scale each (plus the block's sum, for the
//! formats with an offset `m`), and each weight row is dotted with it block by block in integer
//! arithmetic. AVX2+FMA on x86-64 when the CPU has it (checked at run time), portable Rust
//! elsewhere. Only single rows and small batches come here; prompts of
//! [`super::decoder::PREFILL_GEMM_MIN_ROWS`] rows or more take the dequantise-and-GEMM path.

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

/// Elements per block in all three formats (and in the 8-bit activation blocks).
const BLOCK: usize = 32;

/// A weight format these kernels handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// `d: f16, m: f16, qs: [u8; 16]`: value `d·q + m`, q in 0..16.
    Q4_1,
    /// `d: f16, qh: [u8; 4], qs: [u8; 16]`: value `d·(q − 16)`, q in 0..32 (fifth bit in `qh`).
    Q5_0,
    /// `d: f16, m: f16, qh: [u8; 4], qs: [u8; 16]`: value `d·q + m`, q in 0..32.
    Q5_1,
}

impl Format {
    fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_1 => Some(Format::Q4_1),
            GgmlDType::Q5_0 => Some(Format::Q5_0),
            GgmlDType::Q5_1 => Some(Format::Q5_1),
            _ => None,
        }
    }

    /// Bytes per block of 32 weights.
    fn block_bytes(self) -> usize {
        match self {
            Format::Q4_1 => 20,
            Format::Q5_0 => 22,
            Format::Q5_1 => 24,
        }
    }
}

/// One block of the quantised activation row: `x[i] ≈ d·qs[i]`, `s = d·Σ qs`.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
struct ActBlock {
    qs: [i8; BLOCK],
    d: f32,
    s: f32,
}

/// Whether [`matmul`] handles weights of this type (otherwise candle's own kernel is used).
pub fn handles(dtype: GgmlDType) -> bool {
    Format::of(dtype).is_some()
}

/// Quantise one activation row like ggml's `quantize_row_q8_0`/`q8_1`: scale `amax/127` stored
/// at f16 precision (what llama.cpp multiplies by), values rounded half away from zero.
fn quantize_row(x: &[f32]) -> Vec<ActBlock> {
    x.chunks_exact(BLOCK)
        .map(|xs| {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut qs = [0i8; BLOCK];
            let mut sum = 0i32;
            for (q, v) in qs.iter_mut().zip(xs) {
                *q = (v * id).round() as i8;
                sum += *q as i32;
            }
            ActBlock {
                qs,
                d: f16::from_f32(d).to_f32(),
                s: f16::from_f32(d * sum as f32).to_f32(),
            }
        })
        .collect()
}

#[inline]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Dot product of one weight row (raw blocks) with a quantised activation row, portable code.
fn dot_row_portable(f: Format, w: &[u8], a: &[ActBlock]) -> f32 {
    let bb = f.block_bytes();
    let mut total = 0f32;
    for (blk, act) in w.chunks_exact(bb).zip(a) {
        let d = f16_at(blk, 0);
        // (fifth bits, nibbles, offset m); Q4_1 has no fifth bit.
        let (qh, qs, m) = match f {
            Format::Q4_1 => (0u32, &blk[4..20], f16_at(blk, 2)),
            Format::Q5_0 => (
                u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]),
                &blk[6..22],
                0.0,
            ),
            Format::Q5_1 => (
                u32::from_le_bytes([blk[4], blk[5], blk[6], blk[7]]),
                &blk[8..24],
                f16_at(blk, 2),
            ),
        };
        let bias = if f == Format::Q5_0 { 16 } else { 0 };
        let mut sum = 0i32;
        for (j, &byte) in qs.iter().enumerate() {
            let lo = (byte & 0x0F) as i32 | ((((qh >> j) & 1) << 4) as i32);
            let hi = (byte >> 4) as i32 | ((((qh >> (j + 16)) & 1) << 4) as i32);
            sum += (lo - bias) * act.qs[j] as i32 + (hi - bias) * act.qs[j + BLOCK / 2] as i32;
        }
        total += d * act.d * sum as f32 + m * act.s;
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The same dot products with AVX2: 32 weights unpacked to bytes in two instructions, 32
    //! byte products summed with `maddubs`/`madd`, one FMA per block.
    use super::{ActBlock, BLOCK, Format, f16_at};
    use std::arch::x86_64::*;

    /// Byte `j` of the result is 0xFF where bit `j` of `bits` is set, 0 elsewhere.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn expand_bits(bits: u32) -> __m256i {
        // Byte j takes byte j/8 of `bits` (shuffles work within 128-bit lanes, so the lanes ask
        // for bytes 0,1 and 2,3), then keeps bit j%8 of it.
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(bits as i32),
            _mm256_set_epi64x(
                0x0303_0303_0303_0303,
                0x0202_0202_0202_0202,
                0x0101_0101_0101_0101,
                0,
            ),
        );
        let select = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select)
    }

    /// The 32 low/high nibbles of 16 bytes, in element order (low nibbles are elements 0..16).
    ///
    /// # Safety
    /// `qs` must point to 16 readable bytes.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn nibbles(qs: *const u8) -> __m256i {
        // SAFETY: the caller guarantees 16 readable bytes; unaligned load.
        let b = unsafe { _mm_loadu_si128(qs as *const __m128i) };
        let both = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);
        _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
    }

    /// Sum of the 32 products of unsigned `u` (each < 128) and signed `s`, as 8 i32 lanes in f32.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256 {
        // Pairs of products fit in i16: 2·31·127 < 32767.
        let pairs = _mm256_maddubs_epi16(u, s);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Dot product of one weight row with a quantised activation row.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `w` must hold `a.len()` blocks of format `f`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_row(f: Format, w: &[u8], a: &[ActBlock]) -> f32 {
        let bb = f.block_bytes();
        assert!(
            w.len() >= a.len() * bb,
            "weight row shorter than the activation"
        );
        let mut acc = _mm256_setzero_ps();
        let mut offsets = 0f32;
        for (i, act) in a.iter().enumerate() {
            let blk = &w[i * bb..(i + 1) * bb];
            // SAFETY: `act.qs` is 32 bytes; `blk` holds a whole block (asserted above), and
            // the nibble bytes end at the block's end for every format.
            let y = unsafe { _mm256_loadu_si256(act.qs.as_ptr() as *const __m256i) };
            let scale = f16_at(blk, 0) * act.d;
            let ints = match f {
                Format::Q4_1 => {
                    offsets += f16_at(blk, 2) * act.s;
                    dot_u8_i8(unsafe { nibbles(blk.as_ptr().add(4)) }, y)
                }
                Format::Q5_0 => {
                    let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                    let lo = unsafe { nibbles(blk.as_ptr().add(6)) };
                    // q − 16 as a signed byte: where the fifth bit is clear, 0xF0 | q = q − 16;
                    // where it is set, (16 + q) − 16 = q.
                    let clear = _mm256_andnot_si256(expand_bits(qh), _mm256_set1_epi8(-16));
                    let q = _mm256_or_si256(lo, clear);
                    // Signed × signed through maddubs: |q| × (y with q's sign).
                    dot_u8_i8(_mm256_sign_epi8(q, q), _mm256_sign_epi8(y, q))
                }
                Format::Q5_1 => {
                    offsets += f16_at(blk, 2) * act.s;
                    let qh = u32::from_le_bytes([blk[4], blk[5], blk[6], blk[7]]);
                    let lo = unsafe { nibbles(blk.as_ptr().add(8)) };
                    let high = _mm256_and_si256(expand_bits(qh), _mm256_set1_epi8(0x10));
                    dot_u8_i8(_mm256_or_si256(lo, high), y)
                }
            };
            acc = _mm256_fmadd_ps(_mm256_set1_ps(scale), ints, acc);
        }
        debug_assert_eq!(BLOCK, 32);
        hsum(acc) + offsets
    }
}

/// The output buffer, shared by the pool's workers, which write disjoint rows of it.
struct SharedOut(*mut f32);

// SAFETY: workers write disjoint elements (see the call site); the buffer outlives the call.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// A method (not field access) so that closures capture the `Sync` wrapper, not the pointer.
    fn at(&self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

type DotRow = fn(Format, &[u8], &[ActBlock]) -> f32;

/// The fastest dot product this CPU runs.
fn best_dot_row() -> DotRow {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected; `matmul` checks the row lengths.
        return |f, w, a| unsafe { avx2::dot_row(f, w, a) };
    }
    dot_row_portable
}

/// `x · Wᵀ` for `x` of `m` rows of length `k` (row-major) and `W` a `(n, k)` tensor in one of
/// the formats of [`handles`]; returns `m × n` values, row-major.
pub fn matmul(w: &QTensor, x: &[f32], m: usize) -> candle_core::Result<Vec<f32>> {
    matmul_with(w, x, m, best_dot_row())
}

fn matmul_with(w: &QTensor, x: &[f32], m: usize, dot: DotRow) -> candle_core::Result<Vec<f32>> {
    let Some(f) = Format::of(w.dtype()) else {
        candle_core::bail!("quant_kernels: unsupported weight type {:?}", w.dtype())
    };
    let (n, k) = w.shape().dims2()?;
    if !k.is_multiple_of(BLOCK) || x.len() != m * k {
        candle_core::bail!(
            "quant_kernels: weight ({n}, {k}) with {} activations for {m} rows",
            x.len()
        )
    }
    let data = w.data()?;
    let row_bytes = k / BLOCK * f.block_bytes();
    if data.len() != n * row_bytes {
        candle_core::bail!(
            "quant_kernels: {:?} weight ({n}, {k}) holds {} bytes, expected {}",
            w.dtype(),
            data.len(),
            n * row_bytes
        )
    }
    let acts: Vec<Vec<ActBlock>> = x.chunks_exact(k).map(quantize_row).collect();
    // Each weight row is read once and dotted with every activation row while it is in cache;
    // results are collected as (n, m) and transposed when m > 1.
    let mut out_t = vec![0f32; n * m];
    let out = SharedOut(out_t.as_mut_ptr());
    // candle's own quantised matmuls run on its spinning barrier pool; a second pool (rayon) for
    // these would leave the two fighting over the cores between consecutive matmuls.
    candle_core::utils::barrier_pool().execute_chunked(n, |rows| {
        for j in rows {
            let wrow = &data[j * row_bytes..(j + 1) * row_bytes];
            for (i, a) in acts.iter().enumerate() {
                // SAFETY: `j < n` and `i < m`, so the index is inside `out_t`, which outlives
                // this call; each (j, i) is written by exactly one worker (rows are disjoint).
                unsafe { *out.at(j * m + i) = dot(f, wrow, a) };
            }
        }
    });
    if m == 1 {
        return Ok(out_t);
    }
    let mut out = vec![0f32; m * n];
    for j in 0..n {
        for i in 0..m {
            out[i * n + j] = out_t[j * m + i];
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::{Device, Module, Tensor};

    /// Deterministic values in [-1, 1) with a few large ones, like real activations.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let v = (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
                if i % 97 == 0 { v * 8.0 } else { v }
            })
            .collect()
    }

    fn max_abs(v: &[f32]) -> f32 {
        v.iter().fold(0f32, |m, x| m.max(x.abs()))
    }

    /// Against candle's own (scalar) kernel, which quantises the activations the same way: the
    /// results differ only by float summation order.
    #[test]
    fn matches_candle_reference_for_every_format() {
        let dev = Device::Cpu;
        let (n, k) = (70, 256);
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1] {
            let wt = Tensor::from_vec(values(n * k, 1), (n, k), &dev).unwrap();
            let q = QTensor::quantize(&wt, dtype).unwrap();
            for m in [1usize, 3] {
                let x = values(m * k, 2 + m as u64);
                let reference = QMatMul::from_qtensor(QTensor::quantize(&wt, dtype).unwrap())
                    .unwrap()
                    .forward(&Tensor::from_vec(x.clone(), (m, k), &dev).unwrap())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                // candle rounds the block sum `s` to f16 as f16(Σq)·f16(d), ggml (and we) as
                // f16(d·Σq): the offset term m·s may differ by a few f16 ulps per block.
                let raw = q.data().unwrap();
                let bb = Format::of(dtype).unwrap().block_bytes();
                let offset_slack = |i: usize| -> f32 {
                    if dtype == GgmlDType::Q5_0 {
                        return 0.0;
                    }
                    let (row, col) = (i / n, i % n);
                    let blocks = &raw[col * k / BLOCK * bb..(col + 1) * k / BLOCK * bb];
                    let xs = &x[row * k..(row + 1) * k];
                    blocks
                        .chunks(bb)
                        .zip(xs.chunks(BLOCK))
                        .map(|(b, xb)| f16_at(b, 2).abs() * xb.iter().sum::<f32>().abs() * 2e-3)
                        .sum()
                };
                let tol = 1e-4 * max_abs(&reference).max(1.0);
                for (name, dot) in [
                    ("best", best_dot_row()),
                    ("portable", dot_row_portable as DotRow),
                ] {
                    let got = matmul_with(&q, &x, m, dot).unwrap();
                    assert_eq!(got.len(), m * n);
                    for (i, (g, r)) in got.iter().zip(&reference).enumerate() {
                        assert!(
                            (g - r).abs() <= tol + offset_slack(i),
                            "{dtype:?} {name} m={m} [{i}]: {g} vs candle {r}"
                        );
                    }
                }
            }
        }
    }

    /// Against the exact product with the dequantised weights: the only error left is the 8-bit
    /// activation rounding (≤ half a step of amax/127 per element).
    #[test]
    fn close_to_dense_product() {
        let dev = Device::Cpu;
        let (n, k) = (33, 128);
        let x = values(k, 9);
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1] {
            let wt = Tensor::from_vec(values(n * k, 4), (n, k), &dev).unwrap();
            let q = QTensor::quantize(&wt, dtype).unwrap();
            let wd = q.dequantize(&dev).unwrap().to_vec2::<f32>().unwrap();
            let got = matmul(&q, &x, 1).unwrap();
            for (j, row) in wd.iter().enumerate() {
                let exact: f32 = row.iter().zip(&x).map(|(a, b)| a * b).sum();
                // Per block: Σ|w|·step/2 with step = amax_block/127.
                let bound: f32 = row
                    .chunks(BLOCK)
                    .zip(x.chunks(BLOCK))
                    .map(|(wb, xb)| {
                        let step = max_abs(xb) / 127.0;
                        wb.iter().map(|v| v.abs()).sum::<f32>() * step * 0.5
                    })
                    .sum();
                assert!(
                    (got[j] - exact).abs() <= bound * 1.01 + 1e-4,
                    "{dtype:?} row {j}: {} vs exact {exact} (bound {bound})",
                    got[j]
                );
            }
        }
    }

    #[test]
    fn refuses_other_formats_and_bad_shapes() {
        let dev = Device::Cpu;
        let wt = Tensor::zeros((4, 64), candle_core::DType::F32, &dev).unwrap();
        let q8 = QTensor::quantize(&wt, GgmlDType::Q8_0).unwrap();
        assert!(!handles(GgmlDType::Q8_0));
        assert!(matmul(&q8, &[0.0; 64], 1).is_err());
        let q5 = QTensor::quantize(&wt, GgmlDType::Q5_0).unwrap();
        let e = matmul(&q5, &[0.0; 63], 1).unwrap_err().to_string();
        assert!(e.contains("63 activations"), "{e}");
    }

    /// All-zero activations give scale 0 (no division by zero) and a zero product.
    #[test]
    fn zero_row() {
        let dev = Device::Cpu;
        let wt = Tensor::from_vec(values(8 * 64, 3), (8, 64), &dev).unwrap();
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1] {
            let q = QTensor::quantize(&wt, dtype).unwrap();
            assert!(matmul(&q, &[0.0; 64], 1).unwrap().iter().all(|v| *v == 0.0));
        }
    }
}
