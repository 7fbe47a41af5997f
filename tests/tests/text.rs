//! Text in, text out: `--text` gives exactly the ids of the Python `tokenizers` package
//! (fixtures by scripts/make_tokenizer_fixtures.py) and of the `tokenizers` crate, for a
//! tokenizer with a BOS post-processor and one without; odd strings round-trip and display
//! escaped; a blob converted with `--tokenizer` runs `--text` with no other file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tinylens_core::Model;
use tinylens_host::commands::{convert, heads};
use tinylens_host::prompts::{self, PromptArgs};
use tinylens_host::tokenizer::{device_part, escape, read_trailer, TextTokenizer};
use tinylens_tests::*;

fn tok_dir() -> PathBuf {
    repo_root().join("tests/fixtures/tokenizers")
}

fn expected() -> Value {
    let s = std::fs::read_to_string(tok_dir().join("expected.json")).unwrap();
    serde_json::from_str(&s).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// A one-layer LN model of `d_vocab` tokens with seeded random weights, written as
/// TransformerLens files (state_dict safetensors + config JSON) and converted with
/// `convert --tokenizer`, as a user would.
fn converted_blob(dir: &Path, d_vocab: usize, tokenizer: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let (dm, nh, dh, n_ctx) = (16usize, 2usize, 8usize, 64usize);
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.5
            })
            .collect()
    };
    let ones = |n: usize| vec![1.0f32; n];
    let tensors: Vec<(&str, Vec<usize>, Vec<f32>)> = vec![
        ("embed.W_E", vec![d_vocab, dm], rand(d_vocab * dm)),
        ("pos_embed.W_pos", vec![n_ctx, dm], rand(n_ctx * dm)),
        ("blocks.0.ln1.w", vec![dm], ones(dm)),
        ("blocks.0.ln1.b", vec![dm], rand(dm)),
        ("blocks.0.attn.W_Q", vec![nh, dm, dh], rand(nh * dm * dh)),
        ("blocks.0.attn.W_K", vec![nh, dm, dh], rand(nh * dm * dh)),
        ("blocks.0.attn.W_V", vec![nh, dm, dh], rand(nh * dm * dh)),
        ("blocks.0.attn.W_O", vec![nh, dh, dm], rand(nh * dh * dm)),
        ("blocks.0.attn.b_Q", vec![nh, dh], rand(nh * dh)),
        ("blocks.0.attn.b_K", vec![nh, dh], rand(nh * dh)),
        ("blocks.0.attn.b_V", vec![nh, dh], rand(nh * dh)),
        ("blocks.0.attn.b_O", vec![dm], rand(dm)),
        ("ln_final.w", vec![dm], ones(dm)),
        ("ln_final.b", vec![dm], rand(dm)),
        ("unembed.W_U", vec![dm, d_vocab], rand(dm * d_vocab)),
        ("unembed.b_U", vec![d_vocab], rand(d_vocab)),
    ];
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s, d)| {
            (
                n.to_string(),
                s,
                d.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: HashMap<String, safetensors::tensor::TensorView<'_>> = bytes
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    let weights = dir.join("model.safetensors");
    std::fs::write(&weights, safetensors::serialize(&views, None).unwrap()).unwrap();
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "n_layers": 1, "d_model": dm, "n_heads": nh, "d_head": dh, "d_vocab": d_vocab,
            "n_ctx": n_ctx, "attn_only": true, "normalization_type": "LN",
            "positional_embedding_type": "standard"
        })
        .to_string(),
    )
    .unwrap();
    let out = dir.join("model.tlm");
    convert::run(convert::ConvertArgs {
        weights,
        config,
        quant: "int8".into(),
        embed_quant: None,
        int4_group: None,
        vocab: None,
        tokenizer: Some(tokenizer.to_path_buf()),
        fold_ln: false,
        center_writing_weights: false,
        center_unembed: false,
        fold_value_biases: false,
        output: out.clone(),
        json: true,
        calibration: Default::default(),
    })
    .unwrap();
    out
}

