//! Order-0 entropy of byte streams: the encoder's size estimate and the benchmark's bound.

/// Byte histogram.
pub fn histogram(data: &[u8]) -> [u64; 256] {
    // Four interleaved tables avoid store-to-load stalls on runs of equal bytes.
    let mut h = [[0u64; 256]; 4];
    let mut it = data.chunks_exact(4);
    for c in &mut it {
        h[0][c[0] as usize] += 1;
        h[1][c[1] as usize] += 1;
        h[2][c[2] as usize] += 1;
        h[3][c[3] as usize] += 1;
    }
    for &b in it.remainder() {
        h[0][b as usize] += 1;
    }
    let mut out = [0u64; 256];
    for (i, o) in out.iter_mut().enumerate() {
        *o = h[0][i] + h[1][i] + h[2][i] + h[3][i];
    }
    out
}

/// Total bits an ideal order-0 coder needs for the histogram's data.
pub fn bits_of(hist: &[u64; 256]) -> f64 {
    let n: u64 = hist.iter().sum();
    if n == 0 {
        return 0.0;
    }
    let nf = n as f64;
    hist.iter().filter(|&&c| c > 0).map(|&c| c as f64 * (nf / c as f64).log2()).sum()
}

/// Order-0 entropy of `data` in bits (all bytes together).
#[cfg(test)]
pub fn order0_bits(data: &[u8]) -> f64 {
    bits_of(&histogram(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_of_simple_streams() {
        assert_eq!(order0_bits(&[]), 0.0);
        assert_eq!(order0_bits(&[5; 100]), 0.0);
        let two: Vec<u8> = (0..1000).map(|i| (i % 2) as u8).collect();
        assert!((order0_bits(&two) - 1000.0).abs() < 1e-6);
        let all: Vec<u8> = (0..=255).collect();
        assert!((order0_bits(&all) - 2048.0).abs() < 1e-6);
    }
}
