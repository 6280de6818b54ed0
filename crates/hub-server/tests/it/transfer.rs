//! Accounts, publish and pull, negotiation, privacy, search, streaming.

use std::io::Write;
use std::process::Command;

use serde_json::json;

use crate::{get, lenet_weights, post, publish, pull, Local, TestHub};

#[test]
fn user_add_prints_a_token_once_and_stores_only_its_hash() {
    let data = tempfile::tempdir().expect("temp dir");
    let bin = env!("CARGO_BIN_EXE_hub-server");
    let out = Command::new(bin)
        .args(["--data"])
        .arg(data.path())
        .args(["user", "add", "carol"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(token.starts_with("dlvhub_") && token.len() > 40, "{token}");
    let stored = std::fs::read_to_string(data.path().join("users.json")).expect("users file");
    assert!(
        !stored.contains(&token),
        "the token itself must not be stored"
    );
    assert!(
        stored.contains(&hub_server::hash_token(&token)),
        "its hash is stored"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.path().join("users.json"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "users.json readable by others: {mode:o}");
    }
    // A second add of the same name is refused.
    let again = Command::new(bin)
        .arg("--data")
        .arg(data.path())
        .args(["user", "add", "carol"])
        .output()
        .expect("run");
    assert!(!again.status.success());
    let bad = Command::new(bin)
        .arg("--data")
        .arg(data.path())
        .args(["user", "add", "../x"])
        .output()
        .expect("run");
    assert!(!bad.status.success());

    // The token works against a server on the same data folder, and stops working once revoked
    // (the server notices the edited file without a restart).
    let users = hub_server::Hub::users_of(data.path()).expect("users");
    assert_eq!(
        users.authenticate(&token).expect("auth").as_deref(),
        Some("carol")
    );
    let hub = hub_server::Hub::open(hub_server::HubConfig::new(data.path())).expect("open");
    assert_eq!(
        hub.users().authenticate(&token).expect("auth").as_deref(),
        Some("carol")
    );
    let out = Command::new(bin)
        .arg("--data")
        .arg(data.path())
        .args(["user", "revoke", "carol"])
        .output()
        .expect("run");
    assert!(out.status.success());
    assert_eq!(hub.users().authenticate(&token).expect("auth"), None);
    let list = Command::new(bin)
        .arg("--data")
        .arg(data.path())
        .args(["user", "list"])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&list.stdout).contains("carol\trevoked"));
}

#[test]
fn whoami_knows_tokens_and_refuses_unknown_ones() {
    let hub = TestHub::start();
    let a = get(&hub.url("/api/whoami-v2"), Some(&hub.alice));
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["name"], "alice");
    assert_eq!(
        get(&hub.url("/api/whoami-v2"), Some("dlvhub_0000")).status,
        401
    );
    assert_eq!(get(&hub.url("/api/whoami-v2"), None).status, 401);
    assert_eq!(
        get(&hub.url("/api/v1/whoami"), Some(&hub.bob)).json()["name"],
        "bob"
    );
    // A bad token is refused even where anonymous access is fine.
    assert_eq!(get(&hub.url("/api/v1/search"), Some("nope")).status, 401);
    assert_eq!(get(&hub.url("/api/v1/search"), None).status, 200);
}

#[test]
fn publish_then_pull_is_bit_identical_with_lineage() {
    let hub = TestHub::start();
    let local = Local::new();
    let v1 = local.commit("lenet", &lenet_weights(1, &["ip1.weight"]), 0.91, "first");
    let v2 = local.commit(
        "lenet",
        &lenet_weights(2, &["ip1.weight"]),
        0.95,
        "fine-tuned",
    );
    let sent = publish(
        &hub,
        &hub.alice,
        &local.repo(),
        &v2,
        json!({ "description": "LeNet digits", "tags": ["vision"] }),
    );
    assert_eq!(sent.status, 200, "{}", sent.answer);
    assert_eq!(sent.answer["model"], "alice/lenet");

    let model = get(&hub.url("/api/v1/models/alice/lenet"), None);
    assert_eq!(model.status, 200);
    let m = model.json();
    let ids: Vec<&str> = m["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|v| v["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        vec![v1.as_str(), v2.as_str()],
        "lineage registered in order"
    );
    assert_eq!(m["description"], "LeNet digits");

    let other = Local::new();
    let fetched = pull(&hub, None, "alice/lenet", "main", &other);
    assert!(fetched > 0);
    assert_eq!(
        other.checkout_weights("lenet"),
        local.checkout_weights("lenet"),
        "v2 bit-identical"
    );
    assert_eq!(
        other.checkout_weights("lenet~1"),
        local.checkout_weights("lenet~1"),
        "v1 bit-identical"
    );
    let pulled = other.repo().get(&v2).expect("v2 pulled");
    assert_eq!(pulled.parents, vec![v1.clone()]);

    // Pulling a specific older version by prefix; pulling again fetches nothing.
    let third = Local::new();
    pull(&hub, None, "alice/lenet", &v1[..8], &third);
    assert!(third.repo().contains(&v1).expect("contains"));
    assert!(!third.repo().contains(&v2).expect("contains"));
    assert_eq!(pull(&hub, None, "alice/lenet", "main", &other), 0);
}

