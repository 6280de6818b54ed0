//! Class planes: format 3 of the magnitude stream (see [`super::magnitude`]), the coder of
//! sparse deltas of 2-byte floats at the default `compression = "balanced"` level, and of float
//! deltas at `"max"` (for floats wider than two bytes, beside the symbols of format 1, which are
//! smaller there).
//!
//! The magnitude coder's model, coded as byte planes. An element's delta is predictable from
//! what the decoder already knows: its base's exponent against its row's typical
//! `bit length + exponent` (the same update is more units in the last place for a small
//! weight), and its row's main direction. Here that context picks one of [`CLASSES`] classes
//! per element, and each class is coded as byte planes of its own, each plane one order-0
//! stream ([`super::stream`]):
//! - the class's changed flags, one bit per element of the moved rows, LSB first;
//! - the changed elements' deltas, as byte planes (low byte first) of the zigzag of
//!   `value - base` (wrapping, in the element's width) turned so that a move in the row's main
//!   direction is positive.
//!
//! So the rANS tables are few and fit the L1 cache, and no per-element step depends on the
//! one before: the decoder spends a few instructions per element on the classes and flags
//! (SSE2 or AVX2, and BMI2, where the processor has them) and merges the changed ones from
//! their classes' codes in one pass per group of 64 (see [`merge_2`]). On the benchmark's bf16
//! series (middle layer, one core, 2026-11-28) that decodes at about 0.9x the speed of plain
//! byte planes where a sixth of the elements changed (the later snapshots of a run), and 0.75x
//! where half did.
//!
//! Stream: format (u8, 3), segment length (u32 LE), length of the first segment (u32 LE), length
//! of the side information (u32 LE), the side information as one zstd frame (per segment: its
//! typical `L + exponent` as u16 LE, 0 for an unchanged segment, then its main direction as a
//! byte, 0 or 1), then per class: its element count (u32 LE), its flags stream, then one
//! stream per byte plane of its changed elements, low byte first; each stream is a coder id
//! (u8), a length (u32 LE) and the bytes.

use rayon::prelude::*;

use super::load;
use super::magnitude::{read_head, segments, u32_at, Head, Shape, HEAD, MC_OFF};
use super::stream::{self, Coder};

pub const FORMAT: u8 = 3;
/// Classes: an element's class is the number of these magnitude contexts at or below its own
/// (context: expected bit length of its delta plus [`MC_OFF`]). In the benchmark's bf16 series
/// the share of changed elements climbs from 1% at context 0 to 92% at context 8, and the
/// deltas grow with the context; with eight classes the ideal cost of the changed flags is
/// within 1% of one class per context (0.613 MB against 0.608 MB; one zstd mask: 0.70 MB).
const CLASS_AT: [usize; CLASSES - 1] = [2, 3, 4, 5, 6, 7, 9];
const CLASSES: usize = 8;
const META_LEVEL: i32 = 6;

/// One segment: its typical `L + exponent` (0: nothing moved) and main direction (1: up).
#[derive(Clone, Copy, Default)]
struct Segment {
    typical: u16,
    main: u8,
}

/// Codes `value` against `base` (little-endian `W`-byte elements of the float kind `shape`
/// describes, equal lengths) with segments of `seg` elements after a first one of `first`.
pub(super) fn encode_w<const W: usize>(value: &[u8], base: &[u8], shape: Shape, segs: (usize, usize)) -> Option<Vec<u8>> {
    encode_with::<W>(value, base, shape, segs, has_bmi2())
}

/// [`encode_w`], with the SSE2 and BMI2 instructions only if `bmi2`.
fn encode_with<const W: usize>(value: &[u8], base: &[u8], shape: Shape, (seg, first): (usize, usize), bmi2: bool) -> Option<Vec<u8>> {
    let n = value.len() / W;
    if n == 0 || value.len() != base.len() {
        return None;
    }
    let (seg, first) = (seg.max(1), first.clamp(1, n));
    let sign = 8 * W as u32 - 1;
    let wmask = if W == 8 { u64::MAX } else { (1u64 << (8 * W)) - 1 };
    // Per segment: its statistics, then (while it is in the cache) per class the flags and the
    // changed elements' turned zigzag deltas as planes, a group of 64 elements at a time, as
    // the decoder reads them.
    let mut segs = Vec::with_capacity(n.div_ceil(seg) + 1);
    let field = shape.emask << shape.shift;
    let avx2 = bmi2 && isa() == Isa::Avx2;
    let mut flags: [Bits; CLASSES] = Default::default();
    let mut planes: Vec<Vec<Vec<u8>>> = vec![vec![Vec::new(); W]; CLASSES];
    // Two-byte elements: each class's codes are gathered whole and cut into planes at the end.
    let mut codes: [Codes; CLASSES] = Default::default();
    for (vc, bc) in segments(value, first, seg, W).zip(segments(base, first, seg, W)) {
        let (moved, sum, up) = if W == 2 { stats_2_of(avx2, vc, bc, shape) } else { stats::<W>(vc, bc, shape, sign) };
        let s = match (sum + moved / 2).checked_div(moved) {
            None => Segment::default(),
            Some(t) => Segment { typical: t.clamp(1, u16::MAX as u64) as u16, main: u8::from(up * 2 > moved) },
        };
        segs.push(s);
        if s.typical == 0 {
            continue;
        }
        let lims = limits(s.typical as i64 + MC_OFF, shape.shift);
        for (vg, bg) in vc.chunks(64 * W).zip(bc.chunks(64 * W)) {
            let len = bg.len() / W;
            let valid = if len == 64 { u64::MAX } else { (1u64 << len) - 1 };
            let (members, bits, changed) = split_of::<W>(bmi2, vg, bg, field, valid, &lims);
            if W == 2 {
                let z = turn_group_2(vg, bg, s.main);
                for c in 0..CLASSES {
                    flags[c].put(bits[c], members[c].count_ones());
                    codes[c].push(&z, members[c] & changed);
                }
                continue;
            }
            for c in 0..CLASSES {
                flags[c].put(bits[c], members[c].count_ones());
                let mut m = members[c] & changed;
                let planes = &mut planes[c];
                while m != 0 {
                    let i = m.trailing_zeros() as usize * W;
                    m &= m - 1;
                    let (v, b) = (load::<W>(&vg[i..]), load::<W>(&bg[i..]));
                    let z = turn::<W>(v.wrapping_sub(b) & wmask, b, s.main);
                    for (p, plane) in planes.iter_mut().enumerate() {
                        plane.push((z >> (8 * p)) as u8);
                    }
                }
            }
        }
    }
    if W == 2 {
        for (c, p) in codes.iter().zip(planes.iter_mut()) {
            let z = &c.codes[..c.fill];
            p[0] = z.iter().map(|&z| z as u8).collect();
            p[1] = z.iter().map(|&z| (z >> 8) as u8).collect();
        }
    }
    let mut side = Vec::with_capacity(3 * segs.len());
    for s in &segs {
        side.extend_from_slice(&s.typical.to_le_bytes());
        side.push(s.main);
    }
    let side = zstd::bulk::compress(&side, META_LEVEL).ok()?;
    // Every stream of every class, coded in parallel.
    let counts: Vec<usize> = flags.iter().map(|f| f.count).collect();
    let packed: Vec<Vec<u8>> = flags.into_iter().map(Bits::finish).collect();
    let sources: Vec<&[u8]> = (0..CLASSES).flat_map(|c| std::iter::once(packed[c].as_slice()).chain(planes[c].iter().map(Vec::as_slice))).collect();
    let coded: Vec<(Coder, Vec<u8>)> = sources.par_iter().map(|s| stream::encode(s)).collect();
    let mut out = Vec::with_capacity(HEAD + side.len() + coded.iter().map(|c| c.1.len() + 9).sum::<usize>());
    out.push(FORMAT);
    out.extend_from_slice(&u32::try_from(seg).ok()?.to_le_bytes());
    out.extend_from_slice(&u32::try_from(first).ok()?.to_le_bytes());
    out.extend_from_slice(&u32::try_from(side.len()).ok()?.to_le_bytes());
    out.extend_from_slice(&side);
    for (c, group) in coded.chunks(W + 1).enumerate() {
        out.extend_from_slice(&u32::try_from(counts[c]).ok()?.to_le_bytes());
        for (coder, bytes) in group {
            out.push(*coder as u8);
            out.extend_from_slice(&u32::try_from(bytes.len()).ok()?.to_le_bytes());
            out.extend_from_slice(bytes);
        }
    }
    Some(out)
}

