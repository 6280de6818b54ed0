//! Caffe's across-channel LRN on the CPU as one op with Caffe's closed-form backward.
//!
//! Composed from candle ops (square, pad, `size` shifted adds, affine, `powf`, multiply) the
//! layer makes a dozen full-size temporaries forward and as many again in autograd, each freshly
//! allocated and page-faulted; on the CIFAR AlexNet that was more time than its convolutions.
//! Here the window sum is a running sum over channel planes, and the backward pass is
//! `dx_i = dy_i s_i^-b - (2ab/n) x_i sum_{j near i} dy_j y_j / s_j` with `s = k + a/n sum x^2`.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

#[derive(Debug, Clone, Copy)]
pub struct LrnAcross {
    pub size: usize,
    pub alpha: f64,
    pub beta: f64,
    pub k: f64,
}

/// `s^-beta`; Caffe's default beta 0.75 as square roots, which are several times cheaper than
/// `powf` (it was the layer's main cost).
#[inline]
fn neg_pow(s: f64, beta: f64) -> f64 {
    if beta == 0.75 {
        let r = s.sqrt();
        1.0 / (r * r.sqrt())
    } else {
        s.powf(-beta)
    }
}

impl LrnAcross {
    /// `k + alpha/size * (sum of squares over the channel window)` for one image (`c` planes of
    /// `p` values), into `scale`.
    fn scale<T: WithDType>(&self, x: &[T], c: usize, p: usize, scale: &mut [f64]) {
        let pre = (self.size - 1) / 2;
        let post = self.size - 1 - pre;
        let coef = self.alpha / self.size as f64;
        let mut run = vec![0f64; p];
        for j in 0..post.min(c) {
            for (r, v) in run.iter_mut().zip(&x[j * p..(j + 1) * p]) {
                *r += v.to_f64() * v.to_f64();
            }
        }
        for ch in 0..c {
            // Window ch-pre ..= ch+post: add the plane entering, drop the one leaving.
            if ch + post < c {
                for (r, v) in run.iter_mut().zip(&x[(ch + post) * p..(ch + post + 1) * p]) {
                    *r += v.to_f64() * v.to_f64();
                }
            }
            if ch > pre {
                let out = ch - pre - 1;
                for (r, v) in run.iter_mut().zip(&x[out * p..(out + 1) * p]) {
                    *r -= v.to_f64() * v.to_f64();
                }
            }
            for (s, r) in scale[ch * p..(ch + 1) * p].iter_mut().zip(&run) {
                *s = self.k + coef * r;
            }
        }
    }

    fn fwd<T: WithDType>(&self, x: &[T], (n, c, p): (usize, usize, usize)) -> Vec<T> {
        let mut y = vec![T::zero(); n * c * p];
        y.par_chunks_mut((c * p).max(1)).zip(x.par_chunks((c * p).max(1))).for_each(|(yi, xi)| {
            let mut scale = vec![0f64; c * p];
            self.scale(xi, c, p, &mut scale);
            for ((o, v), s) in yi.iter_mut().zip(xi).zip(&scale) {
                *o = T::from_f64(v.to_f64() * neg_pow(*s, self.beta));
            }
        });
        y
    }

    fn bwd<T: WithDType>(&self, x: &[T], y: &[T], dy: &[T], (n, c, p): (usize, usize, usize)) -> Vec<T> {
        let pre = (self.size - 1) / 2;
        let post = self.size - 1 - pre;
        let coef = 2.0 * self.alpha * self.beta / self.size as f64;
        let per = (c * p).max(1);
        let mut dx = vec![T::zero(); n * c * p];
        dx.par_chunks_mut(per).zip(x.par_chunks(per)).zip(y.par_chunks(per)).zip(dy.par_chunks(per)).for_each(|(((dxi, xi), yi), gi)| {
            let mut scale = vec![0f64; c * p];
            self.scale(xi, c, p, &mut scale);
            // ratio_j = dy_j y_j / s_j, summed over the same (symmetric-by-construction) window.
            let ratio: Vec<f64> = gi.iter().zip(yi).zip(&scale).map(|((g, v), s)| g.to_f64() * v.to_f64() / s).collect();
            let mut run = vec![0f64; p];
            for j in 0..post.min(c) {
                for (r, v) in run.iter_mut().zip(&ratio[j * p..(j + 1) * p]) {
                    *r += v;
                }
            }
            for ch in 0..c {
                if ch + post < c {
                    for (r, v) in run.iter_mut().zip(&ratio[(ch + post) * p..(ch + post + 1) * p]) {
                        *r += v;
                    }
                }
                if ch > pre {
                    let out = ch - pre - 1;
                    for (r, v) in run.iter_mut().zip(&ratio[out * p..(out + 1) * p]) {
                        *r -= v;
                    }
                }
                let range = ch * p..(ch + 1) * p;
                for ((((d, g), xv), s), r) in dxi[range.clone()].iter_mut().zip(&gi[range.clone()]).zip(&xi[range.clone()]).zip(&scale[range]).zip(&run) {
                    *d = T::from_f64(g.to_f64() * neg_pow(*s, self.beta) - coef * xv.to_f64() * r);
                }
            }
        });
        dx
    }
}

fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("LRN needs a contiguous tensor"),
    }
}

/// `N x C x rest` as (N, C, product of the rest).
fn ncp(shape: &Shape) -> candle_core::Result<(usize, usize, usize)> {
    let d = shape.dims();
    if d.len() < 2 {
        candle_core::bail!("LRN needs at least 2 dimensions, got {d:?}");
    }
    Ok((d[0], d[1], d[2..].iter().product()))
}

impl CustomOp1 for LrnAcross {
    fn name(&self) -> &'static str {
        "caffe-lrn"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = ncp(l.shape())?;
        let shape = l.shape().clone();
        match s {
            CpuStorage::F32(_) => Ok((CpuStorage::F32(self.fwd(slice::<f32>(s, l)?, d)), shape)),
            CpuStorage::F64(_) => Ok((CpuStorage::F64(self.fwd(slice::<f64>(s, l)?, d)), shape)),
            _ => candle_core::bail!("LRN supports f32 and f64 on the CPU"),
        }
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (x, y, g) = (arg.detach().contiguous()?, res.detach().contiguous()?, grad_res.detach().contiguous()?);
        Ok(Some(x.apply_op3_no_bwd(&y, &g, &LrnBwd(*self))?))
    }
}

/// The backward pass over `x`, `y` and `dy`.
struct LrnBwd(LrnAcross);

impl candle_core::CustomOp3 for LrnBwd {
    fn name(&self) -> &'static str {
        "caffe-lrn-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = ncp(l1.shape())?;
        let shape = l1.shape().clone();
        if l2.shape() != &shape || l3.shape() != &shape {
            candle_core::bail!("LRN backward: shapes {:?}, {:?}, {:?} differ", shape, l2.shape(), l3.shape());
        }
        match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                Ok((CpuStorage::F32(self.0.bwd(slice::<f32>(s1, l1)?, slice::<f32>(s2, l2)?, slice::<f32>(s3, l3)?, d)), shape))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
                Ok((CpuStorage::F64(self.0.bwd(slice::<f64>(s1, l1)?, slice::<f64>(s2, l2)?, slice::<f64>(s3, l3)?, d)), shape))
            }
            _ => candle_core::bail!("LRN supports f32 and f64 on the CPU"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The op against the same formula composed from candle ops, values and input gradients.
    #[test]
    fn matches_composition() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for (size, c, beta) in [(5, 7, 0.75), (3, 2, 0.6), (1, 3, 0.75), (5, 3, 1.2)] {
            let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (2, c, 3, 4), &dev)?)?;
            let (alpha, k) = (0.7, 1.5);
            let a = x.as_tensor().apply_op1(LrnAcross { size, alpha, beta, k })?;
            let pre = (size - 1) / 2;
            let padded = x.as_tensor().sqr()?.pad_with_zeros(1, pre, size - 1 - pre)?;
            let mut acc = padded.narrow(1, 0, c)?;
            for i in 1..size {
                acc = (acc + padded.narrow(1, i, c)?)?;
            }
            let b = x.as_tensor().mul(&((acc * (alpha / size as f64))? + k)?.powf(-beta)?)?;
            assert!((&a - &b)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-12);
            let w = Tensor::randn(0f64, 1.0, a.shape(), &dev)?;
            let (ga, gb) = ((a * &w)?.sum_all()?.backward()?, (b * &w)?.sum_all()?.backward()?);
            let (Some(ga), Some(gb)) = (ga.get(x.as_tensor()), gb.get(x.as_tensor())) else { candle_core::bail!("no gradient") };
            let d = (ga - gb)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(d < 1e-10, "size {size} channels {c}: {d}");
        }
        Ok(())
    }
}
