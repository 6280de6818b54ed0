//! Stream coders for one byte plane: stored, constant, zstd, sparse (bitmap + values), rANS and
//! gaps (runs of zeros + values).
//!
//! Each plane of a chunk is encoded with every coder that can apply and the smallest result is
//! kept, so the choice is by measured size (zstd is skipped where a probe of the plane, or its
//! entropy, shows that it loses, and the sparse coder where the gaps coder applies). Decoding
//! checks every length against the element count the chunk header gives, so a corrupt stream
//! is an error, never a large allocation.

use super::{entropy, rans};

/// Stream coder ids as stored in the chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coder {
    /// The plane's bytes as they are.
    Stored = 0,
    /// One byte, repeated for every element.
    Constant = 1,
    /// One zstd frame (level 1).
    Zstd = 2,
    /// u32 LE length of a zstd frame of the bitmap of non-zero positions (LSB first), the frame,
    /// then a zstd frame of the non-zero bytes in order.
    Sparse = 3,
    /// A plane split by a context its decoder already knows (whether every higher residual
    /// plane of the element is zero): lead coder (u8), tail coder (u8), lead element count (u64
    /// LE), lead stream length (u64 LE), the lead stream, the tail stream. The lead part holds
    /// the bytes of the elements whose higher planes are all zero, where this byte is the
    /// leading one and skewed towards small values; the tail holds the rest, nearly uniform.
    Split = 4,
    /// Static order-0 rANS with the plane's own frequency table (see [`super::rans`]).
    Rans = 5,
    /// The one stream of a [`super::Transform::Magnitude`] chunk (see [`super::magnitude`]):
    /// not a plane, decoded only together with the base. Its checksum covers the stream.
    Magnitude = 6,
    /// [`Coder::Rans`] with [`rans::WIDE`] interleaved states instead of [`rans::WAYS`]: the
    /// decoder steps eight at a time in vector registers (see [`WIDE_MIN`]).
    RansWide = 7,
    /// A mostly-zero plane as its runs of zeros and the bytes between them (see
    /// [`encode_gaps`]): gap count (u32 LE), value count (u32 LE), gap coder (u8), gap stream
    /// length (u32 LE), the gap stream, value coder (u8), the value stream. Each gap byte below
    /// 255 is a run of that many zeros followed by the next value; 255 is 255 zeros and no
    /// value; the plane ends in zeros after the last value.
    Gaps = 8,
}

impl Coder {
    pub fn from_byte(b: u8) -> Option<Coder> {
        Some(match b {
            0 => Coder::Stored,
            1 => Coder::Constant,
            2 => Coder::Zstd,
            3 => Coder::Sparse,
            4 => Coder::Split,
            5 => Coder::Rans,
            6 => Coder::Magnitude,
            7 => Coder::RansWide,
            8 => Coder::Gaps,
            _ => return None,
        })
    }
}

/// zstd level for plane streams. Measured on the byte planes of SGD snapshot deltas
/// (`cargo xtask bench storage`): level 1 is smaller than level 3 and within 1.6% of level 19.
/// Over all planes it beats the order-0 bound (planes have runs), but not on skewed ones, where
/// [`Coder::Rans`] wins.
pub const ZSTD_LEVEL: i32 = 1;

/// Order-0 entropy (bits per byte) below which plain zstd is not tried (see [`encode`]).
const ZSTD_MIN_BITS: f64 = 1.5;

/// Planes of at least this many bytes are coded with [`Coder::RansWide`] where rANS wins: its
/// 96 more bytes of start states are then at most 0.6% of the plane (and in the benchmark's
/// series far less), and it decodes 2-3 times as fast (measured on the series' planes).
pub const WIDE_MIN: usize = 1 << 14;

/// rANS must save at least 1 / RANS_MIN_GAIN of the best other coder's size (see [`encode`]).
const RANS_MIN_GAIN: usize = 100;

thread_local! {
    // One zstd context per thread, reused: creating one per plane costs more than coding a
    // small plane.
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        std::cell::RefCell::new(zstd::bulk::Compressor::new(ZSTD_LEVEL).ok());
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().ok());
}

/// One zstd frame at [`ZSTD_LEVEL`].
fn zstd1(data: &[u8]) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|c| match c.borrow_mut().as_mut() {
        Some(c) => c.compress(data),
        None => zstd::bulk::compress(data, ZSTD_LEVEL),
    })
}

