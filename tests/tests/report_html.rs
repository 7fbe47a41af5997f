//! The HTML report in a real browser: `tinylens report` on the demo blob, opened in
//! headless Chromium (Debian's `chromium`). After the page's script ran (`--dump-dom`),
//! every head has its heatmap with one cell per causal (query, key) pair, and the large
//! view has the selected head's cells; a screenshot is a real picture (many distinct
//! colours, mostly not background). Without Chromium the test is skipped with a message
//! — unless CI is set, where a missing Chromium is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use tinylens_core::Model;
use tinylens_host::commands::{demo, report};
use tinylens_host::prompts::PromptArgs;
use tinylens_tests::*;

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    })
}

fn browser(bin: &Path, profile: &Path) -> Command {
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn report_renders_in_headless_chromium() {
    let Some(bin) = chromium() else {
        let ci = std::env::var("CI").map(|v| !v.is_empty()).unwrap_or(false);
        assert!(
            !ci,
            "CI is set but `chromium` is not installed: the report test needs Debian's \
             `chromium` package (apt-get install -y chromium)"
        );
        eprintln!(
            "SKIPPED report_renders_in_headless_chromium: `chromium` is not installed \
             (apt-get install -y chromium); under CI=true this fails instead"
        );
        return;
    };
    let dir = temp_dir("report-html");
    let model_path = dir.join("demo.tlm");
    std::fs::write(&model_path, demo::DEMO_BLOB).unwrap();
    let out = dir.join("report.html");
    let n_repeat = 12;
    report::run(report::ReportArgs {
        model: model_path,
        prompt: PromptArgs::from_repeated(n_repeat, 3),
        output: out.clone(),
        title: Some("report test".into()),
    })
    .unwrap();
    let html = std::fs::read_to_string(&out).unwrap();
    // Self-contained: nothing to fetch.
    for bad in ["<link", "@import", "src=\"http", "href=\"http", "url(http"] {
        assert!(
            !html.contains(bad),
            "report references an external resource: {bad}"
        );
    }
    let model = Model::from_bytes(demo::DEMO_BLOB).unwrap();
    let cfg = model.config();
    let (nl, nh) = (cfg.n_layers as usize, cfg.n_heads as usize);
    let n = 2 * n_repeat + 1; // BOS + two copies
    let causal = n * (n + 1) / 2;

    // The DOM after the script ran.
    let dom = browser(&bin, &dir.join("profile-dom"))
        .arg("--virtual-time-budget=5000")
        .arg("--dump-dom")
        .arg(format!("file://{}", out.display()))
        .output()
        .expect("run chromium");
    assert!(
        dom.status.success(),
        "chromium --dump-dom failed: {:?}",
        dom
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains("data-rendered=\"1\""),
        "the report's script did not run"
    );
    for l in 0..nl {
        for h in 0..nh {
            assert!(
                dom.contains(&format!("id=\"hm-L{l}H{h}\"")),
                "no heatmap for L{l}H{h}"
            );
        }
    }
    assert_eq!(
        count(&dom, "class=\"cell\""),
        nl * nh * causal,
        "thumbnail cells"
    );
    assert_eq!(count(&dom, "class=\"mcell\""), causal, "large-view cells");
    assert_eq!(
        count(&dom, "class=\"thumb\"") + count(&dom, "class=\"thumb sel\""),
        nl * nh
    );
    for id in [
        "scores-prev",
        "scores-ind",
        "copying",
        "comp-K",
        "comp-K-sub",
        "dla",
        "orders",
    ] {
        assert!(dom.contains(&format!("id=\"{id}\"")), "missing table #{id}");
    }
    // Token labels from the blob's vocabulary (token 0 is `<bos>`, escaped in the DOM).
    assert!(dom.contains("&lt;bos&gt;"));

    // A screenshot that is a picture, not a blank page.
    let shot = dir.join("shot.png");
    let s = browser(&bin, &dir.join("profile-shot"))
        .arg("--window-size=1400,1600")
        .arg("--virtual-time-budget=5000")
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", out.display()))
        .output()
        .expect("run chromium");
    assert!(s.status.success(), "chromium --screenshot failed: {s:?}");
    let decoder = png::Decoder::new(std::fs::File::open(&shot).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let bytes = &buf[..info.buffer_size()];
    let channels = info.color_type.samples();
    let mut colours = std::collections::HashSet::new();
    let mut background = 0usize;
    let pixels = bytes.len() / channels;
    for px in bytes.chunks_exact(channels) {
        let rgb = [px[0], px[1], px[2]];
        colours.insert(rgb);
        if rgb[0] >= 245 && rgb[1] >= 245 && rgb[2] >= 245 {
            background += 1;
        }
    }
    eprintln!(
        "screenshot {}x{}: {} distinct colours, {:.1}% near-white; DOM: {} heatmap cells",
        info.width,
        info.height,
        colours.len(),
        100.0 * background as f64 / pixels as f64,
        nl * nh * causal + causal
    );
    assert_eq!((info.width, info.height), (1400, 1600));
    // Heatmap shades, table colours and anti-aliased text: hundreds of colours.
    assert!(
        colours.len() >= 200,
        "only {} colours: blank page?",
        colours.len()
    );
    assert!(
        (background as f64) < 0.95 * pixels as f64,
        "{background} of {pixels} pixels are background"
    );
}
