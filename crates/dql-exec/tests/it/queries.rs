//! select / slice / construct, selectors, pushdown, nesting, saved queries and errors.

use std::collections::HashSet;

use dlv_graph::Net;
use dql_exec::StoreCatalog;
use dql_exec::{ErrorKind, ExecOptions, Executor};

use crate::{alexnet_avg, Counting, Fixture, Q1, Q2, Q3, Q4};

fn net_of(f: &Fixture, id: &str) -> Net {
    let r = f.repo.get(id).expect("record");
    f.repo.network(&r).expect("read").expect("has a network")
}

fn id_of(f: &Fixture, name: &str) -> String {
    f.repo.resolve(name).expect("resolve")
}

#[test]
fn query1_selects_exactly_and_loads_only_surviving_graphs() {
    let f = Fixture::alexnets();
    let cat = Counting::new(StoreCatalog::new(&f.repo));
    let out = Executor::new(&cat, ExecOptions::default()).run_text(Q1).expect("runs");
    let names: Vec<&str> = out.rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["alexnet_v1"]);
    assert_eq!(out.rows[0].matched, ["pool5"]);
    assert_eq!(out.stats.pushed_down.len(), 2, "{:?}", out.stats.pushed_down);
    assert_eq!(out.stats.candidates, 5);
    // The summary index answers name, date and the DAG object: no record is decoded at all,
    // and each distinct network is read once, by object id.
    assert_eq!(cat.summaries.get(), 5);
    assert_eq!(cat.records.get(), 0);
    assert_eq!(out.stats.records_read, 0);
    let dag = |name: &str| f.repo.get(&id_of(&f, name)).expect("record").network.expect("net").dag;
    let want: HashSet<String> = ["alexnet-origin", "alexnet_v1", "alexnet-avgv1"].iter().map(|n| dag(n)).collect();
    assert_eq!(*cat.loaded_dags.borrow(), want);
    assert_eq!(cat.networks.get(), 3);
    assert!(cat.loaded_names.borrow().is_empty());
    // Layers and tensors of the result row come from the summary too.
    let full = f.repo.get(&id_of(&f, "alexnet_v1")).expect("record");
    assert_eq!(out.rows[0].layers, full.network.as_ref().map(|n| n.layers as usize));
    assert_eq!(out.rows[0].tensors, full.tensors.len());
}

#[test]
fn query1_without_summaries_reads_records_and_agrees() {
    let f = Fixture::alexnets();
    let cat = Counting::plain(StoreCatalog::new(&f.repo));
    let out = Executor::new(&cat, ExecOptions::default()).run_text(Q1).expect("runs");
    let names: Vec<&str> = out.rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["alexnet_v1"]);
    assert_eq!(out.rows[0].matched, ["pool5"]);
    // Name and date went to the indexes: lenet (name) and alexnet_v2 (date) were never read;
    // `alexnet` (no character after the prefix) was read but its graph was not loaded.
    assert_eq!(out.stats.pushed_down.len(), 2, "{:?}", out.stats.pushed_down);
    assert_eq!(out.stats.candidates, 5);
    assert_eq!(cat.records.get(), 5);
    let loaded = cat.loaded_names.borrow().clone();
    let want: HashSet<String> = ["alexnet-origin", "alexnet_v1", "alexnet-avgv1"].iter().map(|s| s.to_string()).collect();
    // alexnet_v3 has the same network object as alexnet-origin: parsed once, shared.
    assert!(loaded.is_subset(&["alexnet-origin", "alexnet_v1", "alexnet-avgv1", "alexnet_v3"].iter().map(|s| s.to_string()).collect()), "{loaded:?}");
    assert!(want.is_subset(&loaded), "{loaded:?}");
    assert_eq!(cat.networks.get(), 3, "{loaded:?}");
}

#[test]
fn naive_plan_gives_the_same_answer_loading_every_graph() {
    let f = Fixture::alexnets();
    let cat = Counting::new(StoreCatalog::new(&f.repo));
    let out = Executor::new(&cat, ExecOptions { naive: true, ..Default::default() }).run_text(Q1).expect("runs");
    assert_eq!(out.rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["alexnet_v1"]);
    assert_eq!(cat.networks.get(), 7);
    assert!(out.stats.pushed_down.is_empty());
}