/// A segment's moved elements, the sum of their `bit length + exponent`, and how many moved
/// their value up.
fn stats<const W: usize>(vc: &[u8], bc: &[u8], shape: Shape, sign: u32) -> (u64, u64, u64) {
    let (mut moved, mut sum, mut up) = (0u64, 0u64, 0u64);
    for (v, b) in vc.chunks_exact(W).zip(bc.chunks_exact(W)) {
        let (v, b) = (load::<W>(v), load::<W>(b));
        let d = v as i64 - b as i64;
        let len = 64 - d.unsigned_abs().leading_zeros();
        let m = (len > 0) as u64;
        moved += m;
        sum += m * (len as u64 + ((b >> shape.shift) & shape.emask));
        up += m & (((d < 0) as u64 ^ (b >> sign)) & 1 ^ 1);
    }
    (moved, sum, up)
}

/// [`stats_2`], compiled for AVX2 (eight elements to a register instead of four) where `avx2`
/// says the processor has it.
#[inline(always)]
fn stats_2_of(avx2: bool, vc: &[u8], bc: &[u8], shape: Shape) -> (u64, u64, u64) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: the function only enables AVX2, which the caller detected at run time.
        #[allow(unsafe_code)]
        return unsafe { x86::stats_2_avx2(vc, bc, shape) };
    }
    let _ = avx2;
    stats_2(vc, bc, shape)
}

/// [`stats`] of two-byte elements, in 32-bit lanes that vectorise: the bit length of a delta
/// (below 2^17) is read from the exponent of its conversion to f32, which is exact.
#[inline(always)]
fn stats_2(vc: &[u8], bc: &[u8], shape: Shape) -> (u64, u64, u64) {
    let (shift, emask) = (shape.shift, shape.emask as u32);
    // Only SSE2 instructions where x86-64 has them: a signed conversion, no 32-bit max or
    // multiply (an unchanged element's terms are masked off, whatever its `len`).
    let one = |v: u16, b: u16| -> (u32, u32, u32) {
        let (v, b) = (v as i32, b as i32);
        let d = v - b;
        let len = ((d.wrapping_abs() as f32).to_bits() >> 23).wrapping_sub(126);
        let m = (d != 0) as u32;
        (m, len.wrapping_add((b as u32 >> shift) & emask) & 0u32.wrapping_sub(m), m & (((d < 0) as u32 ^ (b as u32 >> 15)) & 1 ^ 1))
    };
    let (mut moved, mut sum, mut up) = (0u64, 0u64, 0u64);
    // Blocks of 4096 keep the 32-bit sums from overflowing (4096 * (17 + 255) < 2^32).
    for (vb, bb) in vc.chunks(8192).zip(bc.chunks(8192)) {
        let add = |(a, b, c): (u32, u32, u32), (x, y, z): (u32, u32, u32)| (a + x, b + y, c + z);
        let (m, s, u) = match (super::le_slice::<u16>(vb), super::le_slice::<u16>(bb)) {
            (Some(v), Some(b)) if cfg!(target_endian = "little") => v.iter().zip(b).map(|(&v, &b)| one(v, b)).fold((0, 0, 0), add),
            _ => vb.chunks_exact(2).zip(bb.chunks_exact(2)).map(|(v, b)| one(u16::from_le_bytes([v[0], v[1]]), u16::from_le_bytes([b[0], b[1]]))).fold((0, 0, 0), add),
        };
        (moved, sum, up) = (moved + m as u64, sum + s as u64, up + u as u64);
    }
    (moved, sum, up)
}

/// The zigzag of the wrapping delta `d` (in `W` bytes), negated first unless the element moved
/// its value in its segment's `main` direction, so that those are the even codes.
#[inline(always)]
fn turn<const W: usize>(d: u64, b: u64, main: u8) -> u64 {
    let bits = 8 * W as u32;
    let flip = ((b >> (bits - 1)) as u8 ^ main ^ 1) & 1;
    let d = if flip == 1 { d.wrapping_neg() } else { d };
    // Sign-extend from `bits`, then zigzag within `bits`.
    let s = ((d << (64 - bits)) as i64) >> (64 - bits);
    let z = ((s << 1) ^ (s >> 63)) as u64;
    if bits == 64 {
        z
    } else {
        z & ((1u64 << bits) - 1)
    }
}

/// [`turn`] of every element of a group of two-byte elements (zero past its end).
#[inline(always)]
fn turn_group_2(vg: &[u8], bg: &[u8], main: u8) -> [u16; 64] {
    #[cfg(target_arch = "x86_64")]
    if let (Ok(vg), Ok(bg)) = (<&[u8; 128]>::try_from(vg), <&[u8; 128]>::try_from(bg)) {
        // SAFETY: SSE2 is part of x86-64.
        #[allow(unsafe_code)]
        return unsafe { x86::turn_2(vg, bg, main) };
    }
    let mut z = [0u16; 64];
    for ((z, v), b) in z.iter_mut().zip(vg.chunks_exact(2)).zip(bg.chunks_exact(2)) {
        let (v, b) = (u16::from_le_bytes([v[0], v[1]]), u16::from_le_bytes([b[0], b[1]]));
        *z = turn::<2>(v.wrapping_sub(b) as u64, b as u64, main) as u16;
    }
    z
}

/// A class's codes of two-byte elements as gathered: `codes[..fill]` (the rest is room).
#[derive(Default)]
struct Codes {
    codes: Vec<u16>,
    fill: usize,
}

impl Codes {
    /// Appends the codes `z` of the elements set in `m`, lowest first.
    #[inline(always)]
    fn push(&mut self, z: &[u16; 64], mut m: u64) {
        if m == 0 {
            return;
        }
        if self.codes.len() < self.fill + 64 {
            self.codes.resize((2 * self.codes.len()).max(self.fill + 64), 0);
        }
        // No capacity check per element: a group adds at most 64.
        let out = &mut self.codes[self.fill..self.fill + 64];
        let mut k = 0;
        while m != 0 {
            out[k & 63] = z[m.trailing_zeros() as usize];
            k += 1;
            m &= m - 1;
        }
        self.fill += k;
    }
}

/// A class's flags as written: LSB first, 64 at a time.
#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    acc: u64,
    fill: u32,
    count: usize,
}

impl Bits {
    /// Appends the low `n` (at most 64) bits of `bits` (the rest are zero).
    #[inline(always)]
    fn put(&mut self, bits: u64, n: u32) {
        self.count += n as usize;
        self.acc |= bits.checked_shl(self.fill).unwrap_or(0);
        if self.fill + n >= 64 {
            self.out.extend_from_slice(&self.acc.to_le_bytes());
            self.acc = if self.fill == 0 { 0 } else { bits >> (64 - self.fill) };
            self.fill = self.fill + n - 64;
        } else {
            self.fill += n;
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.out.extend_from_slice(&self.acc.to_le_bytes()[..self.fill.div_ceil(8) as usize]);
        self.out
    }
}

/// Inverse of [`turn`]: the wrapping delta (in `W` bytes) of zigzag code `z`.
#[inline(always)]
fn unturn<const W: usize>(z: u64, b: u64, main: u64) -> u64 {
    let bits = 8 * W as u32;
    let flip = ((b >> (bits - 1)) ^ main ^ 1) & 1;
    let d = (z >> 1) ^ 0u64.wrapping_sub(z & 1);
    // Negating is the same as `(flip ? -d : d)`, branch-free: (d ^ -flip) + flip.
    (d ^ 0u64.wrapping_sub(flip)).wrapping_add(flip)
}

/// A class's flags as read (padded so that any 16-byte read before the end succeeds), how many
/// it holds and how many have been read.
struct Flags {
    bytes: Vec<u8>,
    count: usize,
    at: usize,
}

impl Flags {
    /// The next `n` (at most 64) flags, LSB first.
    #[inline(always)]
    fn take(&mut self, n: u32) -> u64 {
        let (i, shift) = (self.at / 8, self.at % 8);
        // Eight bytes hold the next 57 flags or more; sixteen the rest.
        let w = if n <= 56 {
            self.bytes.get(i..i + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) >> shift)
        } else {
            self.bytes.get(i..i + 16).map_or(0, |b| (u128::from_le_bytes(b.try_into().unwrap_or([0; 16])) >> shift) as u64)
        };
        self.at += n as usize;
        w & if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
    }
}