#[test]
fn text_ids_equal_python_tokenizers_and_the_crate() {
    let e = expected();
    let dir = temp_dir("text-ids");
    for (name, t) in e["tokenizers"].as_object().unwrap() {
        let path = tok_dir().join(format!("{name}.json"));
        let ours = TextTokenizer::from_file(&path).unwrap();
        let krate = tokenizers::Tokenizer::from_file(&path).unwrap();
        let blob_path = converted_blob(
            &dir.join(name),
            t["vocab_size"].as_u64().unwrap() as usize,
            &path,
        );
        let blob = std::fs::read(&blob_path).unwrap();
        let model = Model::from_bytes(&blob).unwrap();
        // The blob's vocabulary is TL's to_str_tokens of every token.
        let vocab = tinylens_host::convert::vocab_of(&model).unwrap();
        assert_eq!(vocab, ours.token_strings(model.config().d_vocab));
        let mut n = 0;
        for case in t["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let want = ids(&case["ids"]);
            let krate_ids = krate.encode(text, true).unwrap().get_ids().to_vec();
            assert_eq!(krate_ids, want, "{name}: crate vs Python on {text:?}");
            assert_eq!(ours.encode(text).unwrap(), want, "{name}: {text:?}");
            // Decoding and each token's string are Python's too.
            assert_eq!(
                ours.decode(&want).unwrap(),
                case["decoded"].as_str().unwrap(),
                "{name}: decode {text:?}"
            );
            let strs: Vec<&str> = case["str_tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap())
                .collect();
            let from_vocab: Vec<&str> = want.iter().map(|i| vocab[*i as usize].as_str()).collect();
            assert_eq!(from_vocab, strs, "{name}: str tokens of {text:?}");
            if want.is_empty() {
                // An empty prompt is an error, not an empty run.
                let e = PromptArgs::from_text(text)
                    .prompt(&model, &blob)
                    .unwrap_err();
                assert!(e.to_string().contains("no tokens"), "{e}");
                continue;
            }
            // `--text` through the prompts module, the tokenizer from the blob's trailer.
            let p = PromptArgs::from_text(text).prompt(&model, &blob).unwrap();
            assert_eq!(p.tokens, want, "{name}: --text {text:?}");
            n += 1;
        }
        assert!(n >= 8, "{name}: {n} cases");
    }
}

#[test]
fn bos_post_processor_and_prepend_bos() {
    let e = expected();
    let bpe = TextTokenizer::from_file(&tok_dir().join("bos_bpe.json")).unwrap();
    let wp = TextTokenizer::from_file(&tok_dir().join("plain_wordpiece.json")).unwrap();
    assert_eq!(bpe.bos(), Some(0));
    assert_eq!(wp.bos(), None);
    for case in e["tokenizers"]["bos_bpe"]["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let with = ids(&case["ids"]);
        let without = ids(&case["ids_without_special"]);
        // The post-processor adds exactly one BOS.
        assert_eq!(with[0], 0);
        assert_eq!(&with[1..], without.as_slice(), "{text:?}");
        // TL's to_tokens(prepend_bos=True) does not add a second one.
        assert_eq!(bpe.to_tokens(text, true).unwrap(), with, "{text:?}");
    }
    for case in e["tokenizers"]["plain_wordpiece"]["cases"]
        .as_array()
        .unwrap()
    {
        let text = case["text"].as_str().unwrap();
        assert_eq!(ids(&case["ids"]), ids(&case["ids_without_special"]));
        assert_eq!(wp.to_tokens(text, false).unwrap(), ids(&case["ids"]));
    }
    let err = wp.to_tokens("hello", true).unwrap_err().to_string();
    assert!(err.contains("no BOS token"), "{err}");
}

#[test]
fn odd_strings_round_trip_and_display_escaped() {
    let bpe = TextTokenizer::from_file(&tok_dir().join("bos_bpe.json")).unwrap();
    for text in [
        " leading and trailing ",
        "two\nlines\r\n",
        "tab\tsep",
        "caf\u{e9} \u{2014} \u{201c}q\u{201d} \u{1f600}",
        "zero\u{200b}width",
        "back\\slash \"quotes\"",
    ] {
        // Byte-level BPE is lossless: decode(encode(text)) is the text.
        let ids = bpe.encode(text).unwrap();
        assert_eq!(bpe.decode_text(&ids).unwrap(), text);
    }
    assert_eq!(escape(" the"), "\" the\"");
    assert_eq!(escape("a\nb"), "\"a\\nb\"");
    assert_eq!(escape("\t"), "\"\\t\"");
    assert_eq!(escape("x\u{200b}y"), "\"x\\u{200b}y\"");
    assert_eq!(escape("\\"), "\"\\\\\"");
    assert_eq!(escape("\""), "\"\\\"\"");
    // No two different strings display alike.
    let odd = [
        " ", "  ", "\u{a0}", "\u{200b}", "\n", "\\n", "", "\u{fffd}", "e\u{301}", "\u{e9}",
    ];
    let shown: std::collections::BTreeSet<String> = odd.iter().map(|s| escape(s)).collect();
    assert_eq!(shown.len(), odd.len(), "{shown:?}");
}

#[test]
fn a_blob_converted_with_a_tokenizer_runs_text_alone() {
    let dir = temp_dir("text-blob");
    let path = converted_blob(&dir, 300, &tok_dir().join("bos_bpe.json"));
    let bytes = std::fs::read(&path).unwrap();
    // The tokenizer sits in the host-only trailer: the device part is a complete blob
    // without it, and old readers see the same model.
    let json = read_trailer(&bytes).unwrap().expect("a trailer");
    assert_eq!(json, std::fs::read(tok_dir().join("bos_bpe.json")).unwrap());
    let device = device_part(&bytes).unwrap();
    assert!(device.len() < bytes.len());
    assert_eq!(read_trailer(device).unwrap(), None);
    let model = Model::from_bytes(device).unwrap();
    assert_eq!(
        model.checksum(),
        Model::from_bytes(&bytes).unwrap().checksum()
    );
    // `heads --text` with nothing but the blob.
    let text = "Mr Hendricks wrote the parser. Then Mr Hendricks";
    let j = heads::json(&heads::HeadsArgs {
        model: path.clone(),
        prompt: PromptArgs::from_text(text),
        trace: None,
        run: 0,
        batch: 1,
        exclude_bos: false,
        exclude_current_token: false,
        json: true,
    })
    .unwrap();
    assert_eq!(j["source"], "text");
    let want = TextTokenizer::from_file(&tok_dir().join("bos_bpe.json"))
        .unwrap()
        .encode(text)
        .unwrap();
    assert_eq!(ids(&j["sequences"][0]), want);
    // A damaged trailer is an error, not a silent fallback.
    let mut bad = bytes.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let e = prompts::PromptArgs::from_text(text)
        .prompt(&Model::from_bytes(&bad).unwrap(), &bad)
        .unwrap_err();
    assert!(e.to_string().contains("trailer"), "{e}");
    // Without any tokenizer, --text says how to get one.
    let e = PromptArgs::from_text(text)
        .prompt(&model, device)
        .unwrap_err();
    assert!(e.to_string().contains("--tokenizer"), "{e}");
}
