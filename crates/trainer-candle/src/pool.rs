//! Caffe pooling (MAX, AVE, global) with Caffe's output-size rounding and average divisor.
//!
//! Caffe rounds the output size up (`ceil((H + 2p - k) / s) + 1`, minus one when the last window
//! would start inside the padding) and divides an average by the window clipped to the padded
//! input, not to the image. candle's own pooling rounds down, and its backward pass is only
//! defined for `kernel == stride`, so pooling here is our own: on the CPU two custom ops per
//! method (forward, and a backward that scatters into the argmax or spreads the average), on
//! other devices a composition of strided slices that autograd differentiates.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Pooling method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMethod {
    Max,
    Ave,
}

/// A pooling window over the last two dimensions of an `N x C x H x W` tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSpec {
    pub method: PoolMethod,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub pad: (usize, usize),
    pub global: bool,
}

/// One axis of Caffe's pooled size.
pub fn pooled_len(input: usize, kernel: usize, stride: usize, pad: usize) -> Option<usize> {
    if stride == 0 || kernel == 0 || input + 2 * pad < kernel {
        return None;
    }
    let mut out = (input + 2 * pad - kernel).div_ceil(stride) + 1;
    if pad > 0 && (out - 1) * stride >= input + pad {
        out -= 1;
    }
    Some(out)
}

impl PoolSpec {
    /// The window actually used for an input of `h x w` (global pooling covers it all).
    pub fn resolved(&self, h: usize, w: usize) -> PoolSpec {
        if self.global {
            PoolSpec { kernel: (h, w), stride: (1, 1), pad: (0, 0), ..*self }
        } else {
            *self
        }
    }

    /// Output height and width, or `None` when the window does not fit.
    pub fn out_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let s = self.resolved(h, w);
        Some((pooled_len(h, s.kernel.0, s.stride.0, s.pad.0)?, pooled_len(w, s.kernel.1, s.stride.1, s.pad.1)?))
    }
}

/// Pools `x` (`N x C x H x W`).
pub fn pool(x: &Tensor, spec: &PoolSpec) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let s = spec.resolved(h, w);
    if s.out_hw(h, w).is_none() {
        candle_core::bail!("pooling window {:?} (pad {:?}) does not fit an input of {h}x{w}", s.kernel, s.pad);
    }
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        x.contiguous()?.apply_op1(PoolFwd { spec: s, argmax: Mutex::new(None) })
    } else {
        pool_generic(x, &s)
    }
}

/// Window bounds along one axis for output index `o`: (start, end) clipped to the input, and
/// the divisor extent Caffe uses for averages (clipped to the padded input).
#[inline]
fn window(o: usize, k: usize, s: usize, p: usize, len: usize) -> (usize, usize, usize) {
    let start = (o * s) as isize - p as isize;
    let end_padded = (start + k as isize).min((len + p) as isize);
    let extent = (end_padded - start).max(0) as usize;
    let lo = start.max(0) as usize;
    let hi = (end_padded.min(len as isize)).max(0) as usize;
    (lo, hi.max(lo), extent)
}

fn dims(layout: &Layout) -> candle_core::Result<(usize, usize, usize, usize)> {
    layout.shape().dims4()
}

fn contiguous<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("pooling needs a contiguous tensor"),
    }
}

fn fwd_impl<T: WithDType>(x: &[T], (n, c, h, w): (usize, usize, usize, usize), s: &PoolSpec) -> candle_core::Result<(Vec<T>, Shape)> {
    let Some((oh, ow)) = s.out_hw(h, w) else { candle_core::bail!("pooling window does not fit") };
    let mut out = vec![T::zero(); n * c * oh * ow];
    out.par_chunks_mut((oh * ow).max(1)).enumerate().for_each(|(plane, dst)| {
        let src = &x[plane * h * w..(plane + 1) * h * w];
        for oy in 0..oh {
            let (y0, y1, ey) = window(oy, s.kernel.0, s.stride.0, s.pad.0, h);
            for ox in 0..ow {
                let (x0, x1, ex) = window(ox, s.kernel.1, s.stride.1, s.pad.1, w);
                dst[oy * ow + ox] = match s.method {
                    PoolMethod::Max => {
                        let mut m: Option<T> = None;
                        for yy in y0..y1 {
                            for &v in &src[yy * w + x0..yy * w + x1] {
                                if m.is_none_or(|cur| v > cur) {
                                    m = Some(v);
                                }
                            }
                        }
                        m.unwrap_or_else(T::zero)
                    }
                    PoolMethod::Ave => {
                        let mut sum = 0f64;
                        for yy in y0..y1 {
                            for &v in &src[yy * w + x0..yy * w + x1] {
                                sum += v.to_f64();
                            }
                        }
                        T::from_f64(sum / (ey * ex).max(1) as f64)
                    }
                };
            }
        }
    });
    Ok((out, Shape::from((n, c, oh, ow))))
}

