//! Integration tests of `dlv_store::formats`: weights readers and writer (safetensors, npz,
//! PyTorch zip, caffemodel), tensor-to-layer matching, solver and log readers. Every fixture is
//! built here by small encoders, so the tests need neither Python nor PyTorch.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use dlv_store::formats::{
    is_caffe_log, is_weights_file, open_caffemodel, open_npz, open_safetensors, open_torch, open_weights,
    read_caffe_log, read_jsonl_metrics, read_solver, write_safetensors, HyperValue, TensorSource,
};
use dlv_store::{DType, StoreError, TensorInfo};

// ---------------------------------------------------------------------------------------------
// helpers

fn ti(name: &str, dtype: DType, shape: &[usize]) -> TensorInfo {
    TensorInfo { name: name.into(), dtype, shape: shape.to_vec() }
}

/// Deterministic bytes for a tensor.
fn pattern(len: u64, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn read_all(src: &mut dyn TensorSource) -> Vec<(TensorInfo, Vec<u8>)> {
    let infos = src.tensors().to_vec();
    infos
        .into_iter()
        .enumerate()
        .map(|(i, info)| {
            let mut out = Vec::new();
            let n = src.read_tensor(i, &mut out).unwrap();
            assert_eq!(n, info.byte_len(), "{}", info.name);
            assert_eq!(out.len() as u64, info.byte_len(), "{}", info.name);
            (info, out)
        })
        .collect()
}

/// Asserts a Format error that names `path`, and returns its display text.
fn expect_format_err<T>(r: dlv_store::Result<T>, path: &Path) -> String {
    match r {
        Err(e @ StoreError::Format { .. }) => {
            let StoreError::Format { path: p, .. } = &e else { unreachable!() };
            assert_eq!(p, path);
            let text = e.to_string();
            assert!(text.contains(&path.display().to_string()), "{text}");
            text
        }
        Err(other) => panic!("expected a format error for {}, got {other:?}", path.display()),
        Ok(_) => panic!("expected a format error for {}, got Ok", path.display()),
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

// ---------------------------------------------------------------------------------------------
// safetensors

fn sample_tensors() -> Vec<(TensorInfo, Vec<u8>)> {
    let infos = vec![
        ti("conv1.weight", DType::F32, &[4, 3, 3, 3]),
        ti("conv1.bias", DType::F32, &[4]),
        ti("bn.running_mean", DType::F16, &[4]),
        ti("emb", DType::BF16, &[5, 2]),
        ti("steps", DType::I64, &[]),
        ti("mask", DType::Bool, &[7]),
        ti("ids", DType::I32, &[3]),
        ti("q", DType::I8, &[2, 2]),
        ti("u", DType::U8, &[3]),
        ti("s", DType::I16, &[2]),
        ti("d", DType::F64, &[2]),
        ti("empty", DType::F32, &[0, 3]),
    ];
    infos
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let mut data = pattern(t.byte_len(), i as u8);
            if t.dtype == DType::Bool {
                data.iter_mut().for_each(|b| *b &= 1);
            }
            (t, data)
        })
        .collect()
}

fn write_sample(path: &Path, items: &[(TensorInfo, Vec<u8>)], meta: Option<&BTreeMap<String, String>>) {
    let infos: Vec<TensorInfo> = items.iter().map(|(t, _)| t.clone()).collect();
    write_safetensors(path, &infos, meta, &mut |i, out| {
        out.write_all(&items[i].1).unwrap();
        Ok(items[i].1.len() as u64)
    })
    .unwrap();
}

fn st_dtype(d: DType) -> safetensors::Dtype {
    match d {
        DType::F64 => safetensors::Dtype::F64,
        DType::F32 => safetensors::Dtype::F32,
        DType::F16 => safetensors::Dtype::F16,
        DType::BF16 => safetensors::Dtype::BF16,
        DType::I64 => safetensors::Dtype::I64,
        DType::I32 => safetensors::Dtype::I32,
        DType::I16 => safetensors::Dtype::I16,
        DType::I8 => safetensors::Dtype::I8,
        DType::U8 => safetensors::Dtype::U8,
        DType::Bool => safetensors::Dtype::BOOL,
    }
}

#[test]
fn safetensors_written_file_loads_with_the_safetensors_crate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let items = sample_tensors();
    let meta: BTreeMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    write_sample(&path, &items, Some(&meta));

    let bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    assert_eq!(header_len % 8, 0, "header padded to 8 bytes");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), items.len());
    for (t, data) in &items {
        let view = st.tensor(&t.name).unwrap();
        assert_eq!(view.shape(), t.shape.as_slice(), "{}", t.name);
        assert_eq!(view.dtype(), st_dtype(t.dtype));
        assert_eq!(view.data(), data.as_slice(), "{}", t.name);
    }
    let (_, md) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(md.metadata().as_ref().and_then(|m| m.get("format")).map(String::as_str), Some("pt"));

    // And back through our reader, in file order, with the metadata.
    let mut r = open_safetensors(&path).unwrap();
    assert_eq!(r.metadata(), &meta);
    let got = read_all(&mut r);
    assert_eq!(got, items);
}

#[test]
fn safetensors_crate_output_reads_back_identically() {
    let items = sample_tensors();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = items
        .iter()
        .map(|(t, d)| (t.name.clone(), safetensors::tensor::TensorView::new(st_dtype(t.dtype), t.shape.clone(), d).unwrap()))
        .collect();
    let meta: HashMap<String, String> = [("k".to_string(), "v".to_string())].into();
    let bytes = safetensors::serialize(views, Some(meta)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crate.safetensors");
    std::fs::write(&path, &bytes).unwrap();

    let mut r = open_weights(&path).unwrap();
    let got = read_all(r.as_mut());
    assert_eq!(got.len(), items.len());
    let by_name: HashMap<&str, &(TensorInfo, Vec<u8>)> = items.iter().map(|x| (x.0.name.as_str(), x)).collect();
    for (t, data) in &got {
        let (et, ed) = by_name[t.name.as_str()];
        assert_eq!(t, et);
        assert_eq!(data, ed);
    }
    assert!(is_weights_file(&path));
}

#[test]
fn safetensors_streams_large_tensors_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.safetensors");
    // 3 MiB + 3 bytes: several chunks and a ragged end.
    let items = vec![(ti("big", DType::U8, &[3 * 1024 * 1024 + 3]), pattern(3 * 1024 * 1024 + 3, 7)), (ti("tail", DType::F32, &[2]), pattern(8, 1))];
    write_sample(&path, &items, None);

    struct Chunks(Vec<usize>, Vec<u8>);
    impl Write for Chunks {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.push(b.len());
            self.1.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut r = open_safetensors(&path).unwrap();
    let mut c = Chunks(Vec::new(), Vec::new());
    r.read_tensor(0, &mut c).unwrap();
    assert!(c.0.len() >= 4 && c.0.iter().all(|&n| n <= 1 << 20), "{:?}", c.0);
    assert_eq!(c.1, items[0].1);
}

#[test]
fn safetensors_writer_checks_fill_lengths_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    let infos = vec![ti("a", DType::F32, &[2])];
    let r = write_safetensors(&path, &infos, None, &mut |_, out| {
        out.write_all(&[0u8; 4]).unwrap();
        Ok(4)
    });
    assert!(r.is_err());
    assert!(!path.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "temp file cleaned up");
    let dup = vec![ti("a", DType::F32, &[1]), ti("a", DType::F32, &[1])];
    assert!(write_safetensors(&path, &dup, None, &mut |_, out| {
        out.write_all(&[0u8; 4]).unwrap();
        Ok(4)
    })
    .is_err());
}

