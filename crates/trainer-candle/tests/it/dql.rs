//! DQL `evaluate` with the candle trainer: a grid over base_lr, early stopping, survivors
//! committed with metrics.

use dlv_store::{CommitOptions, NoProgress, Repository};
use dql_exec::{ExecOptions, Executor, StoreCatalog};
use trainer_candle::CandleTrainer;

use crate::{testdata, R};

#[test]
fn evaluate_grid_keeps_the_best_and_commits_it() -> R {
    let dir = tempfile::tempdir()?;
    let repo = Repository::init(dir.path())?;
    std::fs::copy(testdata("nets/lenet_train_test.prototxt"), dir.path().join("lenet_train_test.prototxt"))?;
    repo.add(&[dir.path().join("lenet_train_test.prototxt")])?;
    repo.commit(&CommitOptions { name: "lenet".into(), message: "untrained".into(), ..CommitOptions::default() }, &NoProgress)?;
    let cfg = dir.path().join("grid.toml");
    std::fs::write(
        &cfg,
        format!(
            "base_lr = 0.01\nmomentum = 0.9\nmax_iter = 4\nbatch_size = 16\ninput_data = {:?}\n",
            testdata("data/digits").display().to_string()
        ),
    )?;
    let catalog = StoreCatalog::new(&repo);
    let mut trainer = CandleTrainer::new(None);
    trainer.test_limit = Some(40);
    let opts = ExecOptions { commit: true, author: "t".into(), now_ms: 1, ..ExecOptions::default() };
    let exec = Executor::new(&catalog, opts).with_trainer(&trainer);
    let q = format!(
        "evaluate m from (select m1 where m1.name = \"lenet\") with config = {:?} vary config.base_lr in [0.01, 0.001] and config.net[\"conv*\"].lr in [1, 0] keep top(1, m[\"loss\"], 2)",
        cfg.display().to_string()
    );
    let out = exec.run_text(&q)?;
    assert_eq!(out.rows.len(), 1, "one survivor");
    let id = out.rows[0].id.clone().ok_or("committed")?;
    let rec = repo.get(&id)?;
    assert_eq!(rec.tensors.len(), 8);
    assert!(rec.series.iter().any(|s| s.name == "accuracy" || s.name == "loss"), "{:?}", rec.series);
    Ok(())
}
