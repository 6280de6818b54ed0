//! Vector prefixes of eight scalar loops, for x86-64 processors with SSSE3 (AVX2 for 32-bit
//! words; SSE2, which every one has, for the unmasked assembly): the decoder's split-plane
//! merge and its 2- and 4-byte assembly (masked and unmasked), and the encoder's split of a
//! plane and compaction of non-zero words and bytes. Each runs while a vector's worth more
//! elements of its inputs are in bounds and returns where it stopped, and the scalar loop (the
//! definition, and the only path elsewhere) finishes from there; tests compare each with the
//! definition.
//!
//! The decoder's masked ones place bytes by a mask eight at a time with one byte shuffle
//! (`pshufb`), whose control comes from a 256-entry table: for mask m, lane l takes the byte at
//! the rank of l among m's set bits, or zero where l is not set. The encoder's ones do the
//! inverse: the lanes of m move to the front, in order.

use super::Transform;

/// Per mask m of eight lanes: for each set lane l, the rank of l among m's set lanes; 0x80
/// for a clear lane. As a byte shuffle's control it places the next bytes at m's lanes (zero
/// elsewhere); the rANS vector decoder uses it as the lanes' word indices.
#[cfg(target_arch = "x86_64")]
pub const RANK: [[u8; 8]; 256] = {
    let mut t = [[0x80u8; 8]; 256];
    let mut m = 0;
    while m < 256 {
        let (mut l, mut r) = (0, 0u8);
        while l < 8 {
            if m >> l & 1 == 1 {
                t[m][l] = r;
                r += 1;
            }
            l += 1;
        }
        m += 1;
    }
    t
};

/// Whether the processor has SSSE3 and POPCNT, what the byte-shuffle prefixes need.
#[cfg(target_arch = "x86_64")]
pub fn ssse3() -> bool {
    std::is_x86_feature_detected!("ssse3") && std::is_x86_feature_detected!("popcnt")
}

/// Whether the processor has AVX2 and POPCNT (AVX2 does not imply POPCNT), what the 32-bit
/// compaction and the wide rANS decoder need.
#[cfg(target_arch = "x86_64")]
pub fn avx2() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("popcnt")
}

/// Merges the parts of a split plane (see [`super::stream::merge_split`]) into `out` from its
/// start: returns the elements done (a multiple of eight) and how many bytes of `a` and `b`
/// they took.
pub fn merge_split_prefix(a: &[u8], b: &[u8], lead: &[bool], out: &mut [u8]) -> (usize, usize, usize) {
    #[cfg(target_arch = "x86_64")]
    if ssse3() {
        // SAFETY: the features the function enables were detected just above; it checks every
        // bound.
        #[allow(unsafe_code)]
        return unsafe { x86::merge_split(a, b, lead, out) };
    }
    let _ = (a, b, lead, out);
    (0, 0, 0)
}

/// Writes the values of a masked chunk of 2- or 4-byte elements from the residual planes of
/// its masked elements (low byte first), as `super::place` does: `dst` holds the base (or
/// zeros without one) and a zero residual leaves an element as it is. Without a base
/// (`Transform::None`) the vector writes zero outside the mask, which is what `dst` holds
/// there (`super::assemble_chunk` zero-fills it). Returns the bitmap bytes done and the
/// residuals they took (none for other widths).
pub fn place_prefix(planes: &[&[u8]], bitmap: &[u8], dst: &mut [u8], t: Transform, rotate: bool) -> (usize, usize) {
    #[cfg(target_arch = "x86_64")]
    if ssse3() {
        // SAFETY: as in `merge_split_prefix`.
        #[allow(unsafe_code)]
        return unsafe {
            match *planes {
                [p0, p1] => x86::place_2(p0, p1, bitmap, dst, t, rotate),
                [p0, p1, p2, p3] => x86::place_4([p0, p1, p2, p3], bitmap, dst, t, rotate),
                _ => (0, 0),
            }
        };
    }
    let _ = (planes, bitmap, dst, t, rotate);
    (0, 0)
}