#[test]
fn negotiation_sends_only_missing_objects() {
    let hub = TestHub::start();
    let local = Local::new();
    let v1 = local.commit(
        "lenet",
        &lenet_weights(1, &["ip2.weight", "ip2.bias"]),
        0.9,
        "base",
    );
    let first = publish(&hub, &hub.alice, &local.repo(), &v1, json!({}));
    assert_eq!(first.status, 200, "{}", first.answer);
    let total_objects = first.objects;
    // Fine-tune: only the last layer changes (and the training log).
    let v2 = local.commit(
        "lenet",
        &lenet_weights(2, &["ip2.weight", "ip2.bias"]),
        0.93,
        "fine-tuned head",
    );
    let second = publish(&hub, &hub.alice, &local.repo(), &v2, json!({}));
    assert_eq!(second.status, 200, "{}", second.answer);
    let r1 = local.repo().get(&v1).expect("v1");
    let r2 = local.repo().get(&v2).expect("v2");
    let new: std::collections::BTreeSet<&str> = r2
        .objects()
        .into_iter()
        .filter(|o| !r1.objects().contains(o))
        .collect();
    assert_eq!(
        second.objects,
        new.len(),
        "only objects new in v2 were sent"
    );
    assert!(second.objects < total_objects);
    // ip2 weight and bias are among them, the big ip1.weight is not.
    let ip1 = r2
        .tensors
        .iter()
        .find(|t| t.name == "ip1.weight")
        .expect("ip1");
    assert!(!new.contains(ip1.object.as_str()));
    assert!(
        second.bytes < first.bytes / 10,
        "sent {} of {}",
        second.bytes,
        first.bytes
    );
    // Publishing again sends nothing at all.
    assert_eq!(
        publish(&hub, &hub.alice, &local.repo(), &v2, json!({})).objects,
        0
    );

    // Negotiation needs a token.
    assert_eq!(
        post(
            &hub.url("/api/v1/objects/missing"),
            None,
            &json!({ "ids": [] })
        )
        .status,
        401
    );
}

#[test]
fn a_private_model_is_not_found_for_others() {
    let hub = TestHub::start();
    let local = Local::new();
    let v = local.commit("secret-net", &lenet_weights(3, &[]), 0.99, "hush");
    let sent = publish(
        &hub,
        &hub.alice,
        &local.repo(),
        &v,
        json!({ "private": true }),
    );
    assert_eq!(sent.status, 200, "{}", sent.answer);
    let tensor = local.repo().get(&v).expect("record").tensors[0]
        .object
        .clone();
    for token in [None, Some(hub.bob.as_str())] {
        for path in [
            "/api/v1/models/alice/secret-net".to_string(),
            "/api/v1/models/alice/secret-net/lineage/main".to_string(),
            format!("/api/v1/models/alice/secret-net/objects/{v}/{tensor}"),
            "/api/models/alice/secret-net".to_string(),
            "/alice/secret-net/resolve/main/lenet.safetensors".to_string(),
            "/alice/secret-net".to_string(),
        ] {
            let a = get(&hub.url(&path), token);
            assert_eq!(a.status, 404, "{path} as {token:?}: {}", a.text());
        }
        let s = get(&hub.url("/api/v1/search?q=secret"), token).json();
        assert_eq!(s["total"], 0);
        let d = get(
            &hub.url("/api/v1/search?dql=select%20m%20where%20m.name%20like%20%22secret%25%22"),
            token,
        );
        assert_eq!(d.json()["total"], 0, "{}", d.text());
        let l = get(&hub.url("/api/models"), token).json();
        assert_eq!(l.as_array().map(Vec::len), Some(0));
    }
    assert_eq!(
        get(
            &hub.url("/api/v1/models/alice/secret-net"),
            Some(&hub.alice)
        )
        .status,
        200
    );
    assert_eq!(
        get(&hub.url("/api/v1/search?q=secret"), Some(&hub.alice)).json()["total"],
        1
    );
    let d = get(
        &hub.url("/api/v1/search?dql=select%20m%20where%20m.name%20like%20%22secret%25%22"),
        Some(&hub.alice),
    );
    assert_eq!(d.json()["total"], 1, "{}", d.text());
    let mine = Local::new();
    pull(&hub, Some(&hub.alice), "alice/secret-net", "main", &mine);
    assert!(mine.repo().contains(&v).expect("contains"));
    // Bob cannot publish into alice's namespace: his publish lands under bob/.
    let b = publish(&hub, &hub.bob, &local.repo(), &v, json!({}));
    assert_eq!(b.answer["model"], "bob/secret-net");
    assert_eq!(
        get(&hub.url("/api/v1/models/alice/secret-net"), None).status,
        404,
        "alice's stays private"
    );
}

