//! GGUF: a small llama model written by the test in every supported tensor type (with Q/K in
//! llama.cpp's permuted order) loads to the same logits as the HF checkpoint of the same
//! weights; each block format decodes as `FORMATS.md` §5 defines; the embedded tokenizer
//! round-trips; malformed files are named errors.

use std::path::Path;

#[path = "../../../tests/support/byte_tokenizer.rs"]
mod byte_tokenizer;

use burn::tensor::{Device, Int, Tensor, TensorData};
use qlora_llama::{
    GgmlType, GgufFile, GgufValue, GgufWriter, LlamaConfig, LlamaForCausalLM, LlamaTokenizer,
    TokenizerFiles, ggml_dequantize, permute_rows, quantize_ggml,
};
use qlora_nf4::{QuantConfig, f16};
use qlora_nn::LoraApplier;

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV: usize = 2;
const HD: usize = 16;
const FFN: usize = 96;
const VOCAB: usize = 300;
const LAYERS: usize = 2;

/// Byte-level BPE vocabulary: the 256 byte symbols, a few merges, ChatML specials.
fn tokenizer_meta(w: &mut GgufWriter) {
    let mut tokens = vec![
        "<|endoftext|>".to_string(),
        "<|im_start|>".into(),
        "<|im_end|>".into(),
    ];
    tokens.extend(
        byte_tokenizer::byte_chars()
            .iter()
            .map(|(_, c)| c.to_string()),
    );
    let merges = ["Ġ t", "h e", "Ġt he", "i n"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    let mut types = vec![GgufValue::I64(3); 3];
    types.extend(std::iter::repeat_n(GgufValue::I64(1), tokens.len() - 3));
    let strs = |v: Vec<String>| GgufValue::Array(v.into_iter().map(GgufValue::Str).collect());
    w.meta("tokenizer.ggml.model", GgufValue::Str("gpt2".into()))
        .meta("tokenizer.ggml.pre", GgufValue::Str("smollm".into()))
        .meta("tokenizer.ggml.tokens", strs(tokens))
        .meta("tokenizer.ggml.token_type", GgufValue::Array(types))
        .meta(
            "tokenizer.ggml.merges",
            strs(merges.iter().map(|s| s.to_string()).collect()),
        )
        .meta("tokenizer.ggml.bos_token_id", GgufValue::U64(1))
        .meta("tokenizer.ggml.eos_token_id", GgufValue::U64(2));
}

/// Writes the same random model as GGUF (`dir/model.gguf`) and as a HF folder of the weights
/// the GGUF decodes to (`dir/hf`).
fn write_model(dir: &Path) {
    let mut rng = Lcg(7);
    let mut g = GgufWriter::new();
    g.meta("general.architecture", GgufValue::Str("llama".into()))
        .meta("llama.block_count", GgufValue::U64(LAYERS as u64))
        .meta("llama.context_length", GgufValue::U64(128))
        .meta("llama.embedding_length", GgufValue::U64(HIDDEN as u64))
        .meta("llama.feed_forward_length", GgufValue::U64(FFN as u64))
        .meta("llama.attention.head_count", GgufValue::U64(HEADS as u64))
        .meta("llama.attention.head_count_kv", GgufValue::U64(KV as u64))
        .meta("llama.rope.freq_base", GgufValue::F64(10000.0))
        .meta(
            "llama.attention.layer_norm_rms_epsilon",
            GgufValue::F64(1e-5),
        )
        .meta("llama.vocab_size", GgufValue::U64(VOCAB as u64));
    tokenizer_meta(&mut g);
    let mut hf: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut add = |g: &mut GgufWriter,
                   gname: &str,
                   hname: &str,
                   shape: Vec<usize>,
                   ty: GgmlType,
                   values: Vec<f32>,
                   perm: Option<usize>| {
        let stored = match perm {
            Some(heads) => permute_rows(&values, shape[0], shape[1], heads),
            None => values,
        };
        let bytes = quantize_ggml(ty, &stored);
        let decoded = ggml_dequantize(ty, &bytes);
        let hf_values = match perm {
            Some(heads) => qlora_llama::unpermute_rows(&decoded, shape[0], shape[1], heads),
            None => decoded,
        };
        g.raw_tensor(gname, &shape, ty, bytes);
        hf.push((hname.to_string(), shape, hf_values));
    };
    add(
        &mut g,
        "token_embd.weight",
        "model.embed_tokens.weight",
        vec![VOCAB, HIDDEN],
        GgmlType::Q8_0,
        rng.vec(VOCAB * HIDDEN, 1.0),
        None,
    );
    add(
        &mut g,
        "output_norm.weight",
        "model.norm.weight",
        vec![HIDDEN],
        GgmlType::F32,
        rng.vec(HIDDEN, 0.5).iter().map(|x| x + 1.0).collect(),
        None,
    );
    add(
        &mut g,
        "output.weight",
        "lm_head.weight",
        vec![VOCAB, HIDDEN],
        GgmlType::Q4_0,
        rng.vec(VOCAB * HIDDEN, 0.2),
        None,
    );
    for i in 0..LAYERS {
        let b = |n: &str| format!("blk.{i}.{n}.weight");
        let h = |n: &str| format!("model.layers.{i}.{n}.weight");
        let ty = [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q8_0,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::F32,
            GgmlType::Q4_1,
        ];
        let t = |k: usize| ty[(k + i) % ty.len()];
        add(
            &mut g,
            &b("attn_norm"),
            &h("input_layernorm"),
            vec![HIDDEN],
            GgmlType::F32,
            rng.vec(HIDDEN, 0.5).iter().map(|x| x + 1.0).collect(),
            None,
        );
        add(
            &mut g,
            &b("ffn_norm"),
            &h("post_attention_layernorm"),
            vec![HIDDEN],
            GgmlType::F32,
            rng.vec(HIDDEN, 0.5).iter().map(|x| x + 1.0).collect(),
            None,
        );
        add(
            &mut g,
            &b("attn_q"),
            &h("self_attn.q_proj"),
            vec![HEADS * HD, HIDDEN],
            t(0),
            rng.vec(HEADS * HD * HIDDEN, 0.3),
            Some(HEADS),
        );
        add(
            &mut g,
            &b("attn_k"),
            &h("self_attn.k_proj"),
            vec![KV * HD, HIDDEN],
            t(1),
            rng.vec(KV * HD * HIDDEN, 0.3),
            Some(KV),
        );
        add(
            &mut g,
            &b("attn_v"),
            &h("self_attn.v_proj"),
            vec![KV * HD, HIDDEN],
            t(2),
            rng.vec(KV * HD * HIDDEN, 0.3),
            None,
        );
        add(
            &mut g,
            &b("attn_output"),
            &h("self_attn.o_proj"),
            vec![HIDDEN, HEADS * HD],
            t(3),
            rng.vec(HIDDEN * HEADS * HD, 0.3),
            None,
        );
        add(
            &mut g,
            &b("ffn_gate"),
            &h("mlp.gate_proj"),
            vec![FFN, HIDDEN],
            t(4),
            rng.vec(FFN * HIDDEN, 0.3),
            None,
        );
        add(
            &mut g,
            &b("ffn_up"),
            &h("mlp.up_proj"),
            vec![FFN, HIDDEN],
            t(5),
            rng.vec(FFN * HIDDEN, 0.3),
            None,
        );
        add(
            &mut g,
            &b("ffn_down"),
            &h("mlp.down_proj"),
            vec![HIDDEN, FFN],
            t(6),
            rng.vec(HIDDEN * FFN, 0.3),
            None,
        );
    }
    g.write(dir.join("model.gguf")).unwrap();
    let hf_dir = dir.join("hf");
    std::fs::create_dir_all(&hf_dir).unwrap();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = hf
        .into_iter()
        .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views = bytes.iter().map(|(n, s, b)| {
        (
            n.clone(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
        )
    });
    safetensors::serialize_to_file(views, None, &hf_dir.join("model.safetensors")).unwrap();
    let gguf = qlora_llama::GgufModel::open(dir.join("model.gguf")).unwrap();
    std::fs::write(hf_dir.join("config.json"), gguf.config().to_hf_json()).unwrap();
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("qlora-gguf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn block_formats_decode_as_specified() {
    let d = f16::from_f32(0.5).to_bits().to_le_bytes();
    let m = f16::from_f32(-1.0).to_bits().to_le_bytes();
    // Q8_0: d·q.
    let mut q8 = d.to_vec();
    q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
    let v = ggml_dequantize(GgmlType::Q8_0, &q8);
    assert_eq!(
        v,
        (0..32).map(|i| 0.5 * (i - 16) as f32).collect::<Vec<_>>()
    );
    // Q4_0: d·(q − 8); element j < 16 is the low nibble of byte j, j ≥ 16 the high nibble.
    let mut q4 = d.to_vec();
    q4.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let v = ggml_dequantize(GgmlType::Q4_0, &q4);
    let want: Vec<f32> = (0..16)
        .map(|j| 0.5 * (j as f32 - 8.0))
        .chain((0..16).map(|j| 0.5 * ((15 - j) as f32 - 8.0)))
        .collect();
    assert_eq!(v, want);
    // Q4_1: d·q + m.
    let mut q41 = d.to_vec();
    q41.extend(m);
    q41.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let v = ggml_dequantize(GgmlType::Q4_1, &q41);
    let want: Vec<f32> = (0..16)
        .map(|j| 0.5 * j as f32 - 1.0)
        .chain((0..16).map(|j| 0.5 * (15 - j) as f32 - 1.0))
        .collect();
    assert_eq!(v, want);
    // The reference quantizers round-trip within half a step.
    let mut rng = Lcg(3);
    let x = rng.vec(64, 1.0);
    for (ty, tol) in [
        (GgmlType::Q8_0, 1.0 / 127.0),
        (GgmlType::Q4_0, 2.0 / 8.0),
        (GgmlType::Q4_1, 2.0 / 15.0),
    ] {
        let back = ggml_dequantize(ty, &quantize_ggml(ty, &x));
        let err = qlora_testenv::compare::max_abs_diff(&back, &x, &format!("{ty:?} round trip"));
        assert!(err <= tol * 0.51 + 1e-3, "{ty:?}: {err}");
    }
}

#[test]
fn gguf_model_equals_hf_checkpoint_of_the_same_weights() {
    let dir = tmp("model");
    write_model(&dir);
    let device = Device::flex();
    let applier = LoraApplier::base_only(None, &device);
    let from_gguf = LlamaForCausalLM::load(dir.join("model.gguf"), &applier).unwrap();
    let from_hf = LlamaForCausalLM::load(dir.join("hf"), &applier).unwrap();
    let config = LlamaConfig::load(dir.join("hf/config.json")).unwrap();
    assert_eq!(from_gguf.config, config);
    assert_eq!(
        (
            config.num_key_value_heads,
            config.head_dim,
            config.tie_word_embeddings
        ),
        (KV, HD, false)
    );
    let ids: Vec<i64> = (0..2 * 12).map(|i| (i * 37 + 5) % VOCAB as i64).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, 12]), &device);
    let a = from_gguf.forward(ids.clone(), None).into_data();
    let b = from_hf.forward(ids.clone(), None).into_data();
    assert_eq!(a, b, "GGUF and HF logits differ");
    // Quantized to NF4 on load: the same 4-bit model from either file.
    let nf4 = LoraApplier::base_only(Some(QuantConfig::qlora()), &device);
    let c = LlamaForCausalLM::load(dir.join("model.gguf"), &nf4).unwrap();
    let d = LlamaForCausalLM::load(dir.join("hf"), &nf4).unwrap();
    assert_eq!(
        c.forward(ids.clone(), None).into_data(),
        d.forward(ids, None).into_data()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn embedded_tokenizer_round_trips() {
    let dir = tmp("tok");
    write_model(&dir);
    let tok = LlamaTokenizer::from_gguf(&GgufFile::open(dir.join("model.gguf")).unwrap()).unwrap();
    for text in [
        "the quick brown fox",
        "digits 1234567890 and 3.14",
        "whitespace   runs\t\ttabs\n\n\nnewlines  ",
        "unicode: héllo wörld ✓ 日本語 🦀",
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    ] {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "{ids:?}");
    }
    // Specials are single tokens; digits are split one by one (the smollm pre-tokenizer).
    let ids = tok.encode("<|im_start|>42<|im_end|>", false).unwrap();
    assert_eq!(ids.len(), 4);
    assert_eq!((ids[0], ids[3]), (1, 2));
    // A merge applies: "the" after a space is one token.
    let the = tok.token_id("Ġthe").unwrap();
    assert!(tok.encode("in the", false).unwrap().contains(&the));
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    // The file has no chat template: rendering refuses by name (as transformers does) until
    // one is chosen.
    let hi = [qlora_llama::ChatMessage::new("user", "hi")];
    let e = tok.apply_chat_template(&hi, true).unwrap_err().to_string();
    assert!(
        e.contains("model.gguf") && e.contains("no chat template"),
        "{e}"
    );
    let mut tok = tok;
    tok.set_chat_template(qlora_llama::ChatTemplate::chatml());
    let chat = tok.apply_chat_template(&hi, true).unwrap();
    assert_eq!(
        chat,
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
    // Written as HF files (what `merge` does with a GGUF base), it reads back with the same ids,
    // special tokens and template.
    tok.save_dir(dir.join("hf-tok")).unwrap();
    let back = LlamaTokenizer::from_dir(dir.join("hf-tok")).unwrap();
    for text in ["the quick brown fox", "<|im_start|>user\nhi<|im_end|>"] {
        for special in [false, true] {
            assert_eq!(
                back.encode(text, special).unwrap(),
                tok.encode(text, special).unwrap(),
                "{text:?}"
            );
        }
    }
    assert_eq!((back.bos_id(), back.eos_id()), (Some(1), Some(2)));
    assert_eq!(back.apply_chat_template(&hi, true).unwrap(), chat);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn malformed_gguf_files_are_named_errors() {
    let dir = tmp("bad");
    write_model(&dir);
    let good = std::fs::read(dir.join("model.gguf")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "magic.gguf",
            [b"GGML".as_slice(), &good[4..]].concat(),
            "bad magic",
        ),
        (
            "version.gguf",
            [&good[..4], &9u32.to_le_bytes()[..], &good[8..]].concat(),
            "unsupported GGUF version 9",
        ),
        (
            "truncated.gguf",
            good[..good.len() - 100].to_vec(),
            "truncated",
        ),
        ("header.gguf", good[..60].to_vec(), "truncated"),
    ];
    for (name, bytes, want) in cases {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = LlamaForCausalLM::load(&p, &LoraApplier::base_only(None, &Device::flex()))
            .unwrap_err()
            .to_string();
        assert!(e.contains(name) && e.contains(want), "{name}: {e}");
    }
    // An unsupported tensor type (Q4_K, id 12) is refused by name.
    let mut w = GgufWriter::new();
    w.meta("general.architecture", GgufValue::Str("llama".into()));
    w.raw_tensor("token_embd.weight", &[1, 256], GgmlType::F32, vec![0; 1024]);
    let mut bytes = w.to_bytes();
    let pos = bytes
        .windows(17)
        .position(|x| x == b"token_embd.weight")
        .unwrap()
        + 17
        + 4
        + 16;
    bytes[pos..pos + 4].copy_from_slice(&12u32.to_le_bytes());
    let p = dir.join("qk.gguf");
    std::fs::write(&p, bytes).unwrap();
    let e = GgufFile::open(&p).unwrap_err().to_string();
    assert!(e.contains("token_embd.weight") && e.contains("Q4_K"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A GGUF header with one metadata array `key` of `count` elements of type `ety`, followed by
/// `tail` zero bytes.
fn array_header(key: &str, ety: u32, count: u64, tail: usize) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes()); // metadata pairs
    b.extend((key.len() as u64).to_le_bytes());
    b.extend(key.as_bytes());
    b.extend(9u32.to_le_bytes()); // array
    b.extend(ety.to_le_bytes());
    b.extend(count.to_le_bytes());
    b.extend(std::iter::repeat_n(0u8, tail));
    b
}

#[test]
fn array_counts_past_what_the_file_can_hold_are_refused_before_allocating() {
    let dir = tmp("arrays");
    std::fs::create_dir_all(&dir).unwrap();
    // Each case fits a one-byte-per-element bound but not the element type's real size, or
    // cannot fit at all: f32 (4 bytes), strings (8-byte length each), nested arrays (12 bytes),
    // u64::MAX elements.
    for (ety, count, tail) in [
        (6u32, 1_000u64, 1_500usize),
        (8, 1_000, 4_000),
        (9, 1_000, 8_000),
        (10, 1_000, 4_000),
        (0, u64::MAX, 100),
    ] {
        let p = dir.join(format!("array-{ety}.gguf"));
        std::fs::write(&p, array_header("tokenizer.ggml.scores", ety, count, tail)).unwrap();
        let e = GgufFile::open(&p).unwrap_err().to_string();
        assert!(
            e.contains("tokenizer.ggml.scores")
                && e.contains("needs at least")
                && e.contains(&p.display().to_string()),
            "type {ety}: {e}"
        );
    }
    // The same array that does fit is read.
    let p = dir.join("array-ok.gguf");
    std::fs::write(&p, array_header("tokenizer.ggml.scores", 6, 1_000, 4_000)).unwrap();
    let f = GgufFile::open(&p).unwrap();
    assert!(
        matches!(f.get("tokenizer.ggml.scores"), Some(GgufValue::Array(a)) if a.len() == 1_000)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
