//! Chat templates: the Jinja template a model ships (HF `tokenizer_config.json` or GGUF
//! `tokenizer.chat_template`), rendered with `minijinja` and Python-style string methods.

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

/// ChatML, used when a model names no template.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A compiled chat template.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    env: Environment<'static>,
    path: String,
    /// Why the model's template cannot be used (rendering fails with it): a list of named
    /// templates without a `default` one, as transformers refuses to choose.
    unusable: Option<String>,
}

impl ChatTemplate {
    /// Compiles `template` (ChatML when `None`); `path` names its file in errors.
    pub fn new(template: Option<&str>, path: &str) -> Result<Self, TokenizerError> {
        let source = template.unwrap_or(CHATML_TEMPLATE).to_string();
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.clone())
            .map_err(|e| TokenizerError::Invalid {
                path: path.to_string(),
                problem: format!("chat template does not compile: {e}"),
            })?;
        Ok(Self {
            source,
            env,
            path: path.to_string(),
            unusable: None,
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
                let mut unusable = Self::new(None, path)?;
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