/// Encodes one plane with the smallest coder.
pub fn encode(plane: &[u8]) -> (Coder, Vec<u8>) {
    encode_with_hist(plane, &entropy::histogram(plane))
}

/// [`encode`] with the plane's byte histogram already counted.
pub fn encode_with_hist(plane: &[u8], hist: &[u64; 256]) -> (Coder, Vec<u8>) {
    encode_inner(plane, hist, true)
}

/// [`encode_with_hist`]; `gaps`: whether [`Coder::Gaps`] may be tried (not for its own parts).
fn encode_inner(plane: &[u8], hist: &[u64; 256], gaps: bool) -> (Coder, Vec<u8>) {
    let Some(&first) = plane.first() else { return (Coder::Stored, Vec::new()) };
    if hist[first as usize] == plane.len() as u64 {
        return (Coder::Constant, vec![first]);
    }
    // A plane at (nearly) 8 bits of order-0 entropy per byte, like the low mantissa bytes of a
    // float, cannot be coded smaller by an order-0 coder; zstd would only spend time on it.
    let bits = entropy::bits_of(hist);
    if bits > 7.98 * plane.len() as f64 {
        return (Coder::Stored, plane.to_vec());
    }
    let mut best = (Coder::Stored, None::<Vec<u8>>);
    let mut best_len = plane.len();
    // Below ZSTD_MIN_BITS bits per byte, rANS (or the sparse coder) beat plain zstd on every
    // plane measured, by 13-50%: zstd is not tried there, nor on a large plane where the probe
    // shows it losing.
    // rANS frequencies, normalised once for the probe and the coding (None: not yet).
    let mut freqs: Option<Option<[u32; 256]>> = None;
    let mut try_zstd = bits >= ZSTD_MIN_BITS * plane.len() as f64;
    if try_zstd && plane.len() >= PROBE_MIN {
        try_zstd = !zstd_loses(plane, hist, freqs.get_or_insert_with(|| rans::normalise(hist)).as_ref());
    }
    if try_zstd {
        if let Ok(z) = zstd1(plane) {
            if z.len() < best_len {
                best_len = z.len();
                best = (Coder::Zstd, Some(z));
            }
        }
    }
    if hist[0] * 2 >= plane.len() as u64 {
        // The coders of mostly-zero planes start from the non-zero bytes and where they are.
        let (values, bitmap) = super::planes::compact_nonzero_u8(plane);
        // Where the gaps coder applies, the sparse coder is not tried: on the benchmark's bf16
        // series its two zstd frames took 5% of the encoder's time there and would have saved
        // 274 bytes of 7.5 MB.
        let coded = if gaps && values.len() as u64 * GAPS_MAX_SHARE <= plane.len() as u64 {
            encode_gaps(&values, &bitmap).map(|g| (Coder::Gaps, g))
        } else {
            encode_sparse(&values, &bitmap).map(|s| (Coder::Sparse, s))
        };
        if let Some((c, bytes)) = coded.filter(|(_, b)| b.len() < best_len) {
            best_len = bytes.len();
            best = (c, Some(bytes));
        }
    }
    // zstd's Huffman literals spend whole bits per byte, which a skewed plane (an exponent
    // byte) feels; rANS codes to the order-0 entropy. Its size is known from the histogram to a
    // few bytes, so it is coded only where it wins, and by at least 1%: zstd decodes about
    // twice as fast, and in the benchmark's bf16 series the planes rANS won by less were 57%
    // of its bytes for 22% of its saving.
    let limit = best_len - best_len / RANS_MIN_GAIN;
    if rans::lower_bound(hist, bits) < limit {
        if let Some(freqs) = freqs.unwrap_or_else(|| rans::normalise(hist)) {
            let wide = plane.len() >= WIDE_MIN;
            let ways = if wide { rans::WIDE } else { rans::WAYS };
            if rans::estimate(hist, &freqs, ways) < limit {
                let (coder, r) = if wide { (Coder::RansWide, rans::encode_wide(plane, &freqs)) } else { (Coder::Rans, rans::encode_with(plane, &freqs)) };
                if r.len() < best_len {
                    best = (coder, Some(r));
                }
            }
        }
    }
    match best {
        (c, Some(bytes)) => (c, bytes),
        (_, None) => (Coder::Stored, plane.to_vec()),
    }
}

