//! Every file of the fuzz corpora kept in `tests/fuzz_corpus/<target>/` (crashing
//! inputs found by fuzzing, and a small minimized corpus) through the very code the
//! cargo-fuzz targets run (`tinylens_tests::fuzz_targets`), on the stable toolchain.

use std::path::Path;

use tinylens_tests::fuzz_targets::TARGETS;
use tinylens_tests::repo_root;

/// Runs every file of one target's corpus; a panic names the file.
fn run_corpus(target: &str, body: fn(&[u8])) -> usize {
    let dir = repo_root().join("tests/fuzz_corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for path in &files {
        let data = std::fs::read(path).expect("corpus file");
        let result = std::panic::catch_unwind(|| body(&data));
        assert!(
            result.is_ok(),
            "fuzz target `{target}` panicked on {}",
            path.strip_prefix(repo_root()).unwrap_or(path).display()
        );
    }
    files.len()
}

macro_rules! corpus_tests {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            let (target, body) = TARGETS
                .iter()
                .find(|(t, _)| *t == stringify!($name))
                .expect("target exists");
            let n = run_corpus(target, *body);
            assert!(n > 0, "empty corpus for `{target}`");
        }
    )*};
}

corpus_tests!(
    blob,
    trace_frame,
    trace_stream,
    probe_pattern,
    probe_bytes,
    tl_config,
    tl_safetensors,
);

#[test]
fn every_target_has_a_test_and_a_fuzz_binary() {
    let tested = [
        "blob",
        "trace_frame",
        "trace_stream",
        "probe_pattern",
        "probe_bytes",
        "tl_config",
        "tl_safetensors",
    ];
    let root = repo_root();
    for (t, _) in TARGETS {
        assert!(tested.contains(&t), "no regression test for `{t}`");
        let bin = ["core/fuzz", "host-tools/fuzz"]
            .iter()
            .map(|d| root.join(d).join("fuzz_targets").join(format!("{t}.rs")))
            .find(|p| p.is_file());
        let bin = bin.unwrap_or_else(|| panic!("no fuzz binary for `{t}`"));
        let src = std::fs::read_to_string(&bin).expect("fuzz target source");
        assert!(
            src.contains(&format!("fuzz_targets::{t}(")),
            "{} does not call fuzz_targets::{t}",
            bin.display()
        );
    }
    assert_eq!(tested.len(), TARGETS.len());
}

#[test]
fn corpora_stay_small() {
    let total: u64 = walk(&repo_root().join("tests/fuzz_corpus"));
    assert!(total < 1 << 20, "tests/fuzz_corpus holds {total} bytes");
}

fn walk(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("corpus directory")
        .map(|e| {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(&p)
            } else {
                p.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}

/// The crafted inputs (`fuzz_targets::crafted_corpus`) are committed in the corpus as
/// exactly those bytes (`TINYLENS_WRITE_CORPUS=1` writes them).
#[test]
fn crafted_inputs_are_in_the_corpus() {
    let write = std::env::var_os("TINYLENS_WRITE_CORPUS").is_some();
    for (target, name, bytes) in tinylens_tests::fuzz_targets::crafted_corpus() {
        let path = repo_root()
            .join("tests/fuzz_corpus")
            .join(target)
            .join(name);
        if write {
            std::fs::write(&path, &bytes).unwrap();
        }
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == bytes,
            "{} differs from crafted_corpus()",
            path.display()
        );
    }
}
