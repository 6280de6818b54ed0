//! The version record `M(name, id, N, W, M, F)` and its lineage, as stored in sled.
//!
//! Records are rkyv archives, validated with bytecheck on every read, behind a 8-byte header
//! (`DLVR` + format version u32 LE). The id of a version is the BLAKE3 hash of the record's
//! canonical JSON, so the same version has the same id in every repository and on the hub.

use rkyv::{Archive, Deserialize as RDeserialize, Serialize as RSerialize};
use serde::{Deserialize, Serialize};

use crate::{Result, StoreError};

/// Version of the record layout. Bump on any change of the structs below.
pub const RECORD_FORMAT: u32 = 1;
const RECORD_MAGIC: &[u8; 4] = b"DLVR";

/// One model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Archive, RSerialize, RDeserialize)]
pub struct VersionRecord {
    pub name: String,
    /// Parent version ids (lineage); several for versions built from more than one source.
    pub parents: Vec<String>,
    pub message: String,
    pub author: String,
    /// Creation time, milliseconds since the Unix epoch (UTC).
    pub created_ms: i64,
    /// The network `N`, if the version has one.
    pub network: Option<NetworkRef>,
    /// The weights `W`, tensor by tensor, in file order.
    pub tensors: Vec<TensorEntry>,
    /// File name that checkout gives the weights (`<stem>.safetensors`).
    pub weights_file: Option<String>,
    /// The original safetensors header (length prefix + JSON), when the weights came from one
    /// safetensors file: checkout then rebuilds that file byte for byte.
    pub weights_header: Option<String>,
    /// Extracted hyper-parameters (solver, training config), sorted by key.
    pub hyper: Vec<HyperEntry>,
    /// Metric series (loss, accuracy, lr per iteration), sorted by name.
    pub series: Vec<SeriesEntry>,
    /// Associated files `F`, byte-identical on checkout.
    pub files: Vec<FileEntry>,
    /// Free-form extra metadata (footprint figures, tags, trainer results), sorted by key.
    pub extra: Vec<HyperEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Archive, RSerialize, RDeserialize)]
pub struct NetworkRef {
    /// Object holding the DAG in dlv-graph's canonical JSON.
    pub dag: String,
    /// The network's own name.
    pub name: String,
    pub layers: u32,
    /// The prototxt as the user gave it, written back byte-identical on checkout.
    pub source: Option<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Archive, RSerialize, RDeserialize)]
pub struct TensorEntry {
    /// Name as in the weights file (`conv1.weight`).
    pub name: String,
    /// Layer and blob it was matched to, if any.
    pub layer: Option<String>,
    pub blob: Option<String>,
    /// safetensors dtype spelling (`F32`).
    pub dtype: String,
    pub shape: Vec<u64>,
    pub object: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Archive, RSerialize, RDeserialize)]
pub struct HyperEntry {
    pub key: String,
    /// Display form.
    pub text: String,
    /// Numeric value, when the value is a number (used by comparisons in queries).
    pub num: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Archive, RSerialize, RDeserialize)]
pub struct SeriesEntry {
    pub name: String,
    pub iters: Vec<u64>,
    pub values: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Archive, RSerialize, RDeserialize)]
pub struct FileEntry {
    /// Relative path (forward slashes, no `..`) the file had when added.
    pub path: String,
    /// What dlv understood it as: `network`, `solver`, `log`, `config`, `file`.
    pub role: String,
    pub object: String,
    pub size: u64,
}

impl VersionRecord {
    /// Content id: BLAKE3 of the canonical JSON of the record.
    pub fn id(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        blake3::hash(&json).to_hex().to_string()
    }

    pub fn hyper(&self, key: &str) -> Option<&HyperEntry> {
        self.hyper.iter().find(|h| h.key == key)
    }

    pub fn series(&self, name: &str) -> Option<&SeriesEntry> {
        self.series.iter().find(|s| s.name == name)
    }

