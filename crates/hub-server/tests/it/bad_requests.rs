//! Bad requests are refused with a clear status, and nothing is stored half-way.

use serde_json::json;

use crate::{blake3_hex, get, lenet_weights, post, publish, put, raw, Local, TestHub};

#[test]
fn an_object_that_does_not_match_its_id_is_refused() {
    let hub = TestHub::start();
    let content = b"some tensor bytes".to_vec();
    let wrong = blake3_hex(b"other bytes");
    let a = put(
        &hub.url(&format!("/api/v1/objects/{wrong}")),
        Some(&hub.alice),
        &content,
    );
    assert_eq!(a.status, 422, "{}", a.text());
    assert!(a.json()["error"]
        .as_str()
        .unwrap_or_default()
        .contains("does not match"));
    assert!(!hub.has_object(&wrong));
    assert!(
        !hub.has_object(&blake3_hex(&content)),
        "not kept under its real id either"
    );
    assert!(hub.tmp_files().is_empty());
    // A malformed id.
    assert_eq!(
        put(
            &hub.url("/api/v1/objects/..%2F..%2Fusers.json"),
            Some(&hub.alice),
            b"x"
        )
        .status,
        400
    );
    assert_eq!(
        put(&hub.url("/api/v1/objects/ABCD"), Some(&hub.alice), b"x").status,
        400
    );
}

#[test]
fn unknown_and_revoked_tokens_are_401() {
    let hub = TestHub::start();
    let content = b"bytes".to_vec();
    let id = blake3_hex(&content);
    assert_eq!(
        put(&hub.url(&format!("/api/v1/objects/{id}")), None, &content).status,
        401
    );
    assert_eq!(
        put(
            &hub.url(&format!("/api/v1/objects/{id}")),
            Some("dlvhub_bogus"),
            &content
        )
        .status,
        401
    );
    assert!(!hub.has_object(&id));
    let local = Local::new();
    let v = local.commit("lenet", &lenet_weights(1, &[]), 0.9, "x");
    let record = local.repo().get(&v).expect("record");
    assert_eq!(
        post(
            &hub.url("/api/v1/publish"),
            None,
            &json!({ "head": v, "records": [record] })
        )
        .status,
        401
    );

    hub.hub.users().revoke("bob").expect("revoke");
    assert_eq!(get(&hub.url("/api/whoami-v2"), Some(&hub.bob)).status, 401);
    assert_eq!(
        put(
            &hub.url(&format!("/api/v1/objects/{id}")),
            Some(&hub.bob),
            &content
        )
        .status,
        401
    );
    assert!(!hub.has_object(&id));
}

#[test]
fn oversized_bodies_are_refused() {
    let hub = TestHub::start_with(|c| {
        c.max_object_bytes = 4096;
        // Small limits, so that every refused body fits in the socket buffers: the server
        // answers 413 before reading all of a large body, and a client still writing one would
        // see a broken pipe instead of the answer (this failed once on a loaded machine).
        c.max_json_bytes = 1024;
    });
    let big = vec![7u8; 10_000];
    let id = blake3_hex(&big);
    let a = put(
        &hub.url(&format!("/api/v1/objects/{id}")),
        Some(&hub.alice),
        &big,
    );
    assert_eq!(a.status, 413, "{}", a.text());
    assert!(!hub.has_object(&id));
    // Without a Content-Length (chunked), the limit is enforced while streaming.
    let resp = raw(
        hub.addr,
        format!(
            "PUT /api/v1/objects/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2710\r\n{}\r\n0\r\n\r\n",
            hub.alice,
            String::from_utf8_lossy(&big)
        )
        .as_bytes(),
        false,
    );
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(!hub.has_object(&id));
    // JSON bodies have their own limit.
    let ids: Vec<String> = (0..40)
        .map(|i| blake3_hex(&[i as u8, (i >> 8) as u8]))
        .collect();
    assert_eq!(
        post(
            &hub.url("/api/v1/objects/missing"),
            Some(&hub.alice),
            &json!({ "ids": ids })
        )
        .status,
        413
    );
    // Malformed JSON.
    let a = crate::agent()
        .post(&hub.url("/api/v1/publish"))
        .header("Authorization", format!("Bearer {}", hub.alice))
        .header("Content-Type", "application/json")
        .send("{not json")
        .expect("post");
    assert!(a.status().is_client_error());
    wait_for_no_tmp(&hub);
}

