//! Datasets: MNIST-style IDX files (optionally gzipped), CIFAR-10 binary batches, synthetic data.
//!
//! Images are kept as raw `u8` (`N x C x H x W`, row-major) and turned into float batches with
//! the data layer's `transform_param` (`(x - mean) * scale`, Caffe's order) only when a batch is
//! drawn, so the whole of MNIST stays at 47 MB. Every reader checks magic numbers, dimensions
//! and lengths against the file size and names the file in its errors.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Result, TrainError};
use crate::rng::Rng;

/// Images and labels of one split.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Channels, height, width of one example.
    pub dims: [usize; 3],
    pub images: Vec<u8>,
    pub labels: Vec<u32>,
}

/// The train and test splits read from a `--data` folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Datasets {
    pub train: Dataset,
    pub test: Dataset,
    /// Where they came from, for messages and metadata.
    pub source: String,
}

/// How a float batch is made from raw bytes: Caffe's `transform_param`.
#[derive(Debug, Clone, PartialEq)]
pub struct Transform {
    pub scale: f32,
    /// One mean value for all channels, or one per channel.
    pub mean: Vec<f32>,
    /// The prototxt names a `mean_file` (binaryproto), which we do not read: the per-channel
    /// mean of the training set is used instead (see [`Dataset::channel_means`]).
    pub mean_from_data: bool,
}

impl Default for Transform {
    fn default() -> Self {
        Transform { scale: 1.0, mean: Vec::new(), mean_from_data: false }
    }
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Elements of one example.
    pub fn example_len(&self) -> usize {
        self.dims.iter().product()
    }

    /// The first `n` examples (all of them when `n` is larger).
    pub fn take(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        Dataset {
            dims: self.dims,
            images: self.images[..n * self.example_len()].to_vec(),
            labels: self.labels[..n].to_vec(),
        }
    }

    /// Mean of each channel over the whole dataset.
    pub fn channel_means(&self) -> Vec<f32> {
        let [c, h, w] = self.dims;
        let plane = h * w;
        let mut sums = vec![0f64; c];
        for img in self.images.chunks_exact(self.example_len().max(1)) {
            for (ch, sum) in sums.iter_mut().enumerate() {
                *sum += img[ch * plane..(ch + 1) * plane].iter().map(|&p| p as f64).sum::<f64>();
            }
        }
        let n = (self.len() * plane).max(1) as f64;
        sums.into_iter().map(|s| (s / n) as f32).collect()
    }

    /// Float pixels and labels of the examples at `idx`, transformed.
    pub fn batch(&self, idx: &[usize], t: &Transform) -> (Vec<f32>, Vec<u32>) {
        let el = self.example_len();
        let plane = self.dims[1] * self.dims[2];
        let mut x = Vec::with_capacity(idx.len() * el);
        let mut y = Vec::with_capacity(idx.len());
        for &i in idx {
            let img = &self.images[i * el..(i + 1) * el];
            for (j, &p) in img.iter().enumerate() {
                let c = j.checked_div(plane).unwrap_or(0);
                let mean = match t.mean.len() {
                    0 => 0.0,
                    1 => t.mean[0],
                    _ => t.mean.get(c).copied().unwrap_or(0.0),
                };
                x.push((p as f32 - mean) * t.scale);
            }
            y.push(self.labels[i]);
        }
        (x, y)
    }

    /// Synthetic data for benchmarks and tests: random pixels, labels in `0..classes`, with a
    /// class-dependent brightness so that a model can learn something.
    pub fn synthetic(n: usize, dims: [usize; 3], classes: u32, seed: u64) -> Dataset {
        let mut rng = Rng::derive(seed, "synthetic");
        let el: usize = dims.iter().product();
        let mut images = Vec::with_capacity(n * el);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let label = rng.below(classes.max(1) as usize) as u32;
            let base = (label as usize * 200 / classes.max(1) as usize) as u64;
            for _ in 0..el {
                images.push((base + rng.next_u64() % 56).min(255) as u8);
            }
            labels.push(label);
        }
        Dataset { dims, images, labels }
    }
}

