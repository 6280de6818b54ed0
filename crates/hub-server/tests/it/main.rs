//! Integration tests: an in-process hub on an ephemeral loopback port, driven over HTTP.

mod bad_requests;
mod browser;
mod hf;
mod transfer;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dlv_store::{CommitOptions, NoProgress, Repository, VersionRecord};
use hub_server::{Hub, HubConfig};
use serde_json::{json, Value};

/// A hub serving a temporary data folder, with users `alice` and `bob`.
pub struct TestHub {
    pub data: tempfile::TempDir,
    pub addr: SocketAddr,
    pub alice: String,
    pub bob: String,
    pub hub: Arc<Hub>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestHub {
    pub fn start() -> TestHub {
        TestHub::start_with(|_| {})
    }

    pub fn start_with(tweak: impl FnOnce(&mut HubConfig)) -> TestHub {
        let data = tempfile::tempdir().expect("temp dir");
        let users = Hub::users_of(data.path()).expect("users");
        let alice = users.add("alice").expect("add alice");
        let bob = users.add("bob").expect("add bob");
        let mut cfg = HubConfig::new(data.path());
        tweak(&mut cfg);
        let hub = Hub::open(cfg).expect("open hub");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let hub2 = hub.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                addr_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("send addr");
                let _ = hub_server::serve(listener, hub2, async {
                    let _ = stop_rx.await;
                })
                .await;
            });
        });
        let addr = addr_rx.recv().expect("server address");
        TestHub {
            data,
            addr,
            alice,
            bob,
            hub,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn objects_dir(&self) -> PathBuf {
        self.data.path().join("repo/.dlv/objects")
    }

    /// Files under `objects/tmp` (uploads in progress or leftovers).
    pub fn tmp_files(&self) -> Vec<(PathBuf, u64)> {
        let mut v = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.objects_dir().join("tmp")) {
            for e in rd.flatten() {
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                v.push((e.path(), len));
            }
        }
        v
    }

    pub fn has_object(&self, id: &str) -> bool {
        self.hub.repository().objects().contains(id)
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// An HTTP answer: status, headers (lowercase names), body.
pub struct Answer {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

fn answer(resp: ureq::http::Response<ureq::Body>) -> Answer {
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                v.to_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let mut body = Vec::new();
    let _ = resp.into_body().into_reader().read_to_end(&mut body);
    Answer {
        status,
        headers,
        body,
    }
}

pub fn get(url: &str, token: Option<&str>) -> Answer {
    let mut req = agent().get(url);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    answer(req.call().expect("GET"))
}

pub fn post(url: &str, token: Option<&str>, body: &Value) -> Answer {
    let mut req = agent().post(url);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    answer(req.send_json(body).expect("POST"))
}

pub fn put(url: &str, token: Option<&str>, body: &[u8]) -> Answer {
    let mut req = agent().put(url);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    answer(req.send(body).expect("PUT"))
}

/// Sends raw bytes on a fresh connection and returns whatever comes back; with `half_close`
/// the client then closes its sending side (as a client that dies mid-upload does).
pub fn raw(addr: SocketAddr, bytes: &[u8], half_close: bool) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .expect("timeout");
    s.write_all(bytes).expect("send");
    if half_close {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

/// Deterministic incompressible bytes.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn blake3_hex(b: &[u8]) -> String {
    blake3::hash(b).to_hex().to_string()
}

// ---------------------------------------------------------------------------------------------
// Local repositories to publish from.

pub fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(rel)
}

pub const LENET: &[(&str, &[usize])] = &[
    ("conv1.weight", &[20, 1, 5, 5]),
    ("conv1.bias", &[20]),
    ("conv2.weight", &[50, 20, 5, 5]),
    ("conv2.bias", &[50]),
    ("ip1.weight", &[500, 800]),
    ("ip1.bias", &[500]),
    ("ip2.weight", &[10, 500]),
    ("ip2.bias", &[10]),
];

/// LeNet weights; `changed` lists the tensors whose values depend on `seed` (the rest are
/// fixed), so two seeds model a fine-tuned variant.
pub fn lenet_weights(seed: u32, changed: &[&str]) -> Vec<u8> {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = LENET
        .iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let s = if changed.contains(name) {
                seed.wrapping_mul(7919)
            } else {
                0
            } + i as u32
                + 1;
            let mut state = s.wrapping_mul(2_654_435_761).wrapping_add(1);
            let n: usize = shape.iter().product();
            let bytes = (0..n)
                .flat_map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    ((state as f32 / u32::MAX as f32 - 0.5) * 0.1).to_le_bytes()
                })
                .collect();
            (name.to_string(), shape.to_vec(), bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .expect("view"),
            )
        })
        .collect();
    safetensors::serialize(views, None::<HashMap<String, String>>).expect("serialize")
}

