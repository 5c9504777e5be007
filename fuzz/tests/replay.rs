//! Every property of `fuzz/src` on the stored inputs (`fuzz/seeds/<target>.hex`:
//! a sample of a fuzzing run's corpus, and each input a fuzzer found
//! failing, kept once fixed) and on a
//! fixed-seed sweep of random inputs, so the properties run on every
//! `scripts/test.sh` without a fuzzer, deterministically.

use std::path::PathBuf;

/// Random inputs per target in the sweep (each a few hundred bytes).
const SWEEP: usize = 3_000;

/// The stored inputs of a target: `seeds/<target>.hex`, one input per
/// line in hex, `#` lines saying where the next one came from.
fn stored(target: &str) -> Vec<(usize, Vec<u8>)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(format!("{target}.hex"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.starts_with('#'))
        .map(|(i, line)| {
            let bytes = hex::decode(line.trim()).unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), i + 1));
            (i + 1, bytes)
        })
        .collect()
}

fn replay(target: &str, run: fn(&[u8])) {
    let inputs = stored(target);
    assert!(inputs.len() >= 10, "{} stored inputs for {target}", inputs.len());
    for (line, bytes) in inputs {
        // A failure names the line it came from.
        eprintln!("seeds/{target}.hex:{line}");
        run(&bytes);
    }
    let mut rng = fastrand::Rng::with_seed(0x007e_4a47);
    for _ in 0..SWEEP {
        let len = rng.usize(0..512);
        let bytes: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(len).collect();
        run(&bytes);
    }
}

#[test]
fn forward() {
    replay("forward", fuzz::forward::run);
}

#[test]
fn stamp() {
    replay("stamp", fuzz::stamp::run);
}

#[test]
fn host() {
    replay("host", fuzz::host::run);
}

#[test]
fn ws_frames() {
    replay("ws_frames", fuzz::ws::run);
}

#[test]
fn table() {
    replay("table", fuzz::table::run);
}

#[test]
fn paths() {
    replay("paths", fuzz::paths::run);
}

#[test]
fn config() {
    replay("config", fuzz::config::run);
}

/// A stored or found input as the property reads it:
/// `FUZZ_SHOW=forward:fuzz/artifacts/forward/crash-… cargo test -p fuzz --test replay -- --ignored show --nocapture`.
#[test]
#[ignore = "a tool, not a test: FUZZ_SHOW=target:file"]
fn show() {
    let spec = std::env::var("FUZZ_SHOW").expect("FUZZ_SHOW=target:file");
    let (target, file) = spec.split_once(':').expect("target:file");
    let bytes = std::fs::read(file).expect("the input file");
    let text = match target {
        "forward" => fuzz::show::<fuzz::forward::Input>(&bytes),
        "stamp" => fuzz::show::<fuzz::stamp::Input>(&bytes),
        "host" => fuzz::show::<fuzz::host::Input>(&bytes),
        "ws_frames" => fuzz::show::<fuzz::ws::Input>(&bytes),
        "table" => fuzz::show::<fuzz::table::Input>(&bytes),
        "paths" => fuzz::show::<fuzz::paths::Input>(&bytes),
        "config" => String::from_utf8_lossy(&bytes).into_owned(),
        other => panic!("no target {other}"),
    };
    println!("{text}");
}

/// The shared differential cases (`stamp/differential.json`): what the Rust
/// verifier answers for each, which the Python package's tests also check
/// (`test_stamp.py`). Written by `export_stamp_differential` below.
const DIFFERENTIAL: &str = include_str!("../../stamp/differential.json");

fn differential_case(v: &serde_json::Value) -> (fuzz::stamp::Case, String) {
    let bytes = |v: &serde_json::Value| hex::decode(v.as_str().expect("hex text")).expect("hex");
    let list = |v: &serde_json::Value| v.as_array().expect("a list").iter().map(bytes).collect();
    let case = fuzz::stamp::Case {
        tenants: list(&v["tenants"]),
        signatures: list(&v["signatures"]),
        method: v["method"].as_str().expect("method").to_owned(),
        host: bytes(&v["host"]),
        path: bytes(&v["path"]),
        now: v["now"].as_u64().expect("now"),
    };
    (case, v["result"].as_str().expect("result").to_owned())
}