/// Writes the values of an unmasked chunk from its residual planes (low byte first: two for
/// 2-byte elements, four for 4-byte ones) and its base (`None` for `Transform::None`), as
/// `super::place` does, sixteen elements at a time with SSE2 (part of x86-64). Returns the
/// elements done (none for other widths).
pub fn assemble_prefix(planes: &[&[u8]], base: Option<&[u8]>, dst: &mut [u8], t: Transform, rotate: bool) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the functions only enable SSE2, which every x86-64 processor has.
        #[allow(unsafe_code)]
        return unsafe {
            match *planes {
                [p0, p1] => x86::assemble_2(p0, p1, base, dst, t, rotate),
                [p0, p1, p2, p3] => x86::assemble_4([p0, p1, p2, p3], base, dst, t, rotate),
                _ => 0,
            }
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (planes, base, dst, t, rotate);
        0
    }
}

/// Splits `plane` by `lead` (see [`super::stream::split`]) into `a` and `b`, each at least
/// eight bytes longer than its part, from their starts: returns the elements done (a multiple
/// of eight) and how many of them went to `a`.
pub fn split_prefix(plane: &[u8], lead: &[bool], a: &mut [u8], b: &mut [u8]) -> (usize, usize) {
    #[cfg(target_arch = "x86_64")]
    if ssse3() {
        // SAFETY: as in `merge_split_prefix`.
        #[allow(unsafe_code)]
        return unsafe { x86::split(plane, lead, a, b) };
    }
    let _ = (plane, lead, a, b);
    (0, 0)
}

/// [`super::planes::compact_nonzero`] of 32-bit words into `out` (at least `src.len() + 8`
/// long) and `bitmap` from their starts: returns the words done (a multiple of eight) and how
/// many of them were kept.
pub fn compact_u32_prefix(src: &[u32], out: &mut [u32], bitmap: &mut [u8]) -> (usize, usize) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: as in `merge_split_prefix`.
        #[allow(unsafe_code)]
        return unsafe { x86::compact_u32(src, out, bitmap) };
    }
    let _ = (src, out, bitmap);
    (0, 0)
}