/// The bits of `src`, lowest first, placed at the set bits of `mask`, lowest first (what the
/// BMI2 `pdep` instruction does).
#[inline(always)]
fn deposit(mut src: u64, mut mask: u64) -> u64 {
    let mut r = 0u64;
    while mask != 0 {
        let low = mask & mask.wrapping_neg();
        r |= low & (src & 1).wrapping_neg();
        src >>= 1;
        mask ^= low;
    }
    r
}

/// Of up to 64 elements (`group`, little-endian, `W` bytes each), those whose exponent field
/// (`field`: its mask in place) is at most `lim`, as a bit mask.
#[inline(always)]
fn at_most<const W: usize>(group: &[u8], field: u64, lim: u64) -> u64 {
    group.chunks_exact(W).enumerate().fold(0u64, |m, (i, b)| m | (((load::<W>(b) & field) <= lim) as u64) << i)
}

/// Per class boundary `CLASS_AT[c]`, the largest exponent at or past it, in place (shifted left
/// by `shift`, the bits below set), for a segment of typical plus [`MC_OFF`] `tp`: an element's
/// context is at least `CLASS_AT[c]` when its exponent is at most `tp - CLASS_AT[c]`, so class c
/// holds the elements under limit c - 1 and not under limit c. `None`: no exponent is that small.
#[inline(always)]
fn limits(tp: i64, shift: u32) -> [Option<u64>; CLASSES - 1] {
    std::array::from_fn(|c| {
        let lim = tp - CLASS_AT[c] as i64;
        (lim >= 0).then(|| ((lim.min(u32::MAX as i64) as u64) << shift) | ((1u64 << shift) - 1))
    })
}

/// The changed elements of each class in a group of up to 64 elements of a moved segment
/// (`valid`: which of the 64 exist; `at_most`: see [`at_most_all`]), read from the classes'
/// flags.
#[inline(always)]
fn group_classes(valid: u64, at_most: &[u64; CLASSES - 1], flags: &mut [Flags; CLASSES], deposit: impl Fn(u64, u64) -> u64) -> [u64; CLASSES] {
    let mut changed = [0u64; CLASSES];
    let mut above = valid;
    for (c, ch) in changed.iter_mut().enumerate() {
        let next = at_most.get(c).map_or(0, |m| m & valid);
        let m = above & !next;
        *ch = deposit(flags[c].take(m.count_ones()), m);
        above = next;
    }
    changed
}

/// The writer's view of a group of up to 64 elements (`at_most`: see [`at_most_all`];
/// `changed`: which changed): each class's members, each class's flags (its members' changed
/// bits gathered to the low end, what the BMI2 `pext` instruction does), and `changed`.
#[inline(always)]
fn split(valid: u64, at_most: &[u64; CLASSES - 1], extract: impl Fn(u64, u64) -> u64, changed: u64) -> ([u64; CLASSES], [u64; CLASSES], u64) {
    let (mut members, mut bits) = ([0u64; CLASSES], [0u64; CLASSES]);
    let mut above = valid;
    for c in 0..CLASSES {
        let next = at_most.get(c).map_or(0, |m| m & valid);
        members[c] = above & !next;
        bits[c] = extract(changed, members[c]);
        above = next;
    }
    (members, bits, changed)
}

/// Per class limit (see [`limits`]), the elements of a group (`W` bytes each) whose exponent
/// field is at most the limit.
#[inline(always)]
fn at_most_all<const W: usize>(group: &[u8], field: u64, lims: &[Option<u64>; CLASSES - 1]) -> [u64; CLASSES - 1] {
    lims.map(|l| l.map_or(0, |l| at_most::<W>(group, field, l)))
}

/// The bits of `src` at the set bits of `mask`, gathered to the low end, lowest first.
#[inline(always)]
fn extract(src: u64, mut mask: u64) -> u64 {
    let (mut r, mut k) = (0u64, 0u32);
    while mask != 0 {
        let low = mask & mask.wrapping_neg();
        r |= ((src & low != 0) as u64) << k;
        k += 1;
        mask ^= low;
    }
    r
}

/// Which of up to 64 elements changed.
#[inline(always)]
fn changed_of<const W: usize>(vg: &[u8], bg: &[u8]) -> u64 {
    vg.chunks_exact(W).zip(bg.chunks_exact(W)).enumerate().fold(0u64, |m, (i, (v, b))| m | ((load::<W>(v) != load::<W>(b)) as u64) << i)
}