/// A working folder with a repository.
#[allow(clippy::new_without_default)]
pub struct Local {
    pub dir: tempfile::TempDir,
}

impl Default for Local {
    fn default() -> Self {
        Self::new()
    }
}

impl Local {
    pub fn new() -> Local {
        let dir = tempfile::tempdir().expect("temp dir");
        Repository::init(dir.path()).expect("init");
        Local { dir }
    }

    /// Opens the repository. sled releases its database lock from a background thread shortly
    /// after the previous handle is dropped, so a `Locked` answer is retried for a while.
    pub fn repo(&self) -> Repository {
        let mut last = None;
        for _ in 0..200 {
            match Repository::open_writer(self.dir.path()) {
                Ok(r) => return r,
                Err(e @ dlv_store::StoreError::Locked { .. }) => {
                    last = Some(e);
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                Err(e) => panic!("open repo: {e}"),
            }
        }
        panic!("open repo: {last:?}")
    }

    /// Commits LeNet with these weights (and an accuracy in a training log); returns the id.
    pub fn commit(&self, name: &str, weights: &[u8], accuracy: f64, message: &str) -> String {
        let p = self.dir.path();
        std::fs::copy(testdata("nets/lenet.prototxt"), p.join("lenet.prototxt")).expect("copy net");
        std::fs::copy(
            testdata("nets/lenet_solver.prototxt"),
            p.join("solver.prototxt"),
        )
        .expect("copy solver");
        std::fs::write(p.join("lenet.safetensors"), weights).expect("write weights");
        std::fs::write(
            p.join("train.log"),
            format!(
                "I0314 10:15:53.067161 23817 solver.cpp:338] Iteration 100, Testing net (#0)\nI0314 10:15:54.056124 23817 solver.cpp:406]     Test net output #0: accuracy = {accuracy}\nI0314 10:15:55.859902 23817 solver.cpp:228] Iteration 100, loss = 0.25\n"
            ),
        )
        .expect("write log");
        let repo = self.repo();
        let files: Vec<PathBuf> = [
            "lenet.prototxt",
            "solver.prototxt",
            "lenet.safetensors",
            "train.log",
        ]
        .iter()
        .map(|f| p.join(f))
        .collect();
        repo.add(&files).expect("add");
        let opts = CommitOptions {
            name: name.to_string(),
            message: message.to_string(),
            author: "tester".into(),
            parents: vec![],
            created_ms: Some(1_700_000_000_000),
        };
        repo.commit(&opts, &NoProgress).expect("commit").id
    }

    pub fn checkout_weights(&self, rev: &str) -> Vec<u8> {
        let repo = self.repo();
        let id = repo.resolve(rev).expect("resolve");
        let out = tempfile::tempdir().expect("temp dir");
        let o = repo
            .checkout(
                &id,
                out.path(),
                dlv_store::Precision::Full,
                true,
                &NoProgress,
            )
            .expect("checkout");
        let w = o
            .files
            .iter()
            .find(|f| f.extension().is_some_and(|e| e == "safetensors"))
            .expect("weights file");
        std::fs::read(w).expect("read weights")
    }
}

/// The lineage of `head` in `repo`, parents first.
pub fn lineage(repo: &Repository, head: &str) -> Vec<(String, VersionRecord)> {
    let mut out: Vec<(String, VersionRecord)> = Vec::new();
    let mut cur = Some(head.to_string());
    while let Some(id) = cur {
        let r = repo.get(&id).expect("record");
        cur = r.parents.first().cloned();
        out.push((id, r));
    }
    out.reverse();
    out
}

/// What a publish sent.
#[derive(Debug)]
pub struct Sent {
    pub objects: usize,
    pub bytes: u64,
    pub status: u16,
    pub answer: Value,
}

/// Publishes `head` the way `dlv publish` does: negotiate versions, negotiate objects, upload
/// the missing ones, then the records.
pub fn publish(hub: &TestHub, token: &str, repo: &Repository, head: &str, extra: Value) -> Sent {
    let lin = lineage(repo, head);
    let ids: Vec<&String> = lin.iter().map(|(i, _)| i).collect();
    let lacking = post(
        &hub.url("/api/v1/versions/missing"),
        Some(token),
        &json!({ "ids": ids }),
    )
    .json();
    let lacking: Vec<String> =
        serde_json::from_value(lacking["missing"].clone()).expect("missing list");
    let records: Vec<&VersionRecord> = lin
        .iter()
        .filter(|(i, _)| lacking.contains(i))
        .map(|(_, r)| r)
        .collect();
    let mut objs: Vec<String> = records
        .iter()
        .flat_map(|r| r.objects())
        .map(str::to_string)
        .collect();
    objs.sort();
    objs.dedup();
    let need = post(
        &hub.url("/api/v1/objects/missing"),
        Some(token),
        &json!({ "ids": objs }),
    )
    .json();
    let need: Vec<String> = serde_json::from_value(need["missing"].clone()).expect("missing list");
    let mut bytes = 0;
    for id in &need {
        let data = repo.objects().get_bytes(id).expect("object");
        bytes += data.len() as u64;
        let a = put(
            &hub.url(&format!("/api/v1/objects/{id}")),
            Some(token),
            &data,
        );
        assert_eq!(a.status, 201, "upload {id}: {}", a.text());
    }
    let mut req = json!({ "head": head, "records": records });
    if let (Some(o), Some(e)) = (req.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    let a = post(&hub.url("/api/v1/publish"), Some(token), &req);
    Sent {
        objects: need.len(),
        bytes,
        status: a.status,
        answer: a.json(),
    }
}

/// Pulls `owner/name@rev` into `local` the way `dlv pull` does; returns objects fetched.
pub fn pull(hub: &TestHub, token: Option<&str>, model: &str, rev: &str, local: &Local) -> usize {
    let a = get(
        &hub.url(&format!("/api/v1/models/{model}/lineage/{rev}")),
        token,
    );
    assert_eq!(a.status, 200, "lineage: {}", a.text());
    let v = a.json();
    let repo = local.repo();
    let mut fetched = 0;
    for item in v["versions"].as_array().expect("versions") {
        let id = item["id"].as_str().expect("id");
        let r: VersionRecord = serde_json::from_value(item["record"].clone()).expect("record");
        assert_eq!(r.id(), id);
        if repo.contains(id).expect("contains") {
            continue;
        }
        for o in r.objects() {
            if repo.objects().contains(o) {
                continue;
            }
            let a = get(
                &hub.url(&format!("/api/v1/models/{model}/objects/{id}/{o}")),
                token,
            );
            assert_eq!(a.status, 200, "object {o}: {}", a.text());
            assert_eq!(blake3_hex(&a.body), o);
            repo.objects().put_bytes(&a.body).expect("store");
            fetched += 1;
        }
        repo.insert_version(&r).expect("insert");
    }
    fetched
}

pub fn path_in(dir: &Path, rel: &str) -> PathBuf {
    dir.join(rel)
}
