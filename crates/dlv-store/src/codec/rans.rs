//! Static order-0 rANS over bytes: the entropy coder of skewed planes (stream coder 5).
//!
//! zstd codes literals with Huffman codes, whole bits per byte: on a skewed plane (an exponent
//! byte, a nearly-zero delta plane) that is well above the order-0 entropy, which rANS reaches
//! to within the 12-bit quantisation of the frequencies. No crate was fast enough (see
//! docs/STORAGE.md), so this is our own.
//!
//! Stream: the frequency table (see [`write_table`]), then [`WAYS`] u32 LE decoder start states,
//! then u16 LE renormalisation words in the order the decoder reads them. Byte i is coded by
//! state `i % WAYS`: the independent states hide the latency of each step. The states are
//! 32-bit and move 16 bits at a time, so every decoding step reads at most one word.
//!
//! The wide stream (coder 7) is the same with [`WIDE`] states: where the processor has AVX2 its
//! decoder steps eight states per vector, four vectors in flight, 2-3 times as fast as the
//! scalar decoder of 8 states on the benchmark's planes, and so does its encoder (to the same
//! bytes as its scalar loop); the encoder picks it for large planes.

/// Frequencies are normalised to sum to `1 << SCALE_BITS`: a 4096-entry decoding table fits in
/// the L1 cache, and the quantisation costs about 0.1% on the planes measured.
const SCALE_BITS: u32 = 12;
const TOTAL: u32 = 1 << SCALE_BITS;
/// Interleaved states.
pub const WAYS: usize = 8;
/// States of the wide stream (coder 7): four vectors of eight.
pub const WIDE: usize = 32;
/// Lower bound of a normalised state; a state lies in `[LOW, 2^32)`.
const LOW: u32 = 1 << 16;
/// Symbols listed one by one below this many, as a 32-byte bitmap from it on.
const LIST_MAX: usize = 32;

/// Frequencies (summing to [`TOTAL`], zero for absent symbols) of a byte histogram, chosen
/// greedily to minimise the coded size. `None` when the histogram is empty.
pub fn normalise(hist: &[u64; 256]) -> Option<[u32; 256]> {
    let f = normalise_to(hist, TOTAL)?;
    let mut out = [0u32; 256];
    out.copy_from_slice(&f);
    Some(out)
}

/// [`normalise`] for any alphabet and any total (a power of two at least the alphabet's size).
pub fn normalise_to(hist: &[u64], total: u32) -> Option<Vec<u32>> {
    let n: u64 = hist.iter().sum();
    if n == 0 {
        return None;
    }
    let mut f = vec![0u32; hist.len()];
    let mut sum = 0i64;
    for (fi, &c) in f.iter_mut().zip(hist) {
        if c > 0 {
            *fi = ((c as u128 * total as u128 + n as u128 / 2) / n as u128).max(1) as u32;
            sum += *fi as i64;
        }
    }
    // Rounding leaves the sum off by at most about one per symbol; move one unit at a time
    // where it costs least (the cost of symbol s is hist[s] * log2(total / f[s]) bits). The
    // sign of the difference never changes, so each symbol's gain (of a unit more, or of one
    // less) is kept and only the moved symbol's recomputed: a logarithm per step instead of
    // two per symbol per step (2.5% of the bf16 series' encode time, on small class planes).
    let mut diff = total as i64 - sum;
    let up = diff > 0;
    let key = |c: u64, f: u32| match (up, f) {
        (true, 1..) => Some(gain(c, f)),
        (false, 2..) => Some(gain(c, f - 1)),
        _ => None,
    };
    let mut keys: Vec<Option<f64>> = hist.iter().zip(&f).map(|(&c, &fi)| key(c, fi)).collect();
    while diff != 0 {
        let candidates = keys.iter().enumerate().filter_map(|(s, k)| k.map(|k| (s, k)));
        // Ties go as before: the last of the largest gains, the first of the smallest losses.
        let (best, _) = if up { candidates.max_by(|a, b| a.1.total_cmp(&b.1)) } else { candidates.min_by(|a, b| a.1.total_cmp(&b.1)) }?;
        if up {
            f[best] += 1;
            diff -= 1;
        } else {
            f[best] -= 1;
            diff += 1;
        }
        keys[best] = key(hist[best], f[best]);
    }
    Some(f)
}

/// Bits saved by raising a frequency from `f` to `f + 1` for a symbol seen `c` times.
fn gain(c: u64, f: u32) -> f64 {
    c as f64 * ((f + 1) as f64 / f as f64).log2()
}

/// Bytes of the table of `freqs`.
fn table_len(freqs: &[u32; 256]) -> usize {
    let k = freqs.iter().filter(|&&f| f > 0).count();
    let syms = if k < LIST_MAX { k } else { 32 };
    1 + syms + freqs.iter().filter(|&&f| f > 0).map(|&f| if f < 0x80 { 1 } else { 2 }).sum::<usize>()
}

/// Bytes a plane with histogram `hist` codes to with `freqs`, within a few bytes.
pub fn estimate(hist: &[u64; 256], freqs: &[u32; 256], ways: usize) -> usize {
    let bits: f64 = hist
        .iter()
        .zip(freqs)
        .filter(|&(&c, _)| c > 0)
        .map(|(&c, &f)| c as f64 * (TOTAL as f64 / f as f64).log2())
        .sum();
    table_len(freqs) + 4 * ways + (bits / 8.0).ceil() as usize + 2 * ways
}

/// A lower bound of [`estimate`] from the order-0 entropy in bits (`bits`), without the cost of
/// normalising: lets the encoder skip planes where rANS cannot win.
pub fn lower_bound(hist: &[u64; 256], bits: f64) -> usize {
    let k = hist.iter().filter(|&&c| c > 0).count();
    (bits / 8.0) as usize + 1 + k.min(LIST_MAX) + k + 6 * WAYS
}