/// [`split`] with SSE2 and BMI2 where `bmi2` says the processor has them.
#[inline(always)]
fn split_of<const W: usize>(bmi2: bool, vg: &[u8], bg: &[u8], field: u64, valid: u64, lims: &[Option<u64>; CLASSES - 1]) -> ([u64; CLASSES], [u64; CLASSES], u64) {
    #[cfg(target_arch = "x86_64")]
    if bmi2 {
        // SAFETY: as in `classes_of`.
        #[allow(unsafe_code)]
        return unsafe {
            if W == 2 && bg.len() == 128 && vg.len() == 128 {
                x86::split_2(vg, bg, field as u16, valid, lims)
            } else {
                x86::split_w::<W>(vg, bg, field, valid, lims)
            }
        };
    }
    let _ = bmi2;
    split(valid, &at_most_all::<W>(bg, field, lims), extract, changed_of::<W>(vg, bg) & valid)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    fn word(g: &[u8], i: usize) -> i64 {
        g.get(i..i + 8).map_or(0, |b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])) as i64
    }

    /// Eight vectors of eight two-byte elements of a group of 64.
    #[target_feature(enable = "sse2")]
    fn vectors(g: &[u8]) -> [__m128i; 8] {
        let mut x = [_mm_setzero_si128(); 8];
        for (k, v) in x.iter_mut().enumerate() {
            *v = _mm_set_epi64x(word(g, 16 * k + 8), word(g, 16 * k));
        }
        x
    }

    /// Per class limit, the elements of a group of 64 two-byte elements whose exponent field
    /// is at most the limit (eight elements per compare, sixteen per movemask), and, where
    /// `cls` is given, each element's class: the number of limits it is at or under.
    #[target_feature(enable = "sse2")]
    fn at_most_2(g: &[u8], field: u16, lims: &[Option<u64>; super::CLASSES - 1], cls: Option<&mut [u8; 64]>) -> [u64; super::CLASSES - 1] {
        let f = _mm_set1_epi16(field as i16);
        // The exponent fields; they are below 2^15, so signed compares work.
        let mut x = vectors(g);
        for v in x.iter_mut() {
            *v = _mm_and_si128(*v, f);
        }
        // Minus the number of limits each element is at or under.
        let mut acc = [_mm_setzero_si128(); 8];
        let mut out = [0u64; super::CLASSES - 1];
        for (m, lim) in out.iter_mut().zip(lims) {
            *m = match *lim {
                None => 0,
                // A limit past the field holds every element.
                Some(l) if l >= field as u64 => {
                    for a in acc.iter_mut() {
                        *a = _mm_sub_epi16(*a, _mm_set1_epi16(1));
                    }
                    u64::MAX
                }
                // e <= l, as l + 1 > e.
                Some(l) => {
                    let l = _mm_set1_epi16(l as i16 + 1);
                    let mut m = 0u64;
                    for k in 0..4 {
                        let (lo, hi) = (_mm_cmpgt_epi16(l, x[2 * k]), _mm_cmpgt_epi16(l, x[2 * k + 1]));
                        acc[2 * k] = _mm_add_epi16(acc[2 * k], lo);
                        acc[2 * k + 1] = _mm_add_epi16(acc[2 * k + 1], hi);
                        m |= (_mm_movemask_epi8(_mm_packs_epi16(lo, hi)) as u32 as u64) << (16 * k);
                    }
                    m
                }
            };
        }
        if let Some(cls) = cls {
            for k in 0..4 {
                let c = _mm_sub_epi8(_mm_setzero_si128(), _mm_packs_epi16(acc[2 * k], acc[2 * k + 1]));
                // SAFETY: k < 4: 16 bytes at 16 k of the 64.
                #[allow(unsafe_code)]
                unsafe {
                    _mm_storeu_si128(cls.as_mut_ptr().add(16 * k).cast(), c)
                };
            }
        }
        out
    }

    /// The classes of a group of up to 64 two-byte elements with SSE2 and the BMI2 deposit,
    /// and each element's class.
    #[target_feature(enable = "sse2,bmi2,popcnt")]
    pub fn group_classes_2(group: &[u8], field: u16, valid: u64, lims: &[Option<u64>; super::CLASSES - 1], flags: &mut [super::Flags; super::CLASSES], cls: &mut [u8; 64]) -> [u64; super::CLASSES] {
        super::group_classes(valid, &at_most_2(group, field, lims, Some(cls)), flags, |s, m| _pdep_u64(s, m))
    }

    /// [`super::split`] of a group of 64 two-byte elements with SSE2 and the BMI2 extract.
    #[target_feature(enable = "sse2,bmi2,popcnt")]
    pub fn split_2(vg: &[u8], bg: &[u8], field: u16, valid: u64, lims: &[Option<u64>; super::CLASSES - 1]) -> ([u64; super::CLASSES], [u64; super::CLASSES], u64) {
        let at_most = at_most_2(bg, field, lims, None);
        let (v, b) = (vectors(vg), vectors(bg));
        let mut same = 0u64;
        for k in 0..4 {
            let e = _mm_packs_epi16(_mm_cmpeq_epi16(v[2 * k], b[2 * k]), _mm_cmpeq_epi16(v[2 * k + 1], b[2 * k + 1]));
            same |= (_mm_movemask_epi8(e) as u32 as u64) << (16 * k);
        }
        let changed = !same & valid;
        super::split(valid, &at_most, |s, m| _pext_u64(s, m), changed)
    }

    /// [`super::split`] of a group of any width with the BMI2 extract.
    #[target_feature(enable = "bmi2,popcnt")]
    pub fn split_w<const W: usize>(vg: &[u8], bg: &[u8], field: u64, valid: u64, lims: &[Option<u64>; super::CLASSES - 1]) -> ([u64; super::CLASSES], [u64; super::CLASSES], u64) {
        super::split(valid, &super::at_most_all::<W>(bg, field, lims), |s, m| _pext_u64(s, m), super::changed_of::<W>(vg, bg) & valid)
    }

    /// [`super::decode_with`] compiled for BMI2 and POPCNT throughout (bit counts and scans
    /// in the merge included).
    #[target_feature(enable = "sse2,bmi2,popcnt")]
    pub fn decode_bmi2<const W: usize, const SHIFT: u32, const EMASK: u64>(data: &[u8], base: &[u8], n: usize, out: &mut Vec<u8>) -> Result<(), String> {
        super::decode_with::<W, SHIFT, EMASK>(data, base, n, out, super::Isa::Bmi2)
    }

    /// The values of a group of 64 two-byte elements from their turned codes `z` (zero for
    /// an unchanged element) and their bases: [`super::unturn_2`], eight at a time.
    #[target_feature(enable = "sse2")]
    pub fn dense_2(z: &[u16; 64], bg: &[u8; 128], og: &mut [u8; 128], main: u16) {
        let one = _mm_set1_epi16(1);
        let main = _mm_set1_epi16(main as i16 ^ 1);
        for k in 0..8 {
            // SAFETY: k < 8: 16 bytes at 16 k of the 128-byte groups and of `z`.
            #[allow(unsafe_code)]
            let (zc, b) = unsafe { (_mm_loadu_si128(z.as_ptr().add(8 * k).cast()), _mm_loadu_si128(bg.as_ptr().add(16 * k).cast())) };
            let flip = _mm_and_si128(_mm_xor_si128(_mm_srli_epi16::<15>(b), main), one);
            let d = _mm_xor_si128(_mm_srli_epi16::<1>(zc), _mm_sub_epi16(_mm_setzero_si128(), _mm_and_si128(zc, one)));
            let delta = _mm_add_epi16(_mm_xor_si128(d, _mm_sub_epi16(_mm_setzero_si128(), flip)), flip);
            // SAFETY: as above.
            #[allow(unsafe_code)]
            unsafe {
                _mm_storeu_si128(og.as_mut_ptr().add(16 * k).cast(), _mm_add_epi16(b, delta))
            };
        }
    }

    /// The turned codes of a group of 64 two-byte elements: [`super::turn`], eight at a time
    /// (the inverse of [`dense_2`]).
    #[target_feature(enable = "sse2")]
    pub fn turn_2(vg: &[u8; 128], bg: &[u8; 128], main: u8) -> [u16; 64] {
        let mut z = [0u16; 64];
        let main = _mm_set1_epi16((main & 1) as i16 ^ 1);
        for k in 0..8 {
            // SAFETY: k < 8: 16 bytes at 16 k of the 128-byte groups.
            #[allow(unsafe_code)]
            let (v, b) = unsafe { (_mm_loadu_si128(vg.as_ptr().add(16 * k).cast()), _mm_loadu_si128(bg.as_ptr().add(16 * k).cast())) };
            let flip = _mm_xor_si128(_mm_srli_epi16::<15>(b), main);
            let d = _mm_add_epi16(_mm_xor_si128(_mm_sub_epi16(v, b), _mm_sub_epi16(_mm_setzero_si128(), flip)), flip);
            let code = _mm_xor_si128(_mm_slli_epi16::<1>(d), _mm_srai_epi16::<15>(d));
            // SAFETY: as above, 8 codes at 8 k of `z`.
            #[allow(unsafe_code)]
            unsafe {
                _mm_storeu_si128(z.as_mut_ptr().add(8 * k).cast(), code)
            };
        }
        z
    }

    /// [`at_most_2`] with AVX2, sixteen elements per compare and 32 per movemask (the merge
    /// with AVX2 needs no element's class, only the masks).
    #[target_feature(enable = "avx2")]
    fn at_most_2_avx2(g: &[u8; 128], field: u16, lims: &[Option<u64>; super::CLASSES - 1]) -> [u64; super::CLASSES - 1] {
        // Vector 2h holds elements 32h..32h+8 and 32h+16..32h+24, vector 2h+1 the others of
        // the 32, so that a pack of the two (which works per 128-bit half) lists all 32 in order.
        let f = _mm256_set1_epi16(field as i16);
        let mut x = [_mm256_setzero_si256(); 4];
        for (j, v) in x.iter_mut().enumerate() {
            let at = 64 * (j / 2) + 16 * (j % 2);
            // SAFETY: at + 48 + 16 <= 128.
            #[allow(unsafe_code)]
            let (lo, hi) = unsafe { (_mm_loadu_si128(g.as_ptr().add(at).cast()), _mm_loadu_si128(g.as_ptr().add(at + 32).cast())) };
            // The exponent fields; they are below 2^15, so signed compares work.
            *v = _mm256_and_si256(_mm256_set_m128i(hi, lo), f);
        }
        let mut out = [0u64; super::CLASSES - 1];
        for (m, lim) in out.iter_mut().zip(lims) {
            *m = match *lim {
                None => 0,
                // A limit past the field holds every element.
                Some(l) if l >= field as u64 => u64::MAX,
                // e <= l, as l + 1 > e.
                Some(l) => {
                    let l = _mm256_set1_epi16(l as i16 + 1);
                    let mut m = 0u64;
                    for h in 0..2 {
                        let (a, b) = (_mm256_cmpgt_epi16(l, x[2 * h]), _mm256_cmpgt_epi16(l, x[2 * h + 1]));
                        m |= (_mm256_movemask_epi8(_mm256_packs_epi16(a, b)) as u32 as u64) << (32 * h);
                    }
                    m
                }
            };
        }
        out
    }

    /// [`group_classes_2`] with AVX2.
    #[target_feature(enable = "avx2,bmi2,popcnt")]
    pub fn group_classes_2_avx2(group: &[u8; 128], field: u16, valid: u64, lims: &[Option<u64>; super::CLASSES - 1], flags: &mut [super::Flags; super::CLASSES]) -> [u64; super::CLASSES] {
        super::group_classes(valid, &at_most_2_avx2(group, field, lims), flags, |s, m| _pdep_u64(s, m))
    }

    /// [`dense_2`] with AVX2, sixteen at a time, the codes in eight vectors (as
    /// [`merge_2_avx2`] places them).
    #[target_feature(enable = "avx2")]
    fn dense_2_avx2(z: &[__m128i; 8], bg: &[u8; 128], og: &mut [u8; 128], main: u16) {
        let one = _mm256_set1_epi16(1);
        let main = _mm256_set1_epi16(main as i16 ^ 1);
        for k in 0..4 {
            let zc = _mm256_set_m128i(z[2 * k + 1], z[2 * k]);
            // SAFETY: k < 4: 32 bytes at 32 k of the 128-byte group.
            #[allow(unsafe_code)]
            let b = unsafe { _mm256_loadu_si256(bg.as_ptr().add(32 * k).cast()) };
            let flip = _mm256_and_si256(_mm256_xor_si256(_mm256_srli_epi16::<15>(b), main), one);
            let d = _mm256_xor_si256(_mm256_srli_epi16::<1>(zc), _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_and_si256(zc, one)));
            let delta = _mm256_add_epi16(_mm256_xor_si256(d, _mm256_sub_epi16(_mm256_setzero_si256(), flip)), flip);
            // SAFETY: as above.
            #[allow(unsafe_code)]
            unsafe {
                _mm256_storeu_si256(og.as_mut_ptr().add(32 * k).cast(), _mm256_add_epi16(b, delta))
            };
        }
    }

    /// For each byte `m` (eight elements, bit j = element j changed), the shuffle that moves
    /// the first `popcnt(m)` of eight two-byte codes to the changed elements' lanes and zeroes
    /// the others.
    #[repr(align(16))]
    struct Expand([[u8; 16]; 256]);

    static EXPAND: Expand = Expand({
        // Lane j's rank among the set bits (see `simd::RANK`), as the byte pair of a code.
        let mut t = [[0x80u8; 16]; 256];
        let mut m = 0;
        while m < 256 {
            let mut j = 0;
            while j < 8 {
                let r = crate::codec::simd::RANK[m][j];
                if r != 0x80 {
                    t[m][2 * j] = 2 * r;
                    t[m][2 * j + 1] = 2 * r + 1;
                }
                j += 1;
            }
            m += 1;
        }
        t
    });

    /// [`super::merge_2`] with AVX2: the codes are placed eight elements at a time, once per
    /// class and block of eight that holds changed elements of the class (16 per group in the
    /// benchmark's bf16 series, for 32 changed elements): the block's codes are the class's
    /// next ones, loaded together and moved to their lanes by one byte shuffle.
    ///
    /// The caller guarantees that each class's cursor `from[c]` plus its changed elements in
    /// the group is at most its codes' end, and that `codes` holds [`super::CODES_PAD`] codes
    /// past the last class's end, so every eight-code load is inside `codes`.
    #[target_feature(enable = "avx2,bmi2,popcnt")]
    pub fn merge_2_avx2(changed: &[u64; super::CLASSES], from: &[usize; super::CLASSES], codes: &[u16], bg: &[u8; 128], og: &mut [u8; 128], main: u16) {
        // Eight classes of 64 bits are the 64 bytes loaded below, and bit i of the pairs is
        // class i / 8.
        const { assert!(super::CLASSES == 8) };
        let mut bytes = [0u8; 8 * super::CLASSES];
        for (b, c) in bytes.chunks_exact_mut(8).zip(changed) {
            b.copy_from_slice(&c.to_le_bytes());
        }
        // Bit 8c + b: class c has changed elements in block b.
        // SAFETY: 32 bytes at 0 and at 32 of the 64.
        #[allow(unsafe_code)]
        let (lo, hi) = unsafe { (_mm256_loadu_si256(bytes.as_ptr().cast()), _mm256_loadu_si256(bytes.as_ptr().add(32).cast())) };
        let zero = _mm256_setzero_si256();
        let empty = (_mm256_movemask_epi8(_mm256_cmpeq_epi8(lo, zero)) as u32 as u64) | (_mm256_movemask_epi8(_mm256_cmpeq_epi8(hi, zero)) as u32 as u64) << 32;
        let mut pairs = !empty;
        let mut z = [_mm_setzero_si128(); 8];
        while pairs != 0 {
            let i = pairs.trailing_zeros() as usize & 63;
            pairs &= pairs - 1;
            let (c, b) = (i >> 3, i & 7);
            // The class's codes before this block's: its cursor plus its changed elements in the
            // blocks below.
            let k = from[c] + _bzhi_u64(changed[c], 8 * b as u32).count_ones() as usize;
            debug_assert!(k + 8 <= codes.len());
            // SAFETY: k is below the class's cursor after the group, at most its end, and
            // `codes` holds CODES_PAD = 8 more past the last end (the caller's guarantee).
            #[allow(unsafe_code)]
            let src = unsafe { _mm_loadu_si128(codes.as_ptr().add(k).cast()) };
            // SAFETY: the table is 16-byte aligned, one 16-byte row per byte value.
            #[allow(unsafe_code)]
            let ctl = unsafe { _mm_load_si128(EXPAND.0[bytes[i] as usize].as_ptr().cast()) };
            z[b] = _mm_or_si128(z[b], _mm_shuffle_epi8(src, ctl));
        }
        dense_2_avx2(&z, bg, og, main);
    }

    /// [`super::stats_2`] compiled for AVX2.
    #[target_feature(enable = "avx2")]
    pub fn stats_2_avx2(vc: &[u8], bc: &[u8], shape: super::Shape) -> (u64, u64, u64) {
        super::stats_2(vc, bc, shape)
    }

    /// [`super::decode_with`] compiled for AVX2, BMI2 and POPCNT throughout.
    #[target_feature(enable = "avx2,bmi2,popcnt")]
    pub fn decode_avx2<const W: usize, const SHIFT: u32, const EMASK: u64>(data: &[u8], base: &[u8], n: usize, out: &mut Vec<u8>) -> Result<(), String> {
        super::decode_with::<W, SHIFT, EMASK>(data, base, n, out, super::Isa::Avx2)
    }

    /// The classes of a group of 64 elements of any width, with the BMI2 deposit.
    #[target_feature(enable = "bmi2,popcnt")]
    pub fn group_classes_w<const W: usize>(group: &[u8], field: u64, valid: u64, lims: &[Option<u64>; super::CLASSES - 1], flags: &mut [super::Flags; super::CLASSES]) -> [u64; super::CLASSES] {
        super::group_classes(valid, &super::at_most_all::<W>(group, field, lims), flags, |s, m| _pdep_u64(s, m))
    }
}