#[test]
fn query2_slices_with_the_sources_tensor_objects() {
    let f = Fixture::alexnets();
    let out = f.run(Q2).expect("runs");
    assert_eq!(out.rows.len(), 1);
    assert!(out.rows[0].new && !out.rows[0].committed && out.rows[0].id.is_none());
    let before = f.repo.len();
    assert_eq!(f.repo.len(), before, "nothing written without commit");

    let out = f.run_commit(Q2).expect("commits");
    let row = &out.rows[0];
    let id = row.id.clone().expect("committed");
    assert_eq!(row.name, "alexnet-origin-slice");
    let rec = f.repo.get(&id).expect("record");
    let src_id = id_of(&f, "alexnet-origin");
    let src = f.repo.get(&src_id).expect("source");
    assert_eq!(rec.parents, std::slice::from_ref(&src_id));
    let net = net_of(&f, &id);
    let layers: Vec<&str> = net.nodes().map(|n| n.name.as_str()).collect();
    assert_eq!(
        layers,
        ["conv1", "relu1", "norm1", "pool1", "conv2", "relu2", "norm2", "pool2", "conv3", "relu3", "conv4", "relu4", "conv5", "relu5", "pool5", "fc6", "relu6", "drop6", "fc7"]
    );
    let want: Vec<(String, String)> = src
        .tensors
        .iter()
        .filter(|t| t.layer.as_deref() != Some("fc8"))
        .map(|t| (t.name.clone(), t.object.clone()))
        .collect();
    let got: Vec<(String, String)> = rec.tensors.iter().map(|t| (t.name.clone(), t.object.clone())).collect();
    assert_eq!(got, want, "the source's tensor objects, fc8 left out");
    assert_eq!(got.len(), 14);
    let back = Net::from_prototxt(&net.to_prototxt(), "slice").expect("valid prototxt");
    assert_eq!(back.edge_positions(), net.edge_positions());
}

#[test]
fn query3_inserts_relu_only_after_convs_followed_by_avg_pools() {
    let f = Fixture::alexnets();
    let out = f.run_commit(Q3).expect("runs");
    assert_eq!(out.rows.len(), 1);
    let row = &out.rows[0];
    assert_eq!(row.changes, ["insert relu1 after conv1", "insert relu5 after conv5"]);
    let id = row.id.clone().expect("committed");
    let src = net_of(&f, &id_of(&f, "alexnet-avgv1"));
    let net = net_of(&f, &id);
    assert_eq!(net.len(), src.len() + 2);
    let after = |n: &str| -> Vec<String> {
        let i = net.find(n).expect("layer");
        net.next(i).into_iter().filter_map(|x| net.node(x)).map(|x| x.name.clone()).collect()
    };
    assert_eq!(after("conv1"), ["relu1"]);
    assert_eq!(after("relu1"), ["pool1"]);
    assert_eq!(after("conv5"), ["relu5"]);
    assert_eq!(after("relu5"), ["pool5"]);
    assert_eq!(after("conv2"), ["relu2"], "conv2 untouched");
    assert_eq!(after("conv3"), ["relu3"]);
    let relus = net.nodes().filter(|n| n.layer_type == "ReLU").count();
    assert_eq!(relus, src.nodes().filter(|n| n.layer_type == "ReLU").count() + 2);
    let rec = f.repo.get(&id).expect("record");
    let srec = f.repo.get(&id_of(&f, "alexnet-avgv1")).expect("source");
    assert_eq!(rec.tensors, srec.tensors, "weights reused as they are");
    assert_eq!(rec.parents, [id_of(&f, "alexnet-avgv1")]);
    let back = Net::from_prototxt(&net.to_prototxt(), "c").expect("valid prototxt");
    assert_eq!(back.edge_positions(), net.edge_positions());
}

#[test]
fn query4_parses_and_needs_a_trainer() {
    let f = Fixture::alexnets();
    f.repo.save_query("query3", Q3).expect("save");
    let e = f.run(Q4).expect_err("no trainer");
    assert_eq!(e.kind(), ErrorKind::User);
    assert!(e.to_string().contains("needs a trainer"), "{e}");
}

