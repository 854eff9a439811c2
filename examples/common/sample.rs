//! `finetune`'s before/after sample answers: the model's greedy reply to a question, prompted
//! as transformers' chat pipeline prompts it.

use burn::module::Module;
use burn_qlora::llama::{
    ChatMessage, GenerationConfig, LlamaForCausalLM, LlamaTokenizer, Sampling,
};

/// The model's greedy answer to `question` (in its chat template when it has one). Errors if
/// the prompt's ids are not all in the model's vocabulary.
pub fn sample_answer(
    model: &LlamaForCausalLM,
    tok: &LlamaTokenizer,
    question: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let valid = model.valid();
    // A chat prompt as transformers' `apply_chat_template(tokenize=True)` makes it (the template
    // writes its own bos); a model without a template gets the plain question with the
    // tokenizer's special tokens.
    let ids = match tok.apply_chat_template(&[ChatMessage::new("user", question)], true) {
        Ok(prompt) => tok.encode(&prompt, false)?,
        Err(_) => tok.encode(question, true)?,
    };
    if ids.is_empty() {
        return Ok(String::new());
    }
    valid.check_token_ids(&ids, "the sample prompt")?;
    let cfg = GenerationConfig {
        max_new_tokens: 40,
        sampling: Sampling::Greedy,
        stop_tokens: tok.eos_id().into_iter().collect(),
    };
    let out = valid.generate(&ids, &cfg, |_| true);
    Ok(tok.decode(&out, true)?)
}
