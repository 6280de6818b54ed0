//! Low-rank prediction of a delta, for the magnitude coder.
//!
//! A training step changes a dense layer by a sum of outer products (error signals times
//! inputs), so between two snapshots the change of a layer with a narrow side (a first layer
//! over a few dozen input features) is close to a matrix of low rank. The encoder finds its
//! leading singular directions (a symmetric eigendecomposition of the narrow side's Gram
//! matrix), stores them as 8-bit factors with one scale per component, and the magnitude
//! coder then codes the value against `base + U V^T` rounded to the element type instead of
//! against the base: the residual is what the factors missed. The prediction is computed
//! from the stored factors the same way on both sides (integer sums, exact in any order, then
//! one scaling and addition in f64), so it is bit-exact; elements whose base or prediction is
//! not finite are predicted by their base.
//!
//! Block: rows (u32 LE), rank (u8), length of a zstd frame (u32 LE), the frame: the rank's
//! scales (f32 LE), then the row factors (rows x rank i8, row-major), then the column factors
//! (rank x cols i8, component-major).

use super::FloatKind;

/// The narrow side may have at most this many elements (the eigendecomposition is cubic in it).
const MAX_SIDE: usize = 128;
/// Smaller chunks are not worth factoring.
const MIN_ELEMS: usize = 4096;
/// Largest rank stored.
const MAX_RANK: usize = 32;
/// Bound on the eigensolver's iterations (a 64 x 64 Gram matrix takes a few hundred).
const EIGEN_ITERATIONS: usize = 100_000;
/// The rank is the smallest that holds this share of the delta's energy (squared norm); a
/// delta that needs more is not low rank enough to pay for its factors. On the benchmark's bf16
/// series 0.985 and 0.99 stored the first layer's deltas 0.2% (of the series) smaller than 0.98,
/// and 0.995 larger.
const ENERGY: f64 = 0.985;
/// Bytes before the frame.
pub const HEAD: usize = 9;

/// Factors of a chunk viewed as `rows` x `cols` (row-major).
pub struct LowRank {
    pub rows: usize,
    pub cols: usize,
    scales: Vec<f32>,
    u: Vec<i8>,
    v: Vec<i8>,
}

#[cfg(test)]
fn value_of(kind: FloatKind, w: u64) -> f32 {
    match kind {
        FloatKind::BF16 => f32::from_bits((w as u32) << 16),
        _ => f32::from_bits(w as u32),
    }
}

/// The element nearest `f` (round to nearest even for bf16).
#[cfg(test)]
fn bits_of(kind: FloatKind, f: f32) -> u64 {
    let u = f.to_bits();
    match kind {
        FloatKind::BF16 => ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u64,
        _ => u as u64,
    }
}

/// Whether a chunk of `n` elements in rows of `row` has the shape a prediction is fitted to
/// (enough elements, a narrow side of at most [`MAX_SIDE`]).
fn may_apply(row: usize, n: usize) -> bool {
    n >= MIN_ELEMS && row >= 2 && n.is_multiple_of(row) && (2..=MAX_SIDE).contains(&(n / row).min(row))
}

fn width_of(kind: FloatKind) -> Option<usize> {
    match kind {
        FloatKind::BF16 => Some(2),
        FloatKind::F32 => Some(4),
        _ => None,
    }
}

#[cfg(test)]
fn words(bytes: &[u8], width: usize) -> impl Iterator<Item = u64> + '_ {
    bytes.chunks_exact(width).map(|c| c.iter().rev().fold(0u64, |a, &b| (a << 8) | b as u64))
}

