//! Convolution on the CPU as im2col + matrix product, with a backward pass that computes the
//! input gradient only when the input needs one.
//!
//! candle's own CPU convolution backward always derives the input gradient through
//! `conv_transpose2d` (slow, and wasted on the first layer, whose input is data) and the weight
//! gradient through a batch-as-channels convolution. Here the unfolding (`Im2col`) is a custom
//! op whose backward (`col2im`) returns nothing for an input that tracks no gradient, and the
//! products go through candle's matmul (the multithreaded gemm), whose backward gives the weight
//! gradient as one product. Other devices keep candle's `conv2d`.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Device, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// Geometry of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    pub kernel: (usize, usize),
    pub stride: usize,
    pub pad: (usize, usize),
    pub dilation: usize,
}

impl ConvGeom {
    /// Output height and width for an input of `h x w`, if the kernel fits.
    pub fn out_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let reach = |k: usize| self.dilation * (k.max(1) - 1) + 1;
        let (rh, rw) = (reach(self.kernel.0), reach(self.kernel.1));
        if self.stride == 0 || h + 2 * self.pad.0 < rh || w + 2 * self.pad.1 < rw {
            return None;
        }
        Some(((h + 2 * self.pad.0 - rh) / self.stride + 1, (w + 2 * self.pad.1 - rw) / self.stride + 1))
    }
}

/// `x` (`N x C x H x W`) unfolded to `(C*kh*kw) x (N*OH*OW)`: one matrix product with the
/// weights then covers the whole batch, and so does the weight gradient.
struct Im2col {
    g: ConvGeom,
}

/// The inverse scatter of [`Im2col`]: `(C*kh*kw) x (N*OH*OW)` summed back into `N x C x H x W`.
struct Col2im {
    g: ConvGeom,
    dims: (usize, usize, usize, usize),
}

/// The output columns `ox0..ox1` whose tap at offset `off` (`kx * dilation`) lands inside an
/// input row of width `w`: hoisting the padding test out of the inner loops lets them copy.
fn valid_span(ow: usize, off: usize, stride: usize, pad: usize, w: usize) -> (usize, usize) {
    // First ox with ox*stride + off >= pad; last with ox*stride + off < w + pad.
    let lo = pad.saturating_sub(off).div_ceil(stride.max(1));
    let hi = if w + pad > off { ((w + pad - off - 1) / stride.max(1) + 1).min(ow) } else { 0 };
    (lo.min(hi), hi)
}

fn im2col_impl<T: WithDType>(x: &[T], (n, c, h, w): (usize, usize, usize, usize), g: &ConvGeom) -> candle_core::Result<(Vec<T>, Shape)> {
    let Some((oh, ow)) = g.out_hw(h, w) else { candle_core::bail!("kernel {:?} does not fit an input of {h}x{w}", g.kernel) };
    let (kh, kw) = g.kernel;
    let k = c * kh * kw;
    let p = oh * ow;
    let cols = n * p;
    let mut out = vec![T::zero(); k * cols];
    // One row per (channel, ky, kx), holding that tap for every output position of every image.
    out.par_chunks_mut(cols.max(1)).enumerate().for_each(|(row, dst)| {
        let (ch, ky, kx) = (row / (kh * kw), (row / kw) % kh, row % kw);
        let (ox0, ox1) = valid_span(ow, kx * g.dilation, g.stride, g.pad.1, w);
        for img in 0..n {
            let src = &x[(img * c + ch) * h * w..(img * c + ch + 1) * h * w];
            for oy in 0..oh {
                let iy = (oy * g.stride + ky * g.dilation) as isize - g.pad.0 as isize;
                if iy < 0 || iy as usize >= h || ox0 >= ox1 {
                    continue;
                }
                let srow = &src[iy as usize * w..(iy as usize + 1) * w];
                let drow = &mut dst[img * p + oy * ow + ox0..img * p + oy * ow + ox1];
                let ix0 = ox0 * g.stride + kx * g.dilation - g.pad.1;
                if g.stride == 1 {
                    drow.copy_from_slice(&srow[ix0..ix0 + drow.len()]);
                } else {
                    for (d, s) in drow.iter_mut().zip(srow[ix0..].iter().step_by(g.stride)) {
                        *d = *s;
                    }
                }
            }
        }
    });
    Ok((out, Shape::from((k, cols))))
}