/// Table layout: `k - 1` (u8, k symbols present); the symbols, ascending, as k bytes when
/// k < 32, else as a 32-byte bitmap (LSB first); then each present symbol's frequency in that
/// order, as one byte when below 128, else as two (low 7 bits with the top bit set, then the
/// rest). Frequencies are at least 1 and sum to 4096.
fn write_table(freqs: &[u32; 256], out: &mut Vec<u8>) {
    let present: Vec<u8> = (0..=255u8).filter(|&s| freqs[s as usize] > 0).collect();
    out.push((present.len() - 1) as u8);
    if present.len() < LIST_MAX {
        out.extend_from_slice(&present);
    } else {
        let mut bitmap = [0u8; 32];
        for &s in &present {
            bitmap[s as usize / 8] |= 1 << (s % 8);
        }
        out.extend_from_slice(&bitmap);
    }
    for &s in &present {
        let f = freqs[s as usize];
        if f < 0x80 {
            out.push(f as u8);
        } else {
            out.push(0x80 | (f & 0x7f) as u8);
            out.push((f >> 7) as u8);
        }
    }
}

/// Parses a table, returning the frequencies and the bytes it took.
fn read_table(data: &[u8]) -> Result<([u32; 256], usize), String> {
    let short = || "rans table is truncated".to_string();
    let k = *data.first().ok_or_else(short)? as usize + 1;
    let mut at = 1;
    let mut present = Vec::with_capacity(k);
    if k < LIST_MAX {
        let syms = data.get(at..at + k).ok_or_else(short)?;
        if syms.windows(2).any(|w| w[0] >= w[1]) {
            return Err("rans table symbols are not ascending".into());
        }
        present.extend_from_slice(syms);
        at += k;
    } else {
        let bitmap = data.get(at..at + 32).ok_or_else(short)?;
        present.extend((0..=255u8).filter(|&s| bitmap[s as usize / 8] >> (s % 8) & 1 != 0));
        if present.len() != k {
            return Err(format!("rans table bitmap has {} symbols, its count {k}", present.len()));
        }
        at += 32;
    }
    let mut freqs = [0u32; 256];
    let mut sum = 0u32;
    for &s in &present {
        let b = *data.get(at).ok_or_else(short)?;
        let f = if b < 0x80 {
            at += 1;
            b as u32
        } else {
            let hi = *data.get(at + 1).ok_or_else(short)?;
            at += 2;
            (b & 0x7f) as u32 | (hi as u32) << 7
        };
        if f == 0 || f > TOTAL {
            return Err(format!("rans table frequency {f} out of range"));
        }
        freqs[s as usize] = f;
        sum += f;
    }
    if sum != TOTAL {
        return Err(format!("rans table frequencies sum to {sum}, not {TOTAL}"));
    }
    Ok((freqs, at))
}

/// Codes `plane` with `freqs` (from [`normalise`] of its histogram: every byte of the plane
/// must have a non-zero frequency). An empty plane is an empty stream.
pub fn encode_with(plane: &[u8], freqs: &[u32; 256]) -> Vec<u8> {
    encode_ways::<WAYS>(plane, freqs, false)
}

/// [`encode_with`] with [`WIDE`] states (stream coder 7), which [`decode_wide`] decodes
/// eight states per vector instruction where the processor has AVX2 (the encoder too steps
/// eight states at a time there, to the same bytes).
pub fn encode_wide(plane: &[u8], freqs: &[u32; 256]) -> Vec<u8> {
    encode_ways::<WIDE>(plane, freqs, true)
}