#[test]
fn selector_features() {
    let f = Fixture::alexnets();
    let q = |s: &str| f.names(&format!("select m where m.name like \"alexnet%\" and {s}"));
    // Ranges and globs; `?` is one character.
    assert_eq!(q(r#"m["conv[4-5]"].next has POOL("AVG")"#), ["alexnet-avgv1"]);
    assert_eq!(q(r#"m["conv?"].next has POOL("AVG")"#), ["alexnet-avgv1"]);
    assert_eq!(q(r#"m["norm*"] has LRN"#).len(), 6);
    assert_eq!(q(r#"m["norm1"] has LRN"#).len(), 5, "avgv1 has no norm1");
    // .prev and chained hops.
    assert_eq!(q(r#"m["pool1"].prev has CONV"#), ["alexnet-avgv1"]);
    assert_eq!(q(r#"m["pool5"].prev.prev has CONV"#), ["alexnet-origin", "alexnet_v3"]);
    // A selector that matches nothing is an empty set: `has` is false, `not has` true.
    assert!(q(r#"m["nothing*"] has CONV"#).is_empty());
    assert_eq!(q(r#"not m["nothing*"] has CONV"#).len(), 6);
    // Captures: per binding, so conv2 (followed by relu2) does not count.
    assert_eq!(q(r#"m["conv(*)"].next has POOL"#), ["alexnet-avgv1", "alexnet_v1", "alexnet", "alexnet_v2"].iter().copied().collect::<std::collections::BTreeSet<_>>().into_iter().collect::<Vec<_>>());
    // Templates by key attribute and named attributes.
    assert_eq!(q(r#"m["fc8"] has FC(num_output = 10)"#).len(), 6);
    assert!(q(r#"m["fc8"] has FC(num_output = 11)"#).is_empty());
}

#[test]
fn metadata_and_attributes() {
    let f = Fixture::alexnets();
    assert_eq!(f.names("select m where m.base_lr < 0.005"), ["alexnet_v1"]);
    assert_eq!(f.names("select m where m.base_lr = 0.01 and m.name like '%net'"), ["lenet"]);
    assert_eq!(f.names(r#"select m where m["momentum"] >= 0.9"#), ["lenet"]);
    assert_eq!(f.names("select m where m.base_lr in [0.1, 0.02]"), ["alexnet-avgv1", "alexnet_v2"]);
    assert_eq!(f.names("select m where m.creation_time = 2015-11-22"), ["alexnet_v2"]);
    assert_eq!(f.names("select m where m.creation_time <= '2015-11-23' and m.creation_time >= '2015-11-22'"), ["alexnet-origin", "alexnet_v2"]);
    assert_eq!(f.names(r#"select m where m.name = "lenet" or m.name = "alexnet""#), ["alexnet", "lenet"]);
    assert_eq!(f.names("select m where m.author = 'tester' and m.message like '%12-02'"), ["alexnet"]);
    assert_eq!(f.names("select m where m.layers < 20"), ["lenet"]);
    // A missing key compares false, even with !=.
    assert_eq!(f.names("select m where m.momentum != 0.5"), ["lenet"]);
    let out = f.run("select m where m.base_lr > 0.015").expect("runs");
    assert_eq!(out.stats.pushed_down, ["base_lr range (metadata index)"]);
    assert_eq!(out.stats.candidates, 2);
    assert_eq!(out.stats.graphs_loaded, 0, "metadata-only query loads no graph");
}

#[test]
fn nested_and_saved_queries() {
    let f = Fixture::alexnets();
    assert_eq!(
        f.names(r#"select m from (select x where x.name like "alexnet%") as m where m["conv5"].next has POOL("AVG")"#),
        ["alexnet-avgv1"]
    );
    assert_eq!(f.names(r#"select m from (select x where x.name like "alexnet%") where x.base_lr > 0.05"#), ["alexnet_v2"]);
    let cat = StoreCatalog::new(&f.repo);
    Executor::new(&cat, ExecOptions::default()).save("q1", Q1).expect("save");
    assert_eq!(f.names(r#"select m from "q1""#), ["alexnet_v1"]);
    assert_eq!(f.names(r#"select m from "q1" where m1.base_lr > 0.01"#), Vec::<String>::new());
    // A construct over a nested select: rows flow through, lineage to the stored source.
    let out = f
        .run_commit(r#"construct n from (select m where m.name = "alexnet-avgv1") mutate m["conv*($1)"].insert = SIGMOID("sig$1")"#)
        .expect("construct");
    assert_eq!(out.rows[0].changes.len(), 5);
    // A slice of a construct result commits the intermediate version first.
    let out = f
        .run_commit(&format!("slice s from ({}) mutate s.input = m2[\"conv1\"] and s.output = m2[\"relu5\"]", Q3))
        .expect("slice of construct");
    let id = out.rows[0].id.clone().expect("committed");
    let rec = f.repo.get(&id).expect("record");
    let parent = f.repo.get(&rec.parents[0]).expect("intermediate committed");
    assert_eq!(parent.name, "alexnet-avgv1-construct");
    assert_eq!(net_of(&f, &id).nodes().last().map(|n| n.name.clone()), Some("relu5".to_string()));
}

#[test]
fn saved_query_that_refers_to_itself_is_an_error() {
    let f = Fixture::alexnets();
    f.repo.save_query("loop", r#"select m from "loop""#).expect("save");
    let e = f.error(r#"select m from "loop""#);
    assert!(e.contains("refers to itself"), "{e}");
    let e = f.error(r#"select m from "missing""#);
    assert!(e.contains("unknown saved query \"missing\""), "{e}");
}

#[test]
fn bad_queries_give_clear_errors() {
    let f = Fixture::alexnets();
    let e = f.error("select m where m.name > 3");
    assert!(e.contains("type mismatch") && e.contains("`m.name` is text"), "{e}");
    let e = f.error("select m where m.acuracy > 0.5");
    assert!(e.contains("unknown attribute `m.acuracy`"), "{e}");
    let e = f.error(r#"select m where m["conv1"] has FOO"#);
    assert!(e.contains("unknown template `FOO`"), "{e}");
    let e = f.error(r#"construct n from m mutate m["conv*($1)"].insert = RELU("relu$2")"#);
    assert!(e.contains("`$2`") && e.contains("never bound"), "{e}");
    let e = f.error(r#"select m where x.name = "a""#);
    assert!(e.contains("unknown variable `x`"), "{e}");
    let e = f.error("select m where m.creation_time > 'yesterday'");
    assert!(e.contains("as a date"), "{e}");
    let e = f.error("select m where m.creation_time like '2015%'");
    assert!(e.contains("type mismatch"), "{e}");
    let e = f.error(r#"select m where m["conv1"] has RELU("x")"#);
    assert!(e.contains("no key attribute"), "{e}");
    let e = f.error("select m wher m.x = 1");
    assert!(e.starts_with("1:10: expected"), "{e}");
}

#[test]
fn mutations_that_break_the_network_are_refused_naming_the_node() {
    let f = Fixture::alexnets();
    let e = f.error(r#"construct n from m where m.name = "alexnet-origin" mutate m["data"].delete"#);
    assert!(e.contains("alexnet-origin@") && e.contains("layer 'conv1'") && e.contains("dangling"), "{e}");
    let e = f.error(r#"construct n from m where m.name = "alexnet-origin" mutate m["fc6"].delete_edge = m["relu6"]"#);
    assert!(e.contains("layer 'relu6' without an input"), "{e}");
    let e = f.error(r#"construct n from m where m.name = "alexnet-origin" mutate m["conv2"].insert = RELU("relu1")"#);
    assert!(e.contains("'relu1' already exists"), "{e}");
    // Deleting in-place layers is fine, and mutations apply in order.
    let out = f
        .run(r#"construct n from m where m.name = "alexnet-origin" mutate m["drop?"].delete and m["fc7"].insert = DROPOUT("drop7b")"#)
        .expect("runs");
    assert_eq!(out.rows[0].changes, ["delete drop6", "delete drop7", "insert drop7b after fc7"]);
}

#[test]
fn avg_variant_is_what_the_tests_think() {
    let net = Net::from_prototxt(&alexnet_avg(), "a").expect("parses");
    let i = net.find("conv1").expect("conv1");
    assert_eq!(net.next(i).into_iter().filter_map(|x| net.node(x)).map(|n| n.name.clone()).collect::<Vec<_>>(), ["pool1"]);
}

#[test]
fn unindexed_versions_are_still_found_and_reindex_restores_pushdown() {
    let f = Fixture::alexnets();
    f.repo.clear_index().expect("clear");
    assert_eq!(f.repo.unindexed().expect("tail").len(), 7);
    assert_eq!(f.names(Q1), ["alexnet_v1"]);
    assert_eq!(f.names("select m where m.base_lr > 0.015"), ["alexnet-avgv1", "alexnet_v2"]);
    assert_eq!(f.run("select m where m.base_lr > 0.015").expect("runs").stats.candidates, 7);
    assert_eq!(f.repo.rebuild_index().expect("rebuild"), 7);
    assert_eq!(f.run("select m where m.base_lr > 0.015").expect("runs").stats.candidates, 2);
    // The next commit indexes what a crash may have left behind.
    f.repo.clear_index().expect("clear");
    f.add("vgg", "2016-01-01", crate::LENET, &[("base_lr", 0.5)]);
    assert!(f.repo.unindexed().expect("tail").is_empty());
    assert_eq!(f.run("select m where m.base_lr > 0.015").expect("runs").stats.candidates, 3);
}

#[test]
fn summaries_agree_with_records_indexed_or_not() {
    let f = Fixture::alexnets();
    let ids = f.repo.ids().expect("ids");
    let check = || {
        for id in &ids {
            let record = f.repo.get(id).expect("record");
            assert_eq!(f.repo.summary(id).expect("summary"), dlv_store::VersionSummary::of(&record));
        }
    };
    check();
    // Past the watermark (no summary entry) the record answers, and queries agree.
    f.repo.clear_index().expect("clear");
    check();
    let cat = Counting::new(StoreCatalog::new(&f.repo));
    let out = Executor::new(&cat, ExecOptions::default()).run_text(Q1).expect("runs");
    assert_eq!(out.rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["alexnet_v1"]);
    f.repo.rebuild_index().expect("rebuild");
    check();
}

#[test]
fn metadata_predicates_read_only_the_candidates_records() {
    let f = Fixture::alexnets();
    let cat = Counting::new(StoreCatalog::new(&f.repo));
    let out = Executor::new(&cat, ExecOptions::default()).run_text("select m where m.base_lr > 0.015 and m.author != \"nobody\"").expect("runs");
    let mut names: Vec<&str> = out.rows.iter().map(|r| r.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["alexnet-avgv1", "alexnet_v2"]);
    assert_eq!(out.stats.candidates, 2);
    assert_eq!(cat.records.get(), 2);
    assert_eq!(out.stats.records_read, 2);
    assert_eq!(cat.networks.get(), 0);
}

#[test]
fn more_bad_queries_give_clear_errors() {
    let f = Fixture::alexnets();
    let cases: [(&str, &[&str]); 7] = [
        ("select m where m.creation_time > 3", &["type mismatch", "`m.creation_time` is a time", "the number 3"]),
        (r#"select m where m.layers = "many""#, &["type mismatch", "`m.layers` is a number", "the text \"many\""]),
        (r#"select m where m.parameters like "1%""#, &["type mismatch", "`m.parameters` is a number"]),
        (r#"select m where m.colour = "red""#, &["unknown attribute `m.colour`", "base_lr"]),
        (r#"construct n from m mutate m["conv1"].insert = FOO("x")"#, &["unknown template `FOO`", "RELU"]),
        (r#"construct n from m mutate m["conv1"].insert = RELU("relu$1")"#, &["`$1`", "never bound", "0 capture group"]),
        (r#"select m where m["relu$1"] has RELU"#, &["1:18", "literal dollar"]),
    ];
    for (q, wants) in cases {
        let e = f.error(q);
        for w in wants {
            assert!(e.contains(w), "{q}: {e:?} lacks {w:?}");
        }
    }
}