fn col2im_impl<T: WithDType>(cols: &[T], (n, c, h, w): (usize, usize, usize, usize), g: &ConvGeom) -> candle_core::Result<Vec<T>> {
    let Some((oh, ow)) = g.out_hw(h, w) else { candle_core::bail!("kernel does not fit") };
    let (kh, kw) = g.kernel;
    let p = oh * ow;
    let k = c * kh * kw;
    if cols.len() != k * n * p {
        candle_core::bail!("col2im: {} elements, expected {}", cols.len(), k * n * p);
    }
    let mut out = vec![T::zero(); n * c * h * w];
    // One image per task: every tap of it adds into its own pixels only.
    out.par_chunks_mut((c * h * w).max(1)).enumerate().for_each(|(img, dst)| {
        for row in 0..k {
            let (ch, ky, kx) = (row / (kh * kw), (row / kw) % kh, row % kw);
            let src = &cols[row * n * p + img * p..row * n * p + (img + 1) * p];
            let plane = &mut dst[ch * h * w..(ch + 1) * h * w];
            let (ox0, ox1) = valid_span(ow, kx * g.dilation, g.stride, g.pad.1, w);
            if ox0 >= ox1 {
                continue;
            }
            for oy in 0..oh {
                let iy = (oy * g.stride + ky * g.dilation) as isize - g.pad.0 as isize;
                if iy < 0 || iy as usize >= h {
                    continue;
                }
                let prow = &mut plane[iy as usize * w..(iy as usize + 1) * w];
                let srow = &src[oy * ow + ox0..oy * ow + ox1];
                let ix0 = ox0 * g.stride + kx * g.dilation - g.pad.1;
                if g.stride == 1 {
                    // Plain zipped slices vectorise; `step_by` does not (12% of a LeNet step).
                    for (d, &v) in prow[ix0..ix0 + srow.len()].iter_mut().zip(srow) {
                        *d += v;
                    }
                } else {
                    for (d, &v) in prow[ix0..].iter_mut().step_by(g.stride).zip(srow) {
                        *d += v;
                    }
                }
            }
        }
    });
    Ok(out)
}

fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("convolution needs a contiguous tensor"),
    }
}

impl CustomOp1 for Im2col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = l.shape().dims4()?;
        match s {
            CpuStorage::F32(_) => im2col_impl(slice::<f32>(s, l)?, d, &self.g).map(|(v, sh)| (CpuStorage::F32(v), sh)),
            CpuStorage::F64(_) => im2col_impl(slice::<f64>(s, l)?, d, &self.g).map(|(v, sh)| (CpuStorage::F64(v), sh)),
            _ => candle_core::bail!("convolution supports f32 and f64 on the CPU"),
        }
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if !arg.track_op() {
            // Data: nobody needs its gradient.
            return Ok(None);
        }
        let dims = arg.dims4()?;
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&Col2im { g: self.g, dims })?))
    }
}

impl CustomOp1 for Col2im {
    fn name(&self) -> &'static str {
        "col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let shape = Shape::from(self.dims);
        match s {
            CpuStorage::F32(_) => Ok((CpuStorage::F32(col2im_impl(slice::<f32>(s, l)?, self.dims, &self.g)?), shape)),
            CpuStorage::F64(_) => Ok((CpuStorage::F64(col2im_impl(slice::<f64>(s, l)?, self.dims, &self.g)?), shape)),
            _ => candle_core::bail!("convolution supports f32 and f64 on the CPU"),
        }
    }
}

/// Convolution with bias as one graph node: the unfolded input and the intermediate products
/// never enter candle's autograd graph, whose per-node gradient buffers (a zeroed tensor and an
/// addition for every input of every node) otherwise cost more than the products themselves.
struct ConvOp {
    g: ConvGeom,
    groups: usize,
    /// Keep the unfolded input of the forward pass for the backward one (which would unfold
    /// it again): set when some input tracks a gradient.
    keep: bool,
    cols: std::sync::Mutex<Vec<Tensor>>,
}

/// Largest unfolded input (elements, per group) kept from the forward to the backward pass;
/// above it the backward pass unfolds again rather than hold the memory.
const KEEP_COLS_MAX: usize = 1 << 26;

