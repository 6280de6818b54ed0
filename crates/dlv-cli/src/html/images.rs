//! Convolution filters as a PNG mosaic (the `image` crate), embedded as a base64 data URI.

use std::io::Cursor;

use anyhow::{anyhow, Result};
use image::{ImageFormat, Rgb, RgbImage};

/// At most this many filters are drawn.
pub const MAX_FILTERS: usize = 96;

/// A mosaic of the filters of a `[out, in, kh, kw]` weight: RGB when the layer reads three
/// channels, else the first input channel in grey; each filter scaled to its own range.
pub fn filter_mosaic(shape: &[usize], values: &[f32]) -> Result<Option<(String, usize)>> {
    let [cout, cin, kh, kw] = *shape else { return Ok(None) };
    if cout == 0 || cin == 0 || kh == 0 || kw == 0 || values.len() != cout * cin * kh * kw {
        return Ok(None);
    }
    let shown = cout.min(MAX_FILTERS);
    let cols = (shown as f64).sqrt().ceil().max(1.0) as usize;
    let rows = shown.div_ceil(cols);
    let scale = (48 / kh.max(kw)).clamp(1, 16);
    let (tw, th) = (kw * scale, kh * scale);
    let gap = 2usize;
    let width = u32::try_from(cols * (tw + gap) + gap).map_err(|_| anyhow!("filter image too large"))?;
    let height = u32::try_from(rows * (th + gap) + gap).map_err(|_| anyhow!("filter image too large"))?;
    let mut img = RgbImage::from_pixel(width, height, Rgb([96, 96, 96]));
    let rgb = cin == 3;
    let plane = kh * kw;
    for f in 0..shown {
        let base = f * cin * plane;
        let chans = if rgb { 3 } else { 1 };
        let slice = &values[base..base + chans * plane];
        let (lo, hi) = slice.iter().filter(|v| v.is_finite()).fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let span = if hi > lo { hi - lo } else { 1.0 };
        let norm = |v: f32| -> u8 {
            if !v.is_finite() {
                return 0;
            }
            (((v - lo) / span).clamp(0.0, 1.0) * 255.0).round() as u8
        };
        let (cx, cy) = (gap + (f % cols) * (tw + gap), gap + (f / cols) * (th + gap));
        for y in 0..kh {
            for x in 0..kw {
                let px = if rgb {
                    Rgb([norm(slice[y * kw + x]), norm(slice[plane + y * kw + x]), norm(slice[2 * plane + y * kw + x])])
                } else {
                    let g = norm(slice[y * kw + x]);
                    Rgb([g, g, g])
                };
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (ix, iy) = (cx + x * scale + dx, cy + y * scale + dy);
                        if let (Ok(ix), Ok(iy)) = (u32::try_from(ix), u32::try_from(iy)) {
                            if ix < width && iy < height {
                                img.put_pixel(ix, iy, px);
                            }
                        }
                    }
                }
            }
        }
    }
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), ImageFormat::Png).map_err(|e| anyhow!("cannot encode filter image: {e}"))?;
    Ok(Some((format!("data:image/png;base64,{}", base64(&png)), shown)))
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], c.get(1).copied().unwrap_or(0), c.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 { T[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if c.len() > 2 { T[n as usize & 63] as char } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_examples() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn mosaic_is_a_png() -> Result<()> {
        let v: Vec<f32> = (0..2 * 3 * 3 * 3).map(|i| i as f32).collect();
        let Some((uri, n)) = filter_mosaic(&[2, 3, 3, 3], &v)? else { panic!("no image") };
        assert_eq!(n, 2);
        assert!(uri.starts_with("data:image/png;base64,iVBOR"));
        assert!(filter_mosaic(&[2, 3], &v)?.is_none());
        assert!(filter_mosaic(&[2, 3, 3, 4], &v)?.is_none());
        Ok(())
    }
}