/// Planes of at least this many bytes are probed before zstd codes them whole (see
/// [`zstd_loses`]).
const PROBE_MIN: usize = 1 << 16;
/// The probe's pieces: together an eighth of the plane, spread evenly over it.
const PROBE_PIECES: usize = 8;
/// zstd is skipped where the probe predicts it at least this factor of the rANS size.
const PROBE_SKIP: f64 = 1.05;

/// Whether zstd is sure to lose to rANS on a large plane: zstd codes an eighth of the plane
/// (pieces spread over it, so runs and repeats count as they would whole), and its size scaled
/// to the plane is compared with the rANS size the histogram predicts. On the benchmark's
/// series zstd lost by 3% or more on two fifths of the bytes it was tried on; the probe costs
/// an eighth of a full try.
fn zstd_loses(plane: &[u8], hist: &[u64; 256], freqs: Option<&[u32; 256]>) -> bool {
    let Some(freqs) = freqs.filter(|_| plane.len() >= PROBE_MIN) else { return false };
    let ways = if plane.len() >= WIDE_MIN { rans::WIDE } else { rans::WAYS };
    let rans_len = rans::estimate(hist, freqs, ways);
    let piece = plane.len() / (PROBE_PIECES * PROBE_PIECES);
    let stride = plane.len() / PROBE_PIECES;
    let mut sample = Vec::with_capacity(piece * PROBE_PIECES);
    for k in 0..PROBE_PIECES {
        sample.extend_from_slice(&plane[k * stride..k * stride + piece]);
    }
    match zstd1(&sample) {
        Ok(z) => z.len() as f64 * (plane.len() as f64 / sample.len() as f64) >= rans_len as f64 * PROBE_SKIP,
        Err(_) => false,
    }
}

/// [`Coder::Sparse`] of a plane's non-zero bytes and their bitmap (see
/// [`super::planes::compact_nonzero_u8`]).
fn encode_sparse(values: &[u8], bitmap: &[u8]) -> Option<Vec<u8>> {
    let bz = zstd1(bitmap).ok()?;
    let vz = zstd1(values).ok()?;
    let mut out = Vec::with_capacity(4 + bz.len() + vz.len());
    out.extend_from_slice(&u32::try_from(bz.len()).ok()?.to_le_bytes());
    out.extend_from_slice(&bz);
    out.extend_from_slice(&vz);
    Some(out)
}

/// [`Coder::Gaps`] is tried on planes where at most one byte in this many is not zero.
const GAPS_MAX_SHARE: u64 = 4;

/// A mostly-zero plane as [`Coder::Gaps`]: the high byte planes of small residuals, where a
/// few hundred bytes in 64K are not zero. Measured on the benchmark's bf16 series, its size is
/// within 1% of rANS over the whole plane (the gaps carry the same information as the zeros,
/// and runs of non-zero bytes make them smaller), but the decoder steps once per non-zero byte
/// (and per 255 zeros) instead of once per byte: 7-80 times fewer steps there.
///
/// Takes the plane's non-zero bytes and their bitmap, as [`encode_sparse`] does.
fn encode_gaps(values: &[u8], bitmap: &[u8]) -> Option<Vec<u8>> {
    let mut gaps = Vec::with_capacity(values.len() + 8 * bitmap.len() / 255 + 1);
    // The element after the last value.
    let mut next = 0usize;
    for (w, word) in bitmap.chunks(8).enumerate() {
        let mut x = word.iter().rev().fold(0u64, |x, &b| x << 8 | b as u64);
        while x != 0 {
            let at = 64 * w + x.trailing_zeros() as usize;
            x &= x - 1;
            let mut run = at - next;
            while run >= 255 {
                gaps.push(255);
                run -= 255;
            }
            gaps.push(run as u8);
            next = at + 1;
        }
    }
    let (gc, gs) = encode_inner(&gaps, &entropy::histogram(&gaps), false);
    let (vc, vs) = encode_inner(values, &entropy::histogram(values), false);
    let mut out = Vec::with_capacity(GAPS_HEADER + gs.len() + vs.len());
    out.extend_from_slice(&u32::try_from(gaps.len()).ok()?.to_le_bytes());
    out.extend_from_slice(&u32::try_from(values.len()).ok()?.to_le_bytes());
    out.push(gc as u8);
    out.extend_from_slice(&u32::try_from(gs.len()).ok()?.to_le_bytes());
    out.extend_from_slice(&gs);
    out.push(vc as u8);
    out.extend_from_slice(&vs);
    Some(out)
}