/// Codes `plane` with `W` states; `vector` allows the AVX2 loop (tests compare both).
fn encode_ways<const W: usize>(plane: &[u8], freqs: &[u32; 256], vector: bool) -> Vec<u8> {
    if plane.is_empty() {
        return Vec::new();
    }
    // Per symbol: frequency, start, the renormalisation bound f << 20 (the state after coding
    // must stay below 2^32) and m = ceil(2^44 / f), so that x / f = (x * m) >> 44 exactly for
    // every 32-bit x (f <= 2^12): a multiplication instead of a division.
    let mut sym = [(0u32, 0u32, 0u64, 0u64); 256];
    let mut cum = 0u32;
    for (e, &f) in sym.iter_mut().zip(freqs) {
        if f > 0 {
            *e = (f, cum, (f as u64) << (32 - SCALE_BITS), (1u64 << 44).div_ceil(f as u64));
        }
        cum += f;
    }
    // Words are written backwards from the end (the decoder reads them forwards), one slot
    // written per byte whether it is kept or not, which keeps the loop free of branches.
    let mut words = vec![0u16; plane.len() + 1];
    let mut pos = words.len();
    let mut states = [LOW; W];
    let step = |x: &mut u32, b: u8, words: &mut [u16], pos: &mut usize| {
        let (f, start, bound, m) = sym[b as usize];
        let out = (*x as u64 >= bound) as usize;
        words[*pos - 1] = *x as u16;
        *pos -= out;
        *x >>= 16 * out as u32;
        let q = ((*x as u128 * m as u128) >> 44) as u32;
        *x = (q << SCALE_BITS) + (*x - q * f) + start;
    };
    let full = plane.len() / W * W;
    for (j, &b) in plane[full..].iter().enumerate().rev() {
        step(&mut states[j], b, &mut words, &mut pos);
    }
    // Whole groups left to the scalar loop (all of them unless the vector loop ran).
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut left = full;
    #[cfg(target_arch = "x86_64")]
    if W == WIDE && vector && super::simd::avx2() {
        // Per symbol: frequency (bits 0-15) and start (bits 16-31), for one gather.
        let packed: [u32; 256] = std::array::from_fn(|s| sym[s].0 | sym[s].1 << 16);
        if let Ok(lanes) = <&mut [u32; WIDE]>::try_from(&mut states[..]) {
            // SAFETY: AVX2 and POPCNT were detected at run time just above; every memory
            // access of the function is bounds-checked or proven in bounds there.
            #[allow(unsafe_code)]
            {
                left = unsafe { x86::encode_wide(&plane[..full], lanes, &mut words, &mut pos, &packed) };
            }
        }
    }
    let _ = vector;
    for group in plane[..left].chunks_exact(W).rev() {
        for (x, &b) in states.iter_mut().zip(group).rev() {
            step(x, b, &mut words, &mut pos);
        }
    }
    let mut out = Vec::with_capacity(table_len(freqs) + 4 * W + 2 * (words.len() - pos));
    write_table(freqs, &mut out);
    for x in states {
        out.extend_from_slice(&x.to_le_bytes());
    }
    for w in &words[pos..] {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out
}

/// Codes `plane` with the frequencies of its own histogram (the encoder, which has the
/// histogram already, calls [`encode_with`]).
#[cfg(test)]
pub fn encode(plane: &[u8]) -> Vec<u8> {
    match normalise(&super::entropy::histogram(plane)) {
        Some(freqs) => encode_with(plane, &freqs),
        None => Vec::new(),
    }
}

/// Decodes a stream into exactly `n` bytes. Every length and table value is checked, and a
/// valid stream ends with every state back at its start and every word read, so most
/// corruptions are caught here before the plane checksum.
pub fn decode(data: &[u8], n: usize) -> Result<Vec<u8>, String> {
    decode_ways::<WAYS>(data, n, false)
}

/// [`decode`] of a stream of [`WIDE`] states (from [`encode_wide`]): eight states at a time
/// with AVX2 where the processor has it, else one at a time, to the same bytes.
pub fn decode_wide(data: &[u8], n: usize) -> Result<Vec<u8>, String> {
    decode_ways::<WIDE>(data, n, false)
}

/// Decodes a stream of `W` states; `scalar` rules out the vector loop (tests compare both).
fn decode_ways<const W: usize>(data: &[u8], n: usize, scalar: bool) -> Result<Vec<u8>, String> {
    if n == 0 {
        return if data.is_empty() { Ok(Vec::new()) } else { Err("rans stream for an empty plane".into()) };
    }
    let (freqs, at) = read_table(data)?;
    let (head, body) = data[at..].split_at_checked(4 * W).ok_or("rans stream shorter than its states")?;
    let mut states = [0u32; W];
    for (x, b) in states.iter_mut().zip(head.chunks_exact(4)) {
        *x = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if *x < LOW {
            return Err("rans stream has a state out of range".into());
        }
    }
    if body.len() % 2 != 0 {
        return Err("rans stream has an odd number of word bytes".into());
    }
    // One symbol (frequency 4096) never moves a state: the only valid stream has none moved
    // and no words. The other tables then fit their frequencies in 12 bits.
    if let Some(s) = freqs.iter().position(|&f| f == TOTAL) {
        if !body.is_empty() || states.iter().any(|&x| x != LOW) {
            return Err("rans stream of one symbol has words or moved states".into());
        }
        return Ok(vec![s as u8; n]);
    }
    let mut out = vec![0u8; n];
    // Words are read in place: `pos` counts the words read so far.
    let mut pos = 0usize;
    // Symbols decoded by the vector loop, a multiple of eight (its states carry on below).
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut done = 0usize;
    #[cfg(target_arch = "x86_64")]
    if W == WIDE && !scalar && super::simd::avx2() {
        // One packed entry per slot (frequency, slot - start, symbol: 12, 12 and 8 bits), for
        // the vector gathers.
        let mut packed = [0u32; TOTAL as usize];
        let mut cum = 0usize;
        for (s, &f) in freqs.iter().enumerate() {
            for (k, e) in packed[cum..cum + f as usize].iter_mut().enumerate() {
                *e = f | (k as u32) << 12 | (s as u32) << 24;
            }
            cum += f as usize;
        }
        if let Ok(lanes) = <&mut [u32; WIDE]>::try_from(&mut states[..]) {
            // SAFETY: AVX2 and POPCNT were detected at run time just above; every memory
            // access of the function is bounds-checked or proven in bounds there.
            #[allow(unsafe_code)]
            {
                done = unsafe { x86::decode_wide(lanes, body, &packed, &mut out, &mut pos) };
            }
        }
    }
    let _ = scalar;
    // Per slot: frequency, slot - start and symbol, in three arrays (20 KB, in L1): loading
    // each field costs no ALU work, measured 20% faster than one packed table.
    let mut freq = [0u16; TOTAL as usize];
    let mut bias = [0u16; TOTAL as usize];
    let mut sym = [0u8; TOTAL as usize];
    if done < n {
        let mut cum = 0usize;
        for (s, &f) in freqs.iter().enumerate() {
            let f = f as usize;
            for k in 0..f {
                freq[cum + k] = f as u16;
                bias[cum + k] = k as u16;
                sym[cum + k] = s as u8;
            }
            cum += f;
        }
    }
    let tables = (&freq, &bias, &sym);
    let word_at = |p: usize| body.get(2 * p..2 * p + 2).map_or(0, |w| u16::from_le_bytes([w[0], w[1]]) as u32);
    // The vector loop stops at a vector's end, possibly inside a round of W: finish it.
    let round = done.next_multiple_of(W).min(n);
    for (i, o) in out.iter_mut().enumerate().take(round).skip(done) {
        *o = step(&mut states[i % W], &mut pos, tables, word_at);
    }
    let full = round + (n - round) / W * W;
    let (main, tail) = out[round..].split_at_mut(full - round);
    for group in main.chunks_exact_mut(W) {
        // A group reads at most W words: where they all lie inside the stream, from a window
        // without bounds checks (j < W before every step, so `j % W` is j).
        if let Some(win) = body.get(2 * pos..2 * (pos + W)) {
            let mut j = 0usize;
            for (o, x) in group.iter_mut().zip(states.iter_mut()) {
                *o = step(x, &mut j, tables, |j| u16::from_le_bytes([win[2 * (j % W)], win[2 * (j % W) + 1]]) as u32);
            }
            pos += j;
        } else {
            // Near the end: a read past it yields 0 and is caught by the final check.
            for (o, x) in group.iter_mut().zip(states.iter_mut()) {
                *o = step(x, &mut pos, tables, word_at);
            }
        }
    }
    for (o, x) in tail.iter_mut().zip(states.iter_mut()) {
        *o = step(x, &mut pos, tables, word_at);
    }
    if pos != body.len() / 2 || states.iter().any(|&x| x != LOW) {
        return Err("rans stream does not decode to its length".into());
    }
    Ok(out)
}

/// Slot tables of the scalar decoder: frequency, slot - start and symbol.
type Tables<'a> = (&'a [u16; TOTAL as usize], &'a [u16; TOTAL as usize], &'a [u8; TOTAL as usize]);