/// The instructions the decoder uses beyond the baseline.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Isa {
    Portable,
    /// SSE2 (part of x86-64), BMI2 and POPCNT.
    Bmi2,
    /// Those and AVX2.
    Avx2,
}

/// What the processor has, detected at run time.
fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    if has_bmi2() {
        return if std::is_x86_feature_detected!("avx2") { Isa::Avx2 } else { Isa::Bmi2 };
    }
    Isa::Portable
}

/// Whether the processor has BMI2 and POPCNT (and so, being x86-64, SSE2).
fn has_bmi2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("bmi2") && std::is_x86_feature_detected!("popcnt")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`group_classes`] of `group`, with BMI2 where `bmi2` says the processor has it.
#[inline(always)]
fn classes_of<const W: usize>(bmi2: bool, group: &[u8], field: u64, valid: u64, lims: &[Option<u64>; CLASSES - 1], flags: &mut [Flags; CLASSES]) -> [u64; CLASSES] {
    #[cfg(target_arch = "x86_64")]
    if bmi2 {
        // SAFETY: the function only enables BMI2 and POPCNT, which the caller detected at run
        // time (`has_bmi2`).
        #[allow(unsafe_code)]
        return unsafe { x86::group_classes_w::<W>(group, field, valid, lims, flags) };
    }
    let _ = bmi2;
    group_classes(valid, &at_most_all::<W>(group, field, lims), flags, deposit)
}

