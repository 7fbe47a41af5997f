//! `tinylens decode --serial` on a pseudo-terminal (the host side of a UART): garbage,
//! a run cut in the middle of a frame, then the device restarting the run, fed a few
//! bytes at a time. The live decoder must report exactly the intact frames: the cut
//! run as `run_cut` with the records that arrived whole, the restarted run as
//! `run_ended` with nothing lost and every record equal to the host's, bit for bit.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serialport::{SerialPort, TTYPort};
use tinylens_core::Model;
use tinylens_host::run::{run, RunOptions};
use tinylens_host::trace::decode_stream;
use tinylens_tests::repo_root;

fn lines(out: &[u8]) -> Vec<serde_json::Value> {
    out.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("a JSON line"))
        .collect()
}

#[test]
fn decode_serial_on_a_pty_recovers_exactly_the_intact_frames() {
    let blob =
        std::fs::read(repo_root().join("firmware-examples/models/attn2_shortformer_ln-int8.tlm"))
            .unwrap();
    let model = Model::from_bytes(&blob).unwrap();
    let host = run(
        &model,
        &RunOptions {
            tokens: vec![0, 5, 12, 7, 5, 12],
            probes: vec!["blocks.*.attn.hook_pattern".into(), "logits".into()],
            trace: true,
            generate: 4,
            run_id: 3,
            ..Default::default()
        },
    )
    .unwrap();
    let trace = host.trace;
    let cut_at = trace.len() / 2 + 5;
    let mut input = b"\x01\x02noise from before the reset\x00\xff".to_vec();
    input.push(0);
    input.extend_from_slice(&trace[..cut_at]);
    input.push(0); // the line idles (break) while the device restarts
    input.extend_from_slice(&trace);

    let (mut master, slave) = TTYPort::pair().expect("a pseudo-terminal pair");
    let port = slave.name().expect("the pty's path");
    let cli = std::env::var_os("CARGO_BIN_EXE_tinylens")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debug/tinylens"));
    let mut child = Command::new(&cli)
        .args([
            "decode", "--serial", &port, "--baud", "1000000", "--idle", "1.5",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (cargo build -p tinylens-host --bin tinylens)",
                cli.display()
            )
        });
    // Wait for the decoder to open the port, then send in small pieces.
    std::thread::sleep(Duration::from_millis(300));
    for piece in input.chunks(61) {
        master.write_all(piece).unwrap();
        master.flush().unwrap();
    }
    let start = Instant::now();
    let out = loop {
        if let Some(_status) = child.try_wait().unwrap() {
            break child.wait_with_output().unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "decode --serial did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(master);
    drop(slave);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let ls = lines(&out.stdout);

    // Expected: the cut run has the records of the frames wholly before the cut; the
    // restarted one, all of them.
    let (cut_runs, _) = decode_stream(&trace[..cut_at]);
    let (full_runs, _) = decode_stream(&trace);
    let full = &full_runs[0];
    let cut = ls
        .iter()
        .find(|l| l["event"] == "run_cut")
        .expect("a run_cut line");
    let ended = ls
        .iter()
        .find(|l| l["event"] == "run_ended")
        .expect("a run_ended line");
    assert_eq!(cut["run"], 0);
    assert_eq!(cut["records"], cut_runs[0].records.len());
    assert_eq!(ended["run"], 1);
    assert_eq!(ended["records"], full.records.len());
    assert_eq!(ended["lost_frames"], 0);
    assert_eq!(ended["missing_records"], 0);
    assert_eq!(ended["dropped_on_device"], 0);
    assert!(
        ls.iter().any(|l| l["event"] == "bad"),
        "the noise is a bad chunk"
    );

    // Every record of the restarted run, bit for bit.
    let mut seen = 0;
    for l in ls
        .iter()
        .filter(|l| l["event"] == "record" && l["run"] == 1)
    {
        let key = full
            .records
            .keys()
            .find(|k| {
                k.0.name(k.1).to_string() == l["hook"]
                    && k.2.map(u64::from) == l["head"].as_u64()
                    && u64::from(k.3) == l["pos"]
            })
            .expect("a record the host wrote");
        let got: Vec<u32> = l["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v.as_f64().unwrap() as f32).to_bits())
            .collect();
        let want: Vec<u32> = full.records[key].iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, want, "{key:?}");
        seen += 1;
    }
    assert_eq!(seen, full.records.len());
    assert!(stderr.contains("1 runs ended, 1 cut"), "{stderr}");
}
