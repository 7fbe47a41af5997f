//! Text ↔ tokens with a Hugging Face tokenizer (`tokenizer.json`, read by the
//! `tokenizers` crate), kept on the host: the device never tokenizes, it only prints the
//! blob's vocabulary strings.
//!
//! - [`TextTokenizer::encode`] is `tokenizers`' `encode(text, add_special_tokens=True)`:
//!   the tokenizer's own post-processor decides whether a BOS is added.
//!   [`TextTokenizer::to_tokens`] with `prepend_bos` is TransformerLens's `to_tokens`
//!   (exactly one BOS at the front, whether or not the post-processor adds one).
//! - [`TextTokenizer::token_strings`] is TL's `to_str_tokens` over the whole vocabulary
//!   (each token decoded alone), what `convert --tokenizer` stores as the blob's vocabulary.
//! - The tokenizer travels with the blob in its host-only trailer ([`append_trailer`],
//!   [`read_trailer`]; core/BLOB_FORMAT.md): bytes after the blob's `total_len`, which the
//!   device neither flashes nor reads.

use std::path::Path;

use tinylens_core::Model;

use crate::{Error, Result};

/// A tokenizer and where it came from (for messages).
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    /// The tokenizer's JSON, as read (what goes into a blob's trailer).
    json: Vec<u8>,
    source: String,
}

/// Spellings of a beginning-of-sequence token, when the tokenizer does not say which.
const BOS_NAMES: &[&str] = &[
    "<|endoftext|>",
    "<|begin_of_text|>",
    "<s>",
    "<bos>",
    "<|bos|>",
    "[BOS]",
    "[CLS]",
];

impl TextTokenizer {
    /// Parses a `tokenizer.json`.
    pub fn from_json(json: &[u8], source: &str) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(json)
            .map_err(|e| Error::Argument(format!("{source}: not a tokenizer.json: {e}")))?;
        Ok(TextTokenizer {
            inner,
            json: json.to_vec(),
            source: source.to_string(),
        })
    }

    /// Reads a `tokenizer.json` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let json = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&json, &path.display().to_string())
    }

    /// The JSON this tokenizer was read from.
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    /// Token ids of `text`, as `encode(text, add_special_tokens=True)` gives them.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::Argument(format!("tokenizing with {}: {e}", self.source)))?;
        Ok(enc.get_ids().to_vec())
    }

    /// TransformerLens's `to_tokens(text, prepend_bos)`: with `prepend_bos`, exactly one
    /// BOS before the text (TL prepends the BOS string and removes the one a
    /// post-processor adds); without it, the text's tokens with what the post-processor
    /// adds.
    pub fn to_tokens(&self, text: &str, prepend_bos: bool) -> Result<Vec<u32>> {
        let mut ids = self.encode(text)?;
        if prepend_bos {
            let bos = self.bos().ok_or_else(|| {
                Error::Argument(format!(
                    "--prepend-bos: {} has no BOS token (none of {})",
                    self.source,
                    BOS_NAMES.join(" ")
                ))
            })?;
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// The BOS token: the first special token the post-processor puts before a text, else
    /// a special token spelled like a BOS.
    pub fn bos(&self) -> Option<u32> {
        if let Ok(e) = self.inner.encode("", true) {
            if let (Some(&id), Some(&special)) =
                (e.get_ids().first(), e.get_special_tokens_mask().first())
            {
                if special == 1 {
                    return Some(id);
                }
            }
        }
        let added = self.inner.get_added_tokens_decoder();
        BOS_NAMES.iter().find_map(|name| {
            added
                .iter()
                .find(|(_, t)| t.special && t.content == *name)
                .map(|(id, _)| *id)
        })
    }

    /// Text of `ids` (special tokens kept), as `decode(ids)` gives it.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Argument(format!("decoding with {}: {e}", self.source)))
    }

    /// Text of `ids` without the special tokens (BOS and the like).
    pub fn decode_text(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::Argument(format!("decoding with {}: {e}", self.source)))
    }

    /// Size of the vocabulary with the added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Every token decoded alone (TL's `to_str_tokens`): `d_vocab` strings; ids the
    /// tokenizer does not know are empty.
    pub fn token_strings(&self, d_vocab: u32) -> Vec<String> {
        (0..d_vocab)
            .map(|t| match self.inner.id_to_token(t) {
                Some(_) => self.inner.decode(&[t], false).unwrap_or_default(),
                None => String::new(),
            })
            .collect()
    }

    /// Checks that the tokenizer fits a model of `d_vocab` tokens.
    pub fn check_fits(&self, d_vocab: u32) -> Result<()> {
        let n = self.vocab_size();
        if n > d_vocab as usize {
            return Err(Error::Argument(format!(
                "{} has {n} tokens; the model has d_vocab = {d_vocab}",
                self.source
            )));
        }
        Ok(())
    }
}

