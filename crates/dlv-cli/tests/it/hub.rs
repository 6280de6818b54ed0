//! dlv remote / login / publish / search / pull against a real `hub-server` process on an
//! ephemeral loopback port.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::{read_tensors, safetensors_bytes, tensors, Scratch};

/// The hub-server binary: beside the dlv binary (built by `cargo test --workspace`), else built.
fn hub_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dlv = assert_cmd::cargo::cargo_bin("dlv");
            let bin = dlv.with_file_name(format!("hub-server{}", std::env::consts::EXE_SUFFIX));
            if !bin.exists() {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let ok = Command::new(cargo)
                    .args(["build", "-q", "-p", "hub-server", "--bin", "hub-server"])
                    .current_dir(env!("CARGO_MANIFEST_DIR"))
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                assert!(
                    ok && bin.exists(),
                    "cannot build hub-server at {}",
                    bin.display()
                );
            }
            bin
        })
        .clone()
}

/// A hub-server child process with users alice and bob.
struct Server {
    child: Child,
    url: String,
    alice: String,
    bob: String,
    _data: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let data = tempfile::tempdir().expect("temp dir");
        let token = |name: &str| {
            let out = Command::new(hub_binary())
                .arg("--data")
                .arg(data.path())
                .args(["user", "add", name])
                .output()
                .expect("user add");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let (alice, bob) = (token("alice"), token("bob"));
        let mut child = Command::new(hub_binary())
            .arg("--data")
            .arg(data.path())
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start hub-server");
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = std::io::BufReader::new(out).read_line(&mut line);
        }
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_default()
            .to_string();
        assert!(
            url.starts_with("http://127.0.0.1:"),
            "hub-server printed '{line}'"
        );
        Server {
            child,
            url,
            alice,
            bob,
            _data: data,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// dlv with a private config folder.
fn dlv(s: &Scratch, cfg: &Path, args: &[&str]) -> std::process::Output {
    s.dlv()
        .env("DLV_CONFIG_DIR", cfg)
        .env_remove("DLV_TOKEN")
        .args(args)
        .output()
        .expect("run dlv")
}

fn ok(s: &Scratch, cfg: &Path, args: &[&str]) -> String {
    let out = dlv(s, cfg, args);
    assert!(
        out.status.success(),
        "dlv {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn fails(s: &Scratch, cfg: &Path, args: &[&str]) -> String {
    let out = dlv(s, cfg, args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "dlv {args:?}: {stderr}");
    assert!(
        stderr.starts_with("error: ") && !stderr.contains("panicked"),
        "{stderr}"
    );
    stderr
}

fn log(accuracy: f64) -> String {
    format!(
        "I0314 10:15:53.067161 23817 solver.cpp:338] Iteration 100, Testing net (#0)\nI0314 10:15:54.056124 23817 solver.cpp:406]     Test net output #0: accuracy = {accuracy}\n"
    )
}

fn commit(s: &Scratch, seed: u32, accuracy: f64, name: &str, msg: &str) {
    s.copy_testdata("nets/lenet.prototxt", "lenet.prototxt");
    s.write("lenet.safetensors", safetensors_bytes(&tensors(seed)));
    s.write("train.log", log(accuracy));
    s.ok(&["add", "lenet.prototxt", "lenet.safetensors", "train.log"]);
    s.ok(&["commit", "-m", msg, "--name", name]);
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn remote_login_publish_search_pull_checkout() {
    let hub = Server::start();
    let cfg = tempfile::tempdir().expect("config dir");
    let cfg = cfg.path().join("dlv");
    let a = Scratch::new();
    a.ok(&["init"]);
    commit(&a, 1, 0.91, "lenet", "first");

    // Not configured / not logged in: clear errors.
    assert!(fails(&a, &cfg, &["publish", "lenet"]).contains("dlv remote add"));
    ok(&a, &cfg, &["remote", "add", "origin", &hub.url]);
    assert!(fails(&a, &cfg, &["publish", "lenet"]).contains("dlv login"));
    assert!(fails(&a, &cfg, &["login", "--token", "dlvhub_wrong"]).contains("401"));
    assert!(ok(&a, &cfg, &["login", "--token", &hub.alice]).contains("as alice"));
    let conf = cfg.join("remotes.toml");
    let text = std::fs::read_to_string(&conf).expect("config written");
    assert!(text.contains(&hub.alice) && text.contains(&hub.url));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&conf).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "token file mode {mode:o}");
    }
    assert!(ok(&a, &cfg, &["remote", "list"]).contains("origin"));

    let first = json(&ok(
        &a,
        &cfg,
        &[
            "publish",
            "lenet",
            "--json",
            "--description",
            "LeNet digits",
            "--tag",
            "mnist",
        ],
    ));
    assert_eq!(first["model"], "alice/lenet");
    assert!(first["objects_sent"].as_u64().unwrap_or(0) > 0);
    // A fine-tuned variant: a new version whose weights all change here (different seed), but
    // the network and solver objects are already on the hub.
    commit(&a, 2, 0.96, "lenet", "fine-tuned");
    let second = json(&ok(&a, &cfg, &["publish", "lenet", "--json"]));
    assert_eq!(second["versions_sent"], 1);
    assert!(second["bytes_sent"].as_u64() <= second["full_bytes"].as_u64());
    let again = json(&ok(&a, &cfg, &["publish", "lenet", "--json"]));
    assert_eq!(again["bytes_sent"], 0, "nothing new to send");
    commit(&a, 3, 0.5, "lenet-private", "hidden");
    assert!(ok(&a, &cfg, &["publish", "lenet-private", "--private"])
        .contains("published alice/lenet-private@"));

    // Search as alice sees both; as an anonymous user only the public one.
    let found = ok(&a, &cfg, &["search", "lenet"]);
    assert!(
        found.contains("alice/lenet@") && found.contains("alice/lenet-private@"),
        "{found}"
    );
    let filtered = ok(&a, &cfg, &["search", "--filter", "accuracy>0.9"]);
    assert!(
        filtered.contains("alice/lenet@") && !filtered.contains("lenet-private"),
        "{filtered}"
    );
    let res = json(&ok(&a, &cfg, &["search", "digits", "--json"]));
    assert_eq!(res["total"], 1);

    // Another user, another machine: pull with lineage, then check out locally.
    let cfg_b = cfg.with_file_name("dlv-b");
    let b = Scratch::new();
    b.ok(&["init"]);
    ok(&b, &cfg_b, &["remote", "add", "hub", &hub.url]);
    assert!(!ok(&b, &cfg_b, &["search", "lenet"]).contains("lenet-private"));
    let pulled = ok(&b, &cfg_b, &["pull", "alice/lenet"]);
    assert!(pulled.contains("2 new version(s)"), "{pulled}");
    let listed = json(&b.ok(&["list", "--json"]));
    assert_eq!(listed.as_array().map(Vec::len), Some(2));
    assert_eq!(listed[1]["parents"][0], listed[0]["id"]);
    b.ok(&["checkout", "lenet", "--to", "out"]);
    a.ok(&["checkout", "lenet", "--to", "out"]);
    assert_eq!(
        read_tensors(&b.path().join("out/lenet.safetensors")),
        read_tensors(&a.path().join("out/lenet.safetensors"))
    );
    assert_eq!(
        std::fs::read(b.path().join("out/lenet.safetensors")).expect("b"),
        std::fs::read(a.path().join("out/lenet.safetensors")).expect("a"),
        "bit-identical file"
    );
    // The private model is not found for bob, nor anonymously.
    assert!(fails(&b, &cfg_b, &["pull", "alice/lenet-private"]).contains("404"));
    let with_bob = b
        .dlv()
        .env("DLV_CONFIG_DIR", &cfg_b)
        .env("DLV_TOKEN", &hub.bob)
        .args(["pull", "alice/lenet-private"])
        .output()
        .expect("run");
    assert_eq!(with_bob.status.code(), Some(1));

    // A specific older version by id prefix, into a third repository.
    let v1 = listed[0]["id"].as_str().unwrap_or_default().to_string();
    let c = Scratch::new();
    c.ok(&["init"]);
    ok(
        &c,
        &cfg_b,
        &["pull", &format!("alice/lenet@{}", &v1[..8]), "--json"],
    );
    let only = json(&c.ok(&["list", "--json"]));
    assert_eq!(only.as_array().map(Vec::len), Some(1));
    assert_eq!(only[0]["id"], v1.as_str());
    assert!(fails(&c, &cfg_b, &["pull", "alice/no-such-model"]).contains("404"));
    assert!(fails(&c, &cfg_b, &["pull", "not-a-model-id"]).contains("OWNER/NAME"));

    // DLV_TOKEN works instead of a stored login, for publishing as bob.
    let d = Scratch::new();
    d.ok(&["init"]);
    commit(&d, 9, 0.7, "bobnet", "bob's");
    let out = d
        .dlv()
        .env("DLV_CONFIG_DIR", &cfg_b)
        .env("DLV_TOKEN", &hub.bob)
        .args(["publish", "bobnet"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("published bob/bobnet@"));
}