/// Batches of indices over a dataset: shuffled every epoch (train) or in order (test).
#[derive(Debug, Clone)]
pub struct Batcher {
    order: Vec<usize>,
    pos: usize,
    shuffle: Option<Rng>,
}

impl Batcher {
    pub fn new(n: usize, shuffle_seed: Option<u64>) -> Batcher {
        let mut b = Batcher { order: (0..n).collect(), pos: 0, shuffle: shuffle_seed.map(|s| Rng::derive(s, "shuffle")) };
        if let Some(r) = b.shuffle.as_mut() {
            r.shuffle(&mut b.order);
        }
        b
    }

    /// The next `size` indices, wrapping around (and reshuffling) at the end of an epoch, as
    /// Caffe's data layers do.
    pub fn next_batch(&mut self, size: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(size);
        if self.order.is_empty() {
            return out;
        }
        while out.len() < size {
            if self.pos == self.order.len() {
                self.pos = 0;
                if let Some(r) = self.shuffle.as_mut() {
                    r.shuffle(&mut self.order);
                }
            }
            out.push(self.order[self.pos]);
            self.pos += 1;
        }
        out
    }
}

/// MNIST file names without the optional `.gz`.
pub const MNIST_FILES: [&str; 4] =
    ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

/// Reads a `--data` folder: the four MNIST IDX files (each optionally `.gz`), or CIFAR-10 binary
/// batches (`data_batch_1.bin`...`data_batch_5.bin`, `test_batch.bin`, also inside a
/// `cifar-10-batches-bin` subfolder).
pub fn load_dir(dir: &Path) -> Result<Datasets> {
    if !dir.is_dir() {
        return Err(TrainError::data(dir, "not a folder (expected MNIST IDX files or CIFAR-10 batches)"));
    }
    if find_variant(dir, MNIST_FILES[0]).is_some() {
        return load_mnist(dir);
    }
    for d in [dir.to_path_buf(), dir.join("cifar-10-batches-bin")] {
        if d.join("test_batch.bin").is_file() || d.join("data_batch_1.bin").is_file() {
            return load_cifar(&d);
        }
    }
    Err(TrainError::data(
        dir,
        format!("no dataset found: expected {} (optionally .gz) or CIFAR-10 data_batch_N.bin/test_batch.bin", MNIST_FILES.join(", ")),
    ))
}

fn find_variant(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(format!("{name}.gz"))].into_iter().find(|p| p.is_file())
}

/// Reads the four MNIST IDX files of a folder.
pub fn load_mnist(dir: &Path) -> Result<Datasets> {
    let path = |name: &str| {
        find_variant(dir, name).ok_or_else(|| TrainError::data(dir.join(name), "missing (also looked for .gz)"))
    };
    let train = read_idx_pair(&path(MNIST_FILES[0])?, &path(MNIST_FILES[1])?)?;
    let test = read_idx_pair(&path(MNIST_FILES[2])?, &path(MNIST_FILES[3])?)?;
    Ok(Datasets { train, test, source: dir.display().to_string() })
}

/// Reads a file, gunzipping it when it starts with the gzip magic.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = fs::read(path).map_err(|source| TrainError::Io { path: path.to_path_buf(), source })?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| TrainError::data(path, format!("corrupt gzip data: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// An IDX file: unsigned-byte data with its dimensions.
#[derive(Debug, Clone, PartialEq)]
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Parses IDX bytes (magic `0 0 8 ndims`, big-endian u32 dims, u8 data). Only the unsigned
/// byte type (0x08) is accepted: it is what MNIST and its lookalikes use.
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<Idx> {
    if bytes.len() < 4 {
        return Err(TrainError::data(path, format!("truncated IDX header ({} bytes)", bytes.len())));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(TrainError::data(path, "not an IDX file (bad magic number)"));
    }
    if bytes[2] != 0x08 {
        return Err(TrainError::data(path, format!("IDX element type 0x{:02x} is not supported (only unsigned bytes, 0x08)", bytes[2])));
    }
    let nd = bytes[3] as usize;
    if nd == 0 || nd > 4 {
        return Err(TrainError::data(path, format!("IDX with {nd} dimensions (expected 1 to 4)")));
    }
    let header = 4 + 4 * nd;
    if bytes.len() < header {
        return Err(TrainError::data(path, "truncated IDX header"));
    }
    let dims: Vec<usize> = (0..nd)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let want = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let Some(want) = want else {
        return Err(TrainError::data(path, format!("IDX dimensions {dims:?} overflow")));
    };
    let have = bytes.len() - header;
    if have < want {
        return Err(TrainError::data(path, format!("truncated: dimensions {dims:?} need {want} data bytes, file has {have}")));
    }
    if have > want {
        return Err(TrainError::data(path, format!("{} trailing bytes after the data of dimensions {dims:?}", have - want)));
    }
    Ok(Idx { dims, data: bytes[header..].to_vec() })
}