#[test]
fn stamp_differential_cases_answer_as_recorded() {
    let doc: serde_json::Value = serde_json::from_str(DIFFERENTIAL).expect("differential.json is JSON");
    let cases = doc["cases"].as_array().expect("cases");
    assert!(cases.len() >= 100, "{} cases", cases.len());
    let mut outcomes = std::collections::BTreeSet::new();
    for (i, v) in cases.iter().enumerate() {
        let (case, want) = differential_case(v);
        assert_eq!(case.outcome(), want, "case {i}: {case:?}");
        outcomes.insert(want.split(':').next().unwrap_or_default().to_owned());
    }
    // Every answer the verifier has is among them.
    for code in [
        "tenant",
        "stamp_missing",
        "stamp_malformed",
        "stamp_unsupported_version",
        "stamp_unknown_key",
        "stamp_bad_signature",
        "stamp_expired",
    ] {
        assert!(outcomes.contains(code), "no case answers {code}");
    }
}

/// Writes `stamp/differential.json` from the stamp target's inputs (the
/// seeds, and the fuzzer's corpus in `fuzz/corpus/stamp/` after
/// `scripts/fuzz.sh`), at most `FUZZ_CASES` (default 400) of them, spread over the
/// corpus and over every answer: the inputs coverage found distinct (those
/// under 400 bytes in all).
#[test]
#[ignore = "a tool, not a test: writes stamp/differential.json"]
fn export_stamp_differential() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("corpus/stamp"))
        .map(|dir| dir.map(|e| e.expect("a directory entry").path()).collect())
        .unwrap_or_default();
    files.sort();
    let mut inputs: Vec<Vec<u8>> = stored("stamp").into_iter().map(|(_, bytes)| bytes).collect();
    inputs.extend(files.iter().map(|file| std::fs::read(file).expect("an input")));
    let max: usize = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(400);
    let mut by_outcome: std::collections::BTreeMap<String, Vec<fuzz::stamp::Case>> = Default::default();
    for bytes in &inputs {
        let Some(input) = fuzz::input::<fuzz::stamp::Input>(bytes) else {
            continue;
        };
        for case in fuzz::stamp::cases(&input) {
            // Long inputs add bulk to the file, not kinds of case.
            let size: usize = case.tenants.iter().chain(&case.signatures).map(Vec::len).sum::<usize>()
                + case.method.len()
                + case.host.len()
                + case.path.len();
            if size > 400 {
                continue;
            }
            let outcome = case.outcome();
            // One class per answer (a tenant counts as one answer).
            let class = outcome.split(':').next().unwrap_or_default().to_owned();
            let list = by_outcome.entry(class).or_default();
            if !list.contains(&case) {
                list.push(case);
            }
        }
    }
    // Round-robin over the answers so rare ones are all kept.
    let mut picked = Vec::new();
    let mut lists: Vec<std::vec::IntoIter<fuzz::stamp::Case>> = by_outcome.into_values().map(Vec::into_iter).collect();
    while picked.len() < max {
        let before = picked.len();
        for list in &mut lists {
            if picked.len() < max {
                picked.extend(list.next());
            }
        }
        if picked.len() == before {
            break;
        }
    }
    let cases: Vec<serde_json::Value> = picked
        .iter()
        .map(|c| {
            let list = |l: &[Vec<u8>]| l.iter().map(hex::encode).collect::<Vec<_>>();
            serde_json::json!({
                "tenants": list(&c.tenants),
                "signatures": list(&c.signatures),
                "method": c.method,
                "host": hex::encode(&c.host),
                "path": hex::encode(&c.path),
                "now": c.now,
                "result": c.outcome(),
            })
        })
        .collect();
    let doc = serde_json::json!({
        "about": "Differential cases for docs/stamp.md (stamp v1), made by the stamp fuzz target (fuzz/src/stamp.rs) and written by `cargo test -p fuzz --test replay -- --ignored export_stamp_differential`. Each is one verification: every X-Tenant and X-Tenant-Signature value (already split at ','), the method, the Host and path as received, as hex of their bytes, and the verifier's clock. 'result' is what the Rust verifier answers ('tenant:<name>' or the error code); the Rust fuzz crate's tests and the Python package's tests check their verifier answers the same.",
        "keys": { "k1": std::str::from_utf8(fuzz::stamp::SECRET).expect("ASCII") },
        "max_skew": 30,
        "cases": cases,
    });
    let text = serde_json::to_string_pretty(&doc).expect("JSON") + "\n";
    std::fs::write(root.join("../stamp/differential.json"), text).expect("written");
    eprintln!("{} cases from {} inputs", picked.len(), inputs.len());
}
