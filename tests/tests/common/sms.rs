//! Herald sending SMS through Twilio in the provider sandbox: its configuration, users with
//! phones, a template, and the notifications to submit.

use super::client::Api;
use serde_json::{Value, json};

/// `[channels]` and `[providers.twilio]` pointing at the sandbox on `base_url`, sending from
/// `from`, with the provider timeout `timeout` (below the sandbox's hold, so holds time out).
pub fn twilio_config(base_url: &str, from: &str, timeout: &str) -> String {
    format!(
        "[channels]\nsms = \"twilio\"\n\n[providers.twilio]\naccount_sid = \"ACsandbox\"\nauth_token = \"t\"\n\
         from = \"{from}\"\nbase_url = \"{base_url}\"\ntimeout = \"{timeout}\"\nsegments_per_second = 100000\n"
    )
}

/// Creates `users` users `u0…` with a phone each, and the template `otp`.
pub async fn create_users_and_template(api: &Api, users: usize) {
    for u in 0..users {
        let user = json!({ "phone": format!("+1415555{u:04}"), "locale": "en" });
        api.put_user(&format!("u{u}"), &user).await.expect(201, "PUT /v1/users");
    }
    let template = json!({ "id": "otp", "locale": "en", "sms": { "text": "Your code is {{ code }}" } });
    api.post_template(&template).await.expect(201, "POST /v1/templates");
}

/// `n` transactional SMS spread over the users, with idempotency keys `{prefix}-{i}`.
pub fn notifications(n: usize, users: usize, prefix: &str) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({ "user_id": format!("u{}", i % users), "template": "otp", "channels": ["sms"],
                    "category": "transactional", "idempotency_key": format!("{prefix}-{i}"),
                    "data": { "code": i } })
        })
        .collect()
}
