//! Hostile input for every `tinylens` subcommand, table-driven: missing files, wrong
//! formats, mismatched shapes, NaN/Inf weights, out-of-vocabulary tokens, prompts longer
//! than `n_ctx`, empty inputs, corrupt blobs, bad probe patterns and bad --ablate specs.
//! Every case must exit non-zero with ONE line on stderr (no warning before it either)
//! that starts with `error:` and names the problem, and never panic or print a backtrace.
//!
//! (This test lives in host-tools because only the tests of the crate that defines the
//! binary get `CARGO_BIN_EXE_tinylens`, which cargo guarantees is built and current.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tinylens_core::{Model, Processing, StorageKind};
use tinylens_host::convert::{write_blob, QuantPlan};
use tinylens_host::run::{run, RunOptions};
use tinylens_host::tl;

const BIN: &str = env!("CARGO_BIN_EXE_tinylens");

fn fixture(model: &str, file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(model)
        .join(file)
}

/// Input files, written once per test process into a fresh directory.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

fn files() -> &'static Files {
    static FILES: OnceLock<Files> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tinylens-cli-errors-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).unwrap();
        let load = |m: &str| {
            tl::load_files(&fixture(m, "model.safetensors"), &fixture(m, "config.json")).unwrap()
        };
        let blob_of = |w: &tinylens_host::weights::Weights, kind| {
            write_blob(w, QuantPlan::uniform(kind), Processing::default(), None)
                .unwrap()
                .0
        };

        let ln = load("attn1_ln");
        let blob = blob_of(&ln, StorageKind::Int8);
        write("model.tlm", &blob);
        let noln = load("attn2_standard_noln");
        write("noln.tlm", &blob_of(&noln, StorageKind::F16));
        write("text.txt", b"hello, world\n");
        write("empty", b"");
        write("truncated.tlm", &blob[..blob.len() / 2]);
        write("header_only.tlm", &blob[..64]);
        let mut corrupt = blob.clone();
        let at = corrupt.len() - 100;
        corrupt[at] ^= 0x40;
        write("corrupt.tlm", &corrupt);

        // A trace of every hook of the LayerNorm model, and one of another model.
        let model = Model::from_bytes(&blob).unwrap();
        let opts = RunOptions {
            tokens: vec![1, 2, 3],
            probes: vec!["*".into()],
            trace: true,
            temperature: 1.0,
            ..Default::default()
        };
        let trace = run(&model, &opts).unwrap().trace;
        write("trace.tlt", &trace);
        write("trace_cut.tlt", &trace[..trace.len() / 3]);
        let noln_blob = std::fs::read(dir.join("noln.tlm")).unwrap();
        let noln_model = Model::from_bytes(&noln_blob).unwrap();
        let opts = RunOptions {
            tokens: vec![1, 2],
            probes: vec!["blocks.*.attn.hook_pattern".into()],
            trace: true,
            temperature: 1.0,
            ..Default::default()
        };
        write("noln_trace.tlt", &run(&noln_model, &opts).unwrap().trace);
        // A trace with patterns but no hook_z.
        let opts = RunOptions {
            tokens: vec![1, 2],
            probes: vec!["blocks.*.attn.hook_pattern".into()],
            trace: true,
            temperature: 1.0,
            ..Default::default()
        };
        write("patterns.tlt", &run(&model, &opts).unwrap().trace);

        // TransformerLens inputs: the fixture's files, a config that does not match the
        // weights, NaN and infinite weights, weights that overflow f16.
        write(
            "weights.safetensors",
            &std::fs::read(fixture("attn1_ln", "model.safetensors")).unwrap(),
        );
        let config = std::fs::read_to_string(fixture("attn1_ln", "config.json")).unwrap();
        write("config.json", config.as_bytes());
        let mut cfg: serde_json::Value = serde_json::from_str(&config).unwrap();
        cfg["d_model"] = 48.into();
        cfg["n_heads"] = 6.into();
        write("mismatch.json", cfg.to_string().as_bytes());
        cfg["d_model"] = 32.into();
        cfg["n_heads"] = 4.into();
        cfg["n_layers"] = 1_000_000_000_000u64.into();
        write("huge.json", cfg.to_string().as_bytes());
        cfg["n_layers"] = 1.into();
        cfg["attn_only"] = false.into();
        write("mlp.json", cfg.to_string().as_bytes());
        write("array.json", b"[1, 2, 3]");
        let mut nan = ln.clone();
        nan.layers[0].w_q[2][(3, 1)] = f32::NAN;
        write("nan.safetensors", &tl::save_state_dict(&nan));
        let mut inf = ln.clone();
        inf.w_u[(5, 7)] = f32::INFINITY;
        write("inf.safetensors", &tl::save_state_dict(&inf));
        let mut big = ln.clone();
        big.w_pos[(2, 2)] = 1.0e30;
        write("f16_overflow.safetensors", &tl::save_state_dict(&big));
        // Finite f32 weights whose logits overflow to infinity.
        let mut huge = noln.clone();
        huge.w_e.fill(3.0e38);
        huge.w_u.fill(3.0e38);
        write("huge_logits.tlm", &blob_of(&huge, StorageKind::F32));
        let vocab: String = (0..49).map(|i| format!("t{i}\n")).collect();
        write("vocab49.txt", vocab.as_bytes());
        // Mean head results of the wrong shape.
        let data = vec![0u8; 4 * 2 * 4 * 32];
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 4, 32], &data)
                .unwrap();
        write(
            "means_bad.safetensors",
            &safetensors::serialize([("hook_result_mean", view)], None).unwrap(),
        );
        Files { dir }
    })
}