#[test]
fn safetensors_truncated_files_are_format_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    let items = sample_tensors();
    write_sample(&good, &items, None);
    let bytes = std::fs::read(&good).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let cuts = [0, 1, 7, 8, 9, 8 + header_len / 2, 8 + header_len, 8 + header_len + 3, bytes.len() - 1];
    for cut in cuts {
        let p = dir.path().join(format!("cut{cut}.safetensors"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let msg = expect_format_err(open_safetensors(&p), &p);
        assert!(msg.contains("at byte"), "cut {cut}: {msg}");
    }
}

/// A file with the given JSON header and `data_len` bytes of data.
fn raw_safetensors(dir: &Path, name: &str, header: &str, data_len: usize) -> PathBuf {
    let p = dir.join(name);
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend(std::iter::repeat_n(0u8, data_len));
    std::fs::write(&p, b).unwrap();
    p
}

#[test]
fn safetensors_lying_headers_are_format_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: &[(&str, &str, usize, &str)] = &[
        ("past_end", r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, 8, "past the end"),
        ("overlap", r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#, 12, "overlaps"),
        ("gap", r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, 8, "gap"),
        ("trailing", r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, 8, "after the last tensor"),
        ("bad_dtype", r#"{"a":{"dtype":"F7","shape":[1],"data_offsets":[0,4]}}"#, 4, "unsupported dtype 'F7'"),
        ("u32_dtype", r#"{"a":{"dtype":"U32","shape":[1],"data_offsets":[0,4]}}"#, 4, "unsupported dtype"),
        ("wrong_len", r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, 8, "needs 12"),
        ("reversed", r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}"#, 8, "end before"),
        ("neg_shape", r#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, 4, "non-negative"),
        ("huge_shape", r#"{"a":{"dtype":"F32","shape":[18446744073709551615,4],"data_offsets":[0,4]}}"#, 4, "overflows"),
        ("not_json", r#"{"a": nope}"#, 0, "not valid JSON"),
        ("not_object", r#"[1,2,3]"#, 0, "not a JSON object"),
        ("bad_meta", r#"{"__metadata__":{"k":1}}"#, 0, "not a string"),
        ("no_offsets", r#"{"a":{"dtype":"F32","shape":[1]}}"#, 4, "data_offsets"),
    ];
    for (name, header, data_len, needle) in cases {
        let p = raw_safetensors(d, &format!("{name}.safetensors"), header, *data_len);
        let msg = expect_format_err(open_safetensors(&p), &p);
        assert!(msg.contains(needle), "{name}: {msg}");
    }

    // Huge header lengths: refused before any allocation.
    for len in [u64::MAX, 1 << 40, 200_000_000, 1000] {
        let p = d.join(format!("hlen{len}.safetensors"));
        let mut b = len.to_le_bytes().to_vec();
        b.extend_from_slice(b"{}");
        std::fs::write(&p, b).unwrap();
        let msg = expect_format_err(open_safetensors(&p), &p);
        assert!(msg.contains("header length"), "{msg}");
    }

    // An empty header with no data is a valid (empty) file; metadata-only too.
    let p = raw_safetensors(d, "empty.safetensors", "{}      ", 0);
    assert!(open_safetensors(&p).unwrap().tensors().is_empty());
    let p = raw_safetensors(d, "meta.safetensors", r#"{"__metadata__":{"a":"b"}}"#, 0);
    assert_eq!(open_safetensors(&p).unwrap().metadata().get("a").map(String::as_str), Some("b"));
}

#[test]
fn safetensors_file_shrunk_after_open_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.safetensors");
    let items = vec![(ti("a", DType::U8, &[100]), pattern(100, 0))];
    write_sample(&p, &items, None);
    let mut r = open_safetensors(&p).unwrap();
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(len - 10).unwrap();
    let mut out = Vec::new();
    expect_format_err(r.read_tensor(0, &mut out), &p);
    assert!(r.read_tensor(5, &mut out).is_err());
}

// ---------------------------------------------------------------------------------------------
// npz

fn npy(descr: &str, fortran: bool, shape: &[usize], data: &[u8], version: u8) -> Vec<u8> {
    let shape_s = match shape {
        [] => "()".to_string(),
        [n] => format!("({n},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut dict = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape_s}, }}",
        if fortran { "True" } else { "False" }
    );
    let pre = if version == 1 { 10 } else { 12 };
    while (pre + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut b = b"\x93NUMPY".to_vec();
    b.push(version);
    b.push(0);
    if version == 1 {
        b.extend((dict.len() as u16).to_le_bytes());
    } else {
        b.extend((dict.len() as u32).to_le_bytes());
    }
    b.extend(dict.as_bytes());
    b.extend(data);
    b
}

fn write_zip(path: &Path, members: &[(&str, Vec<u8>, bool)]) {
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    for (name, data, deflate) in members {
        let method = if *deflate { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
        let opts = zip::write::SimpleFileOptions::default().compression_method(method);
        z.start_file(*name, opts).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap();
}

#[test]
fn npz_stored_deflated_big_endian_and_fortran() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.npz");
    let w = f32_bytes(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    let ids: Vec<u8> = [1i64, -2, 3].iter().flat_map(|x| x.to_le_bytes()).collect();
    let be: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| x.to_be_bytes()).collect();
    // [[0,1,2],[3,4,5]] as f32 in column-major order.
    let fort = f32_bytes(&[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    let big = pattern(2 * 1024 * 1024 + 6, 3);
    write_zip(
        &path,
        &[
            ("conv1.weight.npy", npy("<f4", false, &[2, 3], &w, 1), false),
            ("ids.npy", npy("<i8", false, &[3], &ids, 1), true),
            ("be.npy", npy(">f4", false, &[2], &be, 2), true),
            ("fort.npy", npy("<f4", true, &[2, 3], &fort, 3), false),
            ("mask.npy", npy("|b1", false, &[2], &[1, 0], 1), false),
            ("scalar.npy", npy("<f8", false, &[], &2.5f64.to_le_bytes(), 1), false),
            ("half.npy", npy("<f2", false, &[1], &[0x00, 0x3c], 1), true),
            ("big.npy", npy("|u1", false, &[big.len()], &big, 1), true),
        ],
    );
    assert!(is_weights_file(&path));
    let mut r = open_weights(&path).unwrap();
    let got = read_all(r.as_mut());
    let names: Vec<&str> = got.iter().map(|(t, _)| t.name.as_str()).collect();
    assert_eq!(names, ["conv1.weight", "ids", "be", "fort", "mask", "scalar", "half", "big"]);
    assert_eq!(got[0].0, ti("conv1.weight", DType::F32, &[2, 3]));
    assert_eq!(got[0].1, w);
    assert_eq!(got[1].1, ids);
    assert_eq!(got[2].1, f32_bytes(&[1.5, -2.0]));
    assert_eq!(got[3].1, w, "fortran order transposed to C order");
    assert_eq!(got[4].0.dtype, DType::Bool);
    assert_eq!(got[5].0.shape, Vec::<usize>::new());
    assert_eq!(got[6].0.dtype, DType::F16);
    assert_eq!(got[7].1, big);
}

#[test]
fn npz_bad_members_are_format_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let w = f32_bytes(&[1.0, 2.0]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("short", npy("<f4", false, &[3], &w, 1), "truncated or lying header"),
        ("long", npy("<f4", false, &[1], &w, 1), "truncated or lying header"),
        ("dtype", npy("<c8", false, &[1], &w, 1), "unsupported dtype descr"),
        ("u4", npy("<u4", false, &[2], &w, 1), "unsupported dtype descr"),
        ("magic", b"NOTNUMPY....".to_vec(), "magic"),
        ("cut", npy("<f4", false, &[2], &w, 1)[..9].to_vec(), "truncated"),
        ("structured", {
            let h = "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }\n";
            let mut b = b"\x93NUMPY\x01\x00".to_vec();
            b.extend((h.len() as u16).to_le_bytes());
            b.extend(h.as_bytes());
            b.extend(&w[..4]);
            b
        }, "structured"),
    ];
    for (name, member, needle) in cases {
        let p = d.join(format!("{name}.npz"));
        write_zip(&p, &[("x.npy", member, name == "short")]);
        let msg = expect_format_err(open_npz(&p), &p);
        assert!(msg.contains(needle), "{name}: {msg}");
    }
    let p = d.join("notnpy.npz");
    write_zip(&p, &[("readme.txt", b"hi".to_vec(), false)]);
    expect_format_err(open_npz(&p), &p);
    let p = d.join("garbage.npz");
    std::fs::write(&p, b"PK\x03\x04 this is not really a zip").unwrap();
    expect_format_err(open_weights(&p), &p);
}

// ---------------------------------------------------------------------------------------------
// PyTorch: a tiny pickle emitter that writes what torch.save (protocol 2) writes.

#[derive(Default)]
struct Pickler {
    b: Vec<u8>,
    memo: u32,
}

impl Pickler {
    fn op(&mut self, bytes: &[u8]) -> &mut Self {
        self.b.extend_from_slice(bytes);
        self
    }
    fn put(&mut self) -> u32 {
        let k = self.memo;
        if k < 256 {
            self.op(&[b'q', k as u8]);
        } else {
            self.op(b"r");
            self.op(&k.to_le_bytes());
        }
        self.memo += 1;
        k
    }
    fn get(&mut self, k: u32) -> &mut Self {
        if k < 256 {
            self.op(&[b'h', k as u8])
        } else {
            self.op(b"j");
            self.op(&k.to_le_bytes())
        }
    }
    fn global(&mut self, module: &str, name: &str) -> u32 {
        self.op(b"c");
        self.op(format!("{module}\n{name}\n").as_bytes());
        self.put()
    }
    fn str(&mut self, s: &str) -> u32 {
        self.op(b"X");
        self.op(&(s.len() as u32).to_le_bytes());
        self.op(s.as_bytes());
        self.put()
    }
    fn int(&mut self, v: u64) -> &mut Self {
        if v < 256 {
            self.op(&[b'K', v as u8])
        } else if v < 65536 {
            self.op(b"M");
            self.op(&(v as u16).to_le_bytes())
        } else if v < (1 << 31) {
            self.op(b"J");
            self.op(&(v as u32).to_le_bytes())
        } else {
            self.op(&[0x8a, 8]);
            self.op(&v.to_le_bytes())
        }
    }
    fn int_tuple(&mut self, v: &[u64]) {
        match v.len() {
            0 => {
                self.op(b")");
                return;
            }
            1..=3 => {
                for &x in v {
                    self.int(x);
                }
                self.op(&[0x84 + v.len() as u8]);
            }
            _ => {
                self.op(b"(");
                for &x in v {
                    self.int(x);
                }
                self.op(b"t");
            }
        }
        self.put();
    }
}

struct FakeTensor<'a> {
    name: &'a str,
    storage_type: &'a str,
    key: &'a str,
    numel: u64,
    offset: u64,
    size: &'a [u64],
    stride: &'a [u64],
}

/// The pickle of `OrderedDict(name -> tensor)` with `_metadata`, as torch.save writes a
/// state_dict; wrapped in `{wrap: state_dict, "epoch": 3}` when `wrap` is given.
fn torch_pickle(tensors: &[FakeTensor<'_>], wrap: Option<&str>) -> Vec<u8> {
    let mut p = Pickler::default();
    p.op(&[0x80, 2]);
    if let Some(w) = wrap {
        p.op(b"}");
        p.put();
        p.op(b"(");
        p.str(w);
    }
    let od = p.global("collections", "OrderedDict");
    p.op(b")R");
    p.put();
    p.op(b"(");
    let mut rebuild = None;
    let mut storages: HashMap<&str, u32> = HashMap::new();
    for t in tensors {
        p.str(t.name);
        match rebuild {
            None => rebuild = Some(p.global("torch._utils", "_rebuild_tensor_v2")),
            Some(k) => {
                p.get(k);
            }
        }
        p.op(b"(");
        // Persistent id: ('storage', torch.FloatStorage, key, 'cpu', numel), memoized per key.
        if let Some(&k) = storages.get(t.key) {
            p.get(k);
        } else {
            p.op(b"(");
            p.str("storage");
            p.global("torch", t.storage_type);
            p.str(t.key);
            p.str("cpu");
            p.int(t.numel);
            p.op(b"t");
            p.put();
            p.op(b"Q");
            let k = p.put();
            storages.insert(t.key, k);
        }
        p.int(t.offset);
        p.int_tuple(t.size);
        p.int_tuple(t.stride);
        p.op(&[0x89]); // requires_grad = False
        p.get(od);
        p.op(b")R");
        p.put();
        p.op(b"t");
        p.put();
        p.op(b"R");
        p.put();
    }
    p.op(b"u");
    // state: {'_metadata': OrderedDict({'': {'version': 1}})}, applied with BUILD.
    p.op(b"}");
    p.put();
    p.str("_metadata");
    p.get(od);
    p.op(b")R");
    p.put();
    p.str("");
    p.op(b"}");
    p.put();
    p.str("version");
    p.int(1);
    p.op(b"ss");
    p.op(b"sb");
    if wrap.is_some() {
        p.str("epoch");
        p.int(3);
        p.op(b"u");
    }
    p.op(b".");
    p.b
}

fn write_torch(path: &Path, prefix: &str, pickle: Vec<u8>, storages: &[(&str, Vec<u8>)]) {
    let mut members: Vec<(String, Vec<u8>)> = vec![(format!("{prefix}/data.pkl"), pickle), (format!("{prefix}/byteorder"), b"little".to_vec())];
    for (k, d) in storages {
        members.push((format!("{prefix}/data/{k}"), d.clone()));
    }
    members.push((format!("{prefix}/version"), b"3\n".to_vec()));
    let refs: Vec<(&str, Vec<u8>, bool)> = members.iter().map(|(n, d)| (n.as_str(), d.clone(), false)).collect();
    write_zip(path, &refs);
}

fn standard_torch_tensors() -> Vec<FakeTensor<'static>> {
    vec![
        FakeTensor { name: "conv1.weight", storage_type: "FloatStorage", key: "0", numel: 6, offset: 0, size: &[2, 1, 1, 3], stride: &[3, 3, 3, 1] },
        FakeTensor { name: "conv1.bias", storage_type: "FloatStorage", key: "1", numel: 2, offset: 0, size: &[2], stride: &[1] },
        FakeTensor { name: "fc.weight", storage_type: "HalfStorage", key: "2", numel: 4, offset: 0, size: &[2, 2], stride: &[2, 1] },
        // A view into storage 0 (shared storage, with an offset).
        FakeTensor { name: "fc.bias", storage_type: "FloatStorage", key: "0", numel: 6, offset: 4, size: &[2], stride: &[1] },
        FakeTensor { name: "bn.num_batches_tracked", storage_type: "LongStorage", key: "3", numel: 1, offset: 0, size: &[], stride: &[] },
    ]
}

fn standard_storages() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("0", f32_bytes(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0])),
        ("1", f32_bytes(&[7.0, 8.0])),
        ("2", vec![0, 0x3c, 0, 0x40, 0, 0x42, 0, 0x44]),
        ("3", 42i64.to_le_bytes().to_vec()),
    ]
}

#[test]
fn torch_state_dict_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.pt");
    write_torch(&path, "archive", torch_pickle(&standard_torch_tensors(), None), &standard_storages());
    assert!(is_weights_file(&path));
    let mut r = open_weights(&path).unwrap();
    let got = read_all(r.as_mut());
    let names: Vec<&str> = got.iter().map(|(t, _)| t.name.as_str()).collect();
    assert_eq!(names, ["conv1.weight", "conv1.bias", "fc.weight", "fc.bias", "bn.num_batches_tracked"]);
    assert_eq!(got[0].0, ti("conv1.weight", DType::F32, &[2, 1, 1, 3]));
    assert_eq!(got[0].1, f32_bytes(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]));
    assert_eq!(got[1].1, f32_bytes(&[7.0, 8.0]));
    assert_eq!(got[2].0.dtype, DType::F16);
    assert_eq!(got[3].1, f32_bytes(&[4.0, 5.0]));
    assert_eq!(got[4].0, ti("bn.num_batches_tracked", DType::I64, &[]));
    assert_eq!(got[4].1, 42i64.to_le_bytes());
}

/// Bytes written by CPython 3.11's own `pickle.Pickler` (protocol 2, as torch.save uses) for
/// `{"model": state_dict, "epoch": 7, "optimizer": {...}}` where the state dict holds four
/// tensors (one a `Parameter`, two sharing storage "0") and `_metadata`. Produced with fake
/// `torch` / `torch._utils` modules registered in `sys.modules`: classes `FloatStorage` and
/// `HalfStorage`, functions `_rebuild_tensor_v2` / `_rebuild_parameter`, tensor objects whose
/// `__reduce_ex__` returns `(_rebuild_tensor_v2, (storage, offset, size, stride, False,
/// OrderedDict()))`, and a pickler whose `persistent_id` maps storages to
/// `('storage', cls, key, 'cpu', numel)`.
const CPYTHON_TORCH_PICKLE: &[&str] = &[
    "80027d71002858050000006d6f64656c710163636f6c6c656374696f6e730a4f726465726564446963740a7102295271",
    "0328580c000000636f6e76312e776569676874710463746f7263682e5f7574696c730a5f72656275696c645f74656e73",
    "6f725f76320a71052828580700000073746f72616765710663746f7263680a466c6f617453746f726167650a71075801",
    "000000307108580300000063707571094b0674710a514b004b024b0386710b4b034b0186710c8968022952710d74710e",
    "52710f580a000000636f6e76312e6269617371106805282868066807580100000031711168094b02747112514b004b02",
    "8571134b0185711489680229527115747116527117580900000066632e776569676874711863746f7263682e5f757469",
    "6c730a5f72656275696c645f706172616d657465720a711968052828680663746f7263680a48616c6653746f72616765",
    "0a711a580100000032711b68094b0474711c514b004b024b0286711d4b024b0186711e8968022952711f747120527121",
    "88680229527122877123527124580700000066632e6269617371256805282868066807680868094b06747126514b0468",
    "13681489680229527127747128527129757d712a58090000005f6d65746164617461712b68022952712c285800000000",
    "712d7d712e580700000076657273696f6e712f4b01735805000000636f6e763171307d7131682f4b0173757362580500",
    "000065706f636871324b0758090000006f7074696d697a657271337d71342858020000006c727135473fb99999999999",
    "9a5805000000737461746571367d7137580c000000706172616d5f67726f75707371385d71397d713a58060000007061",
    "72616d73713b5d713c284b004b0165736175752e",
];

fn unhex(parts: &[&str]) -> Vec<u8> {
    let s: String = parts.concat();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn torch_pickle_written_by_cpython() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cpython.pt");
    write_torch(&path, "archive", unhex(CPYTHON_TORCH_PICKLE), &standard_storages());
    let mut r = open_torch(&path).unwrap();
    let got = read_all(&mut r);
    let names: Vec<&str> = got.iter().map(|(t, _)| t.name.as_str()).collect();
    assert_eq!(names, ["model.conv1.weight", "model.conv1.bias", "model.fc.weight", "model.fc.bias"]);
    assert_eq!(got[0].0, ti("model.conv1.weight", DType::F32, &[2, 3]));
    assert_eq!(got[2].0, ti("model.fc.weight", DType::F16, &[2, 2]));
    assert_eq!(got[3].1, f32_bytes(&[4.0, 5.0]));
}

#[test]
fn torch_nested_checkpoint_with_other_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.pth");
    write_torch(&path, "resnet_epoch3", torch_pickle(&standard_torch_tensors(), Some("state_dict")), &standard_storages());
    let r = open_torch(&path).unwrap();
    let names: Vec<&str> = r.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names[0], "state_dict.conv1.weight");
    assert_eq!(names.len(), 5);
}

#[test]
fn torch_protocol4_opcodes() {
    // STACK_GLOBAL, SHORT_BINUNICODE, MEMOIZE, FRAME, _rebuild_parameter, BINUNICODE8.
    let mut b = vec![0x80, 4, 0x95];
    b.extend(0u64.to_le_bytes());
    let short = |b: &mut Vec<u8>, s: &str| {
        b.push(0x8c);
        b.push(s.len() as u8);
        b.extend(s.as_bytes());
        b.push(0x94);
    };
    b.push(b'}');
    b.push(0x94);
    // key (BINUNICODE8)
    b.push(0x8d);
    b.extend(1u64.to_le_bytes());
    b.push(b'w');
    short(&mut b, "torch._utils");
    short(&mut b, "_rebuild_parameter");
    b.push(0x93);
    short(&mut b, "torch._utils");
    short(&mut b, "_rebuild_tensor_v2");
    b.push(0x93);
    b.push(b'(');
    b.push(b'(');
    short(&mut b, "storage");
    short(&mut b, "torch");
    short(&mut b, "DoubleStorage");
    b.push(0x93);
    short(&mut b, "0");
    short(&mut b, "cpu");
    b.extend([b'K', 2, b't', b'Q', b'K', 0, b'K', 2, 0x85, b'K', 1, 0x85, 0x89, b'N', b't', b'R']);
    b.extend([0x88, b'N', 0x87, b'R', b's', b'.']);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p4.pt");
    let data: Vec<u8> = [1.0f64, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    write_torch(&path, "archive", b, &[("0", data.clone())]);
    let mut r = open_torch(&path).unwrap();
    let got = read_all(&mut r);
    assert_eq!(got, vec![(ti("w", DType::F64, &[2]), data)]);
}

#[test]
fn torch_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let strided = vec![FakeTensor { name: "t.weight", storage_type: "FloatStorage", key: "0", numel: 6, offset: 0, size: &[3, 2], stride: &[1, 3] }];
    let p = d.join("strided.pt");
    write_torch(&p, "archive", torch_pickle(&strided, None), &standard_storages());
    let msg = expect_format_err(open_torch(&p), &p);
    assert!(msg.contains("t.weight") && msg.contains("non-contiguous"), "{msg}");

    let p = d.join("missing.pt");
    write_torch(&p, "archive", torch_pickle(&standard_torch_tensors(), None), &standard_storages()[..2]);
    let msg = expect_format_err(open_torch(&p), &p);
    assert!(msg.contains("fc.weight") && msg.contains("missing"), "{msg}");

    let short = vec![FakeTensor { name: "big", storage_type: "FloatStorage", key: "1", numel: 100, offset: 0, size: &[100], stride: &[1] }];
    let p = d.join("short.pt");
    write_torch(&p, "archive", torch_pickle(&short, None), &standard_storages());
    let msg = expect_format_err(open_torch(&p), &p);
    assert!(msg.contains("truncated"), "{msg}");

    let p = d.join("odd_storage.pt");
    let odd = vec![FakeTensor { name: "c", storage_type: "ComplexFloatStorage", key: "1", numel: 1, offset: 0, size: &[1], stride: &[1] }];
    write_torch(&p, "archive", torch_pickle(&odd, None), &standard_storages());
    let msg = expect_format_err(open_torch(&p), &p);
    assert!(msg.contains("ComplexFloatStorage"), "{msg}");

    // Every truncation of the pickle is an error, never a panic.
    let full = torch_pickle(&standard_torch_tensors(), None);
    for cut in (0..full.len()).step_by(7) {
        let p = d.join(format!("cut{cut}.pt"));
        write_torch(&p, "archive", full[..cut].to_vec(), &standard_storages());
        expect_format_err(open_torch(&p), &p);
    }

    let p = d.join("legacy.pt");
    std::fs::write(&p, [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e]).unwrap();
    let msg = expect_format_err(open_weights(&p), &p);
    assert!(msg.contains("legacy"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// caffemodel: a tiny protobuf encoder.

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn key(field: u64, wire: u64, out: &mut Vec<u8>) {
    varint(field << 3 | wire, out);
}

fn len_field(field: u64, body: &[u8], out: &mut Vec<u8>) {
    key(field, 2, out);
    varint(body.len() as u64, out);
    out.extend_from_slice(body);
}

fn blob_v2(shape: &[u64], data: &[f32]) -> Vec<u8> {
    let mut b = Vec::new();
    let mut dims = Vec::new();
    for &d in shape {
        varint(d, &mut dims);
    }
    let mut s = Vec::new();
    len_field(1, &dims, &mut s);
    len_field(5, &f32_bytes(data), &mut b);
    // An unknown varint field and a diff field, to be skipped.
    key(99, 0, &mut b);
    varint(12345, &mut b);
    len_field(7, &s, &mut b);
    b
}

fn layer_v2(name: &str, ty: &str, blobs: &[Vec<u8>]) -> Vec<u8> {
    let mut l = Vec::new();
    len_field(1, name.as_bytes(), &mut l);
    len_field(2, ty.as_bytes(), &mut l);
    len_field(3, b"data", &mut l); // bottom
    for b in blobs {
        len_field(7, b, &mut l);
    }
    l
}

fn caffemodel_v2() -> (Vec<u8>, Vec<(TensorInfo, Vec<u8>)>) {
    let (net, expected, _) = caffemodel_v2_with_boundaries();
    (net, expected)
}

/// Also returns the offsets where a top-level field ends: a file cut there is a valid, shorter
/// NetParameter.
type Fixture = (Vec<u8>, Vec<(TensorInfo, Vec<u8>)>, Vec<usize>);

fn caffemodel_v2_with_boundaries() -> Fixture {
    let w: Vec<f32> = (0..24).map(|i| i as f32 * 0.5).collect();
    let bias = [0.1f32, 0.2];
    let mean = [1.0f32, 2.0, 3.0];
    let var = [4.0f32, 5.0, 6.0];
    let mut net = Vec::new();
    len_field(1, b"lenet", &mut net);
    let mut ends = vec![net.len()];
    len_field(100, &layer_v2("data", "Input", &[]), &mut net);
    ends.push(net.len());
    len_field(100, &layer_v2("conv1", "Convolution", &[blob_v2(&[2, 3, 2, 2], &w), blob_v2(&[2], &bias)]), &mut net);
    ends.push(net.len());
    len_field(100, &layer_v2("bn1", "BatchNorm", &[blob_v2(&[3], &mean), blob_v2(&[3], &var), blob_v2(&[1], &[0.999])]), &mut net);
    ends.push(net.len());
    len_field(100, &layer_v2("prelu", "PReLU", &[blob_v2(&[2], &[0.25, 0.25])]), &mut net);
    ends.push(net.len());
    len_field(100, &layer_v2("relu1", "ReLU", &[]), &mut net);
    let expected = vec![
        (ti("conv1.weight", DType::F32, &[2, 3, 2, 2]), f32_bytes(&w)),
        (ti("conv1.bias", DType::F32, &[2]), f32_bytes(&bias)),
        (ti("bn1.running_mean", DType::F32, &[3]), f32_bytes(&mean)),
        (ti("bn1.running_var", DType::F32, &[3]), f32_bytes(&var)),
        (ti("bn1.scale_factor", DType::F32, &[1]), f32_bytes(&[0.999])),
        (ti("prelu.blob0", DType::F32, &[2]), f32_bytes(&[0.25, 0.25])),
    ];
    (net, expected, ends)
}

#[test]
fn caffemodel_v2_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lenet.caffemodel");
    let (bytes, expected) = caffemodel_v2();
    std::fs::write(&path, bytes).unwrap();
    assert!(is_weights_file(&path));
    let mut r = open_weights(&path).unwrap();
    assert_eq!(read_all(r.as_mut()), expected);
    let r = open_caffemodel(&path).unwrap();
    assert_eq!(r.layers().len(), 5);
}

#[test]
fn caffemodel_v1_legacy_dims_unpacked_and_double() {
    // V1LayerParameter: name 4, type 5 (enum), blobs 6; legacy num/channels/height/width.
    let ip_w: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let mut w_blob = Vec::new();
    for (f, v) in [(1u64, 1u64), (2, 1), (3, 3), (4, 4)] {
        key(f, 0, &mut w_blob);
        varint(v, &mut w_blob);
    }
    for x in &ip_w {
        // Unpacked repeated float: tag (5, fixed32) before every value.
        key(5, 5, &mut w_blob);
        w_blob.extend(x.to_le_bytes());
    }
    let mut b_blob = Vec::new();
    for (f, v) in [(1u64, 1u64), (2, 1), (3, 1), (4, 3)] {
        key(f, 0, &mut b_blob);
        varint(v, &mut b_blob);
    }
    let bias = [0.5f64, 1.5, 2.5];
    let mut dd = Vec::new();
    bias.iter().for_each(|x| dd.extend(x.to_le_bytes()));
    len_field(8, &dd, &mut b_blob);

    let mut layer = Vec::new();
    len_field(2, b"data", &mut layer); // bottom
    len_field(4, b"fc6", &mut layer);
    key(5, 0, &mut layer);
    varint(14, &mut layer); // INNER_PRODUCT
    len_field(6, &w_blob, &mut layer);
    len_field(6, &b_blob, &mut layer);
    let mut conv = Vec::new();
    len_field(4, b"conv1", &mut conv);
    key(5, 0, &mut conv);
    varint(4, &mut conv); // CONVOLUTION
    let mut cw = Vec::new();
    for (f, v) in [(1u64, 1u64), (2, 1), (3, 1), (4, 2)] {
        key(f, 0, &mut cw);
        varint(v, &mut cw);
    }
    len_field(5, &f32_bytes(&[9.0, 8.0]), &mut cw);
    len_field(6, &cw, &mut conv);

    let mut net = Vec::new();
    len_field(1, b"alexnet-ish", &mut net);
    len_field(2, &conv, &mut net);
    len_field(2, &layer, &mut net);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.caffemodel");
    std::fs::write(&path, &net).unwrap();
    let mut r = open_caffemodel(&path).unwrap();
    let got = read_all(&mut r);
    assert_eq!(got[0].0, ti("conv1.weight", DType::F32, &[1, 1, 1, 2]), "non-IP legacy weight keeps 4 dims");
    assert_eq!(got[1].0, ti("fc6.weight", DType::F32, &[3, 4]));
    assert_eq!(got[1].1, f32_bytes(&ip_w));
    assert_eq!(got[2].0, ti("fc6.bias", DType::F64, &[3]));
    assert_eq!(got[2].1, dd);
}

#[test]
fn caffemodel_truncated_and_garbage_are_format_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, _, ends) = caffemodel_v2_with_boundaries();
    for cut in 1..bytes.len() {
        let p = dir.path().join(format!("cut{cut}.caffemodel"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        if ends.contains(&cut) {
            // A cut between layers is a valid, shorter file (or one with no layers at all).
            let _ = open_caffemodel(&p);
            continue;
        }
        let msg = expect_format_err(open_caffemodel(&p), &p);
        assert!(msg.contains("at byte") || msg.contains("no layers"), "cut {cut}: {msg}");
    }
    let garbage: Vec<&[u8]> = vec![
        b"",
        b"\x00\x00\x00",
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        b"\xa2\x06\xff\xff\xff\xff\x0f",  // layer (100) with a 4 GiB length
        b"\x0b\x0c",                          // group wire types
        b"this is a text file, not protobuf",
    ];
    for (i, g) in garbage.iter().enumerate() {
        let p = dir.path().join(format!("g{i}.caffemodel"));
        std::fs::write(&p, g).unwrap();
        expect_format_err(open_caffemodel(&p), &p);
    }
    // A blob whose shape disagrees with its data.
    let mut net = Vec::new();
    len_field(100, &layer_v2("ip", "InnerProduct", &[blob_v2(&[2, 3], &[1.0, 2.0])]), &mut net);
    let p = dir.path().join("lying.caffemodel");
    std::fs::write(&p, &net).unwrap();
    let msg = expect_format_err(open_caffemodel(&p), &p);
    assert!(msg.contains("layer 'ip'") && msg.contains("needs 6 values"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// detection

#[test]
fn weights_file_sniffing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let txt = d.join("notes.txt");
    std::fs::write(&txt, "hello").unwrap();
    assert!(!is_weights_file(&txt));
    let fake = d.join("fake.safetensors");
    std::fs::write(&fake, "not at all").unwrap();
    assert!(!is_weights_file(&fake));
    assert!(!is_weights_file(&d.join("does-not-exist.pt")));
    // A safetensors file without the extension is still recognised.
    let noext = d.join("weights");
    write_sample(&noext, &sample_tensors(), None);
    assert!(is_weights_file(&noext));
    assert!(open_weights(&noext).is_ok());
    let msg = expect_format_err(open_weights(&txt), &txt);
    assert!(msg.contains("not a weights file"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// matching (against a hand-built net; shapes as dlv-graph's inference would give)

#[test]
fn matching_report_against_a_net() {
    use dlv_graph::{BlobSpec, Net, Node};
    let mut net = Net::new("lenet");
    let mut conv = Node::new("conv1", "Convolution");
    conv.blobs = vec![BlobSpec { name: "weight".into(), shape: vec![2, 3, 2, 2] }, BlobSpec { name: "bias".into(), shape: vec![2] }];
    net.push_layer(conv);
    let mut bn = Node::new("bn1", "BatchNorm");
    bn.blobs = vec![
        BlobSpec { name: "running_mean".into(), shape: vec![3] },
        BlobSpec { name: "running_var".into(), shape: vec![3] },
        BlobSpec { name: "scale_factor".into(), shape: vec![1] },
    ];
    net.push_layer(bn);
    net.push_layer(Node::new("prelu", "PReLU"));
    let (_, expected) = caffemodel_v2();
    let infos: Vec<TensorInfo> = expected.into_iter().map(|(t, _)| t).collect();
    let r = dlv_store::formats::match_tensors(&net, &infos);
    assert!(r.is_complete(), "{r}");
    assert_eq!(r.matched.len(), 6);
    assert!(r.to_string().starts_with("6 of 6 tensors matched to 3 layers"), "{r}");
}

// ---------------------------------------------------------------------------------------------
// logs and solvers

const CAFFE_LOG: &str = "\
I1122 10:00:00.123 12345 caffe.cpp:218] Using GPUs 0
I1122 10:00:00.456 12345 solver.cpp:44] Initializing solver from parameters:
test_iter: 100
base_lr: 0.01
I1122 10:00:01.000 12345 net.cpp:51] Initializing net from parameters:
I1122 10:00:02.000 12345 solver.cpp:330] Iteration 0, Testing net (#0)
I1122 10:00:03.000 12345 solver.cpp:397]     Test net output #0: accuracy = 0.1
I1122 10:00:03.000 12345 solver.cpp:397]     Test net output #1: loss = 2.30251 (* 1 = 2.30251 loss)
I1122 10:00:03.100 12345 solver.cpp:218] Iteration 0 (0 iter/s, 1.1s/100 iters), loss = 2.30
I1122 10:00:03.100 12345 solver.cpp:237]     Train net output #0: loss = 2.31 (* 1 = 2.31 loss)
I1122 10:00:03.100 12345 sgd_solver.cpp:105] Iteration 0, lr = 0.01
I1122 10:00:05.000 12345 solver.cpp:218] Iteration 100 (50 iter/s, 2s/100 iters), loss = 0.25
I1122 10:00:05.000 12345 solver.cpp:237]     Train net output #0: loss = 0.21 (* 1 = 0.21 loss)
I1122 10:00:05.000 12345 sgd_solver.cpp:105] Iteration 100, lr = 0.00992565
I1122 10:00:07.000 12345 solver.cpp:330] Iteration 200, Testing net (#0)
I1122 10:00:08.000 12345 solver.cpp:397]     Test net output #0: accuracy = 0.9712
I1122 10:00:08.000 12345 solver.cpp:397]     Test net output #1: loss = 0.0921 (* 1 = 0.0921 loss)
I1122 10:00:08.100 12345 solver.cpp:218] Iteration 200 (48 iter/s, 2.1s/100 iters), loss = 0.12
I1122 10:00:08.100 12345 sgd_solver.cpp:105] Iteration 200, lr = 0.00985258
I1122 10:00:09.000 12345 solver.cpp:447] Snapshotting to binary proto file lenet_iter_200.caffemodel
I1122 10:00:09.100 12345 solver.cpp:310] Optimization Done.
";

