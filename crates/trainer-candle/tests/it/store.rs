//! The repository round trip: weights in through the store-backed VarBuilder backend, trained
//! weights out as a child version.

use dlv_store::{CommitOptions, NoProgress, Repository};
use trainer_candle::{
    commit_child, data, evaluate, load_version, solver_config, BuildOptions, CommitInfo, DType, Device, Init, Model, Session,
    SessionOptions, StoreBackend, TrainError, VarBuilder,
};

use crate::{testdata, R};

fn repo_with_lenet(dir: &std::path::Path) -> R<Repository> {
    let repo = Repository::init(dir)?;
    for f in ["lenet_train_test.prototxt", "lenet_solver.prototxt"] {
        std::fs::copy(testdata(&format!("nets/{f}")), dir.join(f))?;
    }
    repo.add(&[dir.join("lenet_train_test.prototxt"), dir.join("lenet_solver.prototxt")])?;
    let opts = CommitOptions { name: "lenet".into(), message: "untrained".into(), ..CommitOptions::default() };
    repo.commit(&opts, &NoProgress)?;
    Ok(repo)
}

#[test]
fn train_commit_reload_evaluate() -> R {
    let dir = tempfile::tempdir()?;
    let repo = repo_with_lenet(dir.path())?;
    let v = load_version(&repo, "lenet")?;
    let mut cfg = solver_config(&v.record, None, &[("max_iter".into(), "3".into()), ("batch_size".into(), "8".into())])?;
    assert_eq!(cfg.base_lr, 0.01, "from the stored solver");
    assert_eq!(cfg.max_iter, 3, "overridden");
    cfg.test_iter = 1;
    let mut ds = data::load_dir(&testdata("data/digits"))?;
    ds.train = ds.train.take(64);
    ds.test = ds.test.take(20);
    let test = ds.test.clone();
    let mut s = Session::new(&v.net, Init::Fillers, cfg.clone(), ds, &SessionOptions::default())?;
    s.run(3, &mut |_, _| Ok(true))?;
    let trained = s.tensors()?;
    let info = CommitInfo {
        name: "lenet".into(),
        message: "trained".into(),
        author: "t".into(),
        hyper: cfg.to_hyper(),
        series: s.series().to_vec(),
        extra: vec![("accuracy".into(), "0.5".into(), Some(0.5))],
        ..CommitInfo::default()
    };
    let id = commit_child(&repo, &v.id, &v.record, &trained, &info)?;
    let child = repo.get(&id)?;
    assert_eq!(child.parents, vec![v.id.clone()]);
    assert_eq!(child.tensors.len(), 8);
    assert_eq!(child.tensors[0].layer.as_deref(), Some("conv1"));
    assert!(child.series.iter().any(|s| s.name == "train/loss"));
    assert!(child.extra.iter().any(|e| e.key == "accuracy"));
    assert_eq!(child.hyper.iter().find(|h| h.key == "max_iter").and_then(|h| h.num), Some(3.0));

    // Reload through the store-backed backend: the same weights, the same outputs.
    let reloaded = load_version(&repo, &id)?;
    let backend = StoreBackend::new(&repo, &reloaded.record);
    let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, Device::Cpu);
    let opts = BuildOptions { data_dims: Some([1, 28, 28]), ..BuildOptions::default() };
    let model = Model::build(&reloaded.net, &opts, Init::Backend(&vb))?;
    let back = model.tensors()?;
    for (a, b) in trained.iter().zip(&back) {
        assert_eq!(a.name(), b.name());
        assert_eq!(a.data, b.data, "{}", a.name());
    }
    let e1 = evaluate(&model, &test, None, true)?;
    let e2 = evaluate(&s.model, &test, None, false)?;
    let (a1, a2) = (e1.accuracy.ok_or("accuracy")?, e2.accuracy.ok_or("accuracy")?);
    assert!((a1 - a2).abs() < 1e-6, "{a1} vs {a2}");
    assert!(e1.activations.iter().any(|a| a.blob == "conv1" && a.shape == vec![20, 20, 24, 24]));
    Ok(())
}

#[test]
fn stored_tensor_of_the_wrong_shape_is_refused() -> R {
    let dir = tempfile::tempdir()?;
    let repo = repo_with_lenet(dir.path())?;
    let v = load_version(&repo, "lenet")?;
    let mut wrong = Model::build(&v.net, &BuildOptions { data_dims: Some([1, 28, 28]), ..BuildOptions::default() }, Init::Fillers)?.tensors()?;
    wrong[0].shape = vec![10, 2, 5, 5];
    let id = commit_child(&repo, &v.id, &v.record, &wrong, &CommitInfo { name: "lenet".into(), ..CommitInfo::default() })?;
    let bad = load_version(&repo, &id)?;
    let vb = VarBuilder::from_backend(Box::new(StoreBackend::new(&repo, &bad.record)), DType::F32, Device::Cpu);
    let e = Model::build(&bad.net, &BuildOptions { data_dims: Some([1, 28, 28]), ..BuildOptions::default() }, Init::Backend(&vb))
        .err()
        .ok_or("no error")?;
    assert!(matches!(&e, TrainError::ShapeMismatch { layer, .. } if layer == "conv1"), "{e}");
    Ok(())
}