impl ConvOp {
    fn forward<T: WithDType>(&self, x: &[T], xd: (usize, usize, usize, usize), w: &[T], wd: (usize, usize, usize, usize), b: &[T]) -> candle_core::Result<(Vec<T>, Shape)> {
        let (n, c, h, wdt) = xd;
        let (o, cg, kh, kw) = wd;
        let g = ConvGeom { kernel: (kh, kw), ..self.g };
        let Some((oh, ow)) = g.out_hw(h, wdt) else { candle_core::bail!("kernel {kh}x{kw} does not fit an input of {h}x{wdt}") };
        let groups = self.groups;
        if groups == 0 || c != cg * groups || o % groups != 0 || b.len() != o {
            candle_core::bail!("{c} input channels, weight {wd:?}, {} biases and group {groups} do not fit", b.len());
        }
        let (og, k, p) = (o / groups, cg * kh * kw, oh * ow);
        let mut out = vec![T::zero(); n * o * p];
        for gi in 0..groups {
            // One group reads the input in place; several gather their channels first.
            let xg: std::borrow::Cow<'_, [T]> = if groups == 1 {
                std::borrow::Cow::Borrowed(x)
            } else {
                (0..n).flat_map(|i| x[(i * c + gi * cg) * h * wdt..(i * c + (gi + 1) * cg) * h * wdt].iter().copied()).collect()
            };
            let (cols, _) = im2col_impl(&xg, (n, cg, h, wdt), &g)?;
            let cols = Tensor::from_vec(cols, (k, n * p), &Device::Cpu)?;
            if self.keep && k * n * p <= KEEP_COLS_MAX {
                if let Ok(mut kept) = self.cols.lock() {
                    kept.push(cols.clone());
                }
            }
            let wg = Tensor::from_vec(w[gi * og * k..(gi + 1) * og * k].to_vec(), (og, k), &Device::Cpu)?;
            let y = wg.matmul(&cols)?; // og x (N*P)
            // Read the product in place (a copy of it cost as much as the bias pass below).
            let (storage, layout) = y.storage_and_layout();
            let candle_core::Storage::Cpu(cpu) = &*storage else { candle_core::bail!("the CPU convolution got a non-CPU product") };
            let y = slice::<T>(cpu, layout)?;
            out.par_chunks_mut((o * p).max(1)).enumerate().for_each(|(img, dst)| {
                for oc in 0..og {
                    let bias = b[gi * og + oc];
                    let src = &y[oc * n * p + img * p..oc * n * p + (img + 1) * p];
                    for (d, &v) in dst[(gi * og + oc) * p..(gi * og + oc + 1) * p].iter_mut().zip(src) {
                        *d = v + bias;
                    }
                }
            });
        }
        Ok((out, Shape::from((n, o, oh, ow))))
    }
}

impl CustomOp3 for ConvOp {
    fn name(&self) -> &'static str {
        "caffe-conv"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (xd, wd) = (l1.shape().dims4()?, l2.shape().dims4()?);
        match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => self
                .forward(slice::<f32>(s1, l1)?, xd, slice::<f32>(s2, l2)?, wd, slice::<f32>(s3, l3)?)
                .map(|(v, s)| (CpuStorage::F32(v), s)),
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => self
                .forward(slice::<f64>(s1, l1)?, xd, slice::<f64>(s2, l2)?, wd, slice::<f64>(s3, l3)?)
                .map(|(v, s)| (CpuStorage::F64(v), s)),
            _ => candle_core::bail!("convolution supports f32 and f64 on the CPU"),
        }
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (need_dx, need_db) = (x.track_op(), b.track_op());
        let (x, w, grad) = (x.detach(), w.detach(), grad.detach());
        let (n, c, h, wdt) = x.dims4()?;
        let (o, cg, kh, kw) = w.dims4()?;
        let g = ConvGeom { kernel: (kh, kw), ..self.g };
        let (_, _, oh, ow) = grad.dims4()?;
        let (og, p) = (o / self.groups.max(1), oh * ow);
        // dY as O x (N*P), the layout of the forward product.
        let dy = grad.reshape((n, o, p))?.transpose(0, 1)?.contiguous()?.reshape((o, n * p))?;
        let db = if need_db { Some(dy.sum(1)?) } else { None };
        let kept = self.cols.lock().map(|mut k| std::mem::take(&mut *k)).unwrap_or_default();
        let mut dws = Vec::with_capacity(self.groups);
        let mut dxs = Vec::with_capacity(self.groups);
        for gi in 0..self.groups {
            let dyg = if self.groups == 1 { dy.clone() } else { dy.narrow(0, gi * og, og)? };
            let cols = match kept.get(gi) {
                Some(c) if kept.len() == self.groups && c.dims() == [cg * kh * kw, n * p] => c.clone(),
                _ => {
                    let xg = if self.groups == 1 { x.clone() } else { x.narrow(1, gi * cg, cg)?.contiguous()? };
                    xg.apply_op1_no_bwd(&Im2col { g })? // K x (N*P)
                }
            };
            // dW^T = cols . dY^T rather than dW = dY . cols^T: gemm packs the operand that
            // spans its output's contiguous side, and this way that is dY (O x N*P), not the
            // much larger unfolded input (C*kh*kw x N*P).
            dws.push(cols.matmul(&dyg.t()?)?.t()?.contiguous()?.reshape((og, cg, kh, kw))?);
            if need_dx {
                let wg = w.narrow(0, gi * og, og)?.reshape((og, cg * kh * kw))?;
                let dcols = wg.t()?.matmul(&dyg)?.contiguous()?; // K x (N*P)
                dxs.push(dcols.apply_op1_no_bwd(&Col2im { g, dims: (n, cg, h, wdt) })?);
            }
        }
        let dw = if self.groups == 1 { dws.remove(0) } else { Tensor::cat(&dws, 0)? };
        let dx = match dxs.len() {
            0 => None,
            1 => dxs.pop(),
            _ => Some(Tensor::cat(&dxs, 1)?),
        };
        let _ = c;
        Ok((dx, Some(dw), db))
    }
}