/// The subcommands the binary has (from `tinylens help`).
fn subcommands() -> BTreeSet<String> {
    let out = Command::new(BIN).arg("help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// `(arguments, substring the one-line error must contain)`.
fn cases(f: &Files) -> Vec<(Vec<String>, String)> {
    let p = |n: &str| f.path(n);
    let missing = p("no-such-file");
    let long: String = (0..25)
        .map(|i| (i % 50).to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut t: Vec<(Vec<String>, String)> = Vec::new();
    let mut add = |args: &[&str], expect: &str| t.push((strings(args), expect.to_string()));
    let (model, noln, text, empty) = (p("model.tlm"), p("noln.tlm"), p("text.txt"), p("empty"));
    let (weights, config, trace) = (p("weights.safetensors"), p("config.json"), p("trace.tlt"));
    let out = p("out.tlm");

    // convert
    let conv = |w: &str, c: &str| strings(&["convert", "--weights", w, "--config", c, "-o"]);
    for (w, c, expect) in [
        (missing.as_str(), config.as_str(), "no-such-file"),
        (weights.as_str(), missing.as_str(), "no-such-file"),
        (text.as_str(), config.as_str(), "invalid safetensors"),
        (model.as_str(), config.as_str(), "invalid safetensors"),
        (empty.as_str(), config.as_str(), "invalid safetensors"),
        (weights.as_str(), text.as_str(), "invalid JSON"),
        (weights.as_str(), empty.as_str(), "invalid JSON"),
        (weights.as_str(), weights.as_str(), "valid UTF-8"),
        (weights.as_str(), &p("array.json"), "expected a JSON object"),
        (weights.as_str(), &p("mismatch.json"), "embed.W_E"),
        (weights.as_str(), &p("huge.json"), "n_layers"),
        (weights.as_str(), &p("mlp.json"), "attention-only"),
        (&p("nan.safetensors"), config.as_str(), "blocks.0.attn.W_Q"),
        (&p("inf.safetensors"), config.as_str(), "unembed.W_U"),
    ] {
        add(&refs(&conv(w, c), &[&out]), expect);
    }
    let base = conv(&weights, &config);
    add(&refs(&base, &[&out, "--quant", "int3"]), "int3");
    add(&refs(&base, &[&out, "--embed-quant", "bytes"]), "bytes");
    add(&refs(&base, &[&out, "--vocab", &missing]), "no-such-file");
    let vocab49 = p("vocab49.txt");
    add(&refs(&base, &[&out, "--vocab", &vocab49]), "49 entries");
    let f16 = conv(&p("f16_overflow.safetensors"), &config);
    add(&refs(&f16, &[&out, "--quant", "f16"]), "pos_embed.W_pos");
    let bad_out = p("no-such-dir/out.tlm");
    add(&refs(&base, &[&bad_out]), "no-such-dir");

    // Commands that read a blob: missing, empty, text, trace, truncated, corrupt.
    let blob_cases = [
        (missing.as_str(), "no-such-file"),
        (empty.as_str(), "truncated"),
        (text.as_str(), "bad magic"),
        (trace.as_str(), "bad magic"),
        (weights.as_str(), "bad magic"),
        (&p("truncated.tlm"), "truncated"),
        (&p("header_only.tlm"), "truncated"),
        (&p("corrupt.tlm"), "checksum"),
    ];
    let prompt = ["--tokens", "1,2,3"];
    let blob_commands: [(&str, &[&str]); 9] = [
        ("info", &[]),
        ("bench", &["--seconds", "0.01"]),
        ("run", &prompt),
        ("circuits", &[]),
        ("heads", &prompt),
        ("attribute", &prompt),
        ("paths", &prompt),
        ("ablate", &["--repeated", "4"]),
        ("report", &prompt),
    ];
    for (cmd, extra) in blob_commands {
        for (blob, expect) in blob_cases {
            let mut a = vec![cmd, blob];
            a.extend_from_slice(extra);
            add(&a, expect);
        }
    }

    // Tokens: out of vocabulary, longer than n_ctx, empty, not numbers.
    let token_cases = [
        ("1,50", "50"),
        ("4294967295", "4294967295"),
        (long.as_str(), "25"),
        ("", "no tokens"),
        (" , ,", "no tokens"),
        ("1,x", "`x`"),
        ("-3", "`-3`"),
        ("1.5", "`1.5`"),
        ("99999999999", "99999999999"),
    ];
    for cmd in ["run", "heads", "attribute", "paths", "report"] {
        for (tokens, expect) in token_cases {
            let arg = format!("--tokens={tokens}");
            add(&[cmd, &model, &arg], expect);
        }
    }
    add(
        &["run", &model, "--tokens", "1,2", "--generate", "23"],
        "context",
    );
    let huge = p("huge_logits.tlm");
    for cmd in ["run", "heads", "attribute", "paths", "report"] {
        add(
            &[cmd, &huge, "--tokens", "1,2"],
            "NaN or infinity in the logits",
        );
    }
    add(
        &["ablate", &huge, "--repeated", "4"],
        "NaN or infinity in the logits",
    );
    add(
        &["bench", &huge, "--seconds", "0.01"],
        "NaN or infinity in the logits",
    );
    for (arg, expect) in [
        ("--prompt-tokens=0", "--prompt-tokens"),
        ("--prompt-tokens=25", "--prompt-tokens"),
        ("--seconds=0", "--seconds"),
        ("--seconds=inf", "--seconds"),
        ("--seconds=nan", "--seconds"),
        ("--seconds=1e300", "--seconds 1e300"),
    ] {
        add(&["bench", &model, arg], expect);
    }

    // Probes.
    for (probe, expect) in [
        ("blocks.0.attn.hook_nonsense", "hook_nonsense"),
        ("blocks.1.hook_resid_pre", "blocks.1.hook_resid_pre"),
        ("blocks.0.attn.hook_z[4]", "hook_z[4]"),
        ("hook_embed@24", "hook_embed@24"),
        ("hook_embed@5..3", "hook_embed@5..3"),
        ("hook_embed:f64", "hook_embed:f64"),
        ("", "probe ``"),
        ("blocks.99999999.attn.hook_q", "99999999"),
    ] {
        let arg = format!("--probe={probe}");
        add(&["run", &model, "--tokens", "1", &arg], expect);
    }
    add(
        &[
            "run",
            &noln,
            "--tokens",
            "1",
            "--probe",
            "ln_final.hook_scale",
        ],
        "ln_final.hook_scale",
    );
    add(
        &[
            "run", &model, "--tokens", "1", "--probe", "*", "--probe", "*:f16",
        ],
        "too many probes",
    );

    // Interventions.
    for (spec, expect) in [
        ("0", "`0`"),
        ("x.y", "`x.y`"),
        ("0.0=half", "`0.0=half`"),
        ("1.0", "1.0"),
        ("0.4", "0.4"),
        ("0.-1", "0.-1"),
        ("0.0=mean", "--means"),
    ] {
        let arg = format!("--ablate={spec}");
        add(&["run", &model, "--tokens", "1", &arg], expect);
    }
    let run_base = strings(&["run", &model, "--tokens", "1,2"]);

    add(
        &refs(&run_base, &["--ablate", "0.0=mean", "--means", &missing]),
        "no-such-file",
    );
    add(
        &refs(&run_base, &["--ablate", "0.0=mean", "--means", &text]),
        "invalid safetensors",
    );
    add(
        &refs(&run_base, &["--ablate", "0.0=mean", "--means", &weights]),
        "hook_result_mean",
    );
    add(
        &refs(
            &run_base,
            &[
                "--ablate",
                "0.0=mean",
                "--means",
                &p("means_bad.safetensors"),
            ],
        ),
        "hook_result_mean",
    );
    add(
        &refs(&run_base, &["--freeze-patterns", &missing]),
        "no-such-file",
    );
    add(&refs(&run_base, &["--freeze-patterns", &text]), "no run");
    add(&refs(&run_base, &["--freeze-patterns", &model]), "no run");
    add(
        &refs(&run_base, &["--freeze-patterns", &p("noln_trace.tlt")]),
        "another shape",
    );
    add(&refs(&run_base, &["--patch", &trace]), "TRACE:HOOK");
    let patch = |hook: &str, file: &str| format!("--patch={file}:{hook}");
    add(
        &refs(&run_base, &[&patch("blocks.0.attn.hook_nonsense", &trace)]),
        "hook_nonsense",
    );
    add(
        &refs(&run_base, &[&patch("blocks.*.attn.hook_z", &trace)]),
        "blocks.*.attn.hook_z",
    );
    add(
        &refs(
            &run_base,
            &[&patch("blocks.0.attn.hook_z", &p("patterns.tlt"))],
        ),
        "blocks.0.attn.hook_z",
    );
    add(
        &refs(
            &run_base,
            &[&patch("blocks.0.attn.hook_z", &p("trace_cut.tlt"))],
        ),
        "no end frame",
    );
    add(
        &refs(&run_base, &[&patch("blocks.0.attn.hook_z", &missing)]),
        "no-such-file",
    );
    add(
        &refs(&run_base, &["--trace", &p("no-such-dir/t.tlt")]),
        "no-such-dir",
    );

    // decode
    for (input, expect) in [
        (missing.as_str(), "no-such-file"),
        (empty.as_str(), "empty trace"),
        (text.as_str(), "no run 0"),
        (model.as_str(), "no run 0"),
        (weights.as_str(), "no run 0"),
    ] {
        add(&["decode", input], expect);
    }
    add(&["decode", &trace, "--format", "xml"], "xml");
    add(&["decode", &trace, "--run", "3"], "no run 3");
    add(
        &["decode", &trace, "-o", &p("no-such-dir/cache.json")],
        "no-such-dir",
    );

    // Live decoding: decode --follow / --serial, monitor.
    add(&["decode", "--follow", &missing], "no-such-file");
    add(&["decode", "--serial", &missing], "serial port");
    add(&["decode", "--follow", &trace, "--idle", "nan"], "--idle");
    add(&["monitor", &missing], "no-such-file");
    add(&["monitor", "--serial", &missing], "serial port");
    add(&["monitor", &trace, "--idle", "nan"], "--idle");

    // Analysis commands: their own arguments.
    add(&["circuits", &model, "--compare", &missing], "no-such-file");
    add(&["circuits", &model, "--compare", &text], "bad magic");
    add(&["heads", &model], "--tokens or --repeated");
    add(&["heads", &model, "--trace", &missing], "no-such-file");
    add(&["heads", &model, "--trace", &text], "no run 0");
    add(
        &["heads", &model, "--trace", &p("noln_trace.tlt")],
        "another shape",
    );
    add(
        &["heads", &model, "--trace", &trace, "--run", "2"],
        "no run 2",
    );
    add(&["heads", &model, "--repeated", "0"], "repeated");
    add(&["heads", &model, "--repeated", "100"], "100");
    add(
        &["heads", &model, "--repeated", "4", "--bos", "x"],
        "--bos `x`",
    );
    add(
        &["heads", &model, "--repeated", "4", "--bos", "50"],
        "--bos 50",
    );
    add(
        &["heads", &model, "--repeated", "4", "--batch", "0"],
        "--batch",
    );
    add(&["attribute", &model, "--trace", &text], "no run 0");
    add(
        &["attribute", &model, "--tokens", "1,2", "--target", "50"],
        "50",
    );
    add(&["paths", &model], "--tokens or --repeated");
    add(&["ablate", &model], "--data FILE or --repeated N");
    add(&["ablate", &model, "--data", &missing], "no-such-file");
    add(&["ablate", &model, "--data", &text], "text.txt");
    add(&["ablate", &model, "--data", &empty], "empty");
    add(
        &["ablate", &model, "--repeated", "4", "--mode", "half"],
        "half",
    );
    add(
        &["ablate", &model, "--repeated", "4", "--together", "9.9"],
        "9.9",
    );
    add(
        &["ablate", &model, "--repeated", "4", "--together", "x"],
        "`x`",
    );
    add(
        &[
            "ablate",
            &model,
            "--repeated",
            "4",
            "--save-means",
            &p("no-such-dir/m.safetensors"),
        ],
        "no-such-dir",
    );
    add(
        &[
            "report",
            &model,
            "--tokens",
            "1,2",
            "-o",
            &p("no-such-dir/r.html"),
        ],
        "no-such-dir",
    );
    add(
        &["demo", "--save-model", &p("no-such-dir/demo.tlm")],
        "no-such-dir",
    );

    // Numbers at the end of their type.
    let max = u64::MAX.to_string();
    add(
        &["run", &model, "--tokens", "1", "--generate", &max],
        "generated",
    );
    for cmd in ["heads", "attribute", "paths", "report", "ablate"] {
        add(
            &[cmd, &model, "--repeated", &max],
            &format!("--repeated {max}"),
        );
    }
    for cmd in ["heads", "ablate"] {
        add(
            &[cmd, &model, "--repeated", "4", "--batch", &max],
            "too large",
        );
    }
    add(&["decode", &trace, "--run", &max], &format!("no run {max}"));
    add(
        &["heads", &model, "--trace", &trace, "--run", &max],
        &format!("no run {max}"),
    );
    t
}

/// Hostile but valid arguments: they must succeed (and not panic).
fn accepted(f: &Files) -> Vec<Vec<String>> {
    let model = f.path("model.tlm");
    let max = u64::MAX.to_string();
    [
        vec!["circuits", &model, "--top", &max, "--baseline-samples", "0"],
        vec!["paths", &model, "--tokens", "1,2", "--top", &max],
        vec![
            "run",
            &model,
            "--tokens",
            "1",
            "--top-k",
            &max,
            "--seed",
            &max,
            "--sample-top-k",
            &max,
            "--generate",
            "3",
        ],
        vec!["heads", &model, "--repeated", "4", "--seed", &max],
    ]
    .iter()
    .map(|a| strings(a))
    .collect()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// `base` followed by `extra`, as `&str`s.
fn refs<'a>(base: &'a [String], extra: &[&'a str]) -> Vec<&'a str> {
    base.iter()
        .map(String::as_str)
        .chain(extra.iter().copied())
        .collect()
}

/// Runs one case; `Err` describes how it failed the contract.
fn check(args: &[String], expect: &str) -> Result<(), String> {
    let out = Command::new(BIN)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .map_err(|e| format!("could not start {BIN}: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let problem = if out.status.success() {
        Some("exited with status 0".to_string())
    } else if stderr.contains("panicked") || stderr.contains("stack backtrace") {
        Some("panicked".to_string())
    } else if out.status.code().is_none() {
        Some(format!("killed by a signal ({:?})", out.status))
    } else if lines.len() != 1 {
        Some(format!("{} lines on stderr", lines.len()))
    } else if !lines[0].starts_with("error: ") {
        Some("stderr does not start with `error: `".to_string())
    } else if !lines[0].contains(expect) {
        Some(format!("message does not name `{expect}`"))
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(format!(
            "tinylens {}\n    {p}; stderr:\n    {}",
            args.join(" "),
            stderr.trim_end().replace('\n', "\n    ")
        )),
    }
}

#[test]
fn hostile_input_gives_one_line_errors_for_every_subcommand() {
    let f = files();
    let present = subcommands();
    assert!(present.contains("convert") && present.contains("run"));
    let cases: Vec<_> = cases(f)
        .into_iter()
        .filter(|(args, _)| present.contains(&args[0]))
        .collect();
    // Every subcommand the binary has is covered.
    let covered: BTreeSet<&str> = cases.iter().map(|(a, _)| a[0].as_str()).collect();
    for c in &present {
        assert!(
            covered.contains(c.as_str()),
            "no hostile-input case for `{c}`"
        );
    }
    // Run the cases on a few threads (each is a process).
    let failures: Vec<String> = std::thread::scope(|s| {
        let chunks: Vec<_> = cases.chunks(cases.len().div_ceil(4)).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .filter_map(|(args, expect)| check(args, expect).err())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    eprintln!("{} hostile-input cases passed", cases.len());
}

#[test]
fn hostile_but_valid_numbers_are_accepted() {
    let present = subcommands();
    for args in accepted(files()) {
        if !present.contains(&args[0]) {
            continue;
        }
        let out = Command::new(BIN)
            .args(&args)
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("panicked"),
            "tinylens {}: {:?}\n{stderr}",
            args.join(" "),
            out.status
        );
    }
}

/// Runs `tinylens args` with standard output to `stdout`; (status code, stderr lines).
fn run_with_stdout(args: &[&str], stdout: std::process::Stdio) -> (Option<i32>, Vec<String>) {
    let out = Command::new(BIN)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .stdout(stdout)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (
        out.status.code(),
        stderr.lines().map(str::to_string).collect(),
    )
}

/// Issue #11, 2: every command that prints, with and without `--json`, answers a
/// standard output it cannot write (`> /dev/full`) with one `error:` line and status 1.
#[test]
fn unwritable_stdout_is_a_one_line_error_for_every_command() {
    let f = files();
    let (model, trace) = (f.path("model.tlm"), f.path("trace.tlt"));
    let (weights, config) = (f.path("weights.safetensors"), f.path("config.json"));
    let out = f.path("full.tlm");
    let prompt = ["--tokens", "1,2,3"];
    let mut cases: Vec<Vec<&str>> = vec![
        vec!["info", &model],
        vec!["circuits", &model],
        vec!["run", &model, prompt[0], prompt[1]],
        vec!["heads", &model, "--repeated", "4"],
        vec!["attribute", &model, prompt[0], prompt[1]],
        vec!["paths", &model, prompt[0], prompt[1]],
        vec!["ablate", &model, "--repeated", "4"],
        vec!["bench", &model, "--seconds", "0.01"],
        vec![
            "convert",
            "--weights",
            &weights,
            "--config",
            &config,
            "-o",
            &out,
        ],
    ];
    for c in cases.clone() {
        let mut j = c.clone();
        j.push("--json");
        cases.push(j);
    }
    cases.push(vec!["decode", &trace]);
    cases.push(vec!["decode", &trace, "--format", "npy"]);
    cases.push(vec!["decode", &trace, "--format", "safetensors"]);
    cases.push(vec!["decode", "--follow", &trace]);
    cases.push(vec!["monitor", &trace]);
    cases.push(vec!["run", &model, "--tokens", "1", "--help"]);
    let present = subcommands();
    for args in cases {
        if !present.contains(args[0]) {
            continue;
        }
        let full = std::fs::File::create("/dev/full").unwrap();
        let (code, lines) = run_with_stdout(&args, full.into());
        let line = lines.first().cloned().unwrap_or_default();
        assert!(
            code == Some(1)
                && lines.len() == 1
                && line.starts_with("error: <stdout>: ")
                && !line.contains("panicked"),
            "tinylens {} > /dev/full: status {code:?}, stderr {lines:?}",
            args.join(" ")
        );
    }
}

/// Issue #11, 5: the command-line contract. Usage errors exit 2 with one `error:` line
/// (clap's message, tip and usage joined); help and version exit 0 on stdout; bad input
/// exits 1 (the table above).
#[test]
fn usage_errors_exit_2_with_one_line() {
    let model = files().path("model.tlm");
    for (args, expect) in [
        (vec!["frobnicate"], "unrecognized subcommand"),
        (vec!["info"], "required"),
        (vec!["info", &model, "--frobnicate"], "--frobnicate"),
        (vec!["decode", &model, "--formt", "json"], "--format"),
        (vec!["decode", &model, "--run", "x"], "--run"),
        (vec!["decode", &model, "--run", "1\nerror: forged"], "--run"),
        (vec!["run", &model, "--temperature", "hot"], "hot"),
    ] {
        let (code, lines) = run_with_stdout(&args, std::process::Stdio::null());
        assert!(
            code == Some(2)
                && lines.len() == 1
                && lines[0].starts_with("error: ")
                && lines[0].contains(expect),
            "tinylens {:?}: status {code:?}, stderr {lines:?}",
            args
        );
    }
    for args in [vec!["--help"], vec!["--version"], vec!["decode", "--help"]] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert!(
            out.status.success() && !out.stdout.is_empty() && out.stderr.is_empty(),
            "tinylens {args:?}: {:?}",
            out.status
        );
    }
    // No subcommand: the help, on stderr, status 2.
    let out = Command::new(BIN).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage:"));
}

/// Issue #11, 3: text from the input is escaped in every message: one line, no forged
/// `error:` line, no terminal escape.
#[test]
fn input_text_in_messages_is_escaped() {
    let f = files();
    let dir = &f.dir;
    let evil = "evil\nname\nerror: fake\u{1b}[31m";
    // A state dict with a hostile tensor name (and nothing else).
    let data = vec![0u8; 4];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &data).unwrap();
    let st = dir.join("evil.safetensors");
    std::fs::write(&st, safetensors::serialize([(evil, view)], None).unwrap()).unwrap();
    // A config with a hostile string.
    let config = std::fs::read_to_string(fixture("attn1_ln", "config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&config).unwrap();
    cfg["positional_embedding_type"] = evil.into();
    let cfg_path = dir.join("evil_config.json");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let (st, cfg_path) = (
        st.to_string_lossy().into_owned(),
        cfg_path.to_string_lossy().into_owned(),
    );
    let (weights, config) = (f.path("weights.safetensors"), f.path("config.json"));
    let model = f.path("model.tlm");
    let missing = dir.join(evil).to_string_lossy().into_owned();
    let out = f.path("evil_out.tlm");
    let probe = format!("--probe={evil}");
    let (trace, patch) = (f.path("trace.tlt"), format!("{missing}:hook_embed"));
    let cases: Vec<Vec<&str>> = vec![
        vec!["convert", "--weights", &st, "--config", &config, "-o", &out],
        vec![
            "convert",
            "--weights",
            &weights,
            "--config",
            &cfg_path,
            "-o",
            &out,
        ],
        vec!["run", &model, "--tokens", "1", &probe],
        vec!["info", &missing],
        vec!["decode", &missing],
        vec!["decode", &trace, "--format", evil],
        vec!["run", &model, "--tokens", "1", "--patch", &patch],
    ];
    for args in cases {
        let (code, lines) = run_with_stdout(&args, std::process::Stdio::null());
        let all = lines.join("\n");
        assert!(
            code == Some(1)
                && lines.len() == 1
                && lines[0].starts_with("error: ")
                && !all.contains('\u{1b}')
                && lines[0].contains("evil\\nname"),
            "tinylens {:?}: status {code:?}, stderr {lines:?}",
            args
        );
    }
}

/// Issue #11, 6: a failing write leaves the previous file as it was (the injected
/// failures are in `cli::tests`); here, an output that is a directory, or a path in a
/// missing directory, fails without a stray temporary file.
#[test]
fn failed_outputs_leave_no_files_behind() {
    let f = files();
    let dir = f.dir.join("atomic");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let trace = f.path("trace.tlt");
    let target = dir.join("sub").to_string_lossy().into_owned();
    let (code, lines) = run_with_stdout(
        &["decode", &trace, "-o", &target],
        std::process::Stdio::null(),
    );
    assert!(code == Some(1) && lines.len() == 1, "{lines:?}");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(left.len(), 1, "temporary files left: {left:?}");
    // A good decode over an existing file replaces it whole, keeping its mode.
    let out = dir.join("cache.json");
    std::fs::write(&out, b"old").unwrap();
    let o = out.to_string_lossy().into_owned();
    let (code, _) = run_with_stdout(&["decode", &trace, "-o", &o], std::process::Stdio::null());
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert!(v.get("blocks.0.attn.hook_pattern").is_some());
}

/// Issue #11, 1: `decode -` decodes as the bytes come and stops at the selected run's
/// end frame, so a pipe that never closes (a serial line, QEMU) gives its cache.
#[test]
fn decode_works_on_a_pipe_that_never_closes() {
    let out = finishes_on_an_open_pipe(&["decode", "-", "--run", "1"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tokens"]["shape"], serde_json::json!([3]));
}

/// The commands that read one run of a trace stream it: they stop at its end frame, so a
/// pipe that stays open is no problem, and memory is that of one run.
#[test]
fn trace_inputs_are_read_up_to_their_run_only() {
    let model = files().path("model.tlm");
    let trace = files().path("trace.tlt");
    let (model, trace) = (model.as_str(), trace.as_str());
    // From the open pipe, the same output as from the file (whose one run is the first
    // of the two on the pipe).
    let from_file = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let out = finishes_on_an_open_pipe(&["heads", model, "--trace", "-", "--json"]);
    assert!(out.contains("previous_token"), "{out}");
    assert_eq!(
        out,
        from_file(&["heads", model, "--trace", trace, "--json"])
    );
    let run = |t| ["run", model, "--tokens", "1,2,3", "--freeze-patterns", t];
    let out = finishes_on_an_open_pipe(&run("-"));
    assert!(!out.is_empty());
    assert_eq!(out, from_file(&run(trace)));
}

/// Runs `tinylens args` with two runs of the every-hook trace on a standard input that
/// stays open until the command exits; its standard output.
fn finishes_on_an_open_pipe(args: &[&str]) -> String {
    use std::io::{Read, Write};
    let trace = std::fs::read(files().path("trace.tlt")).unwrap();
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Two runs, then the pipe stays open (stdin is kept until the child has exited).
    stdin.write_all(&trace).unwrap();
    stdin.write_all(&trace).unwrap();
    stdin.flush().unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > std::time::Duration::from_secs(60) {
            let _ = child.kill();
            panic!("{args:?} waited for the end of a pipe");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    drop(stdin);
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{args:?}: {status:?}: {err}");
    out
}