/// Reads an images file (`N x H x W`, or `N x C x H x W`) and its labels file.
pub fn read_idx_pair(images: &Path, labels: &Path) -> Result<Dataset> {
    let img = parse_idx(&read_maybe_gz(images)?, images)?;
    let lab = parse_idx(&read_maybe_gz(labels)?, labels)?;
    let dims = match img.dims.as_slice() {
        [_, h, w] => [1, *h, *w],
        [_, c, h, w] => [*c, *h, *w],
        d => return Err(TrainError::data(images, format!("images must have 3 or 4 dimensions, found {d:?}"))),
    };
    if dims.contains(&0) {
        return Err(TrainError::data(images, format!("images have an empty dimension: {dims:?}")));
    }
    if lab.dims.len() != 1 {
        return Err(TrainError::data(labels, format!("labels must have 1 dimension, found {:?}", lab.dims)));
    }
    if lab.dims[0] != img.dims[0] {
        return Err(TrainError::data(labels, format!("{} labels for {} images in {}", lab.dims[0], img.dims[0], images.display())));
    }
    Ok(Dataset { dims, images: img.data, labels: lab.data.into_iter().map(u32::from).collect() })
}

/// Writes IDX bytes (for tests and tools).
pub fn idx_bytes(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

const CIFAR_RECORD: usize = 1 + 3 * 32 * 32;

/// Parses one CIFAR-10 binary batch (records of 1 label byte + 3072 pixel bytes).
pub fn parse_cifar(bytes: &[u8], path: &Path, out: &mut Dataset) -> Result<()> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(CIFAR_RECORD) {
        return Err(TrainError::data(
            path,
            format!("{} bytes is not a whole number of {CIFAR_RECORD}-byte CIFAR-10 records (truncated?)", bytes.len()),
        ));
    }
    for (i, rec) in bytes.chunks_exact(CIFAR_RECORD).enumerate() {
        if rec[0] > 9 {
            return Err(TrainError::data(path, format!("record {i}: label {} is not a CIFAR-10 class (0-9)", rec[0])));
        }
        out.labels.push(rec[0] as u32);
        out.images.extend_from_slice(&rec[1..]);
    }
    Ok(())
}

