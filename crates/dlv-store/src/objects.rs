//! Content-addressed object files: `objects/ab/cdef…`, named by the BLAKE3 hash of the decoded
//! content and verified against it on every read.
//!
//! File layout (format 1): magic `DLVO`, format byte, codec byte, two reserved bytes, decoded
//! length (u64 LE), then the codec's payload. Codecs 0 (raw) and 1 (zstd) hold any bytes; codecs
//! 2 (tensor planes) and 3 (tensor delta) hold tensors as chunks of byte-plane streams (see
//! [`crate::codec`] and `docs/STORAGE.md`), a delta naming its base object. Writes go to
//! `objects/tmp/`, are synced, then renamed into place, so a crash never leaves a half-written
//! object under its final name.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;


use crate::codec::planes::{self, Planes};
use crate::codec::{self, ChunkHeader, DeltaMode, Encoding, FloatKind, TensorLayout, Transform, CHUNK_ELEMS, MAX_CHUNK_ELEMS};
use crate::{Result, StoreError};

const MAGIC: &[u8; 4] = b"DLVO";
const OBJECT_FORMAT: u8 = 1;
const HEADER_LEN: usize = 16;
/// Tensor header after the object header (codecs 2 and 3).
const TENSOR_HEADER_LEN: usize = 48;
const TENSOR_FORMAT: u8 = 1;
const CHUNK: usize = 1 << 20;
/// Read buffer of tensor objects: small, so that skipping a plane stream is a real seek and
/// the bytes-read figure of a low-precision read is honest.
const TENSOR_READ_BUF: usize = 64 << 10;
/// Hard limit on the delta levels a reader follows (a cycle in corrupt files ends here).
pub const MAX_CHAIN_HARD: usize = 64;

/// Hex BLAKE3 id of an object's decoded content.
pub type ObjectId = String;

/// How an object's payload is encoded. New codecs get new ids; old ones stay readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
    /// A tensor as byte-plane streams, materialised (no base).
    Planes = 2,
    /// A tensor as byte-plane streams of a delta against a base object.
    Delta = 3,
}

impl Codec {
    fn from_byte(b: u8) -> Option<Codec> {
        match b {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            2 => Some(Codec::Planes),
            3 => Some(Codec::Delta),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Raw => "raw",
            Codec::Zstd => "zstd",
            Codec::Planes => "planes",
            Codec::Delta => "delta",
        }
    }
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    pub id: ObjectId,
    /// Decoded length in bytes.
    pub len: u64,
    /// Bytes the object occupies on disk (0 when it was already there).
    pub stored: u64,
    pub existed: bool,
}

/// What an object's headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub codec: Codec,
    /// Decoded length.
    pub len: u64,
    /// Element layout, for tensor codecs.
    pub layout: Option<TensorLayout>,
    /// Elements per chunk, for tensor codecs.
    pub chunk_elems: u64,
    /// The base object of a delta.
    pub base: Option<ObjectId>,
}

/// The object directory of a repository.
#[derive(Debug, Clone)]
pub struct ObjectStore {
    dir: PathBuf,
    codec: Codec,
    level: i32,
    /// Bytes read from object files since this store was opened (all clones share it).
    read: Arc<AtomicU64>,
}

/// Checks that `id` looks like a full object id, so that it is safe to use in a path.
pub fn is_valid_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn corrupt(id: &str, msg: impl Into<String>) -> StoreError {
    StoreError::CorruptObject { id: id.to_string(), msg: msg.into() }
}

/// A file whose reads are added to the store's counter.
struct Counted {
    file: File,
    read: Arc<AtomicU64>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Seek for Counted {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.file.seek(pos)
    }
}