/// [`super::planes::compact_nonzero`] of bytes into `out` (at least `src.len() + 8` long) and
/// `bitmap` from their starts: returns the bytes done (a multiple of eight) and how many of them
/// were kept.
pub fn compact_u8_prefix(src: &[u8], out: &mut [u8], bitmap: &mut [u8]) -> (usize, usize) {
    #[cfg(target_arch = "x86_64")]
    if ssse3() {
        // SAFETY: as in `merge_split_prefix`.
        #[allow(unsafe_code)]
        return unsafe { x86::compact_u8(src, out, bitmap) };
    }
    let _ = (src, out, bitmap);
    (0, 0)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Transform, RANK};


    /// Permutations that move the lanes of mask m to the front, in order (the inverse of
    /// [`RANK`]'s placement, for 32-bit lanes).
    const PACK: [[u32; 8]; 256] = {
        let mut t = [[0u32; 8]; 256];
        let mut m = 0;
        while m < 256 {
            let (mut l, mut r) = (0, 0);
            while l < 8 {
                if m >> l & 1 == 1 {
                    t[m][r] = l as u32;
                    r += 1;
                }
                l += 1;
            }
            m += 1;
        }
        t
    };

    /// [`PACK`] as byte shuffle controls for eight bytes.
    const PACK8: [[u8; 8]; 256] = {
        let mut t = [[0x80u8; 8]; 256];
        let mut m = 0;
        while m < 256 {
            let mut l = 0;
            while l < 8 {
                if PACK[m][l] < 8 && (l == 0 || PACK[m][l] != 0) {
                    t[m][l] = PACK[m][l] as u8;
                }
                l += 1;
            }
            m += 1;
        }
        t
    };

    #[target_feature(enable = "ssse3,popcnt")]
    pub fn compact_u8(src: &[u8], out: &mut [u8], bitmap: &mut [u8]) -> (usize, usize) {
        let (mut k, mut done) = (0usize, 0usize);
        for (group, bits) in src.chunks_exact(8).zip(bitmap.iter_mut()) {
            let (Some(v), Some(dst)) = (load8(group, 0), out.get_mut(k..k + 8)) else { break };
            let zero = _mm_cmpeq_epi8(v, _mm_setzero_si128());
            let m = (!_mm_movemask_epi8(zero) & 0xff) as usize;
            let packed = _mm_shuffle_epi8(v, pack(m));
            dst.copy_from_slice(&_mm_cvtsi128_si64(packed).to_le_bytes());
            *bits = m as u8;
            k += m.count_ones() as usize;
            done += 8;
        }
        (done, k)
    }

    #[target_feature(enable = "avx2,popcnt")]
    pub fn compact_u32(src: &[u32], out: &mut [u32], bitmap: &mut [u8]) -> (usize, usize) {
        let (mut k, mut done) = (0usize, 0usize);
        for (group, bits) in src.chunks_exact(8).zip(bitmap.iter_mut()) {
            let Some(dst) = out.get_mut(k..k + 8) else { break };
            // SAFETY: `group` and `dst` are eight u32 each; PACK rows are eight u32.
            #[allow(unsafe_code)]
            unsafe {
                let v = _mm256_loadu_si256(group.as_ptr().cast());
                let zero = _mm256_cmpeq_epi32(v, _mm256_setzero_si256());
                let m = (!_mm256_movemask_ps(_mm256_castsi256_ps(zero)) & 0xff) as usize;
                let packed = _mm256_permutevar8x32_epi32(v, _mm256_loadu_si256(PACK[m].as_ptr().cast()));
                _mm256_storeu_si256(dst.as_mut_ptr().cast(), packed);
                *bits = m as u8;
                k += m.count_ones() as usize;
            }
            done += 8;
        }
        (done, k)
    }

    /// Eight bytes of `s` from `at`, if they are in bounds.
    #[inline]
    #[target_feature(enable = "ssse3,popcnt")]
    fn load8(s: &[u8], at: usize) -> Option<__m128i> {
        let b: &[u8; 8] = s.get(at..at + 8)?.try_into().ok()?;
        Some(_mm_cvtsi64_si128(i64::from_le_bytes(*b)))
    }

    /// The byte shuffle that places the next bytes at mask m's lanes ([`RANK`]).
    #[inline]
    #[target_feature(enable = "ssse3,popcnt")]
    fn control(m: usize) -> __m128i {
        _mm_cvtsi64_si128(i64::from_le_bytes(RANK[m & 255]))
    }

    /// The byte shuffle that moves mask m's lanes to the front ([`PACK8`]).
    #[inline]
    #[target_feature(enable = "ssse3,popcnt")]
    fn pack(m: usize) -> __m128i {
        _mm_cvtsi64_si128(i64::from_le_bytes(PACK8[m & 255]))
    }

    /// The mask of eight lead flags (flag k in bit k).
    #[inline]
    fn lead_mask(l: &[bool]) -> usize {
        l.iter().enumerate().fold(0usize, |m, (k, &x)| m | (x as usize) << k)
    }

    #[target_feature(enable = "ssse3,popcnt")]
    pub fn split(plane: &[u8], lead: &[bool], a: &mut [u8], b: &mut [u8]) -> (usize, usize) {
        let (mut ia, mut ib, mut done) = (0usize, 0usize, 0usize);
        for (g, l) in plane.chunks_exact(8).zip(lead.chunks_exact(8)) {
            let (Some(v), Some(da), Some(db)) = (load8(g, 0), a.get_mut(ia..ia + 8), b.get_mut(ib..ib + 8)) else { break };
            let m = lead_mask(l);
            da.copy_from_slice(&_mm_cvtsi128_si64(_mm_shuffle_epi8(v, pack(m))).to_le_bytes());
            db.copy_from_slice(&_mm_cvtsi128_si64(_mm_shuffle_epi8(v, pack(!m))).to_le_bytes());
            let k = m.count_ones() as usize;
            ia += k;
            ib += 8 - k;
            done += 8;
        }
        (done, ia)
    }

    #[target_feature(enable = "ssse3,popcnt")]
    pub fn merge_split(a: &[u8], b: &[u8], lead: &[bool], out: &mut [u8]) -> (usize, usize, usize) {
        let (mut ia, mut ib, mut done) = (0usize, 0usize, 0usize);
        for (l, o) in lead.chunks_exact(8).zip(out.chunks_exact_mut(8)) {
            let (Some(va), Some(vb)) = (load8(a, ia), load8(b, ib)) else { break };
            let m = lead_mask(l);
            let v = _mm_or_si128(_mm_shuffle_epi8(va, control(m)), _mm_shuffle_epi8(vb, control(!m)));
            o.copy_from_slice(&_mm_cvtsi128_si64(v).to_le_bytes());
            let k = m.count_ones() as usize;
            ia += k;
            ib += 8 - k;
            done += 8;
        }
        (done, ia, ib)
    }

    #[target_feature(enable = "ssse3,popcnt")]
    pub fn place_2(p0: &[u8], p1: &[u8], bitmap: &[u8], dst: &mut [u8], t: Transform, rotate: bool) -> (usize, usize) {
        // Residual r of eight elements against their base b; each combination of transform and
        // rotation gets its own loop.
        let sub = |r: __m128i, b: __m128i| _mm_add_epi16(b, _mm_xor_si128(_mm_srli_epi16::<1>(r), _mm_sub_epi16(_mm_setzero_si128(), _mm_and_si128(r, _mm_set1_epi16(1)))));
        let turn = |r: __m128i| _mm_or_si128(_mm_srli_epi16::<1>(r), _mm_slli_epi16::<15>(r));
        match (t, rotate) {
            (Transform::Sub, false) => place_2_with(p0, p1, bitmap, dst, sub),
            (Transform::Sub, true) => place_2_with(p0, p1, bitmap, dst, |r, b| sub(turn(r), b)),
            (Transform::Xor, false) => place_2_with(p0, p1, bitmap, dst, |r, b| _mm_xor_si128(b, r)),
            (Transform::Xor, true) => place_2_with(p0, p1, bitmap, dst, |r, b| _mm_xor_si128(b, turn(r))),
            (Transform::None, false) => place_2_with(p0, p1, bitmap, dst, |r, _| r),
            (Transform::None, true) => place_2_with(p0, p1, bitmap, dst, |r, _| turn(r)),
            // A magnitude chunk has no planes: never here.
            (Transform::Magnitude, _) => (0, 0),
        }
    }

    #[target_feature(enable = "sse2")]
    pub fn assemble_2(p0: &[u8], p1: &[u8], base: Option<&[u8]>, dst: &mut [u8], t: Transform, rotate: bool) -> usize {
        let sub = |r: __m128i, b: __m128i| _mm_add_epi16(b, _mm_xor_si128(_mm_srli_epi16::<1>(r), _mm_sub_epi16(_mm_setzero_si128(), _mm_and_si128(r, _mm_set1_epi16(1)))));
        let turn = |r: __m128i| _mm_or_si128(_mm_srli_epi16::<1>(r), _mm_slli_epi16::<15>(r));
        match (t, rotate, base) {
            (Transform::Sub, false, Some(b)) => assemble_2_with(p0, p1, b, dst, sub),
            (Transform::Sub, true, Some(b)) => assemble_2_with(p0, p1, b, dst, |r, b| sub(turn(r), b)),
            (Transform::Xor, false, Some(b)) => assemble_2_with(p0, p1, b, dst, |r, b| _mm_xor_si128(b, r)),
            (Transform::Xor, true, Some(b)) => assemble_2_with(p0, p1, b, dst, |r, b| _mm_xor_si128(b, turn(r))),
            // No base: the residuals are the values (the base operand is ignored).
            (Transform::None, false, _) => assemble_2_with(p0, p1, &[], dst, |r, _| r),
            (Transform::None, true, _) => assemble_2_with(p0, p1, &[], dst, |r, _| turn(r)),
            // A delta without its base, or a magnitude chunk (no planes): never here.
            _ => 0,
        }
    }

    /// The value of four 4-byte elements from their residuals `r` (zigzag) and base `b`, for
    /// `Transform::Sub`.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn sub_32(r: __m128i, b: __m128i) -> __m128i {
        _mm_add_epi32(b, _mm_xor_si128(_mm_srli_epi32::<1>(r), _mm_sub_epi32(_mm_setzero_si128(), _mm_and_si128(r, _mm_set1_epi32(1)))))
    }

    /// Undoes the rotation of four 4-byte residuals: their top 16 bits rotated right by one.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn turn_32(r: __m128i) -> __m128i {
        let low = _mm_set1_epi32(0xffff);
        let top = _mm_srli_epi32::<16>(r);
        let rot = _mm_and_si128(_mm_or_si128(_mm_srli_epi32::<1>(top), _mm_slli_epi32::<15>(top)), low);
        _mm_or_si128(_mm_and_si128(r, low), _mm_slli_epi32::<16>(rot))
    }

    #[target_feature(enable = "sse2")]
    pub fn assemble_4(planes: [&[u8]; 4], base: Option<&[u8]>, dst: &mut [u8], t: Transform, rotate: bool) -> usize {
        let (sub, turn) = (|r, b| sub_32(r, b), |r| turn_32(r));
        match (t, rotate, base) {
            (Transform::Sub, false, Some(b)) => assemble_4_with(planes, b, dst, sub),
            (Transform::Sub, true, Some(b)) => assemble_4_with(planes, b, dst, |r, b| sub(turn(r), b)),
            (Transform::Xor, false, Some(b)) => assemble_4_with(planes, b, dst, |r, b| _mm_xor_si128(b, r)),
            (Transform::Xor, true, Some(b)) => assemble_4_with(planes, b, dst, |r, b| _mm_xor_si128(b, turn(r))),
            (Transform::None, false, _) => assemble_4_with(planes, &[], dst, |r, _| r),
            (Transform::None, true, _) => assemble_4_with(planes, &[], dst, |r, _| turn(r)),
            _ => 0,
        }
    }

    /// Sixteen 4-byte elements at a time while the planes, the base (unless empty) and `dst`
    /// hold them; returns the elements done.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn assemble_4_with(planes: [&[u8]; 4], base: &[u8], dst: &mut [u8], f: impl Fn(__m128i, __m128i) -> __m128i) -> usize {
        let n = planes.iter().fold(dst.len() / 4, |n, p| n.min(p.len()));
        let n = if base.is_empty() { n } else { n.min(base.len() / 4) };
        let mut done = 0;
        for (i, o) in dst.chunks_exact_mut(64).enumerate().take(n / 16) {
            let at = 16 * i;
            let (Some(p0), Some(p1), Some(p2), Some(p3)) = (planes[0].get(at..at + 16), planes[1].get(at..at + 16), planes[2].get(at..at + 16), planes[3].get(at..at + 16)) else { break };
            let b = base.get(4 * at..4 * at + 64);
            // SAFETY: each plane run is 16 bytes, `b` (where present) and `o` 64.
            #[allow(unsafe_code)]
            unsafe {
                let load = |s: &[u8]| _mm_loadu_si128(s.as_ptr().cast());
                let (a0, a1, a2, a3) = (load(p0), load(p1), load(p2), load(p3));
                let (l01, h01) = (_mm_unpacklo_epi8(a0, a1), _mm_unpackhi_epi8(a0, a1));
                let (l23, h23) = (_mm_unpacklo_epi8(a2, a3), _mm_unpackhi_epi8(a2, a3));
                let r = [_mm_unpacklo_epi16(l01, l23), _mm_unpackhi_epi16(l01, l23), _mm_unpacklo_epi16(h01, h23), _mm_unpackhi_epi16(h01, h23)];
                for (q, r) in r.into_iter().enumerate() {
                    let bq = match b {
                        Some(b) => _mm_loadu_si128(b.as_ptr().add(16 * q).cast()),
                        None => _mm_setzero_si128(),
                    };
                    _mm_storeu_si128(o.as_mut_ptr().add(16 * q).cast(), f(r, bq));
                }
            }
            done += 16;
        }
        done
    }

    /// Sixteen elements at a time while the planes, the base (unless empty) and `dst` hold
    /// them; returns the elements done.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn assemble_2_with(p0: &[u8], p1: &[u8], base: &[u8], dst: &mut [u8], f: impl Fn(__m128i, __m128i) -> __m128i) -> usize {
        let n = (dst.len() / 2).min(p0.len()).min(p1.len());
        let n = if base.is_empty() { n } else { n.min(base.len() / 2) };
        let mut done = 0;
        for (i, o) in dst.chunks_exact_mut(32).enumerate().take(n / 16) {
            let at = 16 * i;
            let (Some(lo), Some(hi)) = (p0.get(at..at + 16), p1.get(at..at + 16)) else { break };
            let b = base.get(2 * at..2 * at + 32);
            // SAFETY: `lo` and `hi` are 16 bytes, `b` (where present) and `o` 32.
            #[allow(unsafe_code)]
            unsafe {
                let (lo, hi) = (_mm_loadu_si128(lo.as_ptr().cast()), _mm_loadu_si128(hi.as_ptr().cast()));
                let (b0, b1) = match b {
                    Some(b) => (_mm_loadu_si128(b.as_ptr().cast()), _mm_loadu_si128(b.as_ptr().add(16).cast())),
                    None => (_mm_setzero_si128(), _mm_setzero_si128()),
                };
                _mm_storeu_si128(o.as_mut_ptr().cast(), f(_mm_unpacklo_epi8(lo, hi), b0));
                _mm_storeu_si128(o.as_mut_ptr().add(16).cast(), f(_mm_unpackhi_epi8(lo, hi), b1));
            }
            done += 16;
        }
        done
    }

    #[target_feature(enable = "ssse3,popcnt")]
    pub fn place_4(planes: [&[u8]; 4], bitmap: &[u8], dst: &mut [u8], t: Transform, rotate: bool) -> (usize, usize) {
        let (sub, turn) = (|r, b| sub_32(r, b), |r| turn_32(r));
        match (t, rotate) {
            (Transform::Sub, false) => place_4_with(planes, bitmap, dst, sub),
            (Transform::Sub, true) => place_4_with(planes, bitmap, dst, |r, b| sub(turn(r), b)),
            (Transform::Xor, false) => place_4_with(planes, bitmap, dst, |r, b| _mm_xor_si128(b, r)),
            (Transform::Xor, true) => place_4_with(planes, bitmap, dst, |r, b| _mm_xor_si128(b, turn(r))),
            (Transform::None, false) => place_4_with(planes, bitmap, dst, |r, _| r),
            (Transform::None, true) => place_4_with(planes, bitmap, dst, |r, _| turn(r)),
            (Transform::Magnitude, _) => (0, 0),
        }
    }

    /// Eight elements (one bitmap byte) at a time: each plane's next bytes go to the mask's
    /// lanes by one shuffle, and the four planes interleave into eight words.
    #[inline]
    #[target_feature(enable = "ssse3,popcnt")]
    fn place_4_with(planes: [&[u8]; 4], bitmap: &[u8], dst: &mut [u8], f: impl Fn(__m128i, __m128i) -> __m128i) -> (usize, usize) {
        let (mut used, mut k) = (0usize, 0usize);
        for (&m, o) in bitmap.iter().zip(dst.chunks_exact_mut(32)) {
            if m != 0 {
                let (Some(a0), Some(a1), Some(a2), Some(a3)) = (load8(planes[0], used), load8(planes[1], used), load8(planes[2], used), load8(planes[3], used)) else { break };
                let c = control(m as usize);
                let (l01, l23) = (_mm_unpacklo_epi8(_mm_shuffle_epi8(a0, c), _mm_shuffle_epi8(a1, c)), _mm_unpacklo_epi8(_mm_shuffle_epi8(a2, c), _mm_shuffle_epi8(a3, c)));
                // SAFETY: `o` is 32 bytes (chunks_exact_mut).
                #[allow(unsafe_code)]
                unsafe {
                    let (b0, b1) = (_mm_loadu_si128(o.as_ptr().cast()), _mm_loadu_si128(o.as_ptr().add(16).cast()));
                    _mm_storeu_si128(o.as_mut_ptr().cast(), f(_mm_unpacklo_epi16(l01, l23), b0));
                    _mm_storeu_si128(o.as_mut_ptr().add(16).cast(), f(_mm_unpackhi_epi16(l01, l23), b1));
                }
                used += m.count_ones() as usize;
            }
            k += 1;
        }
        (k, used)
    }

    #[inline]
    #[target_feature(enable = "ssse3,popcnt")]
    fn place_2_with(p0: &[u8], p1: &[u8], bitmap: &[u8], dst: &mut [u8], f: impl Fn(__m128i, __m128i) -> __m128i) -> (usize, usize) {
        let (mut used, mut k) = (0usize, 0usize);
        for (&m, o) in bitmap.iter().zip(dst.chunks_exact_mut(16)) {
            if m != 0 {
                let (Some(lo), Some(hi)) = (load8(p0, used), load8(p1, used)) else { break };
                let c = control(m as usize);
                let r = _mm_unpacklo_epi8(_mm_shuffle_epi8(lo, c), _mm_shuffle_epi8(hi, c));
                // SAFETY: `o` is 16 bytes (chunks_exact_mut).
                #[allow(unsafe_code)]
                unsafe {
                    let b = _mm_loadu_si128(o.as_ptr().cast());
                    _mm_storeu_si128(o.as_mut_ptr().cast(), f(r, b));
                }
                used += m.count_ones() as usize;
            }
            k += 1;
        }
        (k, used)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::{assemble, value_word, Transform};

    /// The little-endian word of `bytes`.
    fn word(bytes: impl Iterator<Item = u8>) -> u64 {
        bytes.enumerate().fold(0u64, |w, (p, x)| w | (x as u64) << (8 * p))
    }

    /// The definition: element i of the mask takes the next residual, its value from
    /// `value_word`; the others keep what `dst` holds.
    fn place_reference<const W: usize>(planes: &[Vec<u8>], bitmap: &[u8], dst: &mut [u8], t: Transform, rotate: bool) {
        let mut j = 0;
        for i in 0..dst.len() / W {
            if bitmap.get(i / 8).is_some_and(|b| b >> (i % 8) & 1 == 1) {
                let r = word(planes.iter().map(|p| p[j]));
                let b = word(dst[W * i..W * i + W].iter().copied());
                dst[W * i..W * i + W].copy_from_slice(&value_word(r, b, t, rotate, W).to_le_bytes()[..W]);
                j += 1;
            }
        }
    }

    /// A masked chunk of `n` random `W`-byte elements (runs of full, empty and mixed mask
    /// bytes, at every density) assembled over its base, and its definition.
    fn masked<const W: usize>(n: usize, density: u32, seed: u64, t: Transform, rotate: bool) -> (Vec<u8>, Vec<u8>) {
        let mut r = crate::testrand::XorShift::new(seed | 1);
        let bitmap: Vec<u8> = (0..n.div_ceil(8))
            .map(|k| {
                let x = r.next_u64();
                let b = match x % 4 {
                    0 => 0xff,
                    1 => 0,
                    _ => (0..8).fold(0u8, |m, l| m | (u8::from((x >> (8 + 4 * l)) % 8 < density as u64) << l)),
                };
                // No element past n.
                if 8 * k + 8 > n { b & ((1u16 << (n - 8 * k)) - 1) as u8 } else { b }
            })
            .collect();
        let count = bitmap.iter().map(|b| b.count_ones() as usize).sum::<usize>();
        let planes: Vec<Vec<u8>> = (0..W).map(|p| (0..count).map(|_| (r.next_u64() >> (8 * p)) as u8).collect()).collect();
        let base: Vec<u8> = (0..W * n).map(|_| (r.next_u64() >> 16) as u8).collect();
        let mut want = if t == Transform::None { vec![0u8; W * n] } else { base.clone() };
        place_reference::<W>(&planes, &bitmap, &mut want, t, rotate);
        let mut got = if t == Transform::None { vec![0u8; W * n] } else { base.clone() };
        let b = (t != Transform::None).then_some(base.as_slice());
        assemble::<W>(&planes, Some(&bitmap), b, &mut got, t, rotate);
        (got, want)
    }

    /// An unmasked chunk of `n` random `W`-byte elements assembled, and its definition (each
    /// element from `value_word`), into a buffer of other bytes: every element is written.
    fn unmasked<const W: usize>(n: usize, seed: u64, t: Transform, rotate: bool) -> (Vec<u8>, Vec<u8>) {
        let mut r = crate::testrand::XorShift::new(seed | 1);
        let planes: Vec<Vec<u8>> = (0..W).map(|_| (0..n).map(|_| (r.next_u64() >> 24) as u8).collect()).collect();
        let base: Vec<u8> = (0..W * n).map(|_| (r.next_u64() >> 16) as u8).collect();
        let b = (t != Transform::None).then_some(base.as_slice());
        let want: Vec<u8> = (0..n)
            .flat_map(|i| {
                let r = word(planes.iter().map(|p| p[i]));
                let b = b.map_or(0, |b| word(b[W * i..W * i + W].iter().copied()));
                value_word(r, b, t, rotate, W).to_le_bytes()[..W].to_vec()
            })
            .collect();
        let mut got = vec![0x5a; W * n];
        assemble::<W>(&planes, None, b, &mut got, t, rotate);
        (got, want)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

        #[test]
        fn masked_chunks_assemble_as_defined(
            n in 0usize..700,
            density in 0u32..=8,
            seed in any::<u64>(),
            t in prop::sample::select(vec![Transform::None, Transform::Xor, Transform::Sub]),
            rotate in any::<bool>(),
            four in any::<bool>(),
        ) {
            let (got, want) = if four { masked::<4>(n, density, seed, t, rotate) } else { masked::<2>(n, density, seed, t, rotate) };
            prop_assert_eq!(got, want);
        }

        #[test]
        fn unmasked_chunks_assemble_as_defined(
            n in 0usize..700,
            seed in any::<u64>(),
            t in prop::sample::select(vec![Transform::None, Transform::Xor, Transform::Sub]),
            rotate in any::<bool>(),
            four in any::<bool>(),
        ) {
            let (got, want) = if four { unmasked::<4>(n, seed, t, rotate) } else { unmasked::<2>(n, seed, t, rotate) };
            prop_assert_eq!(got, want);
        }

        #[test]
        fn planes_split_as_defined(lead in proptest::collection::vec(any::<bool>(), 0..500), seed in any::<u64>(), extra in 0usize..3) {
            let mut r = crate::testrand::XorShift::new(seed | 1);
            // A plane a little longer than its context: only the elements with a flag count.
            let plane: Vec<u8> = (0..lead.len() + extra).map(|_| r.next_u64() as u8).collect();
            let a: Vec<u8> = plane.iter().zip(&lead).filter(|(_, &l)| l).map(|(&x, _)| x).collect();
            let b: Vec<u8> = plane.iter().zip(&lead).filter(|(_, &l)| !l).map(|(&x, _)| x).collect();
            let (got_a, got_b) = super::super::stream::split(&plane, &lead);
            prop_assert_eq!(&got_a, &a);
            prop_assert_eq!(&got_b, &b);
            prop_assert_eq!(super::super::stream::merge_split(&got_a, &got_b, &lead), Ok(plane[..lead.len()].to_vec()));
        }

        #[test]
        fn split_planes_merge_as_defined(lead in proptest::collection::vec(any::<bool>(), 0..500), seed in any::<u64>()) {
            let mut r = crate::testrand::XorShift::new(seed | 1);
            let count = lead.iter().filter(|&&l| l).count();
            let a: Vec<u8> = (0..count).map(|_| r.next_u64() as u8).collect();
            let b: Vec<u8> = (0..lead.len() - count).map(|_| r.next_u64() as u8).collect();
            let (mut ia, mut ib) = (a.iter(), b.iter());
            let want: Vec<u8> = lead.iter().map(|&l| *if l { ia.next() } else { ib.next() }.unwrap_or(&0)).collect();
            prop_assert_eq!(super::super::stream::merge_split(&a, &b, &lead), Ok(want));
        }
    }
}