/// Max pooling that also records, per output, the index of the first maximum within its input
/// plane (`u32::MAX` for an empty window), so the backward pass scatters without searching again.
fn max_fwd_argmax<T: WithDType>(x: &[T], (n, c, h, w): (usize, usize, usize, usize), s: &PoolSpec) -> candle_core::Result<(Vec<T>, Vec<u32>, Shape)> {
    let Some((oh, ow)) = s.out_hw(h, w) else { candle_core::bail!("pooling window does not fit") };
    let mut out = vec![T::zero(); n * c * oh * ow];
    let mut arg = vec![u32::MAX; n * c * oh * ow];
    let per = (oh * ow).max(1);
    out.par_chunks_mut(per).zip(arg.par_chunks_mut(per)).enumerate().for_each(|(plane, (dst, idx))| {
        let src = &x[plane * h * w..(plane + 1) * h * w];
        for oy in 0..oh {
            let (y0, y1, _) = window(oy, s.kernel.0, s.stride.0, s.pad.0, h);
            // The common 2x2 window with stride 2 over two whole rows: no window arithmetic,
            // no branches in the scan (8% of a LeNet step went to the general loop below).
            if s.kernel == (2, 2) && s.stride == (2, 2) && s.pad.1 == 0 && y1 == y0 + 2 && 2 * ow <= w {
                let (r0, r1) = (&src[y0 * w..y0 * w + 2 * ow], &src[(y0 + 1) * w..(y0 + 1) * w + 2 * ow]);
                let dst = &mut dst[oy * ow..(oy + 1) * ow];
                let idx = &mut idx[oy * ow..(oy + 1) * ow];
                for (ox, ((d, k), (a, b))) in dst.iter_mut().zip(idx.iter_mut()).zip(r0.chunks_exact(2).zip(r1.chunks_exact(2))).enumerate() {
                    // Row-major order and strict `>`: the first maximum wins, as below.
                    let (mut bi, mut bv) = (y0 * w + 2 * ox, a[0]);
                    for (i, v) in [(bi + 1, a[1]), (bi + w, b[0]), (bi + w + 1, b[1])] {
                        if v > bv {
                            (bi, bv) = (i, v);
                        }
                    }
                    *d = bv;
                    *k = bi as u32;
                }
                continue;
            }
            for ox in 0..ow {
                let (x0, x1, _) = window(ox, s.kernel.1, s.stride.1, s.pad.1, w);
                let mut best: Option<(usize, T)> = None;
                for yy in y0..y1 {
                    for (i, &v) in src[yy * w + x0..yy * w + x1].iter().enumerate() {
                        if best.is_none_or(|(_, b)| v > b) {
                            best = Some((yy * w + x0 + i, v));
                        }
                    }
                }
                if let Some((i, v)) = best {
                    dst[oy * ow + ox] = v;
                    idx[oy * ow + ox] = i as u32;
                }
            }
        }
    });
    Ok((out, arg, Shape::from((n, c, oh, ow))))
}

/// Max pooling's input gradient from the recorded argmax: one add per output.
fn max_bwd_argmax<T: WithDType>(g: &[T], arg: &[u32], (n, c, h, w): (usize, usize, usize, usize)) -> candle_core::Result<Vec<T>> {
    if g.len() != arg.len() || n * c == 0 || !g.len().is_multiple_of(n * c) {
        candle_core::bail!("pooling gradient has {} elements for {} recorded maxima", g.len(), arg.len());
    }
    let per = g.len() / (n * c);
    let mut dx = vec![T::zero(); n * c * h * w];
    dx.par_chunks_mut((h * w).max(1)).zip(g.par_chunks(per.max(1))).zip(arg.par_chunks(per.max(1))).for_each(|((dst, gp), ap)| {
        for (&gv, &i) in gp.iter().zip(ap) {
            if let Some(d) = dst.get_mut(i as usize) {
                *d += gv;
            }
        }
    });
    Ok(dx)
}