#[test]
fn caffe_log_excerpt() {
    assert!(is_caffe_log(CAFFE_LOG));
    let s = read_caffe_log(CAFFE_LOG);
    let get = |n: &str| s.iter().find(|x| x.name == n).map(|x| x.points.clone()).unwrap_or_default();
    assert_eq!(get("test/accuracy"), vec![(0, 0.1), (200, 0.9712)]);
    assert_eq!(get("test/loss"), vec![(0, 2.30251), (200, 0.0921)]);
    assert_eq!(get("train/loss"), vec![(0, 2.30), (100, 0.25), (200, 0.12)], "one point per iteration");
    assert_eq!(get("lr"), vec![(0, 0.01), (100, 0.00992565), (200, 0.00985258)]);
    assert_eq!(s.len(), 4);
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn alexnet_training_log_in_testdata() {
    let src = std::fs::read_to_string(repo_root().join("testdata/logs/alexnet_train.log")).unwrap();
    assert!(is_caffe_log(&src[..src.len().min(4096)]));
    let s = read_caffe_log(&src);
    let get = |n: &str| s.iter().find(|x| x.name == n).map(|x| x.points.clone()).unwrap_or_default();
    let loss = get("train/loss");
    assert!(loss.len() >= 50, "{}", loss.len());
    assert!(loss.first().unwrap().1 > loss.last().unwrap().1, "loss decreases");
    let acc = get("test/accuracy");
    assert!(acc.len() >= 3);
    assert!(acc.iter().all(|p| p.0 % 500 == 0));
    assert!(acc.first().unwrap().1 < acc.last().unwrap().1);
    assert_eq!(get("test/loss").len(), acc.len());
    assert!(!get("lr").is_empty());
}

#[test]
fn jsonl_metrics() {
    let src = r#"{"iter": 0, "loss": 2.3, "lr": 0.1}
{"iter": 100, "loss": 0.9, "lr": 0.1}
{"iter": 100, "phase": "test", "accuracy": 0.71, "loss": 0.8}
{"iter": 200, "loss": 0.5, "lr": 0.01}
"#;
    let s = read_jsonl_metrics(src).unwrap();
    let names: Vec<&str> = s.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names, ["loss", "lr", "test/accuracy", "test/loss"]);
    assert_eq!(s[0].points, vec![(0, 2.3), (100, 0.9), (200, 0.5)]);
    assert!(read_jsonl_metrics("{\"loss\": 1}\n").is_err());
    assert!(read_jsonl_metrics("not json\n").is_err());
}

