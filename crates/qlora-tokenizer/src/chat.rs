//! Chat templates: the Jinja template a model ships (HF `tokenizer_config.json` or GGUF
//! `tokenizer.chat_template`), rendered with `minijinja` and Python-style string methods, in
//! the environment transformers renders them in (`trim_blocks` and `lstrip_blocks` on).
//!
//! transformers' `{% generation %}` … `{% endgeneration %}` blocks (what
//! `apply_chat_template(return_assistant_tokens_mask=True)` and TRL's `assistant_only_loss`
//! read) mark the text a model is trained to produce: [`ChatTemplate::render_spans`] returns
//! their byte ranges in the rendered text. A model without a template has none here:
//! transformers refuses to guess one, and so does rendering (ChatML only when asked for, with
//! [`ChatTemplate::chatml`]).

use std::ops::Range;

use minijinja::{Environment, Error, ErrorKind, context};
use serde::{Deserialize, Serialize};

use crate::TokenizerError;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message from `role`.
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// ChatML, the template a user may choose for a model that has none.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Where a `{% generation %}` block opens, in the rendered text (a private-use character, cut
/// out of the text before it is returned).
const GEN_START: char = '\u{F0000}';
/// Where a `{% generation %}` block closes.
const GEN_END: char = '\u{F0001}';

/// A chat rendered as text, with the byte ranges of its `{% generation %}` blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedChat {
    /// The text.
    pub text: String,
    /// The byte ranges of `text` the template marks as generated (empty without markers).
    pub generation: Vec<Range<usize>>,
}

/// A compiled chat template.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    env: Environment<'static>,
    path: String,
    /// Why the model's template cannot be used (rendering fails with it): none at all, or a list
    /// of named templates without a `default` one, as transformers refuses to choose.
    unusable: Option<String>,
    /// Whether the template has `{% generation %}` blocks.
    has_generation: bool,
}

/// `source` with each `{% generation %}` / `{% endgeneration %}` tag (minijinja has no such
/// tag) replaced by a block that prints a marker, keeping the tag's whitespace control; and
/// whether there was any.
fn mark_generation(source: &str) -> (String, bool) {
    let mut out = String::with_capacity(source.len() + 64);
    let mut rest = source;
    let mut found = false;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        let tag = &rest[at..];
        let Some(close) = tag.find("%}") else {
            out.push_str(tag);
            return (out, found);
        };
        let inner = &tag[2..close];
        let (left, body) = match inner.strip_prefix(['-', '+']) {
            Some(b) => (&inner[..1], b),
            None => ("", inner),
        };
        let (body, right) = match body.strip_suffix(['-', '+']) {
            Some(b) => (b, &body[body.len() - 1..]),
            None => (body, ""),
        };
        let marker = match body.trim() {
            "generation" => Some(GEN_START),
            "endgeneration" => Some(GEN_END),
            _ => None,
        };
        match marker {
            Some(m) => {
                found = true;
                out.push_str(&format!(
                    "{{%{left} if true %}}{{{{ '{m}' }}}}{{% endif {right}%}}"
                ));
            }
            None => out.push_str(&tag[..close + 2]),
        }
        rest = &tag[close + 2..];
    }
    out.push_str(rest);
    (out, found)
}

impl ChatTemplate {
    /// Compiles `template`; `path` names its file in errors. `None` is a model without a
    /// template: rendering with it is an error that says so (as transformers raises), until
    /// the user picks one ([`ChatTemplate::chatml`], or a file).
    pub fn new(template: Option<&str>, path: &str) -> Result<Self, TokenizerError> {
        let mut t = Self::compile(template.unwrap_or(CHATML_TEMPLATE), path)?;
        if template.is_none() {
            t.unusable = Some(
                "the model has no chat template (transformers refuses to guess one): choose one \
                 explicitly, such as ChatML or a template file"
                    .into(),
            );
        }
        Ok(t)
    }

    /// ChatML ([`CHATML_TEMPLATE`]), chosen by the user for a model that has no template.
    pub fn chatml() -> Self {
        Self::compile(CHATML_TEMPLATE, "ChatML").expect("ChatML compiles")
    }