/// [`group_classes`] of a group of up to 64 two-byte elements (`group`: 128 bytes, those past
/// `valid` ignored), and each element's class in `cls` (not with AVX2, whose merge does not
/// read it); with the instructions `isa` names.
#[inline(always)]
fn classes_of_2(isa: Isa, group: &[u8; 128], field: u16, valid: u64, lims: &[Option<u64>; CLASSES - 1], flags: &mut [Flags; CLASSES], cls: &mut [u8; 64]) -> [u64; CLASSES] {
    // SAFETY (both): the functions only enable SSE2, which every x86-64 processor has, and
    // the extensions `isa` names, which the caller detected at run time (`isa()`).
    #[cfg(target_arch = "x86_64")]
    match isa {
        #[allow(unsafe_code)]
        Isa::Avx2 => return unsafe { x86::group_classes_2_avx2(group, field, valid, lims, flags) },
        #[allow(unsafe_code)]
        Isa::Bmi2 => return unsafe { x86::group_classes_2(group, field, valid, lims, flags, cls) },
        Isa::Portable => {}
    }
    let _ = isa;
    let at_most = at_most_all::<2>(group, field as u64, lims);
    for (i, c) in cls.iter_mut().enumerate() {
        *c = at_most.iter().map(|m| (m >> i & 1) as u8).sum();
    }
    group_classes(valid, &at_most, flags, deposit)
}

/// Zero codes after the last class's: [`merge_2`] reads the codes eight at a time.
const CODES_PAD: usize = 8;

/// Where each class's changed elements are read from: two-byte elements take their codes from
/// `codes` (every class's whole, one class after another), wider ones from each class's
/// planes; class c's next is at `cursor[c]`, its last before `end[c]`.
struct ClassCodes {
    codes: Vec<u16>,
    cursor: [usize; CLASSES],
    end: [usize; CLASSES],
}

/// Merges the changed elements of a group of 64 two-byte elements (`changed[c]`: the elements
/// of class c that changed; `cls`: each element's class) from their classes' codes into `og`,
/// against the base group `bg`. False if a class has fewer codes left than it needs.
///
/// One pass over the changed elements in order, each taking its class's next code: the loop
/// runs once per group whatever the classes hold, so its exit is the only branch that depends
/// on the data (a loop per class mispredicted its exit for every class of every group). The
/// codes are placed in a dense group (zero for the others, which unturns to a zero delta) and
/// all 64 values computed eight to a vector. With AVX2, [`x86::merge_2_avx2`] places them eight
/// at a time instead and does not read `cls`.
#[inline(always)]
fn merge_2(isa: Isa, changed: &[u64; CLASSES], cls: &[u8; 64], codes: &mut ClassCodes, bg: &[u8; 128], og: &mut [u8; 128], main: u64) -> bool {
    let mut fits = true;
    let mut all = 0u64;
    let from = codes.cursor;
    for ((k, &end), &ch) in codes.cursor.iter_mut().zip(&codes.end).zip(changed) {
        *k += ch.count_ones() as usize;
        fits &= *k <= end;
        all |= ch;
    }
    if !fits {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        // SAFETY: AVX2, BMI2 and POPCNT, which the caller detected (`isa()`); the codes are
        // padded and the cursors checked as the function requires (see there).
        #[allow(unsafe_code)]
        unsafe {
            x86::merge_2_avx2(changed, &from, &codes.codes, bg, og, main as u16)
        };
        return true;
    }
    let mut z = [0u16; 64];
    while all != 0 {
        let i = all.trailing_zeros() as usize & 63;
        all &= all - 1;
        let c = cls[i] as usize & (CLASSES - 1);
        // Its rank among its class's changed elements of the group.
        let k = from[c] + (changed[c] & ((1u64 << i) - 1)).count_ones() as usize;
        // SAFETY: the rank is at most the class's count in the group, so k is at most its
        // cursor after the group, which `fits` holds to its end, at most the codes' length;
        // one zero code pads the buffer past that.
        #[allow(unsafe_code)]
        let code = unsafe { *codes.codes.get_unchecked(k) };
        z[i] = code;
    }
    // SAFETY: SSE2 is part of x86-64.
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    unsafe {
        x86::dense_2(&z, bg, og, main as u16)
    }
    #[cfg(not(target_arch = "x86_64"))]
    for ((o, b), &code) in og.chunks_exact_mut(2).zip(bg.chunks_exact(2)).zip(&z) {
        let b = u16::from_le_bytes([b[0], b[1]]);
        o.copy_from_slice(&b.wrapping_add(unturn_2(code, b, main as u16)).to_le_bytes());
    }
    true
}

/// [`unturn`] of two-byte elements in 16-bit arithmetic (vectorises eight or sixteen to a
/// register); x86-64 runs it as [`x86::dense_2`].
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline(always)]
fn unturn_2(z: u16, b: u16, main: u16) -> u16 {
    let flip = ((b >> 15) ^ main ^ 1) & 1;
    let d = (z >> 1) ^ 0u16.wrapping_sub(z & 1);
    (d ^ 0u16.wrapping_sub(flip)).wrapping_add(flip)
}

/// One stream (coder, length, bytes) at `at`, decoded to `n` bytes; returns it and where it
/// ends.
fn read_stream(data: &[u8], at: usize, n: usize) -> Result<(Vec<u8>, usize), String> {
    let coder = data.get(at).copied().and_then(Coder::from_byte).ok_or("class planes stream has an unknown coder")?;
    let len = u32_at(data, at + 1)? as usize;
    let start = at + 5;
    let bytes = start.checked_add(len).and_then(|end| data.get(start..end)).ok_or("class planes stream runs past its end")?;
    let plane = stream::decode(coder, bytes, n).map_err(|e| format!("class planes stream: {e}"))?;
    Ok((plane, start + len))
}

/// Decodes a stream of `n` elements (`W` bytes each, the float kind `shape` describes) against
/// `base` into `out`, writing every element whatever `out` holds on entry. Every
/// length is checked against `n`, so a corrupt stream is an error, never a panic or a large
/// allocation; the value's hash covers the rest.
pub(super) fn decode_w<const W: usize, const SHIFT: u32, const EMASK: u64>(data: &[u8], base: &[u8], n: usize, out: &mut Vec<u8>) -> Result<(), String> {
    decode_isa::<W, SHIFT, EMASK>(data, base, n, out, isa())
}

/// [`decode_w`] with the instructions `isa` names, which the processor must have (or fewer).
fn decode_isa<const W: usize, const SHIFT: u32, const EMASK: u64>(data: &[u8], base: &[u8], n: usize, out: &mut Vec<u8>, isa: Isa) -> Result<(), String> {
    // SAFETY (both): the functions only enable SSE2 (every x86-64 processor has it) and the
    // extensions `isa` names, which the processor has (`isa()`, at run time).
    #[cfg(target_arch = "x86_64")]
    match isa {
        #[allow(unsafe_code)]
        Isa::Avx2 => return unsafe { x86::decode_avx2::<W, SHIFT, EMASK>(data, base, n, out) },
        #[allow(unsafe_code)]
        Isa::Bmi2 => return unsafe { x86::decode_bmi2::<W, SHIFT, EMASK>(data, base, n, out) },
        Isa::Portable => {}
    }
    decode_with::<W, SHIFT, EMASK>(data, base, n, out, Isa::Portable)
}