/// Magic of the host-only trailer.
pub const TRAILER_MAGIC: &[u8; 8] = b"TLNSHOST";
/// Tag of the tokenizer entry (a `tokenizer.json`, UTF-8).
pub const TOKENIZER_TAG: &[u8; 4] = b"TOKJ";

/// `blob` (a complete blob, `total_len` bytes) followed by a host-only trailer that holds
/// `tokenizer_json`.
pub fn append_trailer(blob: &[u8], tokenizer_json: &[u8]) -> Result<Vec<u8>> {
    let len = u32::try_from(tokenizer_json.len())
        .map_err(|_| Error::Argument("the tokenizer is larger than 4 GiB".into()))?;
    let mut payload = Vec::with_capacity(tokenizer_json.len() + 8);
    payload.extend_from_slice(TOKENIZER_TAG);
    payload.extend_from_slice(&len.to_le_bytes());
    payload.extend_from_slice(tokenizer_json);
    let mut out = Vec::with_capacity(blob.len() + payload.len() + 16);
    out.extend_from_slice(blob);
    out.extend_from_slice(TRAILER_MAGIC);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&tinylens_core::blob::CRC.checksum(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// The bytes a device flashes: the blob without its host-only trailer.
pub fn device_part(bytes: &[u8]) -> Result<&[u8]> {
    let total = Model::from_bytes(bytes)?.as_bytes().len();
    Ok(&bytes[..total])
}

/// The tokenizer JSON in the host-only trailer of `bytes` (a blob file), if it has one.
/// A trailer that is present but damaged is an error.
pub fn read_trailer(bytes: &[u8]) -> Result<Option<&[u8]>> {
    let total = Model::from_bytes(bytes)?.as_bytes().len();
    let rest = &bytes[total..];
    if rest.len() < 16 || &rest[..8] != TRAILER_MAGIC {
        return Ok(None);
    }
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let len = u32_at(rest, 8) as usize;
    let crc = u32_at(rest, 12);
    let bad = |what: &str| Error::Argument(format!("the blob's host-only trailer is {what}"));
    let payload = rest.get(16..16 + len).ok_or_else(|| bad("cut short"))?;
    if tinylens_core::blob::CRC.checksum(payload) != crc {
        return Err(bad("damaged (CRC mismatch)"));
    }
    let mut at = 0;
    while at + 8 <= payload.len() {
        let n = u32_at(payload, at + 4) as usize;
        let data = payload
            .get(at + 8..at + 8 + n)
            .ok_or_else(|| bad("malformed"))?;
        if &payload[at..at + 4] == TOKENIZER_TAG {
            return Ok(Some(data));
        }
        at += 8 + n;
    }
    Ok(None)
}

/// The tokenizer of a blob file: `explicit` (a `tokenizer.json` given on the command
/// line) if any, else the one in the blob's host-only trailer.
pub fn for_blob(bytes: &[u8], explicit: Option<&Path>) -> Result<Option<TextTokenizer>> {
    if let Some(p) = explicit {
        return TextTokenizer::from_file(p).map(Some);
    }
    match read_trailer(bytes)? {
        Some(json) => TextTokenizer::from_json(json, "the blob's tokenizer").map(Some),
        None => Ok(None),
    }
}

/// A token string for display: Rust's escaping (`"\n"`, `"\u{200b}"`, `"\\"`), in quotes,
/// so spaces, newlines and odd Unicode are visible and no two strings look alike.
pub fn escape(s: &str) -> String {
    format!("{s:?}")
}
