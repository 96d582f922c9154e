//! An `ALERT` as Alertmanager's API v2 takes it: one `postableAlert` posted to
//! `<adapters.alert.alertmanager.url>/api/v2/alerts`.
//!
//! - `labels`: `alertname` (the payload's `alertname`, else its `rule`, else `orchestrator`),
//!   `severity`, `key` (the payload's, else the severity, as a rule's `alert` keys it), `rule`
//!   when the payload names one, the payload's `labels` and the configured
//!   `alertmanager.labels`. The same labels are the same alert to Alertmanager.
//! - `annotations`: `summary` (the message), `action_id`, `idempotency_key`.
//! - `startsAt`: when the action was enqueued. `endsAt`: with `"resolved": true` in the payload,
//!   now, which resolves the alert; otherwise now + `resolve_after_seconds`, so a rule that stops
//!   alerting lets it resolve, and one that keeps alerting keeps it firing.
//! - `generatorURL`: `<generator_base_url>/api/ticks/<tick>/explain` (the admin API's explain of
//!   the tick that raised it: the payload's `tick_id`, else the tick that runs the attempt), or
//!   `<generator_base_url>/` with no tick; absent without a base.
//!
//! A payload it cannot turn into a valid alert is a permanent error naming the field. This
//! module builds the request; sending is [`super::http`]'s.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::config::{AlertmanagerConfig, OWN_LABELS, is_label_name};
use crate::adapters::{AdapterError, WebhookTarget};
use crate::model::{Action, Severity};

/// The path alerts are posted to, below Alertmanager's base URL.
pub const ALERTS_PATH: &str = "/api/v2/alerts";

/// `alertname` when the payload names neither an `alertname` nor a `rule`.
pub const DEFAULT_ALERTNAME: &str = "orchestrator";

/// Alertmanager as the `ALERT` adapter sends to it.
#[derive(Clone, Debug)]
pub struct Alertmanager {
    config: AlertmanagerConfig,
    target: WebhookTarget,
}

impl Alertmanager {
    pub fn new(config: AlertmanagerConfig) -> Self {
        let target = WebhookTarget {
            name: "alertmanager".to_string(),
            url: format!("{}{ALERTS_PATH}", config.url),
            method: "POST".to_string(),
            headers: BTreeMap::new(),
            secret_env: None,
            secret: None,
            timeout: None,
        };
        Alertmanager { config, target }
    }

    /// Where the request goes, as the HTTP client's target.
    pub fn target(&self) -> &WebhookTarget {
        &self.target
    }