/// Eigenvalues (descending) and unit eigenvectors (`vecs[j * s + i]` is component i of the
/// j-th) of the symmetric matrix `a` (Householder tridiagonalisation and implicit QR, from
/// nalgebra, in f32: the directions only steer a prediction stored in 8 bits, and f32 halves
/// the time of f64, itself several times faster on a 64 x 64 Gram matrix than the cyclic
/// Jacobi rotations used before). `None` if an entry or an eigenvalue is not finite (a delta
/// whose squares overflow f32) or the iteration does not converge.
fn eigen(a: &nalgebra::DMatrix<f32>) -> Option<(Vec<f64>, Vec<f64>)> {
    if a.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let s = a.nrows();
    let e = a.clone().try_symmetric_eigen(f32::EPSILON, EIGEN_ITERATIONS)?;
    if e.eigenvalues.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let mut order: Vec<usize> = (0..s).collect();
    order.sort_by(|&x, &y| e.eigenvalues[y].total_cmp(&e.eigenvalues[x]));
    let vals = order.iter().map(|&j| e.eigenvalues[j] as f64).collect();
    let mut vecs = Vec::with_capacity(s * s);
    for &j in &order {
        vecs.extend(e.eigenvectors.column(j).iter().map(|&x| x as f64));
    }
    Some((vals, vecs))
}

/// Quantises a component to i8 with the scale `max |x| / 127`.
fn quantise(x: &[f64]) -> (Vec<i8>, f64) {
    let m = x.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
    if m == 0.0 || !m.is_finite() {
        return (vec![0; x.len()], 0.0);
    }
    let s = m / 127.0;
    (x.iter().map(|&y| (y / s).round().clamp(-127.0, 127.0) as i8).collect(), s)
}

/// The f32 bit pattern of `base + p * unit` (`base` an f32 bit pattern), or 0 where the base
/// is zero, subnormal or not finite or the sum is not a normal finite f32 (0 is never the
/// pattern of a normal sum). Branch-free.
#[inline(always)]
fn predict_one(base: u32, p: f64, unit: f64) -> u32 {
    let e = (base >> 23) & 0xff;
    let f = f32::from_bits(base) as f64 + p * unit;
    let a = f.abs();
    let ok = (e != 0) & (e != 0xff) & (a >= f32::MIN_POSITIVE as f64) & (a <= f32::MAX as f64);
    (f as f32).to_bits() & (ok as u32).wrapping_neg()
}

/// What [`LowRank::predict`] computes the rows from.
struct Rows<'a> {
    base: &'a [u8],
    width: usize,
    cols: usize,
    k: usize,
    /// Integer scales of the components.
    q: &'a [f64],
    u: &'a [i8],
    /// Column factors as f64, `stride` per component (padded with zeros to whole blocks).
    vq: &'a [f64],
    stride: usize,
    unit: f64,
}

/// Columns per block of sums kept in registers (eight AVX2 registers of f64, enough independent
/// sums that the multiply-adds never wait on one another).
const BLOCK: usize = 32;

impl Rows<'_> {
    /// The predicted elements into `out` (as long as the base).
    #[inline(always)]
    fn predict<const FMA: bool>(&self, out: &mut [u8]) {
        let (width, cols, k, unit) = (self.width, self.cols, self.k, self.unit);
        let mut acc = vec![0f64; self.stride];
        let mut coef = vec![0f64; k];
        for (i, (brow, orow)) in self.base.chunks_exact(cols * width).zip(out.chunks_exact_mut(cols * width)).enumerate() {
            for ((cf, &qc), &uc) in coef.iter_mut().zip(self.q).zip(&self.u[i * k..i * k + k]) {
                *cf = qc * uc as f64;
            }
            // Each block's sums stay in registers over the components.
            for (j0, block) in acc.chunks_exact_mut(BLOCK).enumerate() {
                let mut a = [0f64; BLOCK];
                for (&cf, vrow) in coef.iter().zip(self.vq.chunks_exact(self.stride)) {
                    for (x, &y) in a.iter_mut().zip(&vrow[j0 * BLOCK..j0 * BLOCK + BLOCK]) {
                        *x = if FMA { cf.mul_add(y, *x) } else { *x + cf * y };
                    }
                }
                block.copy_from_slice(&a);
            }
            // Two- and four-byte elements as words, without a per-byte loop; branch-free, so
            // that the loop vectorises.
            if width == 2 {
                for ((b, o), &p) in brow.chunks_exact(2).zip(orow.chunks_exact_mut(2)).zip(&acc) {
                    let b = u16::from_le_bytes([b[0], b[1]]);
                    let r = predict_one((b as u32) << 16, p, unit);
                    let r = (r.wrapping_add(0x7fff + ((r >> 16) & 1)) >> 16) as u16;
                    o.copy_from_slice(&(if r == 0 { b } else { r }).to_le_bytes());
                }
            } else {
                for ((b, o), &p) in brow.chunks_exact(4).zip(orow.chunks_exact_mut(4)).zip(&acc) {
                    let b = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    let r = predict_one(b, p, unit);
                    o.copy_from_slice(&(if r == 0 { b } else { r }).to_le_bytes());
                }
            }
        }
    }

    /// [`Rows::predict`] compiled for AVX2 (twice the f64 lanes of the baseline's SSE2) and FMA.
    /// A fused multiply-add gives the same bits as a product and a sum here: every product and
    /// partial sum is an integer below 2^53, so neither step rounds.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn predict_avx2(&self, out: &mut [u8]) {
        self.predict::<true>(out)
    }
}

