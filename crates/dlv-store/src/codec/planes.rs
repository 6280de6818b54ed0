//! Byte planes of fixed-width words and the reversible transforms applied to them: exponent
//! isolation (a rotation of the top 16 bits), XOR and zigzag integer difference against a base.
//! Every function here is a bijection on bit patterns; no float arithmetic is involved.

/// Planes of a chunk: `planes[p][i]` is byte `p` (0 = least significant) of element `i`.
/// Planes that were not decoded are empty.
pub type Planes = Vec<Vec<u8>>;

/// Splits little-endian words of `width` bytes into planes.
pub fn split(data: &[u8], width: usize) -> Planes {
    match width {
        2 => split_n::<2>(data),
        4 => split_n::<4>(data),
        8 => split_n::<8>(data),
        _ => {
            let n = data.len() / width.max(1);
            (0..width).map(|p| data.chunks_exact(width).take(n).map(|w| w[p]).collect()).collect()
        }
    }
}

/// One pass over the words for a fixed width, every plane written sequentially (zipped
/// iterators, so no bounds checks and the loop vectorises).
fn split_n<const W: usize>(data: &[u8]) -> Planes {
    let n = data.len() / W;
    let mut planes: Vec<Vec<u8>> = vec![vec![0u8; n]; W];
    match &mut planes[..] {
        [a, b] => {
            for ((w, x), y) in data.chunks_exact(2).zip(a.iter_mut()).zip(b.iter_mut()) {
                *x = w[0];
                *y = w[1];
            }
        }
        [a, b, c, d] => {
            for ((((w, x), y), z), u) in data.chunks_exact(4).zip(a.iter_mut()).zip(b.iter_mut()).zip(c.iter_mut()).zip(d.iter_mut()) {
                *x = w[0];
                *y = w[1];
                *z = w[2];
                *u = w[3];
            }
        }
        planes => {
            for (p, plane) in planes.iter_mut().enumerate() {
                for (o, w) in plane.iter_mut().zip(data.chunks_exact(W)) {
                    *o = w[p];
                }
            }
        }
    }
    planes
}

/// Interleaves the planes `lo..width` back into words of `width - lo` bytes (the top bytes of
/// each element, little-endian). Appends to `out`.
pub fn join_top(planes: &Planes, lo: usize, out: &mut Vec<u8>) {
    let width = planes.len();
    let keep = width - lo;
    let n = planes.get(lo).map_or(0, Vec::len);
    let start = out.len();
    out.resize(start + n * keep, 0);
    let dst = &mut out[start..];
    match &planes[lo..] {
        [a, b, c, d] if a.len() == n && b.len() == n && c.len() == n && d.len() == n => {
            for ((((w, x), y), z), u) in dst.chunks_exact_mut(4).zip(a).zip(b).zip(c).zip(d) {
                w.copy_from_slice(&[*x, *y, *z, *u]);
            }
        }
        [a, b] if a.len() == n && b.len() == n => {
            for ((w, x), y) in dst.chunks_exact_mut(2).zip(a).zip(b) {
                w.copy_from_slice(&[*x, *y]);
            }
        }
        _ => {
            for (k, plane) in planes[lo..].iter().enumerate() {
                for (w, &b) in dst.chunks_exact_mut(keep).zip(plane) {
                    w[k] = b;
                }
            }
        }
    }
}

/// The non-zero elements of `src` in order, and the bitmap of their positions (bit i of byte
/// i / 8, LSB first). Branch-free: every element is written at the next free slot, which only
/// advances past non-zero ones (zeros are scattered, so a branch would mispredict often).
pub fn compact_nonzero<T: Copy + Default + PartialEq>(src: &[T]) -> (Vec<T>, Vec<u8>) {
    let zero = T::default();
    let mut bitmap = vec![0u8; src.len().div_ceil(8)];
    let mut out = vec![zero; src.len() + 1];
    let mut k = 0usize;
    for (bits, group) in bitmap.iter_mut().zip(src.chunks(8)) {
        let mut acc = 0u8;
        for (j, &x) in group.iter().enumerate() {
            let nz = x != zero;
            acc |= (nz as u8) << j;
            if let Some(slot) = out.get_mut(k) {
                *slot = x;
            }
            k += nz as usize;
        }
        *bits = acc;
    }
    out.truncate(k);
    (out, bitmap)
}

/// [`compact_nonzero`] of 32-bit words: eight at a time where the processor can, then the
/// generic loop from where that stopped.
pub fn compact_nonzero_u32(src: &[u32]) -> (Vec<u32>, Vec<u8>) {
    compact_with(src, super::simd::compact_u32_prefix)
}