/// Gradient w.r.t. the input: max sends each output gradient to the first maximum of its
/// window (Caffe's argmax), average spreads it evenly over the window.
fn bwd_impl<T: WithDType>(x: &[T], g: &[T], (n, c, h, w): (usize, usize, usize, usize), s: &PoolSpec) -> candle_core::Result<Vec<T>> {
    let Some((oh, ow)) = s.out_hw(h, w) else { candle_core::bail!("pooling window does not fit") };
    if g.len() != n * c * oh * ow {
        candle_core::bail!("pooling gradient has {} elements, expected {}", g.len(), n * c * oh * ow);
    }
    let mut dx = vec![T::zero(); n * c * h * w];
    dx.par_chunks_mut((h * w).max(1)).enumerate().for_each(|(plane, dst)| {
        let src = &x[plane * h * w..(plane + 1) * h * w];
        let gp = &g[plane * oh * ow..(plane + 1) * oh * ow];
        for oy in 0..oh {
            let (y0, y1, ey) = window(oy, s.kernel.0, s.stride.0, s.pad.0, h);
            for ox in 0..ow {
                let (x0, x1, ex) = window(ox, s.kernel.1, s.stride.1, s.pad.1, w);
                let gv = gp[oy * ow + ox];
                match s.method {
                    PoolMethod::Max => {
                        let mut best: Option<(usize, T)> = None;
                        for yy in y0..y1 {
                            for xx in x0..x1 {
                                let v = src[yy * w + xx];
                                if best.is_none_or(|(_, b)| v > b) {
                                    best = Some((yy * w + xx, v));
                                }
                            }
                        }
                        if let Some((i, _)) = best {
                            dst[i] = T::from_f64(dst[i].to_f64() + gv.to_f64());
                        }
                    }
                    PoolMethod::Ave => {
                        let share = gv.to_f64() / (ey * ex).max(1) as f64;
                        for yy in y0..y1 {
                            for xx in x0..x1 {
                                let i = yy * w + xx;
                                dst[i] = T::from_f64(dst[i].to_f64() + share);
                            }
                        }
                    }
                }
            }
        }
    });
    Ok(dx)
}

struct PoolFwd {
    spec: PoolSpec,
    /// Max pooling's argmax from the CPU forward pass (planes are small enough for u32 when
    /// recorded), for the backward pass; `None` for averages or when not recorded.
    argmax: Mutex<Option<Arc<Vec<u32>>>>,
}

impl PoolFwd {
    fn run<T: WithDType>(&self, x: &[T], d: (usize, usize, usize, usize)) -> candle_core::Result<(Vec<T>, Shape)> {
        if self.spec.method == PoolMethod::Max && d.2.saturating_mul(d.3) < u32::MAX as usize {
            let (v, arg, shape) = max_fwd_argmax(x, d, &self.spec)?;
            if let Ok(mut slot) = self.argmax.lock() {
                *slot = Some(Arc::new(arg));
            }
            return Ok((v, shape));
        }
        fwd_impl(x, d, &self.spec)
    }
}

impl CustomOp1 for PoolFwd {
    fn name(&self) -> &'static str {
        "caffe-pool"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = dims(layout)?;
        match storage {
            CpuStorage::F32(_) => {
                let (v, s) = self.run(contiguous::<f32>(storage, layout)?, d)?;
                Ok((CpuStorage::F32(v), s))
            }
            CpuStorage::F64(_) => {
                let (v, s) = self.run(contiguous::<f64>(storage, layout)?, d)?;
                Ok((CpuStorage::F64(v), s))
            }
            _ => candle_core::bail!("pooling supports f32 and f64 on the CPU"),
        }
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let recorded = self.argmax.lock().ok().and_then(|s| s.clone());
        if let Some(argmax) = recorded {
            let dims = arg.dims4()?;
            return Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&PoolBwdArgmax { argmax, dims })?));
        }
        Ok(Some(arg.apply_op2_no_bwd(&grad_res.contiguous()?, &PoolBwd(self.spec))?))
    }
}

