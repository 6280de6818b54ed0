//! Content-addressed object files: `objects/ab/cdef…`, named by the BLAKE3 hash of the decoded
//! content and verified against it on every read.
//!
//! File layout (format 1): magic `DLVO`, format byte, codec byte, two reserved bytes, decoded
//! length (u64 LE), then the codec's payload. Writes go to `objects/tmp/`, are synced, then renamed
//! into place, so a crash never leaves a half-written object under its final name.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::{Result, StoreError};

const MAGIC: &[u8; 4] = b"DLVO";
const OBJECT_FORMAT: u8 = 1;
const HEADER_LEN: usize = 16;
const CHUNK: usize = 1 << 20;

/// Hex BLAKE3 id of an object's decoded content.
pub type ObjectId = String;

/// How an object's payload is encoded. New codecs get new ids; old ones stay readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
}

impl Codec {
    fn from_byte(b: u8) -> Option<Codec> {
        match b {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            _ => None,
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

/// The object directory of a repository.
#[derive(Debug, Clone)]
pub struct ObjectStore {
    dir: PathBuf,
    codec: Codec,
    level: i32,
}

/// Checks that `id` looks like a full object id, so that it is safe to use in a path.
pub fn is_valid_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl ObjectStore {
    pub fn new(dir: impl Into<PathBuf>) -> ObjectStore {
        ObjectStore {
            dir: dir.into(),
            codec: Codec::Zstd,
            level: 1,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
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

    /// Starts a streaming write: feed bytes with `Write`, then [`ObjectWriter::finish`].
    /// Memory stays bounded by the chunk size whatever the length.
    pub fn writer(&self) -> Result<ObjectWriter> {
        let tmp_dir = self.dir.join("tmp");
        fs::create_dir_all(&tmp_dir).map_err(|e| StoreError::io(&tmp_dir, e))?;
        let tmp = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(|e| StoreError::io(&tmp_dir, e))?;
        let (file, guard) = tmp.into_parts();
        let mut out = BufWriter::with_capacity(CHUNK, file);
        out.write_all(&[0u8; HEADER_LEN]).map_err(|e| StoreError::io(&*guard, e))?;
        let sink = match self.codec {
            Codec::Raw => Sink::Raw(out),
            Codec::Zstd => Sink::Zstd(zstd::Encoder::new(out, self.level).map_err(|e| StoreError::io(&*guard, e))?),
        };
        Ok(ObjectWriter {
            store: self.clone(),
            sink: Some(sink),
            guard,
            hasher: blake3::Hasher::new(),
            len: 0,
        })
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

    /// Streams the decoded content of `id` into `out`, verifying length and hash. On a mismatch
    /// the error comes after some bytes were written: callers write to a temporary destination.
    pub fn get_into(&self, id: &str, out: &mut dyn Write) -> Result<u64> {
        let path = self.path_of(id)?;
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::MissingObject { id: id.to_string() })
            }
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        let mut reader = BufReader::with_capacity(CHUNK, file);
        let (codec, len) = read_header(id, &mut reader)?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0u64;
        let corrupt = |msg: String| StoreError::CorruptObject { id: id.to_string(), msg };
        let mut pump = |src: &mut dyn Read| -> Result<()> {
            loop {
                let n = read_some(src, &mut buf).map_err(|e| corrupt(format!("cannot decode: {e}")))?;
                if n == 0 {
                    return Ok(());
                }
                got += n as u64;
                if got > len {
                    return Err(corrupt(format!("decodes to more than the {len} bytes its header says")));
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(|e| StoreError::io("<output>", e))?;
            }
        };
        match codec {
            Codec::Raw => pump(&mut reader)?,
            Codec::Zstd => {
                let mut dec = zstd::Decoder::with_buffer(reader).map_err(|e| corrupt(e.to_string()))?;
                pump(&mut dec)?
            }
        }
        if got != len {
            return Err(corrupt(format!("decodes to {got} bytes, header says {len}")));
        }
        let actual = hasher.finalize().to_hex().to_string();
        if actual != id {
            return Err(corrupt(format!("content hashes to {actual}")));
        }
        Ok(got)
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
        let path = self.path_of(id)?;
        let mut f = File::open(&path).map_err(|e| StoreError::io(&path, e))?;
        Ok(read_header(id, &mut f)?.1)
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

fn read_header(id: &str, r: &mut dyn Read) -> Result<(Codec, u64)> {
    let mut header = [0u8; HEADER_LEN];
    r.read_exact(&mut header).map_err(|_| StoreError::CorruptObject {
        id: id.to_string(),
        msg: "file shorter than its header".into(),
    })?;
    if &header[..4] != MAGIC {
        return Err(StoreError::CorruptObject { id: id.to_string(), msg: "bad magic".into() });
    }
    if header[4] != OBJECT_FORMAT {
        return Err(StoreError::CorruptObject {
            id: id.to_string(),
            msg: format!("unknown object format {}", header[4]),
        });
    }
    let codec = Codec::from_byte(header[5]).ok_or_else(|| StoreError::CorruptObject {
        id: id.to_string(),
        msg: format!("unknown codec {}", header[5]),
    })?;
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[8..16]);
    Ok((codec, u64::from_le_bytes(len)))
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
        let buffered = match self.sink.take() {
            Some(Sink::Raw(w)) => w,
            Some(Sink::Zstd(enc)) => enc.finish().map_err(|e| StoreError::io(&tmp_path, e))?,
            None => return Err(StoreError::Invalid("object writer already finished".into())),
        };
        let mut file = buffered.into_inner().map_err(|e| StoreError::io(&tmp_path, e.into_error()))?;
        let id = self.hasher.finalize().to_hex().to_string();
        let len = self.len;
        let final_path = self.store.path_of(&id)?;
        if final_path.is_file() {
            return Ok(PutOutcome { id, len, stored: 0, existed: true });
        }
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(MAGIC);
        header[4] = OBJECT_FORMAT;
        header[5] = self.store.codec as u8;
        header[8..16].copy_from_slice(&len.to_le_bytes());
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(0)).map_err(|e| StoreError::io(&tmp_path, e))?;
        file.write_all(&header).map_err(|e| StoreError::io(&tmp_path, e))?;
        file.sync_all().map_err(|e| StoreError::io(&tmp_path, e))?;
        let stored = file.metadata().map_err(|e| StoreError::io(&tmp_path, e))?.len();
        drop(file);
        let parent = final_path.parent().map(Path::to_path_buf).unwrap_or_else(|| self.store.dir.clone());
        fs::create_dir_all(&parent).map_err(|e| StoreError::io(&parent, e))?;
        self.guard.persist(&final_path).map_err(|e| StoreError::io(&final_path, e.error))?;
        sync_dir(&parent)?;
        Ok(PutOutcome { id, len, stored, existed: false })
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
}