    /// Every object the version references (tensors, network, files).
    pub fn objects(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.tensors.iter().map(|t| t.object.as_str()).collect();
        if let Some(n) = &self.network {
            v.push(&n.dag);
            if let Some(s) = &n.source {
                v.push(&s.object);
            }
        }
        v.extend(self.files.iter().map(|f| f.object.as_str()));
        v.extend(self.weights_header.as_deref());
        v
    }

    pub fn param_count(&self) -> u64 {
        self.tensors.iter().map(|t| t.shape.iter().product::<u64>()).sum()
    }

    pub fn weight_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes).sum()
    }

    /// Archived bytes with header, for sled.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let body = rkyv::to_bytes::<rkyv::rancor::Error>(self).map_err(|e| StoreError::CorruptMeta {
            what: format!("version {}", self.name),
            msg: format!("cannot archive: {e}"),
        })?;
        let mut out = Vec::with_capacity(8 + body.len());
        out.extend_from_slice(RECORD_MAGIC);
        out.extend_from_slice(&RECORD_FORMAT.to_le_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Validates (bytecheck) and decodes a stored record.
    pub fn decode(what: &str, bytes: &[u8]) -> Result<VersionRecord> {
        let corrupt = |msg: String| StoreError::CorruptMeta { what: what.to_string(), msg };
        if bytes.len() < 8 || &bytes[..4] != RECORD_MAGIC {
            return Err(corrupt("not a version record".into()));
        }
        let mut v = [0u8; 4];
        v.copy_from_slice(&bytes[4..8]);
        let format = u32::from_le_bytes(v);
        if format != RECORD_FORMAT {
            return Err(StoreError::FormatVersion { found: format, supported: RECORD_FORMAT });
        }
        // sled values carry no alignment guarantee; rkyv wants its archive aligned.
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len() - 8);
        aligned.extend_from_slice(&bytes[8..]);
        rkyv::from_bytes::<VersionRecord, rkyv::rancor::Error>(&aligned)
            .map_err(|e| corrupt(format!("record fails validation: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VersionRecord {
        VersionRecord {
            name: "lenet".into(),
            parents: vec!["ab".repeat(32)],
            message: "first".into(),
            author: "me".into(),
            created_ms: 1_448_150_400_000,
            network: None,
            tensors: vec![TensorEntry {
                name: "conv1.weight".into(),
                layer: Some("conv1".into()),
                blob: Some("weight".into()),
                dtype: "F32".into(),
                shape: vec![20, 1, 5, 5],
                object: "cd".repeat(32),
                bytes: 2000,
            }],
            weights_file: Some("lenet.safetensors".into()),
            weights_header: None,
            hyper: vec![HyperEntry { key: "base_lr".into(), text: "0.01".into(), num: Some(0.01) }],
            series: vec![SeriesEntry { name: "train/loss".into(), iters: vec![0, 100], values: vec![2.3, 0.5] }],
            files: vec![],
            extra: vec![],
        }
    }

    #[test]
    fn encode_decode_roundtrip() -> Result<()> {
        let r = sample();
        let bytes = r.encode()?;
        assert_eq!(VersionRecord::decode("t", &bytes)?, r);
        Ok(())
    }

    #[test]
    fn garbage_is_rejected_not_panicking() -> Result<()> {
        let bytes = sample().encode()?;
        for cut in [0, 3, 8, 9, bytes.len() / 2, bytes.len() - 1] {
            assert!(VersionRecord::decode("t", &bytes[..cut]).is_err());
        }
        let mut flipped = bytes.clone();
        for i in (8..flipped.len()).step_by(7) {
            flipped[i] = flipped[i].wrapping_add(0x5a);
        }
        let _ = VersionRecord::decode("t", &flipped);
        let mut wrong_version = bytes;
        wrong_version[4] = 9;
        assert!(matches!(
            VersionRecord::decode("t", &wrong_version),
            Err(StoreError::FormatVersion { found: 9, .. })
        ));
        Ok(())
    }

    #[test]
    fn id_is_stable_and_content_dependent() {
        let a = sample();
        let mut b = sample();
        assert_eq!(a.id(), b.id());
        b.message = "other".into();
        assert_ne!(a.id(), b.id());
    }
}
