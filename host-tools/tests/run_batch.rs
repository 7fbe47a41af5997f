//! `tinylens run --batch-file`: a data set in one command. Every sequence of the batch
//! prints, and traces, exactly what `run` of that prompt alone gives (`--tokens` for a
//! file of token ids, `--text` for a text file and a blob with a tokenizer), in file
//! order; a bad line is a one-line error that names it.
//!
//! (In host-tools: only the tests of the crate that defines the binary get
//! `CARGO_BIN_EXE_tinylens`.)

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_tinylens");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tinylens-run-batch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Runs the binary; stdout on success, panics with stderr otherwise.
fn tinylens(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "tinylens {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_batch_file_of_token_ids_is_each_prompt_run_alone() {
    let model = repo("models/demo/demo-int8.tlm");
    let model = model.to_str().unwrap();
    let prompts = [
        "0,5,7,9,11,5,7",
        "0 1 2 3",
        "0,63,62,61,60,59,58,57,56,55,54,53",
    ];
    let file = tmp("ids.txt");
    std::fs::write(
        &file,
        format!(
            "# a comment\n{}\n\n{}\n{}\n",
            prompts[0], prompts[1], prompts[2]
        ),
    )
    .unwrap();
    let trace = tmp("batch.tlt");
    let probe = "blocks.*.attn.hook_pattern";
    let batch = tinylens(&[
        "run",
        model,
        "--batch-file",
        file.to_str().unwrap(),
        "--json",
        "--generate",
        "3",
        "--probe",
        probe,
        "--trace",
        trace.to_str().unwrap(),
    ]);
    let batch = json_lines(&batch);
    assert_eq!(batch.len(), prompts.len());
    let mut traces = Vec::new();
    for (i, (got, prompt)) in batch.iter().zip(prompts).enumerate() {
        let one_trace = tmp(&format!("one{i}.tlt"));
        let run_id = i.to_string();
        let alone = tinylens(&[
            "run",
            model,
            "--tokens",
            prompt,
            "--json",
            "--generate",
            "3",
            "--probe",
            probe,
            "--trace",
            one_trace.to_str().unwrap(),
            "--run-id",
            &run_id,
        ]);
        let mut want = json_lines(&alone).remove(0);
        want["sequence"] = Value::from(i);
        assert_eq!(*got, want, "sequence {i}");
        traces.extend(std::fs::read(&one_trace).unwrap());
    }
    // One run per sequence, each the bytes of that prompt's own trace.
    assert_eq!(std::fs::read(&trace).unwrap(), traces);

    // The text output has every sequence, each under its header.
    let text = tinylens(&["run", model, "--batch-file", file.to_str().unwrap()]);
    for (i, p) in prompts.iter().enumerate() {
        let n = p.split([',', ' ']).count();
        assert!(
            text.contains(&format!("sequence {i}: {n} prompt tokens")),
            "{text}"
        );
    }
}

#[test]
fn a_text_batch_file_is_each_line_run_as_text() {
    let model = repo("models/english/english-int8.tlm");
    let model = model.to_str().unwrap();
    let lines = ["The list is sorted.", "Return a new dictionary"];
    let file = tmp("text.txt");
    std::fs::write(&file, format!("{}\n{}\n", lines[0], lines[1])).unwrap();
    let batch = json_lines(&tinylens(&[
        "run",
        model,
        "--batch-file",
        file.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(batch.len(), 2);
    for (i, (got, line)) in batch.iter().zip(lines).enumerate() {
        let mut want = json_lines(&tinylens(&["run", model, "--text", line, "--json"])).remove(0);
        want["sequence"] = Value::from(i);
        assert_eq!(*got, want, "line {i}");
    }
}

#[test]
fn a_bad_line_is_a_one_line_error_naming_it() {
    let model = repo("models/demo/demo-int8.tlm");
    let file = tmp("bad.txt");
    std::fs::write(&file, "0,1,2\n0,1,999\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", model.to_str().unwrap(), "--batch-file"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error:") && err.contains("line 2"), "{err}");
}