impl ObjectStore {
    pub fn new(dir: impl Into<PathBuf>) -> ObjectStore {
        ObjectStore {
            dir: dir.into(),
            codec: Codec::Zstd,
            level: 1,
            read: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes read from object files so far (headers and streams; skipped planes not counted).
    pub fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    pub fn path_of(&self, id: &str) -> Result<PathBuf> {
        if !is_valid_id(id) {
            return Err(StoreError::CorruptMeta {
                what: "object reference".into(),
                msg: format!("'{id}' is not an object id"),
            });
        }
        Ok(self.dir.join(&id[..2]).join(&id[2..]))
    }

    pub fn contains(&self, id: &str) -> bool {
        self.path_of(id).map(|p| p.is_file()).unwrap_or(false)
    }

    fn tmp_file(&self) -> Result<(BufWriter<File>, tempfile::TempPath)> {
        let tmp_dir = self.dir.join("tmp");
        fs::create_dir_all(&tmp_dir).map_err(|e| StoreError::io(&tmp_dir, e))?;
        let tmp = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(|e| StoreError::io(&tmp_dir, e))?;
        let (file, guard) = tmp.into_parts();
        Ok((BufWriter::with_capacity(CHUNK, file), guard))
    }

    /// Starts a streaming write: feed bytes with `Write`, then [`ObjectWriter::finish`].
    /// Memory stays bounded by the chunk size whatever the length.
    pub fn writer(&self) -> Result<ObjectWriter> {
        let (mut out, guard) = self.tmp_file()?;
        out.write_all(&[0u8; HEADER_LEN]).map_err(|e| StoreError::io(&*guard, e))?;
        let sink = match self.codec {
            Codec::Zstd => Sink::Zstd(zstd::Encoder::new(out, self.level).map_err(|e| StoreError::io(&*guard, e))?),
            _ => Sink::Raw(out),
        };
        Ok(ObjectWriter {
            store: self.clone(),
            sink: Some(sink),
            guard,
            hasher: blake3::Hasher::new(),
            len: 0,
        })
    }

    /// Starts a streaming tensor write with the archival codecs. `len` is the tensor's byte
    /// length; `base`, when given and compatible (a tensor object of the same layout and
    /// length), is what chunks may be coded against. With `replace`, an existing object of the
    /// same id is rewritten (repacking), otherwise the new copy is dropped.
    pub fn tensor_writer(
        &self,
        layout: TensorLayout,
        len: u64,
        base: Option<&str>,
        mode: Encoding,
        replace: bool,
    ) -> Result<TensorWriter> {
        if layout.width == 0 || layout.width > 8 {
            return Err(StoreError::Invalid(format!("unsupported element width {}", layout.width)));
        }
        let base = match base {
            Some(b) if mode.delta != DeltaMode::Off => match ChunkReader::open(self, b, 1) {
                Ok(r) if r.layout.width == layout.width && r.info.len == len && r.info.chunk_elems == CHUNK_ELEMS => {
                    Some(r)
                }
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(base = %b, error = %e, "delta base unusable; storing the tensor whole");
                    None
                }
            },
            _ => None,
        };
        let (mut out, guard) = self.tmp_file()?;
        out.write_all(&[0u8; HEADER_LEN + TENSOR_HEADER_LEN]).map_err(|e| StoreError::io(&*guard, e))?;
        Ok(TensorWriter {
            store: self.clone(),
            out: Some(out),
            guard: Some(guard),
            hasher: blake3::Hasher::new(),
            len: 0,
            layout,
            mode,
            chunks: 0,
            buf: Vec::new(),
            base,
            used_base: false,
            replace,
            error: None,
        })
    }

    /// Re-encodes tensor object `id` in place (same id, same content) against `base` (or whole),
    /// through a temporary file renamed over the old one. Returns the stored sizes before and
    /// after.
    pub fn recode(&self, id: &str, layout: TensorLayout, len: u64, base: Option<&str>, mode: Encoding) -> Result<(u64, u64)> {
        let before = self.stored_size(id)?;
        let mut w = self.tensor_writer(layout, len, base, mode, true)?;
        self.get_into(id, &mut w)?;
        let put = w.finish()?;
        if put.id != id {
            return Err(corrupt(id, format!("re-encodes to {}", put.id)));
        }
        Ok((before, self.stored_size(id)?))
    }

    /// Streams everything `src` yields into a new object.
    pub fn put_reader(&self, src: &mut dyn Read) -> Result<PutOutcome> {
        let mut w = self.writer()?;
        io::copy(src, &mut w).map_err(|e| StoreError::io(self.dir.join("tmp"), e))?;
        w.finish()
    }

    pub fn put_bytes(&self, bytes: &[u8]) -> Result<PutOutcome> {
        let mut r = bytes;
        self.put_reader(&mut r)
    }

    fn open(&self, id: &str) -> Result<Counted> {
        let path = self.path_of(id)?;
        match File::open(&path) {
            Ok(file) => Ok(Counted { file, read: self.read.clone() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::MissingObject { id: id.to_string() }),
            Err(e) => Err(StoreError::io(&path, e)),
        }
    }

    /// Streams the decoded content of `id` into `out`, verifying length and hash. On a mismatch
    /// the error comes after some bytes were written: callers write to a temporary destination.
    pub fn get_into(&self, id: &str, out: &mut dyn Write) -> Result<u64> {
        match self.get_into_with(id, out, false) {
            Err(e @ StoreError::CorruptObject { .. }) if self.info(id).is_ok_and(|i| i.layout.is_some()) => {
                // The fast pass skips the plane checksums (the id covers the value); decode
                // again checking every plane and mask, to name the one that is corrupt.
                match self.get_into_with(id, &mut io::sink(), true) {
                    Err(named) => Err(named),
                    Ok(_) => Err(e),
                }
            }
            r => r,
        }
    }

    fn get_into_with(&self, id: &str, out: &mut dyn Write, verify_planes: bool) -> Result<u64> {
        let mut file = self.open(id)?;
        let info = read_info(id, &mut file)?;
        let mut hasher = blake3::Hasher::new();
        let mut got = 0u64;
        let len = info.len;
        if info.layout.is_some() {
            file.seek(SeekFrom::Start(0)).map_err(|e| StoreError::io(self.dir.join(id), e))?;
            let mut rd = ChunkReader::from_file(self, id, file, info, 0)?;
            rd.verify = verify_planes;
            while let Some(buf) = rd.next_bytes()? {
                got += buf.len() as u64;
                hasher.update(&buf);
                out.write_all(&buf).map_err(|e| StoreError::io("<output>", e))?;
            }
            rd.expect_end()?;
        } else {
            let mut reader = BufReader::with_capacity(CHUNK, file);
            let mut buf = vec![0u8; CHUNK];
            let mut pump = |src: &mut dyn Read| -> Result<()> {
                loop {
                    let n = read_some(src, &mut buf).map_err(|e| corrupt(id, format!("cannot decode: {e}")))?;
                    if n == 0 {
                        return Ok(());
                    }
                    got += n as u64;
                    if got > len {
                        return Err(corrupt(id, format!("decodes to more than the {len} bytes its header says")));
                    }
                    hasher.update(&buf[..n]);
                    out.write_all(&buf[..n]).map_err(|e| StoreError::io("<output>", e))?;
                }
            };
            match info.codec {
                Codec::Zstd => {
                    let mut dec = zstd::Decoder::with_buffer(reader).map_err(|e| corrupt(id, e.to_string()))?;
                    pump(&mut dec)?
                }
                _ => pump(&mut reader)?,
            }
        }
        if got != len {
            return Err(corrupt(id, format!("decodes to {got} bytes, header says {len}")));
        }
        let actual = hasher.finalize().to_hex().to_string();
        if actual != id {
            return Err(corrupt(id, format!("content hashes to {actual}")));
        }
        Ok(got)
    }

    /// Streams the top `keep` bytes of every `width`-byte little-endian element of `id` (for
    /// fp32, `keep = 2` gives bf16 by truncation). Tensor objects read only the plane streams
    /// needed, along their delta chain, each verified against its checksum; other objects are
    /// read whole and verified against their id. Returns bytes written.
    pub fn get_top_into(&self, id: &str, width: usize, keep: usize, out: &mut dyn Write) -> Result<u64> {
        if width == 0 || keep == 0 || keep > width {
            return Err(StoreError::Invalid(format!("cannot keep {keep} of {width} bytes per element")));
        }
        let mut file = self.open(id)?;
        let info = read_info(id, &mut file)?;
        // The same bytes may have been stored first as a tensor of another element width (ids
        // are content hashes): then the planes do not line up and the object is read whole.
        match info.layout.filter(|l| l.width == width) {
            Some(_) => {
                file.seek(SeekFrom::Start(0)).map_err(|e| StoreError::io(self.dir.join(id), e))?;
                let mut rd = ChunkReader::from_file(self, id, file, info, 0)?;
                let mut buf = Vec::new();
                let mut n = 0u64;
                while let Some(planes) = rd.next(keep)? {
                    buf.clear();
                    planes::join_top(&planes, width - keep, &mut buf);
                    n += buf.len() as u64;
                    out.write_all(&buf).map_err(|e| StoreError::io("<output>", e))?;
                }
                Ok(n)
            }
            None => {
                drop(file);
                let mut t = TopBytes { out, width, keep, carry: Vec::new(), written: 0 };
                self.get_into(id, &mut t)?;
                if !t.carry.is_empty() {
                    return Err(corrupt(id, format!("length is not a multiple of {width}")));
                }
                Ok(t.written)
            }
        }
    }

    pub fn get_bytes(&self, id: &str) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.get_into(id, &mut v)?;
        Ok(v)
    }

    /// Reads and verifies an object without keeping its content.
    pub fn verify(&self, id: &str) -> Result<u64> {
        self.get_into(id, &mut io::sink())
    }

    /// Decoded length from the header, without reading the payload.
    pub fn decoded_len(&self, id: &str) -> Result<u64> {
        Ok(self.info(id)?.len)
    }

    /// The object's headers: codec, length, tensor layout, base.
    pub fn info(&self, id: &str) -> Result<ObjectInfo> {
        let mut f = self.open(id)?;
        read_info(id, &mut f)
    }

    /// The base of a delta object (`None` for every other object).
    pub fn base_of(&self, id: &str) -> Result<Option<ObjectId>> {
        Ok(self.info(id)?.base)
    }

    /// Estimated stored bytes of tensor object `id` coded whole (`base` = `None`) or against
    /// `base` (both tensor objects of one layout and length), from the order-0 entropy of the
    /// residual planes, chunk by chunk.
    pub fn estimate(&self, id: &str, base: Option<&str>, mode: DeltaMode) -> Result<u64> {
        let mut a = ChunkReader::open(self, id, 0)?;
        let layout = a.layout;
        let mut b = match base {
            Some(b) => {
                let r = ChunkReader::open(self, b, 0)?;
                if r.layout.width != layout.width || r.info.len != a.info.len || r.info.chunk_elems != a.info.chunk_elems {
                    return Err(StoreError::Invalid(format!("{b} cannot be a base of {id}")));
                }
                Some(r)
            }
            None => None,
        };
        let mut total = (HEADER_LEN + TENSOR_HEADER_LEN) as u64;
        while let Some(v) = a.next(layout.width)? {
            let bp = match b.as_mut() {
                Some(r) => Some(r.next(layout.width)?.ok_or_else(|| corrupt(id, "base ends early"))?),
                None => None,
            };
            total += codec::estimate_chunk(&v, bp.as_ref(), layout, mode);
        }
        Ok(total)
    }

    /// Number of delta links from `id` to a materialised object (0 for one that is). A missing
    /// base, a cycle or a chain past `MAX_CHAIN_HARD` (64) links is an error naming the object.
    pub fn chain_len(&self, id: &str) -> Result<usize> {
        let mut cur = id.to_string();
        let mut seen = vec![cur.clone()];
        loop {
            let Some(b) = self.base_of(&cur)? else { return Ok(seen.len() - 1) };
            if seen.contains(&b) {
                return Err(corrupt(id, "delta chain has a cycle"));
            }
            if seen.len() > MAX_CHAIN_HARD {
                return Err(corrupt(id, format!("delta chain longer than {MAX_CHAIN_HARD}")));
            }
            seen.push(b.clone());
            cur = b;
        }
    }
    /// Every object id present (files whose names are not ids are skipped).
    pub fn list(&self) -> Result<Vec<ObjectId>> {
        let mut ids = Vec::new();
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ids),
            Err(e) => return Err(StoreError::io(&self.dir, e)),
        };
        for entry in rd {
            let entry = entry.map_err(|e| StoreError::io(&self.dir, e))?;
            let prefix = entry.file_name().to_string_lossy().to_string();
            if prefix.len() != 2 || !entry.path().is_dir() {
                continue;
            }
            let sub = entry.path();
            for f in fs::read_dir(&sub).map_err(|e| StoreError::io(&sub, e))? {
                let f = f.map_err(|e| StoreError::io(&sub, e))?;
                let id = format!("{prefix}{}", f.file_name().to_string_lossy());
                if is_valid_id(&id) {
                    ids.push(id);
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    pub fn remove(&self, id: &str) -> Result<u64> {
        let path = self.path_of(id)?;
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
        Ok(size)
    }

    /// Bytes on disk of an object file.
    pub fn stored_size(&self, id: &str) -> Result<u64> {
        let path = self.path_of(id)?;
        fs::metadata(&path).map(|m| m.len()).map_err(|e| StoreError::io(&path, e))
    }

    /// Removes leftovers of interrupted writes. Returns how many files went.
    pub fn clean_tmp(&self) -> Result<usize> {
        let tmp = self.dir.join("tmp");
        let mut n = 0;
        if let Ok(rd) = fs::read_dir(&tmp) {
            for e in rd.flatten() {
                if fs::remove_file(e.path()).is_ok() {
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

fn read_info(id: &str, r: &mut dyn Read) -> Result<ObjectInfo> {
    let mut header = [0u8; HEADER_LEN];
    r.read_exact(&mut header).map_err(|_| corrupt(id, "file shorter than its header"))?;
    if &header[..4] != MAGIC {
        return Err(corrupt(id, "bad magic"));
    }
    if header[4] != OBJECT_FORMAT {
        return Err(corrupt(id, format!("unknown object format {}", header[4])));
    }
    let codec = Codec::from_byte(header[5]).ok_or_else(|| corrupt(id, format!("unknown codec {}", header[5])))?;
    let len = u64_le(&header[8..16]);
    let mut info = ObjectInfo { codec, len, layout: None, chunk_elems: 0, base: None };
    if matches!(codec, Codec::Planes | Codec::Delta) {
        let mut t = [0u8; TENSOR_HEADER_LEN];
        r.read_exact(&mut t).map_err(|_| corrupt(id, "file shorter than its tensor header"))?;
        if t[0] != TENSOR_FORMAT {
            return Err(corrupt(id, format!("unknown tensor format {}", t[0])));
        }
        let width = t[1] as usize;
        let float = FloatKind::from_byte(t[2]).ok_or_else(|| corrupt(id, format!("unknown float kind {}", t[2])))?;
        if !(1..=8).contains(&width) || !len.is_multiple_of(width as u64) {
            return Err(corrupt(id, format!("bad element width {width} for {len} bytes")));
        }
        info.layout = Some(TensorLayout { width, float, row: 0 });
        info.chunk_elems = u64_le(&t[8..16]);
        if info.chunk_elems == 0 || info.chunk_elems > MAX_CHUNK_ELEMS {
            return Err(corrupt(id, format!("bad chunk size {}", info.chunk_elems)));
        }
        if codec == Codec::Delta {
            let base = blake3::Hash::from_bytes(t[16..48].try_into().map_err(|_| corrupt(id, "bad base id"))?);
            let base = base.to_hex().to_string();
            if base == id {
                return Err(corrupt(id, "delta object names itself as its base"));
            }
            info.base = Some(base);
        }
    }
    Ok(info)
}

fn u64_le(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

enum Sink {
    Raw(BufWriter<File>),
    Zstd(zstd::Encoder<'static, BufWriter<File>>),
}

/// A streaming object write in progress; dropped without `finish`, it leaves nothing behind.
pub struct ObjectWriter {
    store: ObjectStore,
    sink: Option<Sink>,
    guard: tempfile::TempPath,
    hasher: blake3::Hasher,
    len: u64,
}

impl Write for ObjectWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match self.sink.as_mut() {
            Some(Sink::Raw(w)) => w.write(buf)?,
            Some(Sink::Zstd(w)) => w.write(buf)?,
            None => return Err(io::Error::other("object writer already finished")),
        };
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter {
    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Syncs the object and renames it to its id (or drops it if that id is already stored).
    pub fn finish(mut self) -> Result<PutOutcome> {
        let tmp_path = self.guard.to_path_buf();
        let (buffered, codec) = match self.sink.take() {
            Some(Sink::Raw(w)) => (w, Codec::Raw),
            Some(Sink::Zstd(enc)) => (enc.finish().map_err(|e| StoreError::io(&tmp_path, e))?, Codec::Zstd),
            None => return Err(StoreError::Invalid("object writer already finished".into())),
        };
        let file = buffered.into_inner().map_err(|e| StoreError::io(&tmp_path, e.into_error()))?;
        let id = self.hasher.finalize().to_hex().to_string();
        let header = object_header(codec, self.len);
        persist(&self.store, file, self.guard, &header, id, self.len, false)
    }
}

fn object_header(codec: Codec, len: u64) -> Vec<u8> {
    let mut header = vec![0u8; HEADER_LEN];
    header[..4].copy_from_slice(MAGIC);
    header[4] = OBJECT_FORMAT;
    header[5] = codec as u8;
    header[8..16].copy_from_slice(&len.to_le_bytes());
    header
}

/// Writes `header` at the start of the temporary file, syncs it and renames it to `id`.
fn persist(
    store: &ObjectStore,
    mut file: File,
    guard: tempfile::TempPath,
    header: &[u8],
    id: ObjectId,
    len: u64,
    replace: bool,
) -> Result<PutOutcome> {
    let tmp_path = guard.to_path_buf();
    let final_path = store.path_of(&id)?;
    let existed = final_path.is_file();
    if existed && !replace {
        return Ok(PutOutcome { id, len, stored: 0, existed: true });
    }
    file.seek(SeekFrom::Start(0)).map_err(|e| StoreError::io(&tmp_path, e))?;
    file.write_all(header).map_err(|e| StoreError::io(&tmp_path, e))?;
    file.sync_all().map_err(|e| StoreError::io(&tmp_path, e))?;
    let stored = file.metadata().map_err(|e| StoreError::io(&tmp_path, e))?.len();
    drop(file);
    let parent = final_path.parent().map(Path::to_path_buf).unwrap_or_else(|| store.dir.clone());
    fs::create_dir_all(&parent).map_err(|e| StoreError::io(&parent, e))?;
    guard.persist(&final_path).map_err(|e| StoreError::io(&final_path, e.error))?;
    sync_dir(&parent)?;
    Ok(PutOutcome { id, len, stored, existed })
}

/// A streaming tensor write with the archival codecs: bytes are buffered a chunk at a time,
/// each chunk coded (planes in parallel) against the base's matching chunk and appended.
pub struct TensorWriter {
    store: ObjectStore,
    out: Option<BufWriter<File>>,
    guard: Option<tempfile::TempPath>,
    hasher: blake3::Hasher,
    len: u64,
    layout: TensorLayout,
    mode: Encoding,
    /// Chunks coded so far.
    chunks: u64,
    buf: Vec<u8>,
    base: Option<ChunkReader>,
    used_base: bool,
    replace: bool,
    /// First error of a chunk write, reported by `finish` (`Write` can only carry io errors).
    error: Option<StoreError>,
}

impl TensorWriter {
    /// The base chunks are coded against, if one was usable.
    pub fn base(&self) -> Option<&str> {
        self.base.as_ref().map(|b| b.id.as_str())
    }

    fn chunk_bytes(&self) -> usize {
        CHUNK_ELEMS as usize * self.layout.width
    }

    fn write_chunk(&mut self, data: &[u8]) -> Result<()> {
        let base = match self.base.as_mut() {
            Some(b) => b.next_bytes()?,
            None => None,
        };
        let offset = self.chunks * CHUNK_ELEMS;
        self.chunks += 1;
        let enc = codec::encode_chunk(data, base.as_deref(), self.layout, self.mode, offset);
        if enc.header.transform != Transform::None {
            self.used_base = true;
        }
        let path = self.guard.as_ref().map(|g| g.to_path_buf()).unwrap_or_default();
        let out = self.out.as_mut().ok_or_else(|| StoreError::Invalid("tensor writer already finished".into()))?;
        out.write_all(&enc.header.to_bytes()).map_err(|e| StoreError::io(&path, e))?;
        for s in &enc.streams {
            out.write_all(s).map_err(|e| StoreError::io(&path, e))?;
        }
        Ok(())
    }

    fn drain_full_chunks(&mut self) -> Result<()> {
        let cb = self.chunk_bytes();
        while self.buf.len() >= cb {
            let rest = self.buf.split_off(cb);
            let chunk = std::mem::replace(&mut self.buf, rest);
            self.write_chunk(&chunk)?;
        }
        Ok(())
    }

    /// Codes the last chunk, syncs the object and renames it to its id.
    pub fn finish(mut self) -> Result<PutOutcome> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.drain_full_chunks()?;
        if !self.len.is_multiple_of(self.layout.width as u64) {
            return Err(StoreError::Invalid(format!(
                "tensor of {} bytes is not a whole number of {}-byte elements",
                self.len, self.layout.width
            )));
        }
        if !self.buf.is_empty() {
            let chunk = std::mem::take(&mut self.buf);
            self.write_chunk(&chunk)?;
        }
        let (Some(out), Some(guard)) = (self.out.take(), self.guard.take()) else {
            return Err(StoreError::Invalid("tensor writer already finished".into()));
        };
        let file = out.into_inner().map_err(|e| StoreError::io(&*guard, e.into_error()))?;
        let id = self.hasher.finalize().to_hex().to_string();
        let base = if self.used_base { self.base.as_ref().map(|b| b.id.clone()) } else { None };
        if let Some(b) = &base {
            if *b == id {
                // Identical to its base: the base already is this object.
                return Ok(PutOutcome { id, len: self.len, stored: 0, existed: true });
            }
        }
        let mut header = object_header(if base.is_some() { Codec::Delta } else { Codec::Planes }, self.len);
        let mut t = [0u8; TENSOR_HEADER_LEN];
        t[0] = TENSOR_FORMAT;
        t[1] = self.layout.width as u8;
        t[2] = self.layout.float as u8;
        t[8..16].copy_from_slice(&CHUNK_ELEMS.to_le_bytes());
        if let Some(b) = &base {
            let h = blake3::Hash::from_hex(b).map_err(|_| corrupt(b, "not an object id"))?;
            t[16..48].copy_from_slice(h.as_bytes());
        }
        header.extend_from_slice(&t);
        persist(&self.store, file, guard, &header, id, self.len, self.replace)
    }
}

impl Write for TensorWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.error.is_some() || self.out.is_none() {
            return Err(io::Error::other("tensor writer failed earlier"));
        }
        self.buf.extend_from_slice(buf);
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        if let Err(e) = self.drain_full_chunks() {
            let msg = e.to_string();
            self.error = Some(e);
            return Err(io::Error::other(msg));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Decodes a tensor object chunk by chunk, the top `keep` planes at a time, following its delta
/// chain through lazily opened base readers (one chunk buffer per level).
struct ChunkReader {
    store: ObjectStore,
    id: ObjectId,
    r: BufReader<Counted>,
    info: ObjectInfo,
    layout: TensorLayout,
    remaining: u64,
    index: u64,
    base: Option<Box<ChunkReader>>,
    level: usize,
    /// Check plane checksums on full reads (the base readers inherit it). Off only where the
    /// whole value is then hashed against its id.
    verify: bool,
}

impl ChunkReader {
    fn open(store: &ObjectStore, id: &str, level: usize) -> Result<ChunkReader> {
        let mut f = store.open(id)?;
        let info = read_info(id, &mut f)?;
        f.seek(SeekFrom::Start(0)).map_err(|e| StoreError::io(store.dir.join(id), e))?;
        ChunkReader::from_file(store, id, f, info, level)
    }

    fn from_file(store: &ObjectStore, id: &str, mut f: Counted, info: ObjectInfo, level: usize) -> Result<ChunkReader> {
        let Some(layout) = info.layout else { return Err(corrupt(id, "not a tensor object")) };
        if level > MAX_CHAIN_HARD {
            return Err(corrupt(id, format!("delta chain longer than {MAX_CHAIN_HARD} (or a cycle)")));
        }
        let skip = (HEADER_LEN + TENSOR_HEADER_LEN) as u64;
        f.seek(SeekFrom::Start(skip)).map_err(|e| StoreError::io(store.dir.join(id), e))?;
        Ok(ChunkReader {
            store: store.clone(),
            id: id.to_string(),
            r: BufReader::with_capacity(TENSOR_READ_BUF, f),
            remaining: info.len / layout.width as u64,
            info,
            layout,
            index: 0,
            base: None,
            level,
            verify: true,
        })
    }

    fn corrupt(&self, msg: impl std::fmt::Display) -> StoreError {
        corrupt(&self.id, format!("chunk {}: {msg}", self.index))
    }

    fn read_header(&mut self) -> Result<ChunkHeader> {
        let width = self.layout.width;
        let mut hb = vec![0u8; codec::CHUNK_PREFIX_LEN];
        self.r.read_exact(&mut hb).map_err(|_| self.corrupt("file ends inside the chunk header"))?;
        let len = codec::chunk_header_len_from_prefix(&hb, width).map_err(|m| self.corrupt(m))?;
        hb.resize(len, 0);
        self.r
            .read_exact(&mut hb[codec::CHUNK_PREFIX_LEN..])
            .map_err(|_| self.corrupt("file ends inside the chunk header"))?;
        let h = ChunkHeader::parse(&hb, width).map_err(|m| self.corrupt(m))?;
        let expect = self.info.chunk_elems.min(self.remaining);
        if h.elems != expect {
            return Err(self.corrupt(format!("has {} elements, expected {expect}", h.elems)));
        }
        if h.transform != Transform::None && self.info.base.is_none() {
            return Err(self.corrupt("is a delta in an object without a base"));
        }
        // A plane's stream codes `elems` bytes, the magnitude stream all of them.
        let limit = |s: &codec::StreamDesc| if s.coder == codec::stream::Coder::Magnitude { (width as u64 + 1) * h.elems + 4096 } else { 2 * h.elems + 4096 };
        if let Some(s) = h.mask.iter().chain(&h.streams).find(|s| s.len > limit(s)) {
            return Err(self.corrupt(format!("stream of {} bytes is longer than possible", s.len)));
        }
        Ok(h)
    }

    /// Skips a chunk without decoding it.
    fn skip(&mut self) -> Result<()> {
        let h = self.read_header()?;
        let total: u64 = h.mask.iter().chain(&h.streams).map(|s| s.len).sum();
        let total = i64::try_from(total).map_err(|_| self.corrupt("stream lengths overflow"))?;
        self.r.seek_relative(total).map_err(|e| StoreError::io(self.store.dir.join(&self.id), e))?;
        self.remaining -= h.elems;
        self.index += 1;
        Ok(())
    }

    /// The base reader, positioned at this reader's current chunk.
    fn base_at_current(&mut self) -> Result<&mut ChunkReader> {
        if self.base.is_none() {
            let Some(bid) = self.info.base.clone() else { return Err(self.corrupt("has no base")) };
            let mut b = ChunkReader::open(&self.store, &bid, self.level + 1)?;
            b.verify = self.verify;
            if b.layout.width != self.layout.width || b.info.len != self.info.len || b.info.chunk_elems != self.info.chunk_elems
            {
                return Err(corrupt(&self.id, format!("base {bid} has a different layout")));
            }
            self.base = Some(Box::new(b));
        }
        let index = self.index;
        let b = self.base.as_deref_mut().ok_or_else(|| StoreError::Invalid("base reader".into()))?;
        while b.index < index {
            b.skip()?;
        }
        Ok(b)
    }

    /// Decodes the next chunk's top `keep` planes (lower planes empty); `None` at the end.
    fn next(&mut self, keep: usize) -> Result<Option<Planes>> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let width = self.layout.width;
        let keep = keep.clamp(1, width);
        let h = self.read_header()?;
        let need = codec::planes_needed(&h, width, keep);
        let (mask, wanted) = self.read_streams(&h, need)?;
        let base_keep = if matches!(h.transform, Transform::Sub | Transform::Magnitude) { width } else { need };
        let id = self.id.clone();
        let index = self.index;
        let hh = h.clone();
        let decode_own = move || -> Result<Planes> {
            codec::decode_residual(&hh, width, mask.as_deref(), wanted)
                .map_err(|m| corrupt(&id, format!("chunk {index}, {m}")))
        };
        let (own, base) = if h.transform == Transform::None {
            (decode_own()?, None)
        } else {
            let b = self.base_at_current()?;
            let (own, base) = rayon::join(decode_own, || b.next(base_keep));
            let base = base?.ok_or_else(|| corrupt(&self.id, "base ends before this object"))?;
            (own?, Some(base))
        };
        let value = codec::combine(&h, own, base.as_ref(), keep).map_err(|m| self.corrupt(m))?;
        self.remaining -= h.elems;
        self.index += 1;
        Ok(Some(value))
    }

    /// Reads the mask stream (if any) and the streams of the top `need` planes of the chunk whose
    /// header was just read, seeking past the others.
    #[allow(clippy::type_complexity)]
    fn read_streams(&mut self, h: &ChunkHeader, need: usize) -> Result<(Option<Vec<u8>>, Vec<codec::Coded<'static>>)> {
        let width = self.layout.width;
        let mask = match h.mask {
            Some(d) => {
                let mut bytes = vec![0u8; d.len as usize];
                self.r.read_exact(&mut bytes).map_err(|_| self.corrupt("file ends inside the mask"))?;
                Some(bytes)
            }
            None => None,
        };
        let mut wanted = Vec::with_capacity(need);
        for (k, desc) in h.streams.iter().enumerate() {
            let p = width - 1 - k;
            if p >= width - need.min(width) {
                let mut bytes = vec![0u8; desc.len as usize];
                self.r.read_exact(&mut bytes).map_err(|_| self.corrupt(format!("file ends inside plane {p}")))?;
                wanted.push((p, *desc, bytes.into()));
            } else {
                let skip = i64::try_from(desc.len).map_err(|_| self.corrupt("stream length overflows"))?;
                self.r.seek_relative(skip).map_err(|e| StoreError::io(self.store.dir.join(&self.id), e))?;
            }
        }
        Ok((mask, wanted))
    }

    /// Decodes the next chunk in full, as little-endian bytes (the fast path of full reads and
    /// of delta bases).
    fn next_bytes(&mut self) -> Result<Option<Vec<u8>>> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let width = self.layout.width;
        let verify = self.verify;
        let h = self.read_header()?;
        let (mask, coded) = self.read_streams(&h, width)?;
        let id = self.id.clone();
        let index = self.index;
        let hh = h.clone();
        let decode_own = move || -> Result<codec::Residual> {
            codec::decode_planes(&hh, width, mask.as_deref(), coded, verify).map_err(|m| corrupt(&id, format!("chunk {index}, {m}")))
        };
        let (own, base) = if h.transform == Transform::None {
            (decode_own()?, None)
        } else {
            let b = self.base_at_current()?;
            let (own, base) = rayon::join(decode_own, || b.next_bytes());
            let base = base?.ok_or_else(|| corrupt(&self.id, "base ends before this object"))?;
            (own?, Some(base))
        };
        // Empty: the chunk is allocated zeroed (or from the base) by `assemble_chunk`.
        let mut value = Vec::new();
        codec::assemble_chunk(&h, &own, base.as_deref(), &mut value).map_err(|m| self.corrupt(m))?;
        self.remaining -= h.elems;
        self.index += 1;
        Ok(Some(value))
    }

    /// Checks that nothing follows the last chunk.
    fn expect_end(&mut self) -> Result<()> {
        let mut one = [0u8; 1];
        match self.r.read(&mut one) {
            Ok(0) => Ok(()),
            Ok(_) => Err(corrupt(&self.id, "trailing bytes after the last chunk")),
            Err(e) => Err(StoreError::io(self.store.dir.join(&self.id), e)),
        }
    }
}

/// Keeps the top `keep` bytes of every `width`-byte element of a byte stream.
struct TopBytes<'a> {
    out: &'a mut dyn Write,
    width: usize,
    keep: usize,
    carry: Vec<u8>,
    written: u64,
}

impl Write for TopBytes<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut data = std::mem::take(&mut self.carry);
        data.extend_from_slice(buf);
        let whole = data.len() / self.width * self.width;
        let mut kept = Vec::with_capacity(whole / self.width * self.keep);
        for w in data[..whole].chunks_exact(self.width) {
            kept.extend_from_slice(&w[self.width - self.keep..]);
        }
        self.out.write_all(&kept)?;
        self.written += kept.len() as u64;
        self.carry = data[whole..].to_vec();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Reads until `buf` is full or the source ends, so chunks stay large.
fn read_some(src: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Makes a rename durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let d = File::open(dir).map_err(|e| StoreError::io(dir, e))?;
        d.sync_all().map_err(|e| StoreError::io(dir, e))?;
    }
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::FloatKind;

    #[test]
    fn put_get_roundtrip_and_dedup() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::io("tmp", e))?;
        let store = ObjectStore::new(dir.path().join("objects"));
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let a = store.put_bytes(&data)?;
        assert_eq!(a.len, data.len() as u64);
        assert!(!a.existed);
        let b = store.put_bytes(&data)?;
        assert!(b.existed);
        assert_eq!(a.id, b.id);
        assert_eq!(store.get_bytes(&a.id)?, data);
        assert_eq!(store.list()?, vec![a.id.clone()]);
        Ok(())
    }

    #[test]
    fn corruption_is_detected() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::io("tmp", e))?;
        let store = ObjectStore::new(dir.path().join("objects"));
        let a = store.put_bytes(b"hello world hello world")?;
        let p = store.path_of(&a.id)?;
        let mut bytes = fs::read(&p).map_err(|e| StoreError::io(&p, e))?;
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&p, &bytes).map_err(|e| StoreError::io(&p, e))?;
        assert!(matches!(store.verify(&a.id), Err(StoreError::CorruptObject { .. })));
        fs::write(&p, b"DLV").map_err(|e| StoreError::io(&p, e))?;
        assert!(matches!(store.verify(&a.id), Err(StoreError::CorruptObject { .. })));
        Ok(())
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// Weights after `step` small "training" updates (deterministic).
    fn weights(n: usize, step: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = (i as f32 * 0.618).sin() * 0.05;
                x + (step as f32) * 1e-7 * ((i * 7 + step as usize) as f32).cos()
            })
            .collect()
    }