const SOLVER: &str = r#"# The train/test net protocol buffer definition
net: "examples/mnist/lenet_train_test.prototxt"
test_iter: 100
test_interval: 500
base_lr: 0.01
momentum: 0.9
weight_decay: 0.0005
lr_policy: "multistep"
gamma: 0.1
stepvalue: 5000
stepvalue: 7000
display: 100
max_iter: 10000
snapshot: 5000
snapshot_prefix: "examples/mnist/lenet"
solver_mode: GPU
type: "SGD"
train_state { level: 1 stage: "train" }
"#;

#[test]
fn solver_prototxt() {
    let h = read_solver(SOLVER, "lenet_solver.prototxt").unwrap();
    let get = |k: &str| h.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("base_lr"), Some(HyperValue::Num(0.01)));
    assert_eq!(get("max_iter"), Some(HyperValue::Int(10000)));
    assert_eq!(get("lr_policy"), Some(HyperValue::Text("multistep".into())));
    assert_eq!(get("stepvalue.1"), Some(HyperValue::Int(7000)));
    assert_eq!(get("solver_mode"), Some(HyperValue::Text("GPU".into())));
    assert_eq!(get("train_state.stage"), Some(HyperValue::Text("train".into())));
    assert_eq!(get("momentum").and_then(|v| v.as_f64()), Some(0.9));
    assert!(read_solver("base_lr: ", "bad.prototxt").is_err());
}

// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// no panic on damaged files: deterministic mutations of every fixture format (the fuzz targets
// in crates/dlv-store/fuzz explore further)

/// Opens and drains a weights file; errors are fine, panics and runaway allocations are not.
fn drain(path: &Path) {
    if let Ok(mut src) = open_weights(path) {
        for i in 0..src.tensors().len() {
            let _ = src.read_tensor(i, &mut std::io::sink());
        }
    }
}

fn mutations(good: &[u8], seed: u64, count: usize) -> Vec<Vec<u8>> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..count)
        .map(|_| {
            let mut b = good.to_vec();
            match next() % 4 {
                0 => {
                    let at = (next() as usize) % b.len().max(1);
                    b.truncate(at);
                }
                1 => {
                    for _ in 0..1 + next() % 4 {
                        let at = (next() as usize) % b.len().max(1);
                        if let Some(v) = b.get_mut(at) {
                            *v ^= 1 << (next() % 8);
                        }
                    }
                }
                2 => {
                    let at = (next() as usize) % b.len().max(1);
                    if let Some(v) = b.get_mut(at) {
                        *v = [0x00, 0xff, 0x7f, 0x80][(next() % 4) as usize];
                    }
                }
                _ => {
                    let at = (next() as usize) % b.len().max(1);
                    let junk: Vec<u8> = (0..next() % 16).map(|_| next() as u8).collect();
                    b.splice(at..at, junk);
                }
            }
            b
        })
        .collect()
}

#[test]
fn mutated_weights_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("good.safetensors");
    write_sample(&st, &sample_tensors(), None);
    let npz = dir.path().join("good.npz");
    write_zip(&npz, &[("a.npy", npy("<f4", false, &[2, 3], &f32_bytes(&[1.0; 6]), 1), false), ("b.npy", npy("<i8", false, &[2], &[0u8; 16], 1), true)]);
    let pt = dir.path().join("good.pt");
    write_torch(&pt, "archive", torch_pickle(&standard_torch_tensors(), None), &standard_storages());
    let cm = dir.path().join("good.caffemodel");
    std::fs::write(&cm, caffemodel_v2().0).unwrap();
    for (i, good) in [st, npz, pt, cm].iter().enumerate() {
        let bytes = std::fs::read(good).unwrap();
        let ext = good.extension().unwrap().to_string_lossy().to_string();
        for (k, m) in mutations(&bytes, 0x9e37_79b9 + i as u64, 300).into_iter().enumerate() {
            let p = dir.path().join(format!("m{i}_{k}.{ext}"));
            std::fs::write(&p, &m).unwrap();
            drain(&p);
            std::fs::remove_file(&p).unwrap();
        }
    }
}