/// `x` (`N x C x H x W`) convolved with `w` (`O x C/groups x kh x kw`) plus `b` (`O`, or none).
pub fn conv2d_cpu(x: &Tensor, w: &Tensor, b: Option<&Tensor>, g: ConvGeom, groups: usize) -> candle_core::Result<Tensor> {
    let o = w.dim(0)?;
    let zeros;
    let b = match b {
        Some(b) => b,
        None => {
            zeros = Tensor::zeros(o, w.dtype(), w.device())?;
            &zeros
        }
    };
    let keep = x.track_op() || w.track_op() || b.track_op();
    conv2d_keep(x, w, b, g, groups, keep)
}

fn conv2d_keep(x: &Tensor, w: &Tensor, b: &Tensor, g: ConvGeom, groups: usize, keep: bool) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, ConvOp { g, groups, keep, cols: Default::default() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_candle_conv2d() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f64, 1.0, (2, 4, 7, 6), &dev)?;
        for (groups, stride, pad, dil, k) in [(1, 1, 0, 1, 3), (2, 2, 1, 1, 3), (1, 1, 2, 2, 3), (4, 1, 1, 1, 2)] {
            let w = Tensor::randn(0f64, 1.0, (4, 4 / groups, k, k), &dev)?;
            let a = conv2d_cpu(&x, &w, None, ConvGeom { kernel: (k, k), stride, pad: (pad, pad), dilation: dil }, groups)?;
            let b = x.conv2d(&w, pad, stride, dil, groups)?;
            assert_eq!(a.dims(), b.dims());
            let d = (a - b)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(d < 1e-10, "groups {groups} stride {stride} pad {pad} dilation {dil}: {d}");
        }
        Ok(())
    }

    /// The backward pass reuses the forward pass's unfolded input: its gradients for input,
    /// weight and bias are those of a backward pass that unfolds again, and candle's where its
    /// own backward handles the geometry (stride 1).
    #[test]
    fn gradients_match() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for (groups, stride, pad, dil, k) in [(1, 1, 0, 1, 3), (2, 2, 1, 1, 3), (1, 1, 2, 2, 3), (4, 1, 1, 1, 2)] {
            let x = candle_core::Var::from_tensor(&Tensor::randn(0f64, 1.0, (2, 4, 7, 6), &dev)?)?;
            let w = candle_core::Var::from_tensor(&Tensor::randn(0f64, 1.0, (4, 4 / groups, k, k), &dev)?)?;
            let b = candle_core::Var::from_tensor(&Tensor::randn(0f64, 1.0, 4, &dev)?)?;
            let g = ConvGeom { kernel: (k, k), stride, pad: (pad, pad), dilation: dil };
            let kept = conv2d_keep(x.as_tensor(), w.as_tensor(), b.as_tensor(), g, groups, true)?;
            let again = conv2d_keep(x.as_tensor(), w.as_tensor(), b.as_tensor(), g, groups, false)?;
            let r = Tensor::randn(0f64, 1.0, kept.dims(), &dev)?;
            let mut grads = vec![(kept * &r)?.sum_all()?.backward()?, (again * &r)?.sum_all()?.backward()?];
            if stride == 1 {
                let theirs = x.conv2d(w.as_tensor(), pad, stride, dil, groups)?.broadcast_add(&b.reshape((1, 4, 1, 1))?)?;
                grads.push((theirs * &r)?.sum_all()?.backward()?);
            }
            for v in [&x, &w, &b] {
                let first = grads[0].get(v.as_tensor()).ok_or_else(|| candle_core::Error::Msg("no gradient".into()))?;
                for other in &grads[1..] {
                    let o = other.get(v.as_tensor()).ok_or_else(|| candle_core::Error::Msg("no gradient".into()))?;
                    let d = (first - o)?.abs()?.max_all()?.to_scalar::<f64>()?;
                    assert!(d < 1e-9, "groups {groups} stride {stride} pad {pad} dilation {dil}: {d}");
                }
            }
        }
        Ok(())
    }
}