fn wait_for_no_tmp(hub: &TestHub) {
    for _ in 0..200 {
        if hub.tmp_files().is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("temporary upload files left behind: {:?}", hub.tmp_files());
}

#[test]
fn a_truncated_upload_stores_nothing() {
    let hub = TestHub::start();
    let content = vec![3u8; 100_000];
    let id = blake3_hex(&content);
    let mut req = format!(
        "PUT /api/v1/objects/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
        hub.alice,
        content.len()
    )
    .into_bytes();
    req.extend_from_slice(&content[..40_000]);
    // The client closes its side after 40 000 of 100 000 bytes.
    let resp = raw(hub.addr, &req, true);
    assert!(
        resp.is_empty() || resp.starts_with("HTTP/1.1 400"),
        "{resp}"
    );
    wait_for_no_tmp(&hub);
    assert!(!hub.has_object(&id));
    // The same object uploads fine afterwards.
    assert_eq!(
        put(
            &hub.url(&format!("/api/v1/objects/{id}")),
            Some(&hub.alice),
            &content
        )
        .status,
        201
    );
}

#[test]
fn a_version_with_missing_objects_never_becomes_visible() {
    let hub = TestHub::start();
    let local = Local::new();
    let v = local.commit("lenet", &lenet_weights(1, &[]), 0.9, "x");
    let record = local.repo().get(&v).expect("record");
    // Upload only the first object, then try to publish.
    let first = record.objects()[0].to_string();
    let bytes = local.repo().objects().get_bytes(&first).expect("object");
    assert_eq!(
        put(
            &hub.url(&format!("/api/v1/objects/{first}")),
            Some(&hub.alice),
            &bytes
        )
        .status,
        201
    );
    let a = post(
        &hub.url("/api/v1/publish"),
        Some(&hub.alice),
        &json!({ "head": v, "records": [record] }),
    );
    assert_eq!(a.status, 409, "{}", a.text());
    assert_eq!(
        a.json()["missing"].as_array().map(Vec::len),
        Some(record.objects().len() - 1)
    );
    assert_eq!(
        get(&hub.url("/api/v1/models/alice/lenet"), None).status,
        404
    );
    assert!(!hub.hub.repository().contains(&v).expect("contains"));
    // A parent that is neither on the hub nor sent.
    let v2 = local.commit("lenet", &lenet_weights(2, &[]), 0.9, "child");
    let r2 = local.repo().get(&v2).expect("record");
    let a = post(
        &hub.url("/api/v1/publish"),
        Some(&hub.alice),
        &json!({ "head": v2, "records": [r2] }),
    );
    assert_eq!(a.status, 409, "{}", a.text());
    // A head that is nowhere.
    let a = post(
        &hub.url("/api/v1/publish"),
        Some(&hub.alice),
        &json!({ "head": "ab".repeat(32), "records": [] }),
    );
    assert_eq!(a.status, 400, "{}", a.text());
}

#[test]
fn path_traversal_in_names_is_refused() {
    let hub = TestHub::start();
    let local = Local::new();
    let v = local.commit("lenet", &lenet_weights(1, &[]), 0.9, "x");
    assert_eq!(
        publish(&hub, &hub.alice, &local.repo(), &v, json!({})).status,
        200
    );
    // A record named like a path.
    let mut evil = local.repo().get(&v).expect("record");
    for name in ["../../etc", "a/b", "..", "x--y", ".hidden"] {
        evil.name = name.to_string();
        let a = post(
            &hub.url("/api/v1/publish"),
            Some(&hub.alice),
            &json!({ "head": evil.id(), "records": [evil] }),
        );
        assert_eq!(a.status, 400, "{name}: {}", a.text());
        assert!(!hub.hub.repository().contains(&evil.id()).expect("contains"));
    }
    for path in [
        "/alice/lenet/resolve/main/..%2F..%2F..%2Fusers.json",
        "/alice/lenet/resolve/main/../../users.json",
        "/alice/lenet/resolve/main/%2Fetc%2Fpasswd",
        "/api/v1/models/alice/..%2F..%2Fusers.json",
        "/api/models/..%2Falice/lenet",
        "/api/v1/models/alice/lenet/objects/..%2F..%2Fmeta/x",
    ] {
        let a = get(&hub.url(path), None);
        assert!(
            a.status == 404 || a.status == 400,
            "{path}: {} {}",
            a.status,
            a.text()
        );
        assert!(
            !a.text().contains("dlvhub") && !a.text().contains("\"users\""),
            "{path} leaked data"
        );
    }
    // Raw request paths that a client library would normalise away.
    let resp = raw(hub.addr, b"GET /alice/lenet/resolve/main/../../../users.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", false);
    assert!(
        resp.starts_with("HTTP/1.1 404") || resp.starts_with("HTTP/1.1 400"),
        "{resp}"
    );
    assert!(!resp.contains("tokens"));
}