/// Max pooling's backward from the forward pass's argmax (see [`PoolFwd`]).
struct PoolBwdArgmax {
    argmax: Arc<Vec<u32>>,
    dims: (usize, usize, usize, usize),
}

impl CustomOp1 for PoolBwdArgmax {
    fn name(&self) -> &'static str {
        "caffe-maxpool-backward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let shape = Shape::from(self.dims);
        match s {
            CpuStorage::F32(_) => Ok((CpuStorage::F32(max_bwd_argmax(contiguous::<f32>(s, l)?, &self.argmax, self.dims)?), shape)),
            CpuStorage::F64(_) => Ok((CpuStorage::F64(max_bwd_argmax(contiguous::<f64>(s, l)?, &self.argmax, self.dims)?), shape)),
            _ => candle_core::bail!("pooling backward supports f32 and f64 on the CPU"),
        }
    }
}

struct PoolBwd(PoolSpec);

impl CustomOp2 for PoolBwd {
    fn name(&self) -> &'static str {
        "caffe-pool-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = dims(l1)?;
        let shape = l1.shape().clone();
        match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => Ok((
                CpuStorage::F32(bwd_impl(contiguous::<f32>(s1, l1)?, contiguous::<f32>(s2, l2)?, d, &self.0)?),
                shape,
            )),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => Ok((
                CpuStorage::F64(bwd_impl(contiguous::<f64>(s1, l1)?, contiguous::<f64>(s2, l2)?, d, &self.0)?),
                shape,
            )),
            _ => candle_core::bail!("pooling backward supports f32 and f64 on the CPU"),
        }
    }
}

/// `count` elements of `x` along `dim` starting at `start`, `step` apart. `x` must be long
/// enough for `start + count * step` (callers pad it first).
fn strided(x: &Tensor, dim: usize, start: usize, count: usize, step: usize) -> candle_core::Result<Tensor> {
    let t = x.narrow(dim, start, count * step)?;
    if step == 1 {
        return Ok(t);
    }
    let mut shape = t.dims().to_vec();
    shape[dim] = count;
    shape.insert(dim + 1, step);
    t.reshape(shape)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
}