/// [`compact_nonzero`] of bytes, as [`compact_nonzero_u32`] does words.
pub fn compact_nonzero_u8(src: &[u8]) -> (Vec<u8>, Vec<u8>) {
    compact_with(src, super::simd::compact_u8_prefix)
}

/// A vector prefix of [`compact_nonzero`] (see [`super::simd`]): source, output, bitmap; it
/// returns the elements done and how many it kept.
type CompactPrefix<T> = fn(&[T], &mut [T], &mut [u8]) -> (usize, usize);

/// [`compact_nonzero`] with `prefix` doing the elements it can first.
fn compact_with<T: Copy + Default + PartialEq>(src: &[T], prefix: CompactPrefix<T>) -> (Vec<T>, Vec<u8>) {
    let mut bitmap = vec![0u8; src.len().div_ceil(8)];
    let mut out = vec![T::default(); src.len() + 8];
    let (done, k) = prefix(src, &mut out, &mut bitmap);
    let (rest, rest_bits) = compact_nonzero(src.get(done..).unwrap_or_default());
    out.truncate(k);
    out.extend_from_slice(&rest);
    if let Some(b) = bitmap.get_mut(done / 8..) {
        b.copy_from_slice(&rest_bits);
    }
    (out, bitmap)
}

/// Little-endian words of up to 8 bytes from planes (all `width` planes present).
fn words(planes: &Planes) -> Vec<u64> {
    let n = planes.first().map_or(0, Vec::len);
    let mut w = vec![0u64; n];
    for (p, plane) in planes.iter().enumerate() {
        for (x, &b) in w.iter_mut().zip(plane) {
            *x |= (b as u64) << (8 * p);
        }
    }
    w
}

fn words32(planes: &Planes) -> Vec<u32> {
    let n = planes.first().map_or(0, Vec::len);
    let mut w = vec![0u32; n];
    for (p, plane) in planes.iter().enumerate() {
        for (x, &b) in w.iter_mut().zip(plane) {
            *x |= (b as u32) << (8 * p);
        }
    }
    w
}

fn planes_of64(w: &[u64], width: usize) -> Planes {
    (0..width).map(|p| w.iter().map(|x| (x >> (8 * p)) as u8).collect()).collect()
}

fn planes_of32(w: &[u32], width: usize) -> Planes {
    (0..width).map(|p| w.iter().map(|x| (x >> (8 * p)) as u8).collect()).collect()
}

/// Rotates the top 16 bits of every word left by one, so that the sign bit of an IEEE float
/// moves below the exponent and the top plane holds (most of) the exponent alone.
#[cfg(test)]
pub fn rotate_top(planes: &mut Planes) {
    let w = planes.len();
    if w < 2 {
        return;
    }
    let (lo_part, hi_part) = planes.split_at_mut(w - 1);
    let (hi, lo) = (&mut hi_part[0], &mut lo_part[w - 2]);
    for (h, l) in hi.iter_mut().zip(lo.iter_mut()) {
        let (a, b) = (*h, *l);
        *h = (a << 1) | (b >> 7);
        *l = (b << 1) | (a >> 7);
    }
}

/// Inverse of [`rotate_top`].
pub fn unrotate_top(planes: &mut Planes) {
    let w = planes.len();
    if w < 2 {
        return;
    }
    let (lo_part, hi_part) = planes.split_at_mut(w - 1);
    let (hi, lo) = (&mut hi_part[0], &mut lo_part[w - 2]);
    for (h, l) in hi.iter_mut().zip(lo.iter_mut()) {
        let (a, b) = (*h, *l);
        *h = (a >> 1) | (b << 7);
        *l = (b >> 1) | (a << 7);
    }
}

/// `a ^= b` plane by plane, for the planes present in both.
pub fn xor_into(a: &mut Planes, b: &Planes) {
    for (pa, pb) in a.iter_mut().zip(b) {
        if pa.len() == pb.len() {
            for (x, y) in pa.iter_mut().zip(pb) {
                *x ^= y;
            }
        }
    }
}

/// Mask of a `width`-byte word.
#[inline(always)]
pub fn mask(width: usize) -> u64 {
    if width >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * width)) - 1
    }
}

/// Zigzag of the wrapping difference `a - b` of the bit patterns, as planes.
#[cfg(test)]
pub fn sub_zigzag(a: &Planes, b: &Planes) -> Planes {
    let width = a.len();
    if width <= 4 {
        // Words shifted to the top of a u32, so the sign bit and wrap-around are native.
        let sh = 32 - 8 * width as u32;
        let (wa, wb) = (words32(a), words32(b));
        let z: Vec<u32> = wa
            .iter()
            .zip(&wb)
            .map(|(&x, &y)| {
                let d = ((x << sh).wrapping_sub(y << sh) as i32) >> sh;
                (((d << 1) ^ (d >> 31)) as u32) & (u32::MAX >> sh)
            })
            .collect();
        return planes_of32(&z, width);
    }
    let m = mask(width);
    let top = 8 * width as u32 - 1;
    let (wa, wb) = (words(a), words(b));
    let z: Vec<u64> = wa
        .iter()
        .zip(&wb)
        .map(|(&x, &y)| {
            let d = x.wrapping_sub(y) & m;
            ((d << 1) & m) ^ (((d >> top) & 1).wrapping_neg() & m)
        })
        .collect();
    planes_of64(&z, width)
}