    fn put_tensor(store: &ObjectStore, data: &[u8], layout: TensorLayout, base: Option<&str>) -> Result<PutOutcome> {
        let mut w = store.tensor_writer(layout, data.len() as u64, base, DeltaMode::Auto.into(), false)?;
        // Odd write sizes exercise the chunk buffering.
        for part in data.chunks(777_777) {
            w.write_all(part).map_err(|e| StoreError::io("w", e))?;
        }
        w.finish()
    }

    const F32: TensorLayout = TensorLayout { width: 4, float: FloatKind::F32, row: 0 };

    #[test]
    fn tensor_objects_round_trip_across_chunks_and_dedup() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::io("tmp", e))?;
        let store = ObjectStore::new(dir.path().join("objects"));
        let n = CHUNK_ELEMS as usize + 12_345;
        let data = f32_bytes(&weights(n, 0));
        let a = put_tensor(&store, &data, F32, None)?;
        assert_eq!(a.id, blake3::hash(&data).to_hex().to_string());
        assert!(a.stored < data.len() as u64);
        assert_eq!(store.info(&a.id)?.codec, Codec::Planes);
        assert_eq!(store.get_bytes(&a.id)?, data);
        assert!(put_tensor(&store, &data, F32, None)?.existed);
        // Byte-wide and 8-byte tensors, and an empty one.
        let bytes: Vec<u8> = (0..3000u32).map(|i| (i % 7) as u8).collect();
        let b = put_tensor(&store, &bytes, TensorLayout { width: 1, float: FloatKind::None, row: 0 }, None)?;
        assert_eq!(store.get_bytes(&b.id)?, bytes);
        let longs: Vec<u8> = (0..999u64).flat_map(|i| (i * i).to_le_bytes()).collect();
        let c = put_tensor(&store, &longs, TensorLayout { width: 8, float: FloatKind::None, row: 0 }, None)?;
        assert_eq!(store.get_bytes(&c.id)?, longs);
        let e = put_tensor(&store, &[], F32, None)?;
        assert_eq!(store.get_bytes(&e.id)?, Vec::<u8>::new());
        Ok(())
    }

    #[test]
    fn delta_chains_read_back_and_high_planes_equal_truncation() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::io("tmp", e))?;
        let store = ObjectStore::new(dir.path().join("objects"));
        let n = CHUNK_ELEMS as usize + 1000;
        let mut base: Option<String> = None;
        let mut all = Vec::new();
        for step in 0..4 {
            let data = f32_bytes(&weights(n, step * 100));
            let put = put_tensor(&store, &data, F32, base.as_deref())?;
            if step > 0 {
                assert_eq!(store.base_of(&put.id)?, base, "step {step}");
                assert_eq!(store.chain_len(&put.id)?, step as usize);
            }
            base = Some(put.id.clone());
            all.push((put, data));
        }
        let whole = all[0].0.stored;
        assert!(all[3].0.stored < whole, "delta {} vs whole {whole}", all[3].0.stored);
        for (put, data) in &all {
            assert_eq!(&store.get_bytes(&put.id)?, data);
            let before = store.bytes_read();
            let mut top = Vec::new();
            store.get_top_into(&put.id, 4, 2, &mut top)?;
            let top_read = store.bytes_read() - before;
            let expect: Vec<u8> = data.chunks_exact(4).flat_map(|w| [w[2], w[3]]).collect();
            assert_eq!(top, expect);
            let before = store.bytes_read();
            store.verify(&put.id)?;
            let full_read = store.bytes_read() - before;
            assert!(top_read <= full_read, "{top_read} > {full_read}");
        }
        // XOR-only chains: the high-plane read touches only the high planes at every level.
        let mut prev: Option<String> = None;
        let mut last = None;
        for step in 0..3 {
            let data = f32_bytes(&weights(200_000, 7 + step * 50));
            let mut w = store.tensor_writer(F32, data.len() as u64, prev.as_deref(), DeltaMode::Xor.into(), false)?;
            w.write_all(&data).map_err(|e| StoreError::io("w", e))?;
            let put = w.finish()?;
            prev = Some(put.id.clone());
            last = Some((put.id, data));
        }
        if let Some((id, data)) = last {
            let before = store.bytes_read();
            let mut top = Vec::new();
            store.get_top_into(&id, 4, 2, &mut top)?;
            let top_read = store.bytes_read() - before;
            let before = store.bytes_read();
            assert_eq!(store.get_bytes(&id)?, data);
            let full_read = store.bytes_read() - before;
            assert!(top_read < full_read, "{top_read} vs {full_read}");
            let expect: Vec<u8> = data.chunks_exact(4).flat_map(|w| [w[2], w[3]]).collect();
            assert_eq!(top, expect);
        }
        Ok(())
    }

    #[test]
    fn special_bit_patterns_survive_objects() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::io("tmp", e))?;
        let store = ObjectStore::new(dir.path().join("objects"));
        let bits: Vec<u32> = vec![0x7fc0_0000, 0xffc0_0001, 0x7f80_0000, 0xff80_0000, 0x8000_0000, 0, 1, 0x807f_ffff];
        let a: Vec<u8> = bits.iter().cycle().take(10_000).flat_map(|b| b.to_le_bytes()).collect();
        let b: Vec<u8> = bits.iter().rev().cycle().take(10_000).flat_map(|b| b.to_le_bytes()).collect();
        let pa = put_tensor(&store, &a, F32, None)?;
        let pb = put_tensor(&store, &b, F32, Some(&pa.id))?;
        assert_eq!(store.get_bytes(&pb.id)?, b);
        for (layout, w) in [(TensorLayout { width: 2, float: FloatKind::BF16, row: 0 }, 2), (TensorLayout { width: 2, float: FloatKind::F16, row: 0 }, 2)] {
            let p = put_tensor(&store, &a, layout, Some(&pb.id))?; // incompatible base: ignored
            assert_eq!(store.base_of(&p.id)?, None);
            assert_eq!(store.get_bytes(&p.id)?, a);
            let mut top = Vec::new();
            store.get_top_into(&p.id, w, 1, &mut top)?;
            assert_eq!(top, a.chunks_exact(2).map(|x| x[1]).collect::<Vec<u8>>());
        }
        Ok(())
    }

    #[test]
    fn corrupt_tensor_objects_are_named_errors_never_panics() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::io("tmp", e))?;
        let store = ObjectStore::new(dir.path().join("objects"));
        let base = f32_bytes(&weights(3000, 0));
        let data = f32_bytes(&weights(3000, 300));
        let pb = put_tensor(&store, &base, F32, None)?;
        let pd = put_tensor(&store, &data, F32, Some(&pb.id))?;
        assert_eq!(store.info(&pd.id)?.codec, Codec::Delta);
        for target in [&pd.id, &pb.id] {
            let path = store.path_of(target)?;
            let good = fs::read(&path).map_err(|e| StoreError::io(&path, e))?;
            let step = (good.len() / 300).max(1);
            let mut offsets: Vec<usize> = (0..good.len()).step_by(step).collect();
            offsets.extend(0..80.min(good.len()));
            for &off in &offsets {
                for cut in [false, true] {
                    let bad = if cut {
                        good[..off].to_vec()
                    } else {
                        let mut b = good.clone();
                        b[off] ^= 0x24;
                        b
                    };
                    fs::write(&path, &bad).map_err(|e| StoreError::io(&path, e))?;
                    let full = store.verify(&pd.id);
                    let mut sink = Vec::new();
                    let top = store.get_top_into(&pd.id, 4, 2, &mut sink);
                    match full {
                        Err(StoreError::CorruptObject { id, .. }) => assert!(id == pd.id || id == pb.id),
                        Err(StoreError::MissingObject { .. }) => assert!(target == &pd.id && (32..64).contains(&off)),
                        Err(other) => panic!("offset {off}: unexpected error {other}"),
                        // A flip in a reserved byte changes nothing that is read.
                        Ok(_) => assert!(!cut, "truncation at {off} went unnoticed"),
                    }
                    if let Err(e) = top {
                        let base_ref = target == &pd.id && (32..64).contains(&off);
                        assert!(
                            matches!(e, StoreError::CorruptObject { .. })
                                || (base_ref && matches!(e, StoreError::MissingObject { .. })),
                            "offset {off}: {e}"
                        );
                    }
                }
            }
            fs::write(&path, &good).map_err(|e| StoreError::io(&path, e))?;
        }
        // A corrupt plane stream is named: object and plane.
        let path = store.path_of(&pd.id)?;
        let mut bad = fs::read(&path).map_err(|e| StoreError::io(&path, e))?;
        let last = bad.len() - 5;
        bad[last] ^= 0xff;
        fs::write(&path, &bad).map_err(|e| StoreError::io(&path, e))?;
        match store.verify(&pd.id) {
            Err(StoreError::CorruptObject { id, msg }) => {
                assert_eq!(id, pd.id);
                // The fast full read skips plane checksums; the retry names the plane.
                assert!(msg.contains("chunk 0") && msg.contains("plane"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        // A missing base is reported as such.
        fs::remove_file(store.path_of(&pb.id)?).map_err(|e| StoreError::io("rm", e))?;
        fs::write(&path, fs::read(&path).map_err(|e| StoreError::io(&path, e))?).map_err(|e| StoreError::io(&path, e))?;
        assert!(matches!(store.chain_len(&pd.id), Err(StoreError::MissingObject { .. })));
        Ok(())
    }
}