#[test]
fn search_filters_sorts_and_pages() {
    let hub = TestHub::start();
    let local = Local::new();
    let a = local.commit("lenet-a", &lenet_weights(4, &[]), 0.85, "plain");
    let b = local.commit("lenet-b", &lenet_weights(5, &[]), 0.97, "augmented");
    publish(
        &hub,
        &hub.alice,
        &local.repo(),
        &a,
        json!({ "description": "baseline digits", "tags": ["mnist"] }),
    );
    publish(
        &hub,
        &hub.alice,
        &local.repo(),
        &b,
        json!({ "description": "with augmentation", "tags": ["mnist", "aug"] }),
    );
    let names = |q: &str| -> Vec<String> {
        let v = get(&hub.url(&format!("/api/v1/search?{q}")), None).json();
        v["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|r| r["id"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(names("filter=accuracy%3E0.9"), vec!["alice/lenet-b"]);
    assert_eq!(names("filter=accuracy%3C%3D0.9"), vec!["alice/lenet-a"]);
    assert_eq!(names("q=augmentation"), vec!["alice/lenet-b"]);
    assert_eq!(names("q=DIGITS"), vec!["alice/lenet-a"]);
    assert_eq!(names("filter=tag%3Daug"), vec!["alice/lenet-b"]);
    assert_eq!(
        names("sort=accuracy&order=asc"),
        vec!["alice/lenet-a", "alice/lenet-b"]
    );
    assert_eq!(
        names("sort=accuracy"),
        vec!["alice/lenet-b", "alice/lenet-a"]
    );
    assert_eq!(names("sort=name&per_page=1&page=2"), vec!["alice/lenet-b"]);
    let page = get(&hub.url("/api/v1/search?per_page=1"), None).json();
    assert_eq!(page["total"], 2);
    assert_eq!(
        get(&hub.url("/api/v1/search?filter=accuracy"), None).status,
        400
    );
    assert_eq!(get(&hub.url("/api/v1/search?page=x"), None).status, 400);
    // DQL select over the catalogue, graph patterns included.
    let dql = |q: &str, token: Option<&str>| {
        let enc: String = q
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        get(&hub.url(&format!("/api/v1/search?dql={enc}")), token)
    };
    let a = dql(
        r#"select m where m.name like "lenet%" and m.accuracy > 0.9"#,
        None,
    );
    assert_eq!(a.status, 200, "{}", a.text());
    let rows = a.json();
    let models: Vec<&str> = rows["results"]
        .as_array()
        .map(|r| r.iter().filter_map(|x| x["model"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(models, vec!["alice/lenet-b"]);
    let a = dql(
        r#"select m where m["conv[1,2]"].next has POOL("MAX")"#,
        None,
    );
    assert_eq!(a.json()["total"], 2, "{}", a.text());
    assert_eq!(dql("select m where", None).status, 400);
    assert_eq!(dql(r#"slice m2 from m1 where m1.name like "lenet%" mutate m2.input = m1["conv1"] and m2.output = m1["ip1"]"#, None).status, 400);
}

/// Structure, not timing: the server writes an upload to disk while its body is still
/// arriving, and the object becomes visible only after the last byte.
#[test]
fn uploads_stream_to_disk_before_the_body_ends() {
    let hub = TestHub::start();
    let size = 8usize << 20;
    let content = crate::noise(size, 42);
    let id = crate::blake3_hex(&content);
    let mut s = std::net::TcpStream::connect(hub.addr).expect("connect");
    let head = format!(
        "PUT /api/v1/objects/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n",
        hub.alice
    );
    s.write_all(head.as_bytes()).expect("head");
    s.write_all(&content[..size / 2]).expect("first half");
    s.flush().expect("flush");
    // Wait (bounded) for the first half to reach the temporary object file.
    let mut seen = 0;
    for _ in 0..200 {
        seen = hub.tmp_files().iter().map(|(_, n)| *n).max().unwrap_or(0);
        if seen > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(seen > 0, "nothing written before the body ended");
    assert!(!hub.has_object(&id), "visible before complete");
    s.write_all(&content[size / 2..]).expect("second half");
    let mut resp = String::new();
    std::io::Read::read_to_string(&mut s, &mut resp).expect("response");
    assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
    assert!(hub.has_object(&id));
    assert!(hub.tmp_files().is_empty());
    // Downloads stream too: the object is served with its length up front.
    let local = Local::new();
    let v = local.commit("streamed", &lenet_weights(6, &[]), 0.5, "x");
    publish(&hub, &hub.alice, &local.repo(), &v, json!({}));
    let r = local.repo().get(&v).expect("record");
    let t = &r.tensors[4];
    let a = get(
        &hub.url(&format!(
            "/api/v1/models/alice/streamed/objects/{v}/{}",
            t.object
        )),
        None,
    );
    assert_eq!(
        a.headers.get("content-length").map(String::as_str),
        Some(t.bytes.to_string().as_str())
    );
    assert_eq!(a.body.len() as u64, t.bytes);
}