/// Bytes of a gaps stream outside its two parts.
const GAPS_HEADER: usize = 14;

fn decode_gaps(data: &[u8], n: usize) -> Result<Vec<u8>, String> {
    let u32_at = |o: usize| data.get(o..o + 4).and_then(|b| b.try_into().ok()).map(|b| u32::from_le_bytes(b) as usize);
    let (Some(g), Some(m), Some(&gc), Some(glen)) = (u32_at(0), u32_at(4), data.get(8), u32_at(9)) else {
        return Err("gaps plane shorter than its header".into());
    };
    // A gap byte per value at least, and at most one per element.
    if g > n || m > g {
        return Err(format!("gaps plane claims {g} gaps and {m} values for {n} bytes"));
    }
    // Parts are never gaps streams themselves, so a hostile stream cannot nest them.
    let coder = |b: u8| match Coder::from_byte(b) {
        Some(Coder::Gaps | Coder::Split | Coder::Magnitude) | None => Err(format!("gaps plane names an invalid part coder {b}")),
        Some(c) => Ok(c),
    };
    let gs = data.get(13..13 + glen).ok_or("gaps plane gap stream runs past the plane")?;
    let (&vc, vs) = data.get(13 + glen..).and_then(|r| r.split_first()).ok_or("gaps plane shorter than its value stream")?;
    let gaps = decode(coder(gc)?, gs, g)?;
    let values = decode(coder(vc)?, vs, m)?;
    let mut out = vec![0u8; n];
    let (mut at, mut vi) = (0usize, 0usize);
    for &x in &gaps {
        at += x as usize;
        if x == 255 {
            continue;
        }
        match (out.get_mut(at), values.get(vi)) {
            (Some(o), Some(&v)) => *o = v,
            (None, _) => return Err(format!("gaps plane places a byte past its {n} bytes")),
            (_, None) => return Err("gaps plane has fewer values than gaps".into()),
        }
        at += 1;
        vi += 1;
    }
    if vi != m {
        return Err(format!("gaps plane has {m} values for {vi} gaps"));
    }
    Ok(out)
}

/// Bytes of a split stream before its two parts.
const SPLIT_HEADER: usize = 18;

/// Codes `plane` split by `lead` (see [`Coder::Split`]): each part with its smallest coder.
pub fn encode_split(plane: &[u8], lead: &[bool], hists: Option<(&[u64; 256], &[u64; 256])>) -> Vec<u8> {
    let (a, b) = split(plane, lead);
    let code = |part: &[u8], h: Option<&[u64; 256]>| match h {
        Some(h) => encode_with_hist(part, h),
        None => encode(part),
    };
    let ((ca, sa), (cb, sb)) = rayon::join(|| code(&a, hists.map(|h| h.0)), || code(&b, hists.map(|h| h.1)));
    let mut out = Vec::with_capacity(SPLIT_HEADER + sa.len() + sb.len());
    out.push(ca as u8);
    out.push(cb as u8);
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    out.extend_from_slice(&(sa.len() as u64).to_le_bytes());
    out.extend_from_slice(&sa);
    out.extend_from_slice(&sb);
    out
}

/// Decodes the two parts of a split stream of `n` elements (lead part first); merging them
/// needs the context, see [`merge_split`].
pub fn decode_split_parts(data: &[u8], n: usize) -> Result<(Vec<u8>, Vec<u8>), String> {
    if data.len() < SPLIT_HEADER {
        return Err("split plane shorter than its header".into());
    }
    let coder = |b: u8| match Coder::from_byte(b) {
        Some(Coder::Split | Coder::Magnitude) | None => Err(format!("split plane names an invalid part coder {b}")),
        Some(c) => Ok(c),
    };
    let (ca, cb) = (coder(data[0])?, coder(data[1])?);
    let u64_at = |o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&data[o..o + 8]);
        u64::from_le_bytes(a)
    };
    let count = u64_at(2);
    let alen = u64_at(10);
    if count > n as u64 {
        return Err(format!("split plane claims {count} lead elements of {n}"));
    }
    let rest = &data[SPLIT_HEADER..];
    if alen > rest.len() as u64 {
        return Err("split plane lead part runs past the stream".into());
    }
    let (sa, sb) = rest.split_at(alen as usize);
    let count = count as usize;
    Ok((decode(ca, sa, count)?, decode(cb, sb, n - count)?))
}