impl LowRank {
    /// Factors of `value - base` (little-endian elements of `kind`) viewed with rows of `row`
    /// elements, when the chunk is large enough, its narrow side narrow enough and a rank of
    /// at most [`MAX_RANK`] holds [`ENERGY`] of the change.
    pub fn fit(value: &[u8], base: &[u8], kind: FloatKind, row: usize) -> Option<LowRank> {
        let width = width_of(kind)?;
        let n = value.len() / width;
        if base.len() != value.len() || !may_apply(row, n) {
            return None;
        }
        let (rows, cols) = (n / row, row);
        let s = rows.min(cols);
        // The delta in f32 (the fit only steers a prediction stored in 8 bits), row-major: as
        // nalgebra stores matrices by column, that is the transpose (cols x rows).
        let delta = |v: f32, b: f32| {
            let x = v - b;
            if x.is_finite() {
                x
            } else {
                0.0
            }
        };
        let d: Vec<f32> = match kind {
            FloatKind::BF16 => value
                .chunks_exact(2)
                .zip(base.chunks_exact(2))
                .map(|(v, b)| delta(f32::from_bits((u16::from_le_bytes([v[0], v[1]]) as u32) << 16), f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)))
                .collect(),
            _ => value
                .chunks_exact(4)
                .zip(base.chunks_exact(4))
                .map(|(v, b)| delta(f32::from_le_bytes([v[0], v[1], v[2], v[3]]), f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect(),
        };
        let dt = nalgebra::DMatrix::from_vec(cols, rows, d);
        let dm = dt.transpose();
        // The narrow side's Gram matrix, by nalgebra's matrix product (blocked, vectorised for
        // the processor at run time).
        let narrow_cols = cols <= rows;
        let gm = if narrow_cols { &dt * &dm } else { &dm * &dt };
        let (vals, vecs) = eigen(&gm)?;
        let total: f64 = vals.iter().map(|&x| x.max(0.0)).sum();
        if total <= 0.0 || !total.is_finite() {
            return None;
        }
        let mut cum = 0.0;
        let k = vals.iter().position(|&x| {
            cum += x.max(0.0);
            cum >= ENERGY * total
        })? + 1;
        if k > MAX_RANK.min(s / 2) {
            return None;
        }
        // The wide side's directions are the delta applied to the narrow side's, all k at once.
        let em = nalgebra::DMatrix::from_fn(s, k, |j, c| vecs[c * s + j] as f32);
        let wm = if narrow_cols { &dm * &em } else { &dt * &em };
        let (mut u, mut v, mut scales) = (vec![0i8; rows * k], vec![0i8; k * cols], Vec::with_capacity(k));
        for c in 0..k {
            let e: Vec<f64> = vecs[c * s..c * s + s].to_vec();
            let w: Vec<f64> = wm.column(c).iter().map(|&x| x as f64).collect();
            let (uc, vc) = if narrow_cols { (w, e) } else { (e, w) };
            let (uq, su) = quantise(&uc);
            let (vq, sv) = quantise(&vc);
            for (i, &x) in uq.iter().enumerate() {
                u[i * k + c] = x;
            }
            v[c * cols..c * cols + cols].copy_from_slice(&vq);
            scales.push((su * sv) as f32);
        }
        Some(LowRank { rows, cols, scales, u, v })
    }

    pub fn rank(&self) -> usize {
        self.scales.len()
    }

    /// The predicted value: `base + U V^T` per element, rounded to the element type, or the
    /// base itself where the base is zero, subnormal or not finite, or the sum is not a normal
    /// finite f32. `None` for a float kind without low-rank prediction or a base of the wrong
    /// length.
    ///
    /// Bit-exact on every platform and in every floating-point mode: the products are summed as
    /// integers (the scales become 15-bit integer multiples of the largest; smaller components
    /// are dropped), and the only float steps are one multiplication and one addition in f64 on
    /// normal numbers and the rounding to the element type, none of which a flush-to-zero or
    /// denormals-are-zero mode can change.
    pub fn predict(&self, base: &[u8], kind: FloatKind) -> Option<Vec<u8>> {
        self.predict_with(base, kind, true)
    }

    /// [`LowRank::predict`], with AVX2 where the processor has it only if `simd`.
    fn predict_with(&self, base: &[u8], kind: FloatKind, simd: bool) -> Option<Vec<u8>> {
        let width = width_of(kind)?;
        let (k, cols) = (self.rank(), self.cols);
        if base.len() != self.rows * cols * width {
            return None;
        }
        let normal = |f: f32| f.is_normal();
        let top = self.scales.iter().copied().filter(|&s| normal(s)).fold(0.0f32, |a, s| a.max(s.abs()));
        if top == 0.0 {
            return Some(base.to_vec());
        }
        const ONE: f64 = 32768.0;
        let q: Vec<f64> = self.scales.iter().map(|&s| if normal(s) { (s as f64 / top as f64 * ONE).round() } else { 0.0 }).collect();
        let unit = top as f64 / ONE;
        // The sums are of integers: |q| <= 2^15, the factors are i8 and there are at most
        // MAX_RANK terms, so every partial sum is an integer below 2^34 and f64 arithmetic on
        // them is exact, in any order and on any machine. f64 vectorises; i64 products do not.
        // The column factors padded with zeros to whole blocks.
        let stride = cols.next_multiple_of(BLOCK);
        let mut vq = vec![0f64; k * stride];
        for (dst, src) in vq.chunks_exact_mut(stride).zip(self.v.chunks_exact(cols)) {
            for (d, &x) in dst.iter_mut().zip(src) {
                *d = x as f64;
            }
        }
        let mut out = vec![0u8; base.len()];
        let rows = Rows { base, width, cols, k, q: &q, u: &self.u, vq: &vq, stride, unit };
        #[cfg(target_arch = "x86_64")]
        if simd && std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the function only enables AVX2 and FMA, which the processor was just found
            // to have. Its fused multiply-adds are exact, as the separate steps are (see there).
            #[allow(unsafe_code)]
            unsafe {
                rows.predict_avx2(&mut out)
            };
            return Some(out);
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = simd;
        rows.predict::<false>(&mut out);
        Some(out)
    }

    pub fn to_bytes(&self) -> Option<Vec<u8>> {
        let mut body = Vec::with_capacity(4 * self.rank() + self.u.len() + self.v.len());
        for s in &self.scales {
            body.extend_from_slice(&s.to_le_bytes());
        }
        body.extend(self.u.iter().map(|&x| x as u8));
        body.extend(self.v.iter().map(|&x| x as u8));
        let z = zstd::bulk::compress(&body, 3).ok()?;
        let mut out = Vec::with_capacity(HEAD + z.len());
        out.extend_from_slice(&u32::try_from(self.rows).ok()?.to_le_bytes());
        out.push(u8::try_from(self.rank()).ok()?);
        out.extend_from_slice(&u32::try_from(z.len()).ok()?.to_le_bytes());
        out.extend_from_slice(&z);
        Some(out)
    }

    /// Parses a block for a chunk of `n` elements; returns it and the bytes it took.
    pub fn parse(data: &[u8], n: usize) -> Result<(LowRank, usize), String> {
        let bad = |m: &str| format!("low-rank block: {m}");
        let head = data.get(..HEAD).ok_or_else(|| bad("truncated"))?;
        let rows = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let k = head[4] as usize;
        let zlen = u32::from_le_bytes([head[5], head[6], head[7], head[8]]) as usize;
        // The encoder's limits, so that a hostile block cannot ask for more memory or work.
        if n == 0 || rows == 0 || !n.is_multiple_of(rows) {
            return Err(bad("shape out of range"));
        }
        let cols = n / rows;
        let side = rows.min(cols);
        if !(2..=MAX_SIDE).contains(&side) || k == 0 || k > MAX_RANK.min(side / 2) {
            return Err(bad("shape or rank out of range"));
        }
        let z = HEAD.checked_add(zlen).and_then(|end| data.get(HEAD..end)).ok_or_else(|| bad("frame runs past the stream"))?;
        let want = 4 * k + rows * k + k * cols;
        // Exactly `want` bytes, or an error.
        let body = super::stream::unzstd(z, want).map_err(|e| bad(&e))?;
        let scales: Vec<f32> = body[..4 * k].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        if scales.iter().any(|s| !s.is_finite()) {
            return Err(bad("scale is not finite"));
        }
        let u = body[4 * k..4 * k + rows * k].iter().map(|&x| x as i8).collect();
        let v = body[4 * k + rows * k..].iter().map(|&x| x as i8).collect();
        Ok((LowRank { rows, cols, scales, u, v }, HEAD + zlen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `rows` x `cols` bf16 or f32 base and a value that differs by a rank-`r` matrix plus a
    /// little noise.
    fn low_rank_pair(kind: FloatKind, rows: usize, cols: usize, r: usize) -> (Vec<u8>, Vec<u8>) {
        let mut rng = crate::testrand::XorShift::new(0x9e3779b97f4a7c15);
        let mut next = || rng.unit() - 0.5;
        let a: Vec<f64> = (0..rows * r).map(|_| next()).collect();
        let b: Vec<f64> = (0..r * cols).map(|_| next()).collect();
        let width = width_of(kind).unwrap_or(4);
        let (mut base, mut value) = (Vec::new(), Vec::new());
        for i in 0..rows {
            for j in 0..cols {
                let w = next() * 0.2;
                let d: f64 = (0..r).map(|c| a[i * r + c] * b[c * cols + j]).sum::<f64>() * 0.05 + next() * 1e-6;
                for (x, out) in [(w, &mut base), (w + d, &mut value)] {
                    let bits = bits_of(kind, x as f32);
                    out.extend_from_slice(&bits.to_le_bytes()[..width]);
                }
            }
        }
        (base, value)
    }

    #[test]
    fn finds_the_rank_and_predicts_most_of_the_change() -> Result<(), String> {
        for kind in [FloatKind::BF16, FloatKind::F32] {
            let (base, value) = low_rank_pair(kind, 300, 40, 5);
            let lr = LowRank::fit(&value, &base, kind, 40).ok_or("no factors")?;
            assert!((4..=6).contains(&lr.rank()), "rank {}", lr.rank());
            let pred = lr.predict(&base, kind).ok_or("no prediction")?;
            let width = width_of(kind).unwrap_or(4);
            let dist = |x: &[u8]| -> u64 { words(&value, width).zip(words(x, width)).map(|(a, b)| (a as i64 - b as i64).unsigned_abs()).sum() };
            assert!(dist(&pred) * 4 < dist(&base), "{kind:?}: prediction {} against base {}", dist(&pred), dist(&base));
            // Serialised and parsed, it predicts the same bits.
            let bytes = lr.to_bytes().ok_or("no bytes")?;
            let (back, used) = LowRank::parse(&bytes, 300 * 40)?;
            assert_eq!(used, bytes.len());
            assert_eq!(back.predict(&base, kind), Some(pred));
            assert_eq!(back.predict(&base[4..], kind), None);
            assert_eq!(back.predict(&base, FloatKind::F16), None);
        }
        Ok(())
    }

    /// The prediction as its definition states it, one element at a time.
    fn predict_reference(lr: &LowRank, base: &[u8], kind: FloatKind) -> Vec<u8> {
        let width = width_of(kind).unwrap_or(4);
        let top = lr.scales.iter().copied().filter(|s| s.is_normal()).fold(0.0f32, |a, s| a.max(s.abs()));
        let q: Vec<f64> = lr.scales.iter().map(|&s| if s.is_normal() { (s as f64 / top as f64 * 32768.0).round() } else { 0.0 }).collect();
        let unit = top as f64 / 32768.0;
        let k = lr.rank();
        words(base, width)
            .enumerate()
            .flat_map(|(e, b)| {
                let (i, j) = (e / lr.cols, e % lr.cols);
                let p: f64 = (0..k).map(|c| q[c] * lr.u[i * k + c] as f64 * lr.v[c * lr.cols + j] as f64).sum();
                let bf = value_of(kind, b);
                let f = bf as f64 + p * unit;
                let w = if top != 0.0 && bf.is_normal() && f.abs() >= f32::MIN_POSITIVE as f64 && f.abs() <= f32::MAX as f64 { bits_of(kind, f as f32) } else { b };
                w.to_le_bytes()[..width].to_vec()
            })
            .collect()
    }

    #[test]
    fn prediction_matches_its_definition_on_every_kind_of_element() -> Result<(), String> {
        let mut rng = crate::testrand::XorShift::new(77);
        // A block of columns and a part of one; the largest rank, whose sums are the largest.
        for ((rows, cols, k), kind) in [(40, 24, 5), (9, 70, MAX_RANK)].into_iter().flat_map(|s| [(s, FloatKind::BF16), (s, FloatKind::F32)]) {
            let width = width_of(kind).unwrap_or(4);
            for round in 0..20 {
                let mut r = || rng.next_u64();
                let u: Vec<i8> = (0..rows * k).map(|_| r() as i8).collect();
                let v: Vec<i8> = (0..k * cols).map(|_| r() as i8).collect();
                // Scales from tiny to huge, so that sums overflow, underflow and round.
                let scales: Vec<f32> = (0..k).map(|c| f32::from_bits(((r() % 200 + 20) as u32) << 23 | (r() as u32 & 0x7f_ffff)) * if c == 2 { -1.0 } else { 1.0 }).collect();
                let lr = LowRank { rows, cols, scales, u, v };
                // Bases with zeros, subnormals, infinities, NaNs and the largest values.
                let base: Vec<u8> = (0..rows * cols)
                    .flat_map(|e| {
                        let x = r();
                        let w: u64 = match (e + round) % 11 {
                            0 => 0,
                            1 => x & 0x7f,
                            2 => if width == 2 { 0x7f80 } else { 0x7f80_0000 },
                            3 => if width == 2 { 0xffc1 } else { 0xffc0_0001 },
                            4 => if width == 2 { 0x7f7f } else { 0x7f7f_ffff },
                            _ => x,
                        };
                        w.to_le_bytes()[..width].to_vec()
                    })
                    .collect();
                let want = predict_reference(&lr, &base, kind);
                for simd in [false, true] {
                    let got = lr.predict_with(&base, kind, simd).ok_or("no prediction")?;
                    assert!(got == want, "{kind:?} k {k} round {round} simd {simd}");
                }
            }
        }
        Ok(())
    }

    /// A delta whose squares overflow f32 (finite values, a Gram matrix with infinities) is
    /// not fitted, and nothing panics.
    #[test]
    fn huge_deltas_are_not_fitted() {
        let (base, mut value) = low_rank_pair(FloatKind::F32, 300, 40, 3);
        for (i, v) in value.chunks_exact_mut(4).enumerate().filter(|(i, _)| i % 97 == 0) {
            v.copy_from_slice(&(if i % 2 == 0 { 1e30f32 } else { -1e30 }).to_le_bytes());
        }
        assert!(LowRank::fit(&value, &base, FloatKind::F32, 40).is_none());
    }

    #[test]
    fn declines_what_is_not_low_rank_or_too_wide() {
        let (base, value) = low_rank_pair(FloatKind::F32, 300, 40, 5);
        // Rows of 3000: the narrow side has 4 rows but a 4 x 3000 matrix is full rank 4 > 4/2.
        assert!(LowRank::fit(&value, &base, FloatKind::F32, 3000).is_none());
        assert!(LowRank::fit(&value, &base, FloatKind::F16, 40).is_none());
        assert!(LowRank::fit(&value[..400], &base[..400], FloatKind::F32, 40).is_none());
        let (base, value) = low_rank_pair(FloatKind::F32, 200, 200, 3);
        assert!(LowRank::fit(&value, &base, FloatKind::F32, 200).is_none(), "narrow side over {MAX_SIDE}");
        assert!(LowRank::fit(&base, &base, FloatKind::F32, 40).is_none(), "no change");
    }

    #[test]
    fn non_finite_elements_are_predicted_by_their_base() {
        let (mut base, value) = low_rank_pair(FloatKind::F32, 300, 40, 2);
        for (i, special) in [(7usize, f32::NAN), (100, f32::INFINITY), (2000, f32::NEG_INFINITY)] {
            base[4 * i..4 * i + 4].copy_from_slice(&special.to_bits().to_le_bytes());
        }
        let Some(lr) = LowRank::fit(&value, &base, FloatKind::F32, 40) else { panic!("no factors") };
        let pred = lr.predict(&base, FloatKind::F32).unwrap_or_default();
        for i in [7usize, 100, 2000] {
            assert_eq!(pred[4 * i..4 * i + 4], base[4 * i..4 * i + 4]);
        }
    }

    #[test]
    fn corrupt_blocks_are_errors() {
        let (base, value) = low_rank_pair(FloatKind::BF16, 300, 40, 3);
        let bytes = LowRank::fit(&value, &base, FloatKind::BF16, 40).and_then(|l| l.to_bytes()).unwrap_or_default();
        assert!(!bytes.is_empty());
        for cut in 0..bytes.len() {
            assert!(LowRank::parse(&bytes[..cut], 12000).is_err());
        }
        assert!(LowRank::parse(&bytes, 12001).is_err());
        assert!(LowRank::parse(&bytes, 0).is_err());
        // Shapes and ranks the encoder never writes are refused before anything is allocated:
        // one column, a narrow side over the limit, a rank over half the narrow side.
        let head = |rows: u32, k: u8| -> Vec<u8> {
            let mut b = rows.to_le_bytes().to_vec();
            b.push(k);
            b.extend_from_slice(&0u32.to_le_bytes());
            b
        };
        for (rows, k, n) in [(12000u32, 1u8, 12000usize), (1000, 1, 1_000_000), (300, 21, 12000), (300, 33, 3_000_000)] {
            let err = LowRank::parse(&head(rows, k), n).err().unwrap_or_default();
            assert!(err.contains("out of range"), "{rows} rows, rank {k}, {n} elements: {err}");
        }
        for i in 0..bytes.len() {
            let mut t = bytes.clone();
            t[i] ^= 0x5a;
            let _ = LowRank::parse(&t, 12000);
        }
    }
}
