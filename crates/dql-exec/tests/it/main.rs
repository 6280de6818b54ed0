//! Executor tests over temporary repositories built through the store's library API: every
//! statement, selector features, pushdown (a counting catalogue), nesting, saved queries,
//! errors, and `evaluate` with a test-double trainer.

mod evaluate;
mod queries;

use std::cell::Cell;
use std::collections::HashSet;

use dlv_graph::Net;
use dlv_store::{HyperEntry, NetworkRef, Repository, TensorEntry, VersionRecord, VersionSummary};
use dql_exec::{Catalog, ExecError, ExecOptions, Executor, Output, Pushdown, StoreCatalog};

pub const ALEXNET: &str = include_str!("../../../../testdata/nets/alexnet.prototxt");
pub const LENET: &str = include_str!("../../../../testdata/nets/lenet.prototxt");

/// Removes the top-level `layer { name: "NAME" ... }` block.
pub fn remove_layer(text: &str, name: &str) -> String {
    let start = text.find(&format!("layer {{\n  name: \"{name}\"\n")).unwrap_or_else(|| panic!("no layer {name}"));
    let end = start + text[start..].find("\n}\n").expect("block end") + 3;
    format!("{}{}", &text[..start], &text[end..])
}

/// Replaces `from` by `to` inside the block of layer `name`.
pub fn edit_layer(text: &str, name: &str, from: &str, to: &str) -> String {
    let start = text.find(&format!("layer {{\n  name: \"{name}\"\n")).unwrap_or_else(|| panic!("no layer {name}"));
    let end = start + text[start..].find("\n}\n").expect("block end") + 3;
    let block = text[start..end].replacen(from, to, 1);
    assert_ne!(block, text[start..end], "{from} not in {name}");
    format!("{}{}{}", &text[..start], block, &text[end..])
}

/// AlexNet whose conv5 feeds pool5 directly (relu5 removed).
pub fn alexnet_no_relu5() -> String {
    remove_layer(ALEXNET, "relu5")
}

/// AlexNet with average pools right after conv1 and conv5 (relu1, norm1, relu5 removed).
pub fn alexnet_avg() -> String {
    let t = remove_layer(ALEXNET, "relu1");
    let t = remove_layer(&t, "norm1");
    let t = edit_layer(&t, "pool1", "bottom: \"norm1\"", "bottom: \"conv1\"");
    let t = edit_layer(&t, "pool1", "pool: MAX", "pool: AVE");
    let t = remove_layer(&t, "relu5");
    edit_layer(&t, "pool5", "pool: MAX", "pool: AVE")
}

pub fn ms(date: &str) -> i64 {
    let d = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").expect("date");
    d.and_hms_opt(0, 0, 0).expect("midnight").and_utc().timestamp_millis()
}

/// A temporary repository filled through the library.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub repo: Repository,
}

impl Default for Fixture {
    fn default() -> Self {
        Fixture::new()
    }
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo = Repository::init(dir.path()).expect("init");
        Fixture { dir, repo }
    }

    /// Records a version of `name` with network `prototxt`, one small tensor per learnable
    /// layer (distinct bytes per version), and hyper-parameters.
    pub fn add(&self, name: &str, date: &str, prototxt: &str, hyper: &[(&str, f64)]) -> String {
        let mut net = Net::from_prototxt(prototxt, "net.prototxt").expect("net parses");
        net.set_inferred_blobs();
        let dag = self.repo.objects().put_bytes(net.to_json().as_bytes()).expect("dag").id;
        let mut tensors = Vec::new();
        for n in net.nodes() {
            if !matches!(n.layer_type.as_str(), "Convolution" | "InnerProduct") {
                continue;
            }
            for blob in ["weight", "bias"] {
                let data = format!("{name}/{date}/{}/{blob}", n.name).into_bytes();
                let object = self.repo.objects().put_bytes(&data).expect("tensor").id;
                tensors.push(TensorEntry {
                    name: format!("{}.{blob}", n.name),
                    layer: Some(n.name.clone()),
                    blob: Some(blob.into()),
                    dtype: "U8".into(),
                    shape: vec![data.len() as u64],
                    object,
                    bytes: data.len() as u64,
                });
            }
        }
        let record = VersionRecord {
            name: name.into(),
            parents: Vec::new(),
            message: format!("{name} of {date}"),
            author: "tester".into(),
            created_ms: ms(date),
            network: Some(NetworkRef { dag, name: net.name.clone(), layers: net.len() as u32, source: None }),
            tensors,
            weights_file: None,
            weights_header: None,
            hyper: hyper.iter().map(|(k, v)| HyperEntry { key: (*k).into(), text: v.to_string(), num: Some(*v) }).collect(),
            series: Vec::new(),
            files: Vec::new(),
            extra: Vec::new(),
        };
        self.repo.insert_version(&record).expect("insert")
    }

    /// The repository of the SPEC examples.
    pub fn alexnets() -> Fixture {
        let f = Fixture::new();
        f.add("alexnet-origin", "2015-11-23", ALEXNET, &[("base_lr", 0.01)]);
        f.add("alexnet_v1", "2015-11-25", &alexnet_no_relu5(), &[("base_lr", 0.001)]);
        f.add("alexnet_v2", "2015-11-22", &alexnet_no_relu5(), &[("base_lr", 0.1)]);
        f.add("alexnet_v3", "2015-12-01", ALEXNET, &[("base_lr", 0.01)]);
        f.add("alexnet-avgv1", "2015-11-24", &alexnet_avg(), &[("base_lr", 0.02)]);
        f.add("alexnet", "2015-12-02", &alexnet_no_relu5(), &[]);
        f.add("lenet", "2015-12-01", LENET, &[("base_lr", 0.01), ("momentum", 0.9)]);
        f
    }

    pub fn run(&self, q: &str) -> Result<Output, ExecError> {
        let cat = Counting::new(StoreCatalog::new(&self.repo));
        Executor::new(&cat, ExecOptions::default()).run_text(q)
    }

    pub fn run_commit(&self, q: &str) -> Result<Output, ExecError> {
        let cat = StoreCatalog::new(&self.repo);
        Executor::new(&cat, ExecOptions { commit: true, author: "tester".into(), now_ms: ms("2016-01-01"), ..Default::default() }).run_text(q)
    }

    pub fn names(&self, q: &str) -> Vec<String> {
        let out = self.run(q).unwrap_or_else(|e| panic!("{q}: {e}"));
        let mut v: Vec<String> = out.rows.into_iter().map(|r| r.name).collect();
        v.sort();
        v
    }

    pub fn error(&self, q: &str) -> String {
        match self.run(q) {
            Ok(o) => panic!("{q}: expected an error, got {} rows", o.rows.len()),
            Err(e) => e.to_string(),
        }
    }
}