/// [`decode_w`], with the instructions `isa` names.
#[inline(always)]
fn decode_with<const W: usize, const SHIFT: u32, const EMASK: u64>(data: &[u8], base: &[u8], n: usize, out: &mut Vec<u8>, isa: Isa) -> Result<(), String> {
    let bmi2 = isa != Isa::Portable;
    let Head { seg, first, nseg, side: side_z, end } = read_head(data, FORMAT, n)?;
    // Exactly three bytes per segment, or an error.
    let side = stream::unzstd(side_z, 3 * nseg).map_err(|e| format!("class planes side information: {e}"))?;
    let segs: Vec<Segment> = side.chunks_exact(3).map(|c| Segment { typical: u16::from_le_bytes([c[0], c[1]]), main: c[2] }).collect();
    if segs.iter().any(|s| s.main > 1 || (s.typical == 0 && s.main != 0)) {
        return Err("class planes segment out of range".into());
    }
    // Per class: flags, and its changed elements' planes.
    let mut at = end;
    let mut flags: [Flags; CLASSES] = std::array::from_fn(|_| Flags { bytes: Vec::new(), count: 0, at: 0 });
    let mut planes: Vec<[Vec<u8>; W]> = Vec::with_capacity(CLASSES);
    let mut total = 0usize;
    for f in flags.iter_mut() {
        let count = u32_at(data, at)? as usize;
        total += count;
        if total > n {
            return Err("class planes classes hold more elements than the chunk".into());
        }
        let (mut bytes, end) = read_stream(data, at + 4, count.div_ceil(8))?;
        at = end;
        if !count.is_multiple_of(8) && bytes.last().is_some_and(|&l| l >> (count % 8) != 0) {
            return Err("class planes flags mark elements past the class".into());
        }
        let changed = bytes.iter().map(|b| b.count_ones() as usize).sum::<usize>();
        bytes.extend_from_slice(&[0; 16]);
        *f = Flags { bytes, count, at: 0 };
        let mut p: [Vec<u8>; W] = std::array::from_fn(|_| Vec::new());
        for plane in p.iter_mut() {
            let (bytes, end) = read_stream(data, at, changed)?;
            *plane = bytes;
            at = end;
        }
        planes.push(p);
    }
    if at != data.len() {
        return Err("class planes stream has trailing bytes".into());
    }
    if base.len() != n * W {
        return Err("class planes stream: base chunk does not match".into());
    }
    // Two-byte elements: every class's codes whole; wider ones: each class's planes.
    let mut codes = ClassCodes { codes: Vec::new(), cursor: [0; CLASSES], end: std::array::from_fn(|c| planes[c][0].len()) };
    if W == 2 {
        codes.codes.reserve_exact(codes.end.iter().sum::<usize>() + 1);
        for (c, p) in planes.iter().enumerate() {
            codes.cursor[c] = codes.codes.len();
            codes.codes.extend(p[0].iter().zip(&p[W - 1]).map(|(&lo, &hi)| u16::from_le_bytes([lo, hi])));
            codes.end[c] = codes.codes.len();
        }
        // The merge may read up to eight codes past the last class's (see there).
        codes.codes.extend_from_slice(&[0; CODES_PAD]);
        planes.clear();
    }
    // Every element is appended as the loop reaches it: unchanged segments are copied from the
    // base (while in the cache), a group is merged in a buffer of its own, so the output is
    // never filled first.
    let wmask = if W == 8 { u64::MAX } else { (1u64 << (8 * W)) - 1 };
    let field = EMASK << SHIFT;
    // Two-byte elements: each group's classes, and its base padded to 64 elements (what the
    // padding holds does not matter, as no flag is read for it).
    let mut cls = [0u8; 64];
    let (mut bt, mut ot) = ([0u8; 128], [0u8; 128]);
    let mut og = [0u8; 64 * 8];
    out.reserve(n * W);
    for (s, bc) in segs.iter().zip(segments(base, first, seg, W)) {
        if s.typical == 0 {
            out.extend_from_slice(bc);
            continue;
        }
        let (tp, main) = (s.typical as i64 + MC_OFF, s.main as u64);
        let lims = limits(tp, SHIFT);
        for bg in bc.chunks(64 * W) {
            let len = bg.len() / W;
            let valid = if len == 64 { u64::MAX } else { (1u64 << len) - 1 };
            if W == 2 {
                let bg = match <&[u8; 128]>::try_from(bg) {
                    Ok(bg) => bg,
                    Err(_) => {
                        bt[..bg.len()].copy_from_slice(bg);
                        &bt
                    }
                };
                let changed = classes_of_2(isa, bg, field as u16, valid, &lims, &mut flags, &mut cls);
                if !merge_2(isa, &changed, &cls, &mut codes, bg, &mut ot, main) {
                    return Err("class planes classes do not match the chunk's elements".into());
                }
                match len {
                    64 => out.extend_from_slice(&ot),
                    _ => out.extend_from_slice(&ot[..2 * len]),
                }
                continue;
            }
            let changed = classes_of::<W>(bmi2, bg, field, valid, &lims, &mut flags);
            let og = &mut og[..bg.len()];
            og.copy_from_slice(bg);
            for (c, mut ch) in changed.into_iter().enumerate() {
                let (p, mut k) = (&planes[c], codes.cursor[c]);
                while ch != 0 {
                    let i = ch.trailing_zeros() as usize * W;
                    ch &= ch - 1;
                    let mut z = 0u64;
                    for (j, plane) in p.iter().enumerate() {
                        z |= (plane.get(k).copied().unwrap_or(0) as u64) << (8 * j);
                    }
                    k += 1;
                    if let (Some(b), Some(o)) = (bg.get(i..i + W), og.get_mut(i..i + W)) {
                        let b = load::<W>(b);
                        let v = b.wrapping_add(unturn::<W>(z, b, main)) & wmask;
                        o.copy_from_slice(&v.to_le_bytes()[..W]);
                    }
                }
                codes.cursor[c] = k;
            }
            out.extend_from_slice(og);
        }
    }
    for (c, f) in flags.iter().enumerate() {
        if f.at != f.count || codes.cursor[c] != codes.end[c] {
            return Err("class planes classes do not match the chunk's elements".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::FloatKind;

    /// bf16 rows of `row` elements: the base spans many exponents, about a third of the
    /// elements move by a few units in the last place, more where the weight is small, mostly
    /// in the row's direction; some rows do not move, some elements jump across zero.
    fn rows(n: usize, row: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
        let mut r = crate::testrand::XorShift::new(seed | 1);
        let (mut base, mut value) = (Vec::new(), Vec::new());
        for i in 0..n {
            let x = r.next_u64();
            let e = 100 + (x % 28) as u16;
            let b = ((x >> 8) as u16 & 0x8000) | e << 7 | ((x >> 20) as u16 & 0x7f);
            let still = (i / row) % 5 == 2 || !(x >> 40).is_multiple_of(3);
            let step = (1u16 << ((127 - e) / 4).min(6)) + ((x >> 44) as u16 & 3);
            let up = (i / row).is_multiple_of(2) ^ (x >> 50).is_multiple_of(5);
            let v = match () {
                _ if still => b,
                _ if (x >> 54).is_multiple_of(61) => b ^ 0x8000,
                _ if up == (b & 0x8000 == 0) => b.wrapping_add(step),
                _ => b.wrapping_sub(step),
            };
            base.extend_from_slice(&b.to_le_bytes());
            value.extend_from_slice(&v.to_le_bytes());
        }
        (base, value)
    }

    fn shape() -> Shape {
        Shape::of(FloatKind::BF16).map(|s| s.0).unwrap_or_else(|| unreachable!())
    }

    /// Flags are taken 0 to 64 at a time, at every bit offset, LSB first.
    #[test]
    fn flags_are_taken_in_order_at_any_count() {
        let mut r = crate::testrand::XorShift::new(5);
        let bytes: Vec<u8> = (0..600).map(|_| r.next_u64() as u8).collect();
        let bit = |j: usize| (bytes[j / 8] >> (j % 8) & 1) as u64;
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0; 16]);
        let mut f = Flags { bytes: padded, count: 8 * bytes.len(), at: 0 };
        let mut at = 0;
        while at + 64 <= 8 * bytes.len() {
            let n = (r.next_u64() % 65) as u32;
            let want = (0..n as usize).fold(0u64, |w, j| w | bit(at + j) << j);
            assert_eq!(f.take(n), want, "{n} flags at bit {at}");
            at += n as usize;
        }
    }

    #[test]
    fn turning_is_a_bijection_of_every_delta() {
        for d in 0..=u16::MAX as u64 {
            for (b, main) in [(0u64, 0u8), (0, 1), (0x8000, 0), (0x8000, 1)] {
                let z = turn::<2>(d, b, main);
                assert!(z <= u16::MAX as u64);
                assert_eq!(unturn::<2>(z, b, main as u64) & 0xffff, d, "d {d} b {b:#x} main {main}");
                // The 16-bit form the dense merge uses, on bases of both signs.
                for b in [b, b | 0x3f80, b | 0x7fff] {
                    assert_eq!(unturn_2(z as u16, b as u16, main as u16) as u64, unturn::<2>(z, b, main as u64) & 0xffff);
                }
            }
        }
        for d in [0u64, 1, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 12345] {
            for (b, main) in [(0u64, 0u8), (0x8000_0000, 1)] {
                assert_eq!(unturn::<4>(turn::<4>(d, b, main), b, main as u64) & 0xffff_ffff, d);
            }
        }
    }

    #[test]
    fn groups_are_turned_as_element_by_element() {
        let mut r = crate::testrand::XorShift::new(7);
        for len in [128usize, 126, 2, 0] {
            for main in [0u8, 1] {
                let (vg, bg): (Vec<u8>, Vec<u8>) = (0..len).map(|_| (r.next_u64() as u8, r.next_u64() as u8)).unzip();
                let z = turn_group_2(&vg, &bg, main);
                for (i, &z) in z.iter().enumerate() {
                    let want = match (vg.get(2 * i..2 * i + 2), bg.get(2 * i..2 * i + 2)) {
                        (Some(v), Some(b)) => {
                            let (v, b) = (u16::from_le_bytes([v[0], v[1]]) as u64, u16::from_le_bytes([b[0], b[1]]) as u64);
                            turn::<2>(v.wrapping_sub(b) & 0xffff, b, main)
                        }
                        _ => 0,
                    };
                    assert_eq!(z as u64, want, "len {len} main {main} element {i}");
                }
            }
        }
    }

    #[test]
    fn moves_in_the_rows_direction_are_the_small_even_codes() {
        // Up by one on a positive weight, in a row that moves up.
        assert_eq!(turn::<2>(1, 0x3f80, 1), 2);
        // Down by one on a negative weight (its value goes up), same row.
        assert_eq!(turn::<2>(0xffff, 0xbf80, 1), 2);
        // Against the row's direction.
        assert_eq!(turn::<2>(0xffff, 0x3f80, 1), 1);
        assert_eq!(turn::<2>(1, 0x3f80, 0), 1);
        assert_eq!(turn::<2>(0, 0x3f80, 0), 0);
    }

    /// The portable paths code and decode the same bytes as the SSE2 and BMI2 ones.
    fn assert_paths_agree<const W: usize, const SHIFT: u32, const EMASK: u64>(value: &[u8], base: &[u8], shape: Shape, segs: (usize, usize)) -> Result<(), String> {
        let coded = encode_with::<W>(value, base, shape, segs, false).ok_or("not coded")?;
        assert!(encode_with::<W>(value, base, shape, segs, has_bmi2()) == Some(coded.clone()), "W {W}, segments {segs:?}");
        // Every level of instructions up to what the processor has.
        for isa in [Isa::Portable, Isa::Bmi2, Isa::Avx2].into_iter().filter(|&i| i <= isa()) {
            // Appended after what `out` holds.
            let mut out = vec![0xa5; 3];
            decode_isa::<W, SHIFT, EMASK>(&coded, base, value.len() / W, &mut out, isa)?;
            assert!(out[3..] == *value && out[..3] == [0xa5; 3], "W {W}, segments {segs:?}, {isa:?}");
        }
        Ok(())
    }

    #[test]
    fn the_portable_paths_code_what_the_fast_ones_do() -> Result<(), String> {
        for (n, row, first) in [(1 << 14, 256, 256), (5000, 96, 40), (70, 1000, 70), (1, 1, 1)] {
            let (base, value) = rows(n, row, n as u64);
            assert_paths_agree::<2, 7, 0xff>(&value, &base, shape(), (row, first))?;
        }
        Ok(())
    }

    #[test]
    fn the_portable_paths_code_four_byte_elements_as_the_fast_ones_do() -> Result<(), String> {
        let shape4 = Shape::of(FloatKind::F32).map(|s| s.0).ok_or("no shape")?;
        let (b2, v2) = rows(3000, 130, 5);
        // bf16 patterns as f32 ones, with low bits that change now and then.
        let widen = |x: &[u8], salt: u32| -> Vec<u8> {
            x.chunks_exact(2).enumerate().flat_map(|(i, c)| (((u16::from_le_bytes([c[0], c[1]]) as u32) << 16) | ((i as u32 * salt) % 7)).to_le_bytes()).collect()
        };
        assert_paths_agree::<4, 23, 0xff>(&widen(&v2, 5), &widen(&b2, 3), shape4, (130, 17))
    }

    #[test]
    fn classes_code_the_rows_smaller_than_one_class() -> Result<(), String> {
        let (base, value) = rows(1 << 16, 512, 3);
        let coded = encode_w::<2>(&value, &base, shape(), (512, 512)).ok_or("not coded")?;
        // The same deltas as plain byte planes (zigzag, low byte first) with order-0 coders.
        let z: Vec<u16> = value.chunks_exact(2).zip(base.chunks_exact(2)).map(|(v, b)| {
            let d = u16::from_le_bytes([v[0], v[1]]).wrapping_sub(u16::from_le_bytes([b[0], b[1]])) as i16;
            ((d << 1) ^ (d >> 15)) as u16
        }).collect();
        let lo: Vec<u8> = z.iter().map(|&x| x as u8).collect();
        let hi: Vec<u8> = z.iter().map(|&x| (x >> 8) as u8).collect();
        let planes = stream::encode(&lo).1.len() + stream::encode(&hi).1.len();
        assert!(coded.len() * 10 < planes * 9, "class planes {} against byte planes {planes}", coded.len());
        Ok(())
    }

    #[test]
    fn inconsistent_streams_are_errors() -> Result<(), String> {
        let (base, value) = rows(3000, 100, 9);
        let coded = encode_w::<2>(&value, &base, shape(), (100, 100)).ok_or("not coded")?;
        let mut out = Vec::new();
        assert!(decode_w::<2, 7, 0xff>(&coded, &base, 2999, &mut out).is_err());
        assert!(decode_w::<2, 7, 0xff>(&coded, &base[..100], 3000, &mut out).is_err());
        // A segment's main direction out of range.
        let side = zstd::bulk::compress(&[1, 0, 2], 3).map_err(|e| e.to_string())?;
        let mut forged = vec![FORMAT];
        for x in [100u32, 100, side.len() as u32] {
            forged.extend_from_slice(&x.to_le_bytes());
        }
        forged.extend_from_slice(&side);
        assert!(decode_w::<2, 7, 0xff>(&forged, &base[..200], 100, &mut out).is_err());
        Ok(())
    }
}