/// Device-independent pooling made of pads, strided slices and elementwise max/add, which
/// autograd differentiates. Slower than the CPU ops; used on GPUs and as their cross-check.
pub fn pool_generic(x: &Tensor, spec: &PoolSpec) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let s = spec.resolved(h, w);
    let Some((oh, ow)) = s.out_hw(h, w) else { candle_core::bail!("pooling window does not fit") };
    let (kh, kw) = s.kernel;
    let (sh, sw) = s.stride;
    let (ph, pw) = s.pad;
    // Room for the last window plus whole strides for the reshape trick.
    let need_h = (kh - 1) + oh * sh;
    let need_w = (kw - 1) + ow * sw;
    let bottom = need_h.saturating_sub(h + ph);
    let right = need_w.saturating_sub(w + pw);
    let fill = match s.method {
        PoolMethod::Max => -1e30,
        PoolMethod::Ave => 0.0,
    };
    let pad_dim = |t: &Tensor, dim: usize, before: usize, after: usize| -> candle_core::Result<Tensor> {
        if before == 0 && after == 0 {
            return Ok(t.clone());
        }
        let mut parts = Vec::new();
        let mut shape = t.dims().to_vec();
        if before > 0 {
            shape[dim] = before;
            parts.push(Tensor::full(fill, shape.clone(), t.device())?.to_dtype(t.dtype())?);
        }
        parts.push(t.clone());
        if after > 0 {
            shape[dim] = after;
            parts.push(Tensor::full(fill, shape.clone(), t.device())?.to_dtype(t.dtype())?);
        }
        Tensor::cat(&parts, dim)
    };
    let xp = pad_dim(&pad_dim(x, 2, ph, bottom)?, 3, pw, right)?;
    let mut acc: Option<Tensor> = None;
    for dy in 0..kh {
        let rows = strided(&xp, 2, dy, oh, sh)?;
        for dx in 0..kw {
            let v = strided(&rows, 3, dx, ow, sw)?;
            acc = Some(match (acc, s.method) {
                (None, _) => v,
                (Some(a), PoolMethod::Max) => a.maximum(&v)?,
                (Some(a), PoolMethod::Ave) => (a + v)?,
            });
        }
    }
    let Some(acc) = acc else { candle_core::bail!("empty pooling window") };
    match s.method {
        PoolMethod::Max => Ok(acc),
        PoolMethod::Ave => {
            let mut div = Vec::with_capacity(oh * ow);
            for oy in 0..oh {
                let (_, _, ey) = window(oy, kh, sh, ph, h);
                for ox in 0..ow {
                    let (_, _, ex) = window(ox, kw, sw, pw, w);
                    div.push(1.0 / (ey * ex).max(1) as f64);
                }
            }
            let div = Tensor::from_vec(div, (1, 1, oh, ow), x.device())?.to_dtype(x.dtype())?;
            let _ = (n, c);
            acc.broadcast_mul(&div)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn caffe_rounding() {
        // AlexNet-CIFAR pool1: 32 -> 16 with kernel 3 stride 2 (floor would give 15).
        assert_eq!(pooled_len(32, 3, 2, 0), Some(16));
        assert_eq!(pooled_len(24, 2, 2, 0), Some(12));
        assert_eq!(pooled_len(5, 3, 2, 1), Some(3));
        assert_eq!(pooled_len(6, 3, 2, 1), Some(4));
        assert_eq!(pooled_len(2, 3, 1, 0), None);
    }

    #[test]
    fn max_pooling_ties_send_the_gradient_to_the_first_maximum() -> candle_core::Result<()> {
        // Caffe's argmax: the first maximum in row-major window order, on the 2x2 fast path
        // (4x4) and on the general one (5x5, whose last window is clipped).
        for hw in [4usize, 5] {
            let x = candle_core::Var::ones((1, 2, hw, hw), DType::F32, &Device::Cpu)?;
            let spec = PoolSpec { method: PoolMethod::Max, kernel: (2, 2), stride: (2, 2), pad: (0, 0), global: false };
            let grads = pool(x.as_tensor(), &spec)?.sum_all()?.backward()?;
            let g = grads.get(x.as_tensor()).ok_or_else(|| candle_core::Error::Msg("no gradient".into()))?;
            let g: Vec<f32> = g.flatten_all()?.to_vec1()?;
            for (i, &v) in g.iter().enumerate() {
                let (y, x) = ((i / hw) % hw, i % hw);
                let expect = if y % 2 == 0 && x % 2 == 0 { 1.0 } else { 0.0 };
                assert_eq!(v, expect, "{hw}x{hw} at ({y}, {x})");
            }
        }
        Ok(())
    }

    #[test]
    fn cpu_ops_match_generic_composition() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f64, 1.0, (2, 3, 7, 6), &dev)?;
        for method in [PoolMethod::Max, PoolMethod::Ave] {
            for (k, s, p) in [((3, 3), (2, 2), (0, 0)), ((2, 2), (2, 2), (0, 0)), ((3, 2), (2, 1), (1, 1)), ((3, 3), (1, 1), (1, 1))] {
                let spec = PoolSpec { method, kernel: k, stride: s, pad: p, global: false };
                let a = pool(&x, &spec)?;
                let b = pool_generic(&x, &spec)?;
                assert_eq!(a.dims(), b.dims());
                let d = (a - b)?.abs()?.max_all()?.to_scalar::<f64>()?;
                assert!(d < 1e-12, "{method:?} {k:?} {s:?} {p:?}: {d}");
            }
        }
        let g = pool(&x, &PoolSpec { method: PoolMethod::Ave, kernel: (1, 1), stride: (1, 1), pad: (0, 0), global: true })?;
        assert_eq!(g.dims(), &[2, 3, 1, 1]);
        let mean = x.mean_keepdim(3)?.mean_keepdim(2)?;
        assert!((g - mean)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-12);
        Ok(())
    }
}