/// One decoding step of state `x`, its renormalisation word (if it needs one) read by
/// `word(pos)`. x stays in [LOW, 2^32) whatever the words are, so nothing overflows.
#[inline(always)]
fn step(x: &mut u32, pos: &mut usize, tables: Tables<'_>, word: impl Fn(usize) -> u32) -> u8 {
    let slot = (*x & (TOTAL - 1)) as usize;
    *x = tables.0[slot] as u32 * (*x >> SCALE_BITS) + tables.1[slot] as u32;
    let need = *x < LOW;
    let w = word(*pos);
    *x = if need { *x << 16 | w } else { *x };
    *pos += need as usize;
    tables.2[slot]
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::simd::RANK;
    use super::{LOW, SCALE_BITS, TOTAL, WIDE};


    /// Per mask m of eight lanes: m's lanes, in order, moved to the top lanes (the others
    /// take lane 0), so that the lanes' words end where the words already written begin.
    const BACK: [[u32; 8]; 256] = {
        let mut t = [[0u32; 8]; 256];
        let mut m = 0;
        while m < 256 {
            let count = (m as u32).count_ones() as usize;
            let (mut l, mut i) = (0, 0);
            while l < 8 {
                if m >> l & 1 == 1 {
                    t[m][8 - count + i] = l as u32;
                    i += 1;
                }
                l += 1;
            }
            m += 1;
        }
        t
    };

    /// Quotient and remainder of each lane of `x` by its lane of `f` (1 to 4096), for
    /// `x < f * 2^20` (a state after renormalisation), by a single-precision division: `x` is
    /// converted to within 2^-24 of itself (so within `f / 16`) and the quotient rounded to
    /// within 2^-24 of below 2^20, so its floor is at most one off either way, and the exact
    /// remainder corrects it.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub fn divide(x: __m256i, f: __m256i) -> (__m256i, __m256i) {
        // Unsigned to float: the high and low halves convert exactly, the sum rounds once.
        let hi = _mm256_cvtepi32_ps(_mm256_srli_epi32::<16>(x));
        let lo = _mm256_cvtepi32_ps(_mm256_and_si256(x, _mm256_set1_epi32(0xffff)));
        let xf = _mm256_add_ps(_mm256_mul_ps(hi, _mm256_set1_ps(65536.0)), lo);
        let q = _mm256_cvttps_epi32(_mm256_floor_ps(_mm256_div_ps(xf, _mm256_cvtepi32_ps(f))));
        // Wrapping, but the true remainder of the estimate lies in (-f, 2f).
        let r = _mm256_sub_epi32(x, _mm256_mullo_epi32(q, f));
        let below = _mm256_cmpgt_epi32(_mm256_setzero_si256(), r);
        let (q, r) = (_mm256_add_epi32(q, below), _mm256_add_epi32(r, _mm256_and_si256(below, f)));
        let fits = _mm256_cmpgt_epi32(f, r);
        let one = _mm256_set1_epi32(1);
        (_mm256_add_epi32(q, _mm256_andnot_si256(fits, one)), _mm256_sub_epi32(r, _mm256_andnot_si256(fits, f)))
    }

    /// Codes whole groups of [`WIDE`] symbols of `groups`, the last group first, eight states
    /// per vector, writing the same words to the same places as the scalar loop (backwards
    /// from `pos`, each group's words in state order). Returns the bytes left at the front for
    /// the scalar loop (none, unless `words` is too short for a group).
    ///
    /// `packed` holds each symbol's frequency (bits 0-15) and start (bits 16-31); `x / f` is
    /// [`divide`].
    #[target_feature(enable = "avx2,popcnt")]
    pub fn encode_wide(groups: &[u8], states: &mut [u32; WIDE], words: &mut [u16], pos: &mut usize, packed: &[u32; 256]) -> usize {
        let mut x = [_mm256_setzero_si256(); 4];
        for (k, v) in x.iter_mut().enumerate() {
            // SAFETY: 8 u32 at 8 k of the 32 states.
            #[allow(unsafe_code)]
            let loaded = unsafe { _mm256_loadu_si256(states.as_ptr().add(8 * k).cast()) };
            *v = loaded;
        }
        let sixteen = _mm256_set1_epi32(16);
        let low16 = _mm256_set1_epi32(0xffff);
        let mut left = groups.len() / WIDE * WIDE;
        while left >= WIDE {
            // The group's bytes, and the window its words go to: at most 32 below `pos`, each
            // vector's eight stored below the words already there.
            let (Ok(group), Some(win)) = (<&[u8; WIDE]>::try_from(&groups[left - WIDE..left]), (*pos).checked_sub(WIDE).and_then(|at| words.get_mut(at..*pos))) else { break };
            let mut top = WIDE;
            for k in (0..4).rev() {
                let xs = x[k];
                let bytes: [u8; 8] = std::array::from_fn(|i| group[8 * k + i]);
                let b = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(i64::from_le_bytes(bytes)));
                // SAFETY: the lanes of `b` are bytes, indices into the 256-entry table.
                #[allow(unsafe_code)]
                let e = unsafe { _mm256_i32gather_epi32::<4>(packed.as_ptr().cast(), b) };
                let (f, start) = (_mm256_and_si256(e, low16), _mm256_srli_epi32::<16>(e));
                // A lane emits its low word where x >= f << 20, that is (x >> 20) >= f.
                let keep = _mm256_cmpgt_epi32(f, _mm256_srli_epi32::<20>(xs));
                let m = (!_mm256_movemask_ps(_mm256_castsi256_ps(keep)) & 0xff) as usize;
                // SAFETY: BACK rows are eight u32.
                #[allow(unsafe_code)]
                let order = unsafe { _mm256_loadu_si256(BACK[m].as_ptr().cast()) };
                let w = _mm256_and_si256(_mm256_permutevar8x32_epi32(xs, order), low16);
                let packed = _mm256_permute4x64_epi64::<0b00_00_10_00>(_mm256_packus_epi32(w, w));
                // top >= 8: at most eight words per vector of the four.
                let dst = &mut win[top - 8..top];
                // SAFETY: `dst` is eight u16 (16 bytes).
                #[allow(unsafe_code)]
                unsafe {
                    _mm_storeu_si128(dst.as_mut_ptr().cast(), _mm256_castsi256_si128(packed))
                };
                top -= m.count_ones() as usize;
                let xs = _mm256_srlv_epi32(xs, _mm256_andnot_si256(keep, sixteen));
                let (q, r) = divide(xs, f);
                x[k] = _mm256_add_epi32(_mm256_add_epi32(_mm256_slli_epi32::<12>(q), r), start);
            }
            *pos -= WIDE - top;
            left -= WIDE;
        }
        for (k, v) in x.iter().enumerate() {
            // SAFETY: 8 u32 at 8 k of the 32 states.
            #[allow(unsafe_code)]
            unsafe {
                _mm256_storeu_si256(states.as_mut_ptr().add(8 * k).cast(), *v)
            };
        }
        left
    }

    /// Decodes whole rounds of [`WIDE`] symbols into `out`, eight states per vector, while
    /// the next eight words lie inside `body`; returns the symbols decoded (a multiple of
    /// eight), with `states` and `pos` (words read) where the scalar decoder carries on.
    /// Lanes read their words in lane order, as the scalar decoder does.
    #[target_feature(enable = "avx2,popcnt")]
    pub fn decode_wide(states: &mut [u32; WIDE], body: &[u8], packed: &[u32; TOTAL as usize], out: &mut [u8], pos: &mut usize) -> usize {
        let mut x = [_mm256_setzero_si256(); 4];
        for (k, v) in x.iter_mut().enumerate() {
            *v = _mm256_setr_epi32(
                states[8 * k] as i32,
                states[8 * k + 1] as i32,
                states[8 * k + 2] as i32,
                states[8 * k + 3] as i32,
                states[8 * k + 4] as i32,
                states[8 * k + 5] as i32,
                states[8 * k + 6] as i32,
                states[8 * k + 7] as i32,
            );
        }
        let m12 = _mm256_set1_epi32(TOTAL as i32 - 1);
        let zero = _mm256_setzero_si256();
        let mut done = 0usize;
        // Words read, kept in a register (written back once).
        let mut at = *pos;
        'rounds: for round in out.chunks_exact_mut(WIDE) {
            let mut syms = [zero; 4];
            for k in 0..4 {
                let Some(win) = body.get(2 * at..2 * at + 16) else {
                    // Not eight words left: the vectors decoded so far in this round are kept.
                    let mut tmp = [0u32; WIDE];
                    for (j, v) in syms.iter().enumerate().take(k) {
                        // SAFETY: tmp holds four vectors of eight u32.
                        #[allow(unsafe_code)]
                        unsafe {
                            _mm256_storeu_si256(tmp.as_mut_ptr().add(8 * j).cast(), *v)
                        };
                    }
                    for (o, &t) in round.iter_mut().zip(&tmp).take(8 * k) {
                        *o = t as u8;
                    }
                    done += 8 * k;
                    break 'rounds;
                };
                let slot = _mm256_and_si256(x[k], m12);
                // SAFETY: every slot is below TOTAL, the table's length.
                #[allow(unsafe_code)]
                let e = unsafe { _mm256_i32gather_epi32::<4>(packed.as_ptr().cast(), slot) };
                let f = _mm256_and_si256(e, m12);
                let b = _mm256_and_si256(_mm256_srli_epi32::<12>(e), m12);
                syms[k] = _mm256_srli_epi32::<24>(e);
                let nx = _mm256_add_epi32(_mm256_mullo_epi32(f, _mm256_srli_epi32::<{ SCALE_BITS as i32 }>(x[k])), b);
                // Below LOW: the top 16 bits are zero.
                let need = _mm256_cmpeq_epi32(_mm256_srli_epi32::<16>(nx), zero);
                let mask = _mm256_movemask_ps(_mm256_castsi256_ps(need)) as usize;
                // SAFETY: `win` is 16 bytes. The lanes' word indices are their ranks among the
                // lanes that need a word (RANK; the others' indices are unused).
                #[allow(unsafe_code)]
                let words = unsafe { _mm_loadu_si128(win.as_ptr().cast()) };
                let ranks = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(i64::from_le_bytes(RANK[mask & 255])));
                let w = _mm256_permutevar8x32_epi32(_mm256_cvtepu16_epi32(words), ranks);
                x[k] = _mm256_blendv_epi8(nx, _mm256_or_si256(_mm256_slli_epi32::<16>(nx), w), need);
                at += mask.count_ones() as usize;
            }
            // The 32 symbols' low bytes, in order.
            let lo = _mm256_packus_epi32(syms[0], syms[1]);
            let hi = _mm256_packus_epi32(syms[2], syms[3]);
            let bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(lo, hi), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            // SAFETY: `round` is 32 bytes.
            #[allow(unsafe_code)]
            unsafe {
                _mm256_storeu_si256(round.as_mut_ptr().cast(), bytes)
            };
            done += WIDE;
        }
        *pos = at;
        let mut lanes = [0u32; WIDE];
        for (k, v) in x.iter().enumerate() {
            // SAFETY: lanes holds four vectors of eight u32.
            #[allow(unsafe_code)]
            unsafe {
                _mm256_storeu_si256(lanes.as_mut_ptr().add(8 * k).cast(), *v)
            };
        }
        *states = lanes;
        debug_assert!(states.iter().all(|&s| s >= LOW));
        done
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::codec::entropy;

    /// Deterministic pseudo-random bytes (xorshift).
    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut r = crate::testrand::XorShift::new(seed | 1);
        (0..n).map(|_| (r.next_u64() >> 32) as u8).collect()
    }

    /// The coders under test: 8 states, and 32 states decoded by the vector loop (where the
    /// processor has AVX2) and by the scalar one.
    type Coder = (usize, fn(&[u8], &[u32; 256]) -> Vec<u8>, fn(&[u8], usize) -> Result<Vec<u8>, String>);
    const CODERS: [Coder; 3] = [
        (WAYS, encode_with, decode),
        (WIDE, encode_wide, decode_wide),
        (WIDE, encode_wide, |d, n| decode_ways::<WIDE>(d, n, true)),
    ];

    fn encode_by(plane: &[u8], coder: Coder) -> Vec<u8> {
        normalise(&entropy::histogram(plane)).map_or(Vec::new(), |f| (coder.1)(plane, &f))
    }

    fn cases() -> Vec<Vec<u8>> {
        let r = noise(200_003, 7);
        vec![
            vec![],
            vec![42],
            vec![0; 1000],
            vec![255; 7],
            (0..=255u8).collect(),
            (0..70_000u32).map(|i| (i % 256) as u8).collect(),
            noise(10_007, 3),
            // Very skewed: one rare byte in many, and rare bytes of every value.
            (0..100_000u32).map(|i| u8::from(i == 77_777)).collect(),
            r.iter().map(|&b| if b < 3 { b.wrapping_mul(97) } else { 9 }).collect(),
            // Geometric-like, as an exponent plane.
            r.iter().map(|&b| 120 + (b.leading_zeros() as u8)).collect(),
            // Every count from 1 to 256 of a different byte: frequencies hit 1 and round.
            (0..=255u32).flat_map(|s| std::iter::repeat_n(s as u8, s as usize + 1)).collect(),
            // Lengths around the interleaving.
            noise(WAYS - 1, 5),
            noise(WAYS + 1, 6),
            noise(3 * WAYS, 8),
            noise(WIDE - 1, 9),
            noise(WIDE + 9, 10),
            noise(5 * WIDE + 8, 12),
        ]
    }

    /// The definition of [`normalise_to`]'s correction: every step rescans every symbol.
    fn normalise_reference(hist: &[u64], total: u32) -> Option<Vec<u32>> {
        let n: u64 = hist.iter().sum();
        if n == 0 {
            return None;
        }
        let mut f: Vec<u32> = hist.iter().map(|&c| if c > 0 { ((c as u128 * total as u128 + n as u128 / 2) / n as u128).max(1) as u32 } else { 0 }).collect();
        let mut diff = total as i64 - f.iter().map(|&x| x as i64).sum::<i64>();
        while diff != 0 {
            let syms = 0..hist.len();
            let best = if diff > 0 {
                syms.filter(|&s| f[s] > 0).max_by(|&a, &b| gain(hist[a], f[a]).total_cmp(&gain(hist[b], f[b])))
            } else {
                syms.filter(|&s| f[s] > 1).min_by(|&a, &b| gain(hist[a], f[a] - 1).total_cmp(&gain(hist[b], f[b] - 1)))
            }?;
            f[best] = if diff > 0 { f[best] + 1 } else { f[best] - 1 };
            diff += if diff > 0 { -1 } else { 1 };
        }
        Some(f)
    }

    #[test]
    fn normalising_breaks_ties_as_defined() {
        // Equal gains: a unit more goes to the last symbol, a unit less comes from the first.
        assert_eq!(normalise_to(&[1, 1, 1], 256), Some(vec![85, 85, 86]));
        assert_eq!(normalise_to(&[1; 6], 256), Some(vec![42, 42, 43, 43, 43, 43]));
        assert_eq!(normalise_to(&[0, 1, 1, 1], 256), normalise_reference(&[0, 1, 1, 1], 256));
    }

    proptest::proptest! {
        #[test]
        fn normalising_keeps_the_definition(
            hist in proptest::collection::vec(proptest::prop_oneof![Just(0u64), 1u64..4, 1u64..100_000], 1..300),
            shift in 8u32..16,
        ) {
            let total = 1u32 << shift;
            proptest::prop_assume!(hist.len() as u32 <= total);
            let got = normalise_to(&hist, total);
            proptest::prop_assert_eq!(&got, &normalise_reference(&hist, total));
            if let Some(f) = got {
                proptest::prop_assert_eq!(f.iter().map(|&x| x as u64).sum::<u64>(), total as u64);
                proptest::prop_assert!(f.iter().zip(&hist).all(|(&fi, &c)| (c > 0) == (fi > 0)));
            }
        }
    }

    #[test]
    fn round_trips_every_distribution() -> Result<(), String> {
        for coder @ (ways, _, dec) in CODERS {
            for plane in cases() {
                let coded = encode_by(&plane, coder);
                assert_eq!(dec(&coded, plane.len())?, plane, "{} bytes, {ways} states", plane.len());
                if let Some(f) = normalise(&entropy::histogram(&plane)) {
                    assert_eq!(f.iter().sum::<u32>(), TOTAL);
                    let est = estimate(&entropy::histogram(&plane), &f, ways);
                    // The states' final contents save up to 2 bytes each; the rounding of x / f
                    // in each step costs a few bits in a million.
                    assert!(coded.len() <= est + est / 1000 + 8 && est <= coded.len() + 4 * ways, "{} vs {est}", coded.len());
                    let h = entropy::histogram(&plane);
                    if ways == WAYS {
                        assert!(lower_bound(&h, entropy::bits_of(&h)) <= est);
                    }
                }
            }
        }
        Ok(())
    }

    /// The vector encoder writes the scalar loop's bytes: every case, and one-symbol-heavy
    /// planes where frequencies of 1 and near 4096 meet states at every renormalisation.
    #[test]
    fn the_vector_encoder_writes_the_scalar_bytes() {
        let mut planes = cases();
        planes.push((0..50_000u32).map(|i| if i % 4093 == 0 { (i % 7) as u8 } else { 200 }).collect());
        planes.push(noise(WIDE * 40 + 5, 9).iter().map(|&b| b >> 7).collect());
        for plane in planes {
            let Some(f) = normalise(&entropy::histogram(&plane)) else { continue };
            assert!(encode_ways::<WIDE>(&plane, &f, true) == encode_ways::<WIDE>(&plane, &f, false), "{} bytes", plane.len());
        }
    }

    /// The vector encoder's division by a frequency, against integer division: every
    /// frequency, at and around its multiples, up to the largest state it meets.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_vector_division_is_exact() {
        use std::arch::x86_64::*;
        if !super::super::simd::avx2() {
            return;
        }
        let mut r = crate::testrand::XorShift::new(3);
        for f in 1..=TOTAL {
            let top = (f as u64) << 20;
            let mut xs: Vec<u32> = vec![0, 1, f - 1, f, f + 1, (top - 1) as u32, (top - f as u64) as u32, (top - f as u64 - 1) as u32];
            for _ in 0..24 {
                let k = r.next_u64() % (1 << 20);
                let x = k * f as u64 + [0, f as u64 - 1, r.next_u64() % f as u64][(r.next_u64() % 3) as usize];
                xs.push(x.min(top - 1) as u32);
            }
            for lanes in xs.chunks(8) {
                let mut x = [0u32; 8];
                x[..lanes.len()].copy_from_slice(lanes);
                let (mut q, mut rem) = ([0u32; 8], [0u32; 8]);
                // SAFETY: AVX2 was detected above; the loads and stores are of eight u32.
                #[allow(unsafe_code)]
                unsafe {
                    let (vq, vr) = super::x86::divide(_mm256_loadu_si256(x.as_ptr().cast()), _mm256_set1_epi32(f as i32));
                    _mm256_storeu_si256(q.as_mut_ptr().cast(), vq);
                    _mm256_storeu_si256(rem.as_mut_ptr().cast(), vr);
                }
                for i in 0..8 {
                    assert_eq!((q[i], rem[i]), (x[i] / f, x[i] % f), "{} / {f}", x[i]);
                }
            }
        }
    }

    #[test]
    fn wide_streams_are_the_same_plane_with_more_states() {
        let plane = noise(100_000, 21).iter().map(|&b| b >> 5).collect::<Vec<u8>>();
        let f = normalise(&entropy::histogram(&plane)).unwrap_or([0; 256]);
        let (narrow, wide) = (encode_with(&plane, &f), encode_wide(&plane, &f));
        // The same table and, but for the states, nearly the same words.
        assert_eq!(narrow[..table_len(&f)], wide[..table_len(&f)]);
        assert!(wide.len().abs_diff(narrow.len() + 4 * (WIDE - WAYS)) < 64, "{} vs {}", wide.len(), narrow.len());
        // Each decoder rejects the other's stream.
        assert!(decode(&wide, plane.len()).is_err());
        assert!(decode_wide(&narrow, plane.len()).is_err());
    }

    #[test]
    fn codes_close_to_the_entropy() {
        let r = noise(1 << 20, 11);
        let plane: Vec<u8> = r.iter().map(|&b| 120 + (b.leading_zeros() as u8).min(5)).collect();
        let bound = entropy::order0_bits(&plane) / 8.0;
        let coded = encode(&plane).len() as f64;
        assert!(coded < bound * 1.002 + 64.0, "{coded} bytes against {bound}");
        // One odd byte in a million: 12 bits for it, 2^20 * log2(4096 / 4095) bits for the rest.
        let mut skew = vec![3u8; 1 << 20];
        skew[1000] = 4;
        assert!(encode(&skew).len() < 6 + 4 * WAYS + 50, "{}", encode(&skew).len());
    }

    #[test]
    fn tables_are_compact() {
        let two = encode(&[1, 2, 1, 2]);
        // count, two symbols, two frequencies, the states, no words.
        assert_eq!(two.len(), 1 + 2 + 2 * 2 + 4 * WAYS);
        let all: Vec<u8> = (0..=255).collect();
        assert!(encode(&all).len() < 1 + 32 + 256 + 4 * WAYS + 2 * 256 + 16);
    }

    #[test]
    fn corrupt_streams_are_errors() {
        for coder in CODERS {
            corrupt_streams_of(coder);
        }
    }

    fn corrupt_streams_of((ways, _, decode): Coder) {
        for plane in cases() {
            let s = encode_by(&plane, (ways, CODERS[usize::from(ways == WIDE)].1, decode));
            let n = plane.len();
            // Every cut of the small streams; of the large ones (each cut decodes the whole
            // plane), every cut near either end and a stride between.
            let cuts: Vec<usize> = if s.len() <= 4096 {
                (0..s.len()).collect()
            } else {
                (0..1024).chain((1024..s.len() - 1024).step_by(997)).chain(s.len() - 1024..s.len()).collect()
            };
            for cut in cuts {
                assert!(decode(&s[..cut], n).is_err(), "cut at {cut} of {}", s.len());
            }
            // Flips anywhere never panic; in the table and the states they are errors.
            for i in 0..s.len().min(400) {
                for bit in [0x01, 0x10, 0x80] {
                    let mut t = s.clone();
                    t[i] ^= bit;
                    if let Ok(out) = decode(&t, n) {
                        assert_eq!(out.len(), n);
                    }
                }
            }
            let mut longer = s.clone();
            longer.extend_from_slice(&[0, 0]);
            assert!(decode(&longer, n).is_err());
            // A one-symbol stream never moves its states, so only there a wrong n goes unseen
            // (the plane checksum catches it).
            if n > 0 && plane.iter().any(|&b| b != plane[0]) {
                assert!(decode(&s, n + 1).is_err());
                assert!(decode(&s, n - 1).is_err());
            }
        }
        // Hand-made tables, with every state at its start value.
        let states: Vec<u8> = (0..ways).flat_map(|_| LOW.to_le_bytes()).collect();
        let with_states = |t: &[u8]| [t, &states].concat();
        assert_eq!(decode(&with_states(&[0, 5, 0x80, 0x20]), 10), Ok(vec![5; 10]));
        let bad: [&[u8]; 6] = [
            &[1, 5, 5, 0x80, 0x10, 0x80, 0x10], // symbols not ascending
            &[0, 5, 0x80, 0x10],                // sum 2048
            &[1, 5, 6, 0, 0x80, 0x20],          // a zero frequency
            &[1, 5, 6, 1, 1],                   // sum 2
            &[1, 5, 6, 0xff, 0xff, 1],          // a frequency past 4096
            &[40],                              // 41 symbols, bitmap read from the states
        ];
        for (k, t) in bad.iter().enumerate() {
            assert!(decode(&with_states(t), 10).is_err(), "table {k}");
        }
        let mut low = with_states(&[0, 5, 0x80, 0x20]);
        low[4] = 0xff;
        low[6] = 0;
        assert!(decode(&low, 10).is_err(), "a state below 2^16");
        // A bitmap whose count disagrees with its header.
        let mut s = vec![31u8];
        s.extend_from_slice(&[0xff; 32]);
        assert!(decode(&s, 10).is_err());
        assert!(decode(&[], 1).is_err());
        assert!(decode(&[0], 0).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

        #[test]
        fn any_plane_round_trips(plane in proptest::collection::vec(any::<u8>(), 0..3000), skew in 0u8..8) {
            // Skew folds the bytes towards small values: from uniform to nearly constant.
            let plane: Vec<u8> = plane.iter().map(|&b| b >> skew).collect();
            for coder in CODERS {
                let coded = encode_by(&plane, coder);
                prop_assert_eq!((coder.2)(&coded, plane.len()), Ok(plane.clone()));
            }
        }

        #[test]
        fn vector_and_scalar_encoders_agree(plane in proptest::collection::vec(any::<u8>(), 0..5000), skew in 0u8..8) {
            let plane: Vec<u8> = plane.iter().map(|&b| b >> skew).collect();
            if let Some(f) = normalise(&entropy::histogram(&plane)) {
                prop_assert_eq!(encode_ways::<WIDE>(&plane, &f, true), encode_ways::<WIDE>(&plane, &f, false));
            }
        }

        #[test]
        fn any_bytes_decode_without_panic(data in proptest::collection::vec(any::<u8>(), 0..400), n in 0usize..500) {
            let _ = decode(&data, n);
            // The vector loop and the scalar one agree on every stream, valid or not.
            prop_assert_eq!(decode_wide(&data, n), decode_ways::<WIDE>(&data, n, true));
        }

        #[test]
        fn wide_decoders_agree_on_corrupt_streams(plane in proptest::collection::vec(any::<u8>(), 1000..5000), skew in 0u8..8, at in any::<usize>(), bit in 0u8..8) {
            let plane: Vec<u8> = plane.iter().map(|&b| b >> skew).collect();
            let mut coded = encode_by(&plane, CODERS[1]);
            if !coded.is_empty() {
                let i = at % coded.len();
                coded[i] ^= 1 << bit;
            }
            prop_assert_eq!(decode_wide(&coded, plane.len()), decode_ways::<WIDE>(&coded, plane.len(), true));
        }
    }
}