/// Inverse of [`sub_zigzag`]: `b + unzigzag(z)`.
pub fn add_unzigzag(z: &Planes, b: &Planes) -> Planes {
    let width = z.len();
    if width <= 4 {
        let m = u32::MAX >> (32 - 8 * width as u32);
        let (wz, wb) = (words32(z), words32(b));
        let v: Vec<u32> =
            wz.iter().zip(&wb).map(|(&zz, &y)| y.wrapping_add((zz >> 1) ^ (zz & 1).wrapping_neg()) & m).collect();
        return planes_of32(&v, width);
    }
    let m = mask(width);
    let (wz, wb) = (words(z), words(b));
    let v: Vec<u64> =
        wz.iter().zip(&wb).map(|(&zz, &y)| y.wrapping_add((zz >> 1) ^ ((zz & 1).wrapping_neg() & m)) & m).collect();
    planes_of64(&v, width)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_join_rotate_are_inverse() {
        for width in 1..=8 {
            let data: Vec<u8> = (0..width * 37).map(|i| (i * 31 + 7) as u8).collect();
            let mut planes = split(&data, width);
            rotate_top(&mut planes);
            unrotate_top(&mut planes);
            let mut back = Vec::new();
            join_top(&planes, 0, &mut back);
            assert_eq!(back, data, "width {width}");
        }
    }

    #[test]
    fn zigzag_difference_inverts() {
        for width in 1..=8 {
            let a: Vec<u8> = (0..width * 50).map(|i| (i * 131 + 3) as u8).collect();
            let b: Vec<u8> = (0..width * 50).map(|i| (i * 17 + 250) as u8).collect();
            let (pa, pb) = (split(&a, width), split(&b, width));
            let z = sub_zigzag(&pa, &pb);
            assert_eq!(add_unzigzag(&z, &pb), pa, "width {width}");
        }
    }

    #[test]
    fn vector_compaction_of_words_matches_the_definition() {
        let mut r = crate::testrand::XorShift::new(99);
        for n in [0usize, 1, 7, 8, 9, 63, 64, 65, 1000, 4099] {
            for density in [0u64, 1, 4, 7, 8] {
                let src: Vec<u32> = (0..n)
                    .map(|_| {
                        let x = r.next_u64();
                        if x % 8 < density { (x >> 32) as u32 | 1 } else { 0 }
                    })
                    .collect();
                assert_eq!(compact_nonzero_u32(&src), compact_nonzero(&src), "{n} words, density {density}/8");
                let bytes: Vec<u8> = src.iter().map(|&w| (w >> 8) as u8 | (w != 0) as u8).collect();
                assert_eq!(compact_nonzero_u8(&bytes), compact_nonzero(&bytes), "{n} bytes, density {density}/8");
            }
        }
    }

    #[test]
    fn compact_nonzero_keeps_order_and_positions() {
        let src: Vec<u32> = (0..21).map(|i| if i % 3 == 0 { 0 } else { i * 10 }).collect();
        let (kept, bitmap) = compact_nonzero(&src);
        assert_eq!(kept, src.iter().copied().filter(|&x| x != 0).collect::<Vec<_>>());
        assert_eq!(bitmap.len(), 3);
        for (i, &x) in src.iter().enumerate() {
            assert_eq!(bitmap[i / 8] >> (i % 8) & 1 == 1, x != 0, "element {i}");
        }
        assert_eq!(bitmap[2] >> 5, 0, "no bit past the end");
        assert_eq!(compact_nonzero::<u8>(&[]), (vec![], vec![]));
    }

    #[test]
    fn small_differences_have_small_zigzag() {
        let a = split(&1.0f32.to_bits().wrapping_add(3).to_le_bytes(), 4);
        let b = split(&1.0f32.to_bits().to_le_bytes(), 4);
        let z = sub_zigzag(&a, &b);
        assert_eq!((z[0][0], z[1][0], z[2][0], z[3][0]), (6, 0, 0, 0));
        let z = sub_zigzag(&b, &a);
        assert_eq!((z[0][0], z[1][0], z[2][0], z[3][0]), (5, 0, 0, 0));
    }
}