    /// Reads a template file (Jinja text, as `chat_template.jinja`).
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| TokenizerError::io(path, e))?;
        Self::compile(&text, &path.display().to_string())
    }

    /// Whether rendering works (the model has a usable template).
    pub fn is_usable(&self) -> bool {
        self.unusable.is_none()
    }

    /// Whether the template marks generated text with `{% generation %}` blocks.
    pub fn has_generation_blocks(&self) -> bool {
        self.has_generation
    }

    fn compile(template: &str, path: &str) -> Result<Self, TokenizerError> {
        let source = template.to_string();
        let (marked, has_generation) = mark_generation(&source);
        let mut env = Environment::new();
        // transformers' environment: a block tag's trailing newline and a line's leading
        // whitespace before one are not output.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", marked)
            .map_err(|e| TokenizerError::Invalid {
                path: path.to_string(),
                problem: format!("chat template does not compile: {e}"),
            })?;
        Ok(Self {
            source,
            env,
            path: path.to_string(),
            unusable: None,
            has_generation,
        })
    }

    /// The template of an HF `chat_template` value: a string, or a list of
    /// `{"name", "template"}` objects of which transformers uses the one named `default`
    /// (without one, rendering is an error naming the templates, as in transformers).
    pub fn from_hf_value(
        value: Option<&serde_json::Value>,
        path: &str,
    ) -> Result<Self, TokenizerError> {
        use serde_json::Value;
        let bad = |problem: String| TokenizerError::Invalid {
            path: path.to_string(),
            problem,
        };
        match value {
            None | Some(Value::Null) => Self::new(None, path),
            Some(Value::String(t)) => Self::new(Some(t), path),
            Some(Value::Array(list)) => {
                let mut named = Vec::with_capacity(list.len());
                for item in list {
                    let name = item.get("name").and_then(Value::as_str);
                    let template = item.get("template").and_then(Value::as_str);
                    match (name, template) {
                        (Some(n), Some(t)) => named.push((n, t)),
                        _ => {
                            return Err(bad(
                                "`chat_template` is a list whose items are not {\"name\", \"template\"} objects"
                                    .into(),
                            ));
                        }
                    }
                }
                if let Some((_, t)) = named.iter().find(|(n, _)| *n == "default") {
                    return Self::new(Some(t), path);
                }
                let names: Vec<&str> = named.iter().map(|(n, _)| *n).collect();
                let mut unusable = Self::compile(CHATML_TEMPLATE, path)?;
                unusable.unusable = Some(format!(
                    "the model has several chat templates ({}) and none is named `default`",
                    names.join(", ")
                ));
                Ok(unusable)
            }
            Some(_) => Err(bad(
                "`chat_template` is neither a string nor a list of named templates".into(),
            )),
        }
    }

    /// The template text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages`; with `add_generation_prompt`, the text that opens the assistant's
    /// reply is appended.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String, TokenizerError> {
        Ok(self
            .render_spans(messages, add_generation_prompt, bos_token, eos_token)?
            .text)
    }

    /// [`ChatTemplate::render`], with the byte ranges of the `{% generation %}` blocks.
    pub fn render_spans(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<RenderedChat, TokenizerError> {
        let bad = |problem: String| TokenizerError::Invalid {
            path: self.path.clone(),
            problem,
        };
        if self.has_generation
            && let Some(i) = messages
                .iter()
                .position(|m| m.content.contains([GEN_START, GEN_END]))
        {
            return Err(bad(format!(
                "message {} holds a private-use character (U+F0000/U+F0001) that marks generated text",
                i + 1
            )));
        }
        let raw = self.render_raw(messages, add_generation_prompt, bos_token, eos_token)?;
        if !self.has_generation {
            return Ok(RenderedChat {
                text: raw,
                generation: Vec::new(),
            });
        }
        let mut text = String::with_capacity(raw.len());
        let mut generation = Vec::new();
        let mut open: Option<usize> = None;
        for c in raw.chars() {
            match c {
                GEN_START if open.is_none() => open = Some(text.len()),
                GEN_END => match open.take() {
                    Some(s) => generation.push(s..text.len()),
                    None => {
                        return Err(bad(
                            "`{% endgeneration %}` without `{% generation %}`".into()
                        ));
                    }
                },
                GEN_START => return Err(bad("nested `{% generation %}` blocks".into())),
                c => text.push(c),
            }
        }
        if open.is_some() {
            return Err(bad(
                "`{% generation %}` without `{% endgeneration %}`".into()
            ));
        }
        generation.retain(|r| !r.is_empty());
        Ok(RenderedChat { text, generation })
    }

    fn render_raw(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String, TokenizerError> {
        if let Some(problem) = &self.unusable {
            return Err(TokenizerError::Invalid {
                path: self.path.clone(),
                problem: problem.clone(),
            });
        }
        let t = self.env.get_template("chat").expect("added in new");
        t.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_token,
            eos_token => eos_token,
        })
        .map_err(|e| TokenizerError::Invalid {
            path: self.path.clone(),
            problem: format!("rendering the chat template: {e}"),
        })
    }
}
