//! The webhook announcing a new approval.
//!
//! Sent from a background task so it never delays the gateway's call: a
//! short timeout per attempt, a few retries with a growing pause, and
//! failures logged with the URL's scheme, host and path only (a query string
//! often carries a token, as Slack's incoming webhooks' paths do not).
//! The Slack format names requester, rule, model and the link, never the
//! prompt, masked or not: chat channels are not where prompts belong. Each
//! of those fields comes from a request, so each is shown as a literal
//! ([`slack_literal`]): bounded, `&`, `<`, `>` escaped (no `<!channel>`,
//! mention or `<url|link>` can form), inside inline code (no `*bold*`,
//! `_italic_` or `:emoji:`).

use std::time::Duration;

use serde_json::json;

use crate::approvals::ApprovalView;

/// Attempts per approval.
const ATTEMPTS: u32 = 3;
/// Timeout per attempt.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Longest field in a Slack message, in bytes (before escaping).
const SLACK_FIELD_BYTES: usize = 200;
/// Most approver groups named in a Slack message.
const SLACK_APPROVERS: usize = 10;

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

/// `text` as literal text in a Slack message: cut to [`SLACK_FIELD_BYTES`],
/// escaped as Slack's mrkdwn asks (`&`, `<`, `>`, so no link, mention or
/// `<!channel>` forms), inside inline code, which turns off the other
/// formatting (a backtick, which would end it, becomes `'`; line breaks and
/// other control characters become spaces).
pub fn slack_literal(text: &str) -> String {
    let text = crate::fields::bound(text, SLACK_FIELD_BYTES);
    if text.trim().is_empty() {
        return "(none)".to_owned();
    }
    let mut out = String::with_capacity(text.len() + 2);
    out.push('`');
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '`' => out.push('\''),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('`');
    out
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
                let model = approval
                    .model
                    .as_deref()
                    .map_or_else(|| "(no model)".to_owned(), slack_literal);
                let mut approvers: Vec<String> = approval
                    .approvers
                    .iter()
                    .take(SLACK_APPROVERS)
                    .map(|group| slack_literal(group))
                    .collect();
                if approval.approvers.len() > SLACK_APPROVERS {
                    approvers.push(format!(
                        "and {} more",
                        approval.approvers.len() - SLACK_APPROVERS
                    ));
                }
                json!({"text": format!(
                    "Approval needed: {} asks to use {model} ({}); rule {}. Approvers: {}. <{}|Review>",
                    slack_literal(who),
                    slack_literal(&approval.provider),
                    slack_literal(&approval.rule),
                    approvers.join(", "),
                    approval.answer.url.as_deref().unwrap_or_default(),
                )})
            }
        }
    }

    /// Sends in the background; returns at once.
    pub fn spawn_send(&self, approval: &ApprovalView) {
        let body = self.body(approval);
        let this = self.clone();
        let id = approval.answer.id.clone();
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn view() -> ApprovalView {
        let request = crate::approvals::OpenRequest {
            mode: warden_engine::protocol::ApprovalMode::Hold,
            issuer: "https://idp".into(),
            subject: "alice".into(),
            token_subject: None,
            groups: vec![],
            email: Some("alice@example.com".into()),
            provider: "openai".into(),
            model: Some("gpt-4o".into()),
            route: "/v1/chat/completions".into(),
            rule: "customer-data".into(),
            policy_version: 1,
            body_sha256: "a".repeat(64),
            masked_prompt: "summarize <!channel>".into(),
            approvers: vec!["leads".into()],
            ttl_seconds: 60,
        };
        let row = crate::approvals::new_row(request, 0).unwrap();
        crate::approvals::view(&row, 0, "https://warden.example/approvals")
    }

    fn slack_text(approval: &ApprovalView) -> String {
        let hook = Webhook::new("https://hooks.example/x", WebhookFormat::Slack).unwrap();
        hook.body(approval)["text"].as_str().unwrap().to_owned()
    }

    #[test]
    fn slack_literals_are_escaped_and_bounded() {
        assert_eq!(slack_literal("gpt-4o"), "`gpt-4o`");
        assert_eq!(
            slack_literal("<!channel> <http://evil.example|x> & *bold*"),
            "`&lt;!channel&gt; &lt;http://evil.example|x&gt; &amp; *bold*`"
        );
        // A backtick cannot end the code span; a line break cannot start a
        // line of its own (a quote, a list).
        assert_eq!(slack_literal("a`*b*`\n> quote"), "`a'*b*' &gt; quote`");
        assert_eq!(slack_literal(""), "(none)");
        let long = slack_literal(&"<".repeat(100_000));
        assert!(long.len() < 1200, "{}", long.len());
        assert!(long.ends_with("…[cut, 100000 bytes]`"), "{long}");
    }

    #[test]
    fn the_slack_message_quotes_every_field_from_the_request() {
        let approval = view();
        assert_eq!(
            slack_text(&approval),
            format!(
                "Approval needed: `alice@example.com` asks to use `gpt-4o` (`openai`); \
                 rule `customer-data`. Approvers: `leads`. \
                 <https://warden.example/approvals#{}|Review>",
                approval.answer.id
            )
        );
        let mut hostile = view();
        hostile.email = Some("<!channel>@x".into());
        hostile.model = Some("<http://evil.example|click> *now*".into());
        hostile.provider = "<@U123>".into();
        hostile.rule = "`<!here>`".into();
        hostile.approvers = (0..50).map(|i| format!("<#C{i}>")).collect();
        let text = slack_text(&hostile);
        // The one link is ours; nothing else can open a Slack control sequence.
        assert_eq!(text.matches('<').count(), 1, "{text}");
        assert_eq!(text.matches('>').count(), 1, "{text}");
        assert!(text.contains("`&lt;!channel&gt;@x`"), "{text}");
        assert!(
            text.contains("`&lt;http://evil.example|click&gt; *now*`"),
            "{text}"
        );
        assert!(text.contains("and 40 more"), "{text}");
        assert!(!text.contains("summarize"), "never the prompt: {text}");
        let mut huge = view();
        huge.model = Some("m".repeat(200 * 1024));
        assert!(slack_text(&huge).len() < 1000);
    }

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