/// The elements of `plane` where `lead` holds (in order), and the others: the inverse of
/// [`merge_split`]. Each element is written to both parts and only one index moves, without a
/// branch (the context is close to random, so a branch would mispredict often).
pub(super) fn split(plane: &[u8], lead: &[bool]) -> (Vec<u8>, Vec<u8>) {
    let n = plane.len().min(lead.len());
    let count = lead[..n].iter().filter(|&&l| l).count();
    // Eight bytes of slack past each part: the vector prefix writes eight at a time, and the
    // loop below one past the part's end.
    let (mut a, mut b) = (vec![0u8; count + 8], vec![0u8; n - count + 8]);
    // Eight elements at a time where the processor can; this loop from where that stopped.
    let (done, mut ia) = super::simd::split_prefix(&plane[..n], &lead[..n], &mut a, &mut b);
    let mut ib = done - ia;
    for (&x, &l) in plane[done..n].iter().zip(&lead[done..n]) {
        if let (Some(pa), Some(pb)) = (a.get_mut(ia), b.get_mut(ib)) {
            (*pa, *pb) = (x, x);
        }
        ia += l as usize;
        ib += !l as usize;
    }
    a.truncate(count);
    b.truncate(n - count);
    (a, b)
}

/// Interleaves the parts of a split plane back in element order.
pub fn merge_split(a: &[u8], b: &[u8], lead: &[bool]) -> Result<Vec<u8>, String> {
    let count = lead.iter().filter(|&&l| l).count();
    if count != a.len() || lead.len() != a.len() + b.len() {
        return Err(format!("split plane has {} lead elements, its context {count}", a.len()));
    }
    // Both candidates are loaded and one selected, without a branch: the context is close to
    // random, so a branch would mispredict often. Lengths match the context exactly (checked
    // above), so the `unwrap_or` only covers the index one past the end of the other part.
    let mut out = vec![0u8; lead.len()];
    // Eight elements at a time where the processor can; this loop from where that stopped.
    let (done, mut ia, mut ib) = super::simd::merge_split_prefix(a, b, lead, &mut out);
    for (o, &l) in out.iter_mut().zip(lead).skip(done) {
        let (x, y) = (a.get(ia).copied().unwrap_or(0), b.get(ib).copied().unwrap_or(0));
        *o = if l { x } else { y };
        ia += l as usize;
        ib += !l as usize;
    }
    Ok(out)
}

/// Decodes a stream into exactly `n` bytes. Split streams need their context: see
/// [`decode_split_parts`].
pub fn decode(coder: Coder, data: &[u8], n: usize) -> Result<Vec<u8>, String> {
    match coder {
        Coder::Split => Err("split plane outside its context".into()),
        Coder::Magnitude => Err("magnitude stream outside its chunk".into()),
        Coder::Stored => {
            if data.len() != n {
                return Err(format!("stored plane has {} bytes, expected {n}", data.len()));
            }
            Ok(data.to_vec())
        }
        Coder::Constant => match data {
            [b] => Ok(vec![*b; n]),
            _ => Err(format!("constant plane has {} bytes, expected 1", data.len())),
        },
        Coder::Zstd => unzstd(data, n),
        Coder::Rans => rans::decode(data, n),
        Coder::RansWide => rans::decode_wide(data, n),
        Coder::Gaps => decode_gaps(data, n),
        Coder::Sparse => {
            let Some((len, rest)) = data.split_first_chunk::<4>() else {
                return Err("sparse plane shorter than its header".into());
            };
            let blen = u32::from_le_bytes(*len) as usize;
            if blen > rest.len() {
                return Err("sparse plane bitmap runs past the stream".into());
            }
            let (bz, vz) = rest.split_at(blen);
            let bitmap = unzstd(bz, n.div_ceil(8))?;
            let ones: usize = bitmap.iter().map(|b| b.count_ones() as usize).sum();
            if !n.is_multiple_of(8) {
                if let Some(last) = bitmap.last() {
                    if last >> (n % 8) != 0 {
                        return Err("sparse plane bitmap marks elements past the end".into());
                    }
                }
            }
            let values = unzstd(vz, ones)?;
            let mut out = vec![0u8; n];
            let mut vi = values.iter();
            for (k, &byte) in bitmap.iter().enumerate() {
                let mut bits = byte;
                while bits != 0 {
                    let i = k * 8 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    // `values` has exactly `ones` bytes, one per set bit, and no bit marks an
                    // element past `n` (checked above).
                    if let (Some(o), Some(&v)) = (out.get_mut(i), vi.next()) {
                        *o = v;
                    }
                }
            }
            Ok(out)
        }
    }
}