    /// The request body for `action` at `now`: a JSON array of one alert. `tick_id` is the tick
    /// running the attempt, used when the payload names none.
    pub fn request(
        &self,
        action: &Action,
        tick_id: Option<i64>,
        severity: Severity,
        message: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<u8>, AdapterError> {
        let p = &action.payload;
        let field = |name: &str| -> Result<Option<&str>, AdapterError> {
            match p.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.as_str())),
                Some(_) => {
                    Err(AdapterError::permanent(format!("ALERT payload field '{name}' must be a non-empty string")))
                }
            }
        };
        let rule = field("rule")?;
        let key = field("key")?.unwrap_or(severity.as_str());
        let alertname = field("alertname")?.or(rule).unwrap_or(DEFAULT_ALERTNAME);
        let resolved = match p.get("resolved") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(AdapterError::permanent("ALERT payload field 'resolved' must be true or false")),
        };
        let tick =
            match p.get("tick_id") {
                None | Some(Value::Null) => tick_id,
                Some(v) => Some(v.as_i64().filter(|t| *t > 0).ok_or_else(|| {
                    AdapterError::permanent("ALERT payload field 'tick_id' must be a positive integer")
                })?),
            };

        let mut labels = self.config.labels.clone();
        if let Some(extra) = p.get("labels").filter(|v| !v.is_null()) {
            let Some(extra) = extra.as_object() else {
                return Err(AdapterError::permanent("ALERT payload field 'labels' must be an object of strings"));
            };
            for (name, value) in extra {
                if !is_label_name(name) {
                    return Err(AdapterError::permanent(format!(
                        "ALERT payload field 'labels': '{name}' is not a label name ([a-zA-Z_][a-zA-Z0-9_]*, not __...)"
                    )));
                }
                if OWN_LABELS.contains(&name.as_str()) {
                    return Err(AdapterError::permanent(format!(
                        "ALERT payload field 'labels': '{name}' comes from the payload's own field, not from labels"
                    )));
                }
                let Some(value) = value.as_str() else {
                    return Err(AdapterError::permanent(format!(
                        "ALERT payload field 'labels': the value of '{name}' must be a string"
                    )));
                };
                labels.insert(name.clone(), value.to_string());
            }
        }
        labels.insert("alertname".into(), alertname.into());
        labels.insert("severity".into(), severity.as_str().into());
        labels.insert("key".into(), key.into());
        if let Some(rule) = rule {
            labels.insert("rule".into(), rule.into());
        }

        let ends_at = if resolved {
            now
        } else {
            chrono::Duration::from_std(self.config.resolve_after)
                .ok()
                .and_then(|d| now.checked_add_signed(d))
                .unwrap_or(DateTime::<Utc>::MAX_UTC)
        };
        let starts_at = action.created_at.min(now);
        let time = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
        let mut alert = json!({
            "labels": labels,
            "annotations": {
                "summary": message,
                "action_id": action.id.to_string(),
                "idempotency_key": action.idempotency_key,
            },
            "startsAt": time(starts_at),
            "endsAt": time(ends_at),
        });
        if let Some(base) = &self.config.generator_base_url {
            alert["generatorURL"] = Value::String(match tick {
                Some(t) => format!("{base}/api/ticks/{t}/explain"),
                None => format!("{base}/"),
            });
        }
        serde_json::to_vec(&[alert])
            .map_err(|e| AdapterError::permanent(format!("ALERT cannot be encoded for Alertmanager: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn am(base: Option<&str>) -> Alertmanager {
        Alertmanager::new(AlertmanagerConfig {
            url: "http://am:9093".into(),
            generator_base_url: base.map(str::to_string),
            resolve_after: Duration::from_secs(300),
            labels: [("env".to_string(), "prod".to_string())].into(),
        })
    }

    fn action(payload: Value) -> Action {
        let at: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap_or_default();
        Action {
            id: 7,
            idempotency_key: "alert-1".into(),
            action_type: "ALERT".into(),
            payload,
            status: crate::model::ActionStatus::Running,
            priority: 0,
            not_before: at,
            attempts: 1,
            max_attempts: 3,
            last_error: None,
            claimed_epoch: None,
            claimed_at: None,
            created_at: at,
            updated_at: at,
            finished_at: None,
            decode_error: None,
            traceparent: None,
            approval: None,
            expires_at: None,
            claim: None,
        }
    }

    fn alert(am: &Alertmanager, payload: Value, tick: Option<i64>) -> Result<Value, AdapterError> {
        let now: DateTime<Utc> = "2026-01-01T00:01:00Z".parse().unwrap_or_default();
        let bytes = am.request(&action(payload), tick, Severity::Critical, "m", now)?;
        let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        Ok(v[0].clone())
    }

    #[test]
    fn a_rule_alert_fires_with_its_labels_and_the_ticks_explain() {
        let v = alert(
            &am(Some("https://orch.example:9464")),
            json!({"severity": "critical", "message": "m", "key": "k", "rule": "critical_health", "tick_id": 42}),
            Some(43),
        )
        .unwrap();
        assert_eq!(
            v["labels"],
            json!({"alertname": "critical_health", "severity": "critical", "key": "k", "rule": "critical_health", "env": "prod"})
        );
        assert_eq!(v["annotations"]["summary"], "m");
        assert_eq!(v["startsAt"], "2026-01-01T00:00:00.000Z");
        assert_eq!(v["endsAt"], "2026-01-01T00:06:00.000Z", "now + resolve_after");
        assert_eq!(v["generatorURL"], "https://orch.example:9464/api/ticks/42/explain", "the raising tick's");
    }

    #[test]
    fn resolved_ends_now_and_defaults_fill_in() {
        let v = alert(&am(Some("http://o")), json!({"message": "m", "resolved": true}), Some(9)).unwrap();
        assert_eq!(v["endsAt"], "2026-01-01T00:01:00.000Z");
        assert_eq!(v["labels"]["alertname"], DEFAULT_ALERTNAME);
        assert_eq!(v["labels"]["key"], "critical", "a rule's alert without a key is keyed by severity");
        assert!(v["labels"].get("rule").is_none());
        assert_eq!(v["generatorURL"], "http://o/api/ticks/9/explain", "the attempt's tick");
        assert_eq!(alert(&am(Some("http://o")), json!({"message": "m"}), None).unwrap()["generatorURL"], "http://o/");
        assert!(alert(&am(None), json!({"message": "m"}), Some(1)).unwrap().get("generatorURL").is_none());
    }

    #[test]
    fn payload_labels_are_checked() {
        let with = |labels: Value| alert(&am(None), json!({"message": "m", "labels": labels}), None);
        assert_eq!(with(json!({"team": "db"})).unwrap()["labels"]["team"], "db");
        let err = |labels: Value| with(labels).unwrap_err().to_string();
        assert!(err(json!({"severity": "info"})).contains("'severity' comes from the payload's own field"));
        assert!(err(json!({"a-b": "x"})).contains("'a-b' is not a label name"));
        assert!(err(json!({"team": 1})).contains("the value of 'team' must be a string"));
        assert!(err(json!(["x"])).contains("'labels' must be an object"));
        let bad = |payload: Value| alert(&am(None), payload, None).unwrap_err().to_string();
        assert!(bad(json!({"message": "m", "resolved": "yes"})).contains("'resolved' must be true or false"));
        assert!(bad(json!({"message": "m", "tick_id": -1})).contains("'tick_id' must be a positive integer"));
        assert!(bad(json!({"message": "m", "key": ""})).contains("'key' must be a non-empty string"));
    }
}
