//! The webhook announcing a new approval.
//!
//! Sent from a background task so it never delays the gateway's call: a
//! short timeout per attempt, a few retries with a growing pause, and
//! failures logged with the URL's scheme, host and path only (a query string
//! often carries a token, as Slack's incoming webhooks' paths do not).
//! The Slack format names requester, rule, model and the link, never the
//! prompt, masked or not: chat channels are not where prompts belong.

use std::time::Duration;

use serde_json::json;

use crate::approvals::ApprovalView;

/// Attempts per approval.
const ATTEMPTS: u32 = 3;
/// Timeout per attempt.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The body shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WebhookFormat {
    /// `{"event":"approval.created","approval":{...}}`
    Json,
    /// Slack-compatible `{"text":"..."}`.
    Slack,
}

/// Where and how to announce new approvals.
#[derive(Clone)]
pub struct Webhook {
    url: String,
    format: WebhookFormat,
    http: reqwest::Client,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &redact(&self.url))
            .field("format", &self.format)
            .finish()
    }
}

/// `url` without its query string and fragment (which may hold secrets).
pub fn redact(url: &str) -> &str {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    &url[..end]
}

impl Webhook {
    /// A webhook to `url` (http or https).
    pub fn new(url: &str, format: WebhookFormat) -> Result<Self, String> {
        let lower = url.to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://")) {
            return Err(format!(
                "the approval webhook `{}` is not an http(s) URL",
                redact(url)
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(TIMEOUT)
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Webhook {
            url: url.to_owned(),
            format,
            http,
        })
    }

    /// The body sent for `approval`.
    pub fn body(&self, approval: &ApprovalView) -> serde_json::Value {
        match self.format {
            WebhookFormat::Json => {
                let mut shown = approval.clone();
                // The masked prompt stays on the approvers' page.
                shown.masked_prompt = String::new();
                json!({"event": "approval.created", "approval": shown})
            }
            WebhookFormat::Slack => {
                let who = approval.email.as_deref().unwrap_or(&approval.subject);
                let model = approval.model.as_deref().unwrap_or("(no model)");
                json!({"text": format!(
                    "Approval needed: {who} asks to use {model} ({}); rule `{}`. Approvers: {}. <{}|Review>",
                    approval.provider,
                    approval.rule,
                    approval.approvers.join(", "),
                    approval.url,
                )})
            }
        }
    }

    /// Sends in the background; returns at once.
    pub fn spawn_send(&self, approval: &ApprovalView) {
        let body = self.body(approval);
        let this = self.clone();
        let id = approval.id.clone();
        tokio::spawn(async move {
            for attempt in 1..=ATTEMPTS {
                match this.http.post(&this.url).json(&body).send().await {
                    Ok(response) if response.status().is_success() => {
                        tracing::debug!(approval = %id, "approval webhook delivered");
                        return;
                    }
                    Ok(response) => tracing::warn!(
                        approval = %id,
                        url = redact(&this.url),
                        status = response.status().as_u16(),
                        attempt,
                        "approval webhook refused"
                    ),
                    Err(error) => tracing::warn!(
                        approval = %id,
                        url = redact(&this.url),
                        error = %error.without_url(),
                        attempt,
                        "approval webhook failed"
                    ),
                }
                if attempt < ATTEMPTS {
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_not_logged() {
        assert_eq!(
            redact("https://hooks.example/x?token=s3cret"),
            "https://hooks.example/x"
        );
        assert_eq!(redact("http://h/p#frag"), "http://h/p");
        assert_eq!(redact("http://h/p"), "http://h/p");
        let hook = Webhook::new("http://h/p?k=secret", WebhookFormat::Slack);
        assert!(!format!("{hook:?}").contains("secret"));
    }
}
