//! Encode/decode speed of the archival codec on a folder of safetensors snapshots (each coded
//! against the one before): `cargo run --release -p dlv-store --example codec_speed -- DIR`.
//! One rayon thread, so the figures are per core.

use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A snapshot's tensors: dtype and little-endian bytes.
type Tensors = Vec<(dlv_store::DType, Vec<u8>)>;

fn load(path: &std::path::Path) -> Result<Tensors, Box<dyn std::error::Error>> {
    let bytes = std::fs::read(path)?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let mut out = Vec::new();
    let mut names = st.names();
    names.sort();
    for n in names {
        let t = st.tensor(n)?;
        let dt = if t.dtype() == safetensors::Dtype::BF16 { dlv_store::DType::BF16 } else { dlv_store::DType::F32 };
        out.push((dt, t.data().to_vec()));
    }
    Ok(out)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: codec_speed DIR")?;
    let mut files: Vec<_> = std::fs::read_dir(&dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    let snaps: Vec<_> = files.iter().map(|f| load(f)).collect::<Result<_, _>>()?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    pool.install(|| -> Result<(), String> {
        let (mut enc_s, mut dec_s, mut raw, mut coded) = (0.0, 0.0, 0u64, 0u64);
        for t in 0..snaps.len() {
            for (k, (dt, bytes)) in snaps[t].iter().enumerate() {
                let base = t.checked_sub(1).map(|p| snaps[p][k].1.as_slice());
                let layout = dlv_store::TensorLayout::of(*dt);
                let s = Instant::now();
                let enc = dlv_store::encode_tensor(bytes, base, layout, dlv_store::DeltaMode::Auto.into());
                enc_s += s.elapsed().as_secs_f64();
                let s = Instant::now();
                let back = dlv_store::decode_tensor(&enc, base)?;
                dec_s += s.elapsed().as_secs_f64();
                if &back != bytes {
                    return Err("round trip differs".to_string());
                }
                raw += bytes.len() as u64;
                coded += enc.coded_len();
            }
        }
        println!("{} MB raw, ratio {:.3}x, encode {:.1} MB/s, decode {:.1} MB/s (one core)", raw / 1_000_000, raw as f64 / coded as f64, raw as f64 / 1e6 / enc_s, raw as f64 / 1e6 / dec_s);
        Ok(())
    })?;
    Ok(())
}
