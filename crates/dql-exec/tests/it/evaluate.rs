//! `evaluate` with a test-double trainer: the grid × models, `keep top(k, metric, iters)`,
//! threshold rules, and committing the survivors with metrics and lineage.

use std::cell::RefCell;
use std::collections::BTreeMap;

use dql_exec::StoreCatalog;
use dql_exec::{ExecOptions, Executor, ParamValue, TrainJob, TrainRun, Trainer, TrainedTensor};

use crate::{ms, Fixture, Q3, Q4};

/// Loss falls with iterations, faster for larger base_lr; "path2" data is worse.
struct FakeTrainer {
    started: RefCell<Vec<String>>,
    total: u64,
}

struct FakeRun {
    lr: f64,
    penalty: f64,
    total: u64,
    at: u64,
}

impl Trainer for FakeTrainer {
    fn start(&self, job: &TrainJob<'_>) -> Result<Box<dyn TrainRun>, String> {
        let get = |k: &str| job.params.iter().find(|(p, _)| p == k).map(|(_, v)| v.clone());
        let lr = match get("base_lr") {
            Some(ParamValue::Num(n)) => n,
            _ => 0.01,
        };
        let penalty = if get("input_data") == Some(ParamValue::Str("path2".into())) { 1.0 } else { 0.0 };
        assert!(job.net.find("conv1").is_some());
        let p = job.params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        self.started.borrow_mut().push(format!("{}[{p}]", job.record.name));
        Ok(Box::new(FakeRun { lr, penalty, total: self.total, at: 0 }))
    }

    fn auto_values(&self, param: &str) -> Vec<ParamValue> {
        if param.ends_with(".lr") {
            vec![ParamValue::Num(1.0), ParamValue::Num(2.0)]
        } else {
            Vec::new()
        }
    }
}

impl TrainRun for FakeRun {
    fn total_iters(&self) -> u64 {
        self.total
    }
    fn train_until(&mut self, iter: u64) -> Result<BTreeMap<String, f64>, String> {
        assert!(iter >= self.at, "training goes forward");
        self.at = iter;
        let loss = 1.0 / (1.0 + self.lr * iter as f64) + self.penalty;
        Ok(BTreeMap::from([("loss".to_string(), loss), ("accuracy".to_string(), 1.0 - loss / 2.0)]))
    }
    fn finish(self: Box<Self>) -> Result<Vec<TrainedTensor>, String> {
        Ok(vec![TrainedTensor {
            name: "conv1.weight".into(),
            layer: Some("conv1".into()),
            blob: Some("weight".into()),
            dtype: "F32".into(),
            shape: vec![1],
            data: (self.lr as f32).to_le_bytes().to_vec(),
        }])
    }
}

#[test]
fn query4_runs_the_grid_keeps_the_top_five_and_commits_them() {
    let f = Fixture::alexnets();
    f.repo.save_query("query3", Q3).expect("save");
    let trainer = FakeTrainer { started: RefCell::default(), total: 1000 };
    let cat = StoreCatalog::new(&f.repo);
    let exec = Executor::new(&cat, ExecOptions { commit: true, author: "t".into(), now_ms: ms("2016-02-01"), ..Default::default() })
        .with_trainer(&trainer);
    let out = exec.run_text(Q4).expect("evaluate runs");
    // query3 yields one model; the grid is 3 base_lr × 2 auto lr × 2 data = 12 runs.
    assert_eq!(trainer.started.borrow().len(), 12);
    assert_eq!(out.stats.runs, 12);
    assert_eq!(out.rows.len(), 5);
    for r in &out.rows {
        assert!(r.committed, "survivors are committed");
        let params: BTreeMap<_, _> = r.params.iter().cloned().collect();
        assert_eq!(params.get("input_data").map(String::as_str), Some("path1"), "path2 runs are worse");
        let id = r.id.clone().expect("id");
        let rec = f.repo.get(&id).expect("record");
        // Lineage: the construct result (committed first), whose parent is alexnet-avgv1.
        let parent = f.repo.get(&rec.parents[0]).expect("parent");
        assert_eq!(parent.name, "alexnet-avgv1-construct");
        assert!(rec.series.iter().any(|s| s.name == "loss" && s.iters == [100, 1000]), "{:?}", rec.series);
        assert!(rec.hyper.iter().any(|h| h.key == "base_lr"));
        assert_eq!(rec.tensors.len(), 1);
    }
    let slow = out.rows.iter().filter(|r| r.params.iter().any(|(k, v)| k == "base_lr" && v == "0.001")).count();
    assert_eq!(slow, 1, "the slowest rate keeps only its first run (ties go to the earlier run)");
    // Only one intermediate construct version, shared by all five.
    let parents: std::collections::HashSet<String> = out.rows.iter().map(|r| f.repo.get(r.id.as_deref().unwrap_or("")).map(|x| x.parents[0].clone()).unwrap_or_default()).collect();
    assert_eq!(parents.len(), 1);
    // Survivors are queryable by their metrics.
    let sel = exec.run_text("select m where m.loss < 0.2 and m.base_lr >= 0.01").expect("select");
    assert_eq!(sel.rows.len(), 4, "{:?}", sel.rows.iter().map(|r| &r.params).collect::<Vec<_>>());
}

#[test]
fn threshold_rule_and_no_commit() {
    let f = Fixture::alexnets();
    let trainer = FakeTrainer { started: RefCell::default(), total: 500 };
    let cat = StoreCatalog::new(&f.repo);
    let before = f.repo.len();
    let out = Executor::new(&cat, ExecOptions::default())
        .with_trainer(&trainer)
        .run_text(
            r#"evaluate m from (select x where x.name like "alexnet_v%") with config = "c.toml"
               vary config.base_lr in [0.1, 0.001]
               keep m["accuracy"] > 0.6 at 50"#,
        )
        .expect("runs");
    assert_eq!(trainer.started.borrow().len(), 6, "3 models × 2 rates");
    assert_eq!(out.rows.len(), 3, "only base_lr 0.1 clears 0.6 at 50 iterations");
    assert!(out.rows.iter().all(|r| !r.committed && r.id.is_none()));
    assert_eq!(f.repo.len(), before, "nothing written without commit");
    let bad = Executor::new(&cat, ExecOptions::default())
        .with_trainer(&trainer)
        .run_text(r#"evaluate m from m with config = "c" vary config.momentum auto"#)
        .expect_err("no auto values");
    assert!(bad.to_string().contains("no default search"), "{bad}");
}
