//! Training end to end on a subset of the bundled digits (debug build, a few iterations).

use dlv_graph::Net;
use trainer_candle::{data, Init, Session, SessionOptions, SolverConfig, TrainError};

use crate::{testdata, R};

fn lenet() -> R<Net> {
    Ok(Net::from_prototxt(&std::fs::read_to_string(testdata("nets/lenet_train_test.prototxt"))?, "lenet_train_test.prototxt")?)
}

fn config(extra: &[(&str, &str)]) -> R<SolverConfig> {
    let mut items = vec![("base_lr", "0.01"), ("momentum", "0.9"), ("weight_decay", "0.0005"), ("lr_policy", "inv"), ("gamma", "0.0001"), ("power", "0.75"), ("batch_size", "32"), ("display", "1")];
    items.extend_from_slice(extra);
    Ok(SolverConfig::from_hyper(items.into_iter().map(|(k, v)| (k, v, v.parse().ok())))?)
}

fn digits(n_train: usize, n_test: usize) -> R<data::Datasets> {
    let mut d = data::load_dir(&testdata("data/digits"))?;
    assert_eq!((d.train.len(), d.test.len()), (1437, 360));
    assert_eq!(d.train.dims, [1, 28, 28]);
    d.train = d.train.take(n_train);
    d.test = d.test.take(n_test);
    Ok(d)
}

#[test]
fn lenet_loss_decreases_on_digits() -> R {
    let mut s = Session::new(&lenet()?, Init::Fillers, config(&[])?, digits(320, 100)?, &SessionOptions::default())?;
    let before = s.test()?;
    let mut losses = Vec::new();
    s.run(30, &mut |st, _| {
        losses.push(st.loss);
        Ok(true)
    })?;
    let after = s.test()?;
    let first: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = losses[losses.len() - 5..].iter().sum::<f64>() / 5.0;
    assert!(last < first * 0.8, "training loss {first} -> {last}");
    let (b, a) = (before.loss.ok_or("loss")?, after.loss.ok_or("loss")?);
    assert!(a < b, "test loss {b} -> {a}");
    assert!(after.accuracy.ok_or("accuracy")? > before.accuracy.ok_or("accuracy")?);
    let names: Vec<&str> = s.series().iter().map(|x| x.name.as_str()).collect();
    for want in ["train/loss", "lr", "test/accuracy", "test/loss"] {
        assert!(names.contains(&want), "{names:?}");
    }
    Ok(())
}

#[test]
fn same_seed_same_weights() -> R {
    let run = |seed: u64| -> R<Vec<f32>> {
        let opts = SessionOptions { seed, ..SessionOptions::default() };
        let mut s = Session::new(&lenet()?, Init::Fillers, config(&[("batch_size", "8")])?, digits(64, 10)?, &opts)?;
        s.run(2, &mut |_, _| Ok(true))?;
        Ok(s.tensors()?.into_iter().find(|t| t.layer == "conv1").ok_or("conv1")?.data)
    };
    assert_eq!(run(7)?, run(7)?);
    assert_ne!(run(7)?, run(8)?);
    Ok(())
}

#[test]
fn adam_trains_too() -> R {
    let cfg = config(&[("type", "Adam"), ("base_lr", "0.001"), ("lr_policy", "fixed"), ("batch_size", "16")])?;
    let mut s = Session::new(&lenet()?, Init::Fillers, cfg, digits(160, 50)?, &SessionOptions::default())?;
    let mut losses = Vec::new();
    s.run(20, &mut |st, _| {
        losses.push(st.loss);
        Ok(true)
    })?;
    assert!(losses[15..].iter().sum::<f64>() < losses[..5].iter().sum::<f64>(), "{losses:?}");
    Ok(())
}

#[test]
fn unsupported_layer_is_named_before_training() -> R {
    let text = std::fs::read_to_string(testdata("nets/lenet_train_test.prototxt"))?.replace(
        "name: \"relu1\"\n  type: \"ReLU\"",
        "name: \"relu1\"\n  type: \"Swish\"",
    );
    let net = Net::from_prototxt(&text, "x.prototxt")?;
    let e = Session::new(&net, Init::Fillers, config(&[])?, digits(8, 8)?, &SessionOptions::default()).err().ok_or("no error")?;
    assert!(matches!(&e, TrainError::UnsupportedLayer { layer, layer_type } if layer == "relu1" && layer_type == "Swish"), "{e}");
    assert!(e.to_string().contains("'relu1'") && e.to_string().contains("Swish"));
    Ok(())
}

#[test]
fn deploy_net_without_labels_cannot_train() -> R {
    let net = Net::from_prototxt(&std::fs::read_to_string(testdata("nets/lenet.prototxt"))?, "lenet.prototxt")?;
    let e = Session::new(&net, Init::Fillers, config(&[])?, digits(8, 8)?, &SessionOptions::default()).err().ok_or("no error")?;
    assert!(e.to_string().contains("label") || e.to_string().contains("loss"), "{e}");
    Ok(())
}

#[test]
fn deploy_net_is_evaluated_from_its_output() -> R {
    use trainer_candle::{evaluate, BuildOptions, Model};
    let net = Net::from_prototxt(&std::fs::read_to_string(testdata("nets/lenet.prototxt"))?, "lenet.prototxt")?;
    let model = Model::build(&net, &BuildOptions::default(), Init::Fillers)?;
    let d = digits(8, 30)?;
    let s = evaluate(&model, &d.test, None, false)?;
    assert_eq!(s.examples, 30);
    let (acc, loss) = (s.accuracy.ok_or("accuracy")?, s.loss.ok_or("loss")?);
    assert!((0.0..=1.0).contains(&acc));
    assert!(loss.is_finite() && loss > 0.0, "{loss}");
    Ok(())
}