/// One zstd frame that must decode to exactly `n` bytes, with this thread's reused context.
pub(super) fn unzstd(data: &[u8], n: usize) -> Result<Vec<u8>, String> {
    // zstd writes into the vector's spare capacity and sets its length, so the buffer is not
    // zeroed first; a frame longer than `n` is an error (no room), a shorter one is below.
    let mut out = Vec::with_capacity(n);
    let got = DECOMPRESSOR
        .with(|d| match d.borrow_mut().as_mut() {
            Some(d) => d.decompress_to_buffer(data, &mut out),
            None => {
                out.resize(n, 0);
                zstd::bulk::decompress_to_buffer(data, &mut out[..])
            }
        })
        .map_err(|e| format!("zstd stream: {e}"))?;
    if got != n {
        return Err(format!("zstd stream decodes to {got} bytes, expected {n}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_skips_zstd_only_where_it_loses() {
        let mut r = crate::testrand::XorShift::new(5);
        // Independent skewed bytes (an exponent plane): rANS codes them to the entropy (1.7
        // bits), zstd's Huffman codes whole bits per byte (at least 2 here).
        let skewed: Vec<u8> = (0..1 << 18).map(|_| if r.next_u64() % 10 < 8 { 40 } else { (r.next_u64() % 32) as u8 }).collect();
        assert!(zstd_loses(&skewed, &entropy::histogram(&skewed), rans::normalise(&entropy::histogram(&skewed)).as_ref()));
        assert_eq!(encode(&skewed).0, Coder::RansWide);
        // The same statistics in long repeats: zstd finds them in the probe and codes the plane.
        let piece: Vec<u8> = skewed[..3000].to_vec();
        let repeats: Vec<u8> = piece.iter().copied().cycle().take(1 << 18).collect();
        assert!(!zstd_loses(&repeats, &entropy::histogram(&repeats), rans::normalise(&entropy::histogram(&repeats)).as_ref()));
        assert_eq!(encode(&repeats).0, Coder::Zstd);
        // Small planes are never probed.
        assert!(!zstd_loses(&skewed[..1000], &entropy::histogram(&skewed[..1000]), rans::normalise(&entropy::histogram(&skewed[..1000])).as_ref()));
    }

    #[test]
    fn every_coder_round_trips() -> Result<(), String> {
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![7; 1000],
            (0..5000u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect(),
            (0..5003u32).map(|i| if i % 17 == 0 { (i % 251) as u8 + 1 } else { 0 }).collect(),
            (0..64u32).map(|i| (i % 3) as u8).collect(),
        ];
        for plane in cases {
            let (coder, bytes) = encode(&plane);
            assert_eq!(decode(coder, &bytes, plane.len())?, plane);
            // Forced sparse path decodes too.
            let (values, bitmap) = super::super::planes::compact_nonzero_u8(&plane);
            if let Some(s) = encode_sparse(&values, &bitmap) {
                assert_eq!(decode(Coder::Sparse, &s, plane.len())?, plane);
            }
            assert_eq!(decode(Coder::Rans, &rans::encode(&plane), plane.len())?, plane);
        }
        Ok(())
    }

    /// Bytes 0, 1, 2 with probabilities 0.7, 0.2, 0.1: a Huffman code spends 1.3 bits per byte,
    /// the entropy is 1.16.
    fn skewed(n: usize) -> Vec<u8> {
        let mut r = crate::testrand::XorShift::new(0x2545f4914f6cdd1d);
        (0..n)
            .map(|_| {
                match r.next_u64() % 10 {
                    0..=6 => 0,
                    7 | 8 => 1,
                    _ => 2,
                }
            })
            .collect()
    }

    #[test]
    fn skewed_planes_pick_rans() -> Result<(), String> {
        // Planes from WIDE_MIN bytes on get the wide streams.
        for (n, wanted) in [(200_000, Coder::RansWide), (WIDE_MIN, Coder::RansWide), (WIDE_MIN - 1, Coder::Rans), (5000, Coder::Rans)] {
            let plane = skewed(n);
            let (coder, bytes) = encode(&plane);
            assert_eq!(coder, wanted, "{n} bytes");
            let z = zstd1(&plane).map_err(|e| e.to_string())?;
            assert!(bytes.len() * 100 < z.len() * 95, "rans {} bytes, zstd {}", bytes.len(), z.len());
            assert_eq!(decode(coder, &bytes, plane.len())?, plane);
        }
        // Inside a split plane too.
        let plane = skewed(120_000);
        let lead: Vec<bool> = (0..plane.len()).map(|i| i % 9 == 0).collect();
        let s = encode_split(&plane, &lead, None);
        assert_eq!(s[..2], [Coder::Rans as u8, Coder::RansWide as u8]);
        let (a, b) = decode_split_parts(&s, plane.len())?;
        assert_eq!(merge_split(&a, &b, &lead)?, plane);
        Ok(())
    }

    #[test]
    fn mostly_zero_planes_pick_a_small_coder() {
        let plane: Vec<u8> = (0..100_000u32).map(|i| if i % 50 == 0 { (i / 50 % 200) as u8 + 1 } else { 0 }).collect();
        let (coder, bytes) = encode(&plane);
        assert!(matches!(coder, Coder::Sparse | Coder::Zstd | Coder::Gaps));
        assert!(bytes.len() < plane.len() / 10, "{} bytes", bytes.len());
    }

    /// A plane with about `per_mille` / 1000 of its bytes starting a cluster of non-zero bytes (as
    /// residual planes have them).
    fn scattered(n: usize, per_mille: u64, seed: u64) -> Vec<u8> {
        let mut r = crate::testrand::XorShift::new(seed);
        let mut hot = false;
        (0..n)
            .map(|_| {
                let x = r.next_u64();
                hot = if hot { !x.is_multiple_of(4) } else { x % 1000 < per_mille };
                if hot {
                    1 + (x >> 32) as u8 % 3
                } else {
                    0
                }
            })
            .collect()
    }

    #[test]
    fn gaps_round_trip_at_every_run_length() -> Result<(), String> {
        let mut cases: Vec<Vec<u8>> = vec![vec![0; 1000], vec![0; 7], vec![9], vec![0, 0, 3], vec![3, 0, 0]];
        // Runs across the 255 escape and across the eight-byte words, values at both ends,
        // lengths that are not whole words.
        for run in [0usize, 1, 7, 8, 9, 254, 255, 256, 509, 510, 511, 1000] {
            for tail in [0usize, 1, 5, 300] {
                let mut p = vec![4u8];
                p.extend(std::iter::repeat_n(0, run));
                p.push(0xff);
                p.extend(std::iter::repeat_n(0, run));
                p.push(1);
                p.extend(std::iter::repeat_n(0, tail));
                cases.push(p);
            }
        }
        cases.push(scattered(100_003, 5, 3));
        cases.push(scattered(1 << 17, 30, 4));
        for plane in cases {
            let (values, bitmap) = super::super::planes::compact_nonzero_u8(&plane);
            let g = encode_gaps(&values, &bitmap).ok_or("no gaps stream")?;
            assert_eq!(decode(Coder::Gaps, &g, plane.len())?, plane, "{} bytes", plane.len());
        }
        Ok(())
    }

    #[test]
    fn mostly_zero_residual_planes_pick_gaps_at_about_the_rans_size() -> Result<(), String> {
        // Few non-zero bytes: the gaps stream is chosen, no larger than 1.01 times what rANS
        // over the whole plane would take (it is chosen unless rANS saves 1%).
        for (n, per_mille) in [(1 << 16, 4), (1 << 18, 20), (5000, 10)] {
            let plane = scattered(n, per_mille, n as u64);
            let hist = entropy::histogram(&plane);
            let (coder, bytes) = encode(&plane);
            assert_eq!(coder, Coder::Gaps, "{n} bytes, {per_mille}/1000 non-zero");
            if let Some(freqs) = rans::normalise(&hist) {
                let ways = if n >= WIDE_MIN { rans::WIDE } else { rans::WAYS };
                let r = rans::estimate(&hist, &freqs, ways);
                assert!(bytes.len() * 100 <= r * 101 + 100, "gaps {} bytes, rans {r}", bytes.len());
            }
            assert_eq!(decode(coder, &bytes, n)?, plane);
        }
        // Dense planes never try it.
        assert_ne!(encode(&skewed(50_000)).0, Coder::Gaps);
        Ok(())
    }

    #[test]
    fn corrupt_gaps_streams_are_errors() -> Result<(), String> {
        let plane = scattered(40_000, 8, 11);
        let (coder, s) = encode(&plane);
        assert_eq!(coder, Coder::Gaps);
        for cut in 0..s.len() {
            assert!(decode(Coder::Gaps, &s[..cut], plane.len()).is_err(), "cut at {cut}");
        }
        for i in 0..s.len() {
            let mut t = s.clone();
            t[i] ^= 0x41;
            // Either an error or some plane of the right length: the plane's checksum catches
            // the rest.
            if let Ok(p) = decode(Coder::Gaps, &t, plane.len()) {
                assert_eq!(p.len(), plane.len());
            }
        }
        // Too short a plane for its gaps, counts beyond the plane, a nested gaps part.
        assert!(decode(Coder::Gaps, &s, plane.len() / 2).is_err());
        let mut t = s.clone();
        t[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(Coder::Gaps, &t, plane.len()).is_err());
        let mut t = s.clone();
        t[8] = Coder::Gaps as u8;
        assert!(decode(Coder::Gaps, &t, plane.len()).is_err_and(|e| e.contains("invalid part coder")));
        Ok(())
    }

    #[test]
    fn corrupt_streams_are_errors() {
        let plane: Vec<u8> = (0..3000u32).map(|i| if i % 9 == 0 { 5 } else { 0 }).collect();
        let (values, bitmap) = super::super::planes::compact_nonzero_u8(&plane);
        let s = encode_sparse(&values, &bitmap).unwrap_or_default();
        for cut in 0..s.len() {
            let _ = decode(Coder::Sparse, &s[..cut], plane.len());
        }
        for i in 0..s.len() {
            let mut t = s.clone();
            t[i] ^= 0x41;
            let _ = decode(Coder::Sparse, &t, plane.len());
        }
        for (n, coder) in [(3000, Coder::Rans), (WIDE_MIN + 3, Coder::RansWide)] {
            let plane = skewed(n);
            let (c, r) = encode(&plane);
            assert_eq!(c, coder);
            for cut in (0..r.len()).step_by(7) {
                assert!(decode(coder, &r[..cut], plane.len()).is_err());
            }
            for i in 0..r.len().min(3000) {
                let mut t = r.clone();
                t[i] ^= 0x41;
                let _ = decode(coder, &t, plane.len());
            }
        }
        assert!(decode(Coder::Constant, &[1, 2], 10).is_err());
        assert!(decode(Coder::Stored, &[1, 2], 10).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 128, .. Default::default() })]

        /// Any plane round trips through the gaps coder, whatever its runs (long ones across
        /// the 255 escape included), and whatever coder `encode` picks for it.
        #[test]
        fn any_mostly_zero_plane_round_trips(
            runs in proptest::collection::vec((0usize..700, 1u8..=255), 0..60),
            tail in 0usize..300,
        ) {
            let mut plane = Vec::new();
            for (run, b) in runs {
                plane.extend(std::iter::repeat_n(0, run));
                plane.push(b);
            }
            plane.extend(std::iter::repeat_n(0, tail));
            let (values, bitmap) = super::super::planes::compact_nonzero_u8(&plane);
            let g = encode_gaps(&values, &bitmap).ok_or_else(|| proptest::test_runner::TestCaseError::fail("no gaps stream"))?;
            proptest::prop_assert_eq!(decode(Coder::Gaps, &g, plane.len()), Ok(plane.clone()));
            let (coder, bytes) = encode(&plane);
            proptest::prop_assert_eq!(decode(coder, &bytes, plane.len()), Ok(plane));
        }

        /// Arbitrary bytes given to the gaps decoder are an error or a plane of the asked
        /// length, never a panic.
        #[test]
        fn arbitrary_gaps_streams_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), n in 0usize..5000) {
            if let Ok(p) = decode(Coder::Gaps, &data, n) {
                proptest::prop_assert_eq!(p.len(), n);
            }
        }
    }
}