/// Reads CIFAR-10 binary batches from a folder.
pub fn load_cifar(dir: &Path) -> Result<Datasets> {
    let empty = || Dataset { dims: [3, 32, 32], images: Vec::new(), labels: Vec::new() };
    let mut train = empty();
    for i in 1..=5 {
        let p = dir.join(format!("data_batch_{i}.bin"));
        if p.is_file() {
            parse_cifar(&read_maybe_gz(&p)?, &p, &mut train)?;
        }
    }
    let mut test = empty();
    let p = dir.join("test_batch.bin");
    if p.is_file() {
        parse_cifar(&read_maybe_gz(&p)?, &p, &mut test)?;
    }
    if train.is_empty() {
        return Err(TrainError::data(dir, "no CIFAR-10 training batches (data_batch_1.bin ...)"));
    }
    if test.is_empty() {
        return Err(TrainError::data(dir.join("test_batch.bin"), "missing: CIFAR-10 test batch"));
    }
    Ok(Datasets { train, test, source: dir.display().to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).expect("gz");
        e.finish().expect("gz")
    }

    #[test]
    fn mnist_dir_plain_and_gzipped() -> Result<()> {
        let d = tempfile::tempdir().map_err(|e| TrainError::Io { path: "tmp".into(), source: e })?;
        let imgs: Vec<u8> = (0..3 * 4 * 4).map(|i| i as u8).collect();
        write(d.path(), "train-images-idx3-ubyte", &idx_bytes(&[3, 4, 4], &imgs));
        write(d.path(), "train-labels-idx1-ubyte.gz", &gz(&idx_bytes(&[3], &[1, 2, 3])));
        write(d.path(), "t10k-images-idx3-ubyte.gz", &gz(&idx_bytes(&[1, 4, 4], &imgs[..16])));
        write(d.path(), "t10k-labels-idx1-ubyte", &idx_bytes(&[1], &[7]));
        let ds = load_dir(d.path())?;
        assert_eq!(ds.train.dims, [1, 4, 4]);
        assert_eq!(ds.train.labels, vec![1, 2, 3]);
        assert_eq!(ds.test.labels, vec![7]);
        let (x, y) = ds.train.batch(&[1], &Transform { scale: 0.5, mean: vec![16.0], mean_from_data: false });
        assert_eq!(y, vec![2]);
        assert_eq!(x[0], 0.0);
        assert_eq!(x[1], 0.5);
        Ok(())
    }

    #[test]
    fn truncated_and_corrupt_files_name_the_file() {
        let p = Path::new("/x/train-images-idx3-ubyte");
        let good = idx_bytes(&[2, 2, 2], &[0; 8]);
        for (bytes, want) in [
            (&good[..2], "truncated IDX header"),
            (&good[..10], "truncated IDX header"),
            (&good[..good.len() - 1], "truncated: dimensions [2, 2, 2]"),
            (&[1u8, 0, 8, 1, 0, 0, 0, 0][..], "bad magic"),
            (&[0u8, 0, 0x0d, 1, 0, 0, 0, 0][..], "element type 0x0d"),
        ] {
            let e = parse_idx(bytes, p).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("/x/train-images-idx3-ubyte") && e.contains(want), "{e}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(parse_idx(&long, p).is_err());
        let mut ds = Dataset { dims: [3, 32, 32], images: vec![], labels: vec![] };
        let e = parse_cifar(&[0u8; 100], Path::new("/c/data_batch_1.bin"), &mut ds).err().map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("/c/data_batch_1.bin"));
        let mut rec = vec![0u8; CIFAR_RECORD];
        rec[0] = 12;
        let e = parse_cifar(&rec, Path::new("/c/test_batch.bin"), &mut ds).err().map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("label 12"));
    }

    #[test]
    fn corrupt_gzip_is_an_error() -> Result<()> {
        let d = tempfile::tempdir().map_err(|e| TrainError::Io { path: "tmp".into(), source: e })?;
        let mut bytes = gz(&idx_bytes(&[4], &[1, 2, 3, 4]));
        let n = bytes.len();
        bytes.truncate(n - 6);
        let p = write(d.path(), "t.gz", &bytes);
        let e = read_maybe_gz(&p).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("t.gz") && e.contains("gzip"), "{e}");
        Ok(())
    }

    #[test]
    fn cifar_dir_and_missing_data() -> Result<()> {
        let d = tempfile::tempdir().map_err(|e| TrainError::Io { path: "tmp".into(), source: e })?;
        assert!(load_dir(d.path()).is_err());
        let mut rec = vec![0u8; CIFAR_RECORD * 2];
        rec[0] = 3;
        rec[CIFAR_RECORD] = 9;
        write(d.path(), "data_batch_1.bin", &rec);
        write(d.path(), "test_batch.bin", &rec[..CIFAR_RECORD]);
        let ds = load_dir(d.path())?;
        assert_eq!(ds.train.labels, vec![3, 9]);
        assert_eq!(ds.train.dims, [3, 32, 32]);
        assert_eq!(ds.test.len(), 1);
        Ok(())
    }

    #[test]
    fn batcher_wraps_and_covers_each_epoch() {
        let mut b = Batcher::new(5, Some(1));
        let mut seen: Vec<usize> = b.next_batch(5);
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
        assert_eq!(b.next_batch(7).len(), 7);
        let mut t = Batcher::new(3, None);
        assert_eq!(t.next_batch(4), vec![0, 1, 2, 0]);
    }
}