/// A catalogue that counts what the executor reads from it. `plain` hides the summary index
/// and reading networks by object (as a catalogue without them, like the hub's).
pub struct Counting<C> {
    pub inner: C,
    pub plain: bool,
    pub networks: Cell<usize>,
    pub records: Cell<usize>,
    pub summaries: Cell<usize>,
    /// Names of the versions whose network was read through their record (`network`).
    pub loaded_names: std::cell::RefCell<HashSet<String>>,
    /// DAG objects read by id (`network_object`).
    pub loaded_dags: std::cell::RefCell<HashSet<String>>,
}

impl<C: Catalog> Counting<C> {
    pub fn new(inner: C) -> Self {
        Counting {
            inner,
            plain: false,
            networks: Cell::new(0),
            records: Cell::new(0),
            summaries: Cell::new(0),
            loaded_names: Default::default(),
            loaded_dags: Default::default(),
        }
    }

    pub fn plain(inner: C) -> Self {
        Counting { plain: true, ..Counting::new(inner) }
    }
}

impl<C: Catalog> Catalog for Counting<C> {
    fn candidates(&self, p: &Pushdown) -> Result<Vec<String>, ExecError> {
        self.inner.candidates(p)
    }
    fn record(&self, id: &str) -> Result<VersionRecord, ExecError> {
        self.records.set(self.records.get() + 1);
        self.inner.record(id)
    }
    fn network(&self, id: &str, r: &VersionRecord) -> Result<Option<Net>, ExecError> {
        self.networks.set(self.networks.get() + 1);
        self.loaded_names.borrow_mut().insert(r.name.clone());
        self.inner.network(id, r)
    }
    fn summary(&self, id: &str) -> Result<Option<VersionSummary>, ExecError> {
        if self.plain {
            return Ok(None);
        }
        self.summaries.set(self.summaries.get() + 1);
        self.inner.summary(id)
    }
    fn network_object(&self, dag: &str) -> Result<Option<Net>, ExecError> {
        if self.plain {
            return Ok(None);
        }
        self.networks.set(self.networks.get() + 1);
        self.loaded_dags.borrow_mut().insert(dag.to_string());
        self.inner.network_object(dag)
    }
    fn metadata_keys(&self) -> Result<Option<HashSet<String>>, ExecError> {
        self.inner.metadata_keys()
    }
    fn saved_query(&self, name: &str) -> Result<Option<String>, ExecError> {
        self.inner.saved_query(name)
    }
    fn save_query(&self, name: &str, text: &str) -> Result<(), ExecError> {
        self.inner.save_query(name, text)
    }
    fn object(&self, id: &str) -> Result<Vec<u8>, ExecError> {
        self.inner.object(id)
    }
    fn put_object(&self, bytes: &[u8]) -> Result<String, ExecError> {
        self.inner.put_object(bytes)
    }
    fn create_version(&self, r: &VersionRecord) -> Result<String, ExecError> {
        self.inner.create_version(r)
    }
}

pub const Q1: &str = r#"select m1
where m1.name like "alexnet_%" and
      m1.creation_time > "2015-11-22" and
      m1["conv[1,3,5]"].next has POOL("MAX")"#;

pub const Q2: &str = r#"slice m2 from m1
where m1.name like "alexnet-origin%"
mutate m2.input = m1["conv1"] and
       m2.output = m1["fc7"]"#;

pub const Q3: &str = r#"construct m2 from m1
where m1.name like "alexnet-avgv1%" and
      m1["conv*($1)"].next has POOL("AVG")
mutate m1["conv*($1)"].insert = RELU("relu$1")"#;

pub const Q4: &str = r#"evaluate m
from "query3"
with config = "path to config"
vary config.base_lr in [0.1, 0.01, 0.001] and
     config.net["conv*"].lr auto and
     config.input_data in ["path1", "path2"]
keep top(5, m["loss"], 100)"#;
