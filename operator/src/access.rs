//! What a pool may make the operator do with its own identity: call only queue endpoints the
//! install allows, and read only Secrets that opt in, and of those only the credential keys.
//!
//! Whoever may create a QueueWorkerPool names the endpoint, the queue URL and the Secret; the
//! operator acts with its own service account and network position. Without these checks a
//! pool could make it send a Secret's value (as a SigV4 access key id) to any server. A refused
//! pool gets `Ready=False` with the reason and a Warning Event, and no call is made.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use qwp_pool::contract::{AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY};
pub use qwp_pool::crd::{CREDENTIAL_KEYS_ANNOTATION, CREDENTIALS_LABEL};
use qwp_pool::crd::{CredentialsSecretRef, QueueSpec};
use reqwest::Url;

/// The default allowlist: AWS SQS in every commercial region.
pub const DEFAULT_ALLOWED_ENDPOINTS: &str = "https://sqs.*.amazonaws.com";

/// Why the operator refuses to act for a pool.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("queue.endpoint {0} is not among the endpoints this operator may call ({1})")]
    EndpointNotAllowed(String, String),
    #[error("queue.url {0} is not under an endpoint this operator may call ({1})")]
    QueueUrlNotAllowed(String, String),
    #[error("queue.region {0:?} is not an AWS region name (lowercase letters, digits and '-')")]
    InvalidRegion(String),
    #[error(
        "Secret {0} is not labelled {label}=\"true\"; the operator reads only Secrets that opt in",
        label = CREDENTIALS_LABEL
    )]
    SecretNotOptedIn(String),
    #[error(
        "Secret {secret} does not allow key {key}: use {AWS_ACCESS_KEY_ID}/{AWS_SECRET_ACCESS_KEY} or list it in the Secret's {annotation} annotation",
        annotation = CREDENTIAL_KEYS_ANNOTATION
    )]
    SecretKeyNotAllowed { secret: String, key: String },
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::EndpointNotAllowed(..) => "EndpointNotAllowed",
            Refusal::QueueUrlNotAllowed(..) => "QueueUrlNotAllowed",
            Refusal::InvalidRegion(_) => "InvalidRegion",
            Refusal::SecretNotOptedIn(_) => "SecretNotOptedIn",
            Refusal::SecretKeyNotAllowed { .. } => "SecretKeyNotAllowed",
        }
    }

    /// Whether only a change of the pool helps (the allowlist is fixed at install time); a
    /// Secret can be labelled or annotated later, so those are retried with backoff.
    pub fn is_permanent(&self) -> bool {
        !matches!(
            self,
            Refusal::SecretNotOptedIn(_) | Refusal::SecretKeyNotAllowed { .. }
        )
    }
}

/// One allowed endpoint: scheme, host (a `*` label matches any one DNS label) and port (`*`
/// matches any); paths are not part of it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pattern {
    scheme: String,
    host: Vec<String>,
    /// None: any port.
    port: Option<u16>,
}

/// The endpoints a pool may name, set at install time (`QWP_ALLOWED_ENDPOINTS`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointAllowlist {
    patterns: Vec<Pattern>,
    shown: String,
}

impl Default for EndpointAllowlist {
    fn default() -> Self {
        EndpointAllowlist::parse(DEFAULT_ALLOWED_ENDPOINTS).expect("the default allowlist parses")
    }
}

impl EndpointAllowlist {
    /// Comma-separated patterns such as `https://sqs.*.amazonaws.com,http://localstack:4566`
    /// or `http://10.0.0.5:*`.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut patterns = Vec::new();
        for raw in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (scheme, rest) = raw
                .split_once("://")
                .ok_or_else(|| format!("allowed endpoint {raw:?} has no scheme"))?;
            if scheme != "https" && scheme != "http" {
                return Err(format!(
                    "allowed endpoint {raw:?}: scheme must be http or https"
                ));
            }
            let authority = rest.trim_end_matches('/');
            if authority.contains('/') || authority.is_empty() {
                return Err(format!(
                    "allowed endpoint {raw:?}: no path, only scheme://host[:port]"
                ));
            }
            let (host, port) = match authority.rsplit_once(':') {
                Some((host, "*")) => (host, None),
                Some((host, port)) => (
                    host,
                    Some(
                        port.parse()
                            .map_err(|_| format!("allowed endpoint {raw:?}: bad port"))?,
                    ),
                ),
                None => (authority, Some(if scheme == "https" { 443 } else { 80 })),
            };
            patterns.push(Pattern {
                scheme: scheme.to_string(),
                host: host
                    .to_ascii_lowercase()
                    .split('.')
                    .map(String::from)
                    .collect(),
                port,
            });
        }
        if patterns.is_empty() {
            return Err("the endpoint allowlist is empty".to_string());
        }
        Ok(EndpointAllowlist {
            shown: list.trim().to_string(),
            patterns,
        })
    }

    /// Whether `url`'s scheme, host and port match a pattern; a URL with user info never does.
    pub fn allows(&self, url: &str, path_allowed: bool) -> bool {
        let Ok(url) = Url::parse(url) else {
            return false;
        };
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return false;
        };
        if !url.username().is_empty() || url.password().is_some() {
            return false;
        }
        if !path_allowed && !matches!(url.path(), "" | "/") {
            return false;
        }
        let labels: Vec<&str> = host.split('.').collect();
        self.patterns.iter().any(|p| {
            p.scheme == url.scheme()
                && p.port.is_none_or(|allowed| allowed == port)
                && p.host.len() == labels.len()
                && p.host.iter().zip(&labels).all(|(want, got)| {
                    want == got
                        || (want == "*"
                            && !got.is_empty()
                            && got.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
                })
        })
    }

    /// The pool's endpoint, queue URL and region, checked before any call. Without an endpoint
    /// the SDK derives `https://sqs.<region>.amazonaws.com` (or uses the operator's own
    /// AWS_ENDPOINT_URL, which the install chose), so the region must be a plain name.
    pub fn check(&self, queue: &QueueSpec) -> Result<(), Refusal> {
        if queue.region.is_empty()
            || !queue
                .region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(Refusal::InvalidRegion(queue.region.clone()));
        }
        if let Some(endpoint) = &queue.endpoint
            && !self.allows(endpoint, false)
        {
            return Err(Refusal::EndpointNotAllowed(
                endpoint.clone(),
                self.shown.clone(),
            ));
        }
        if let Some(url) = &queue.url
            && !self.allows(url, true)
        {
            return Err(Refusal::QueueUrlNotAllowed(url.clone(), self.shown.clone()));
        }
        Ok(())
    }
}

/// The checks of a Secret a pool names, before any of its values is read.
pub fn check_secret(secret: &Secret, reference: &CredentialsSecretRef) -> Result<(), Refusal> {
    let name = format!(
        "{}/{}",
        secret.namespace().unwrap_or_default(),
        secret.name_any()
    );
    if secret.labels().get(CREDENTIALS_LABEL).map(String::as_str) != Some("true") {
        return Err(Refusal::SecretNotOptedIn(name));
    }
    let declared: Vec<&str> = secret
        .annotations()
        .get(CREDENTIAL_KEYS_ANNOTATION)
        .map(|keys| keys.split(',').map(str::trim).collect())
        .unwrap_or_default();
    for key in [
        &reference.access_key_id_key,
        &reference.secret_access_key_key,
    ] {
        let fixed = key == AWS_ACCESS_KEY_ID || key == AWS_SECRET_ACCESS_KEY;
        if !fixed && !declared.contains(&key.as_str()) {
            return Err(Refusal::SecretKeyNotAllowed {
                secret: name,
                key: key.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn queue(value: serde_json::Value) -> QueueSpec {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn the_default_allows_aws_sqs_in_any_region_and_nothing_else() {
        let list = EndpointAllowlist::default();
        assert!(list.allows("https://sqs.eu-west-1.amazonaws.com", false));
        assert!(list.allows("https://sqs.us-east-1.amazonaws.com/", false));
        assert!(list.allows(
            "https://sqs.us-east-1.amazonaws.com/123456789012/jobs",
            true
        ));
        for refused in [
            "http://sqs.eu-west-1.amazonaws.com",           // plain http
            "https://sqs.eu-west-1.amazonaws.com:8443",     // another port
            "https://sqs.evil.com.amazonaws.com",           // one label only
            "https://sqs.eu-west-1.amazonaws.com.evil.com", // suffix
            "https://evil.com",
            "https://user:pw@sqs.eu-west-1.amazonaws.com",
            "https://sqs.eu-west-1.amazonaws.com/path", // an endpoint has no path
            "not a url",
        ] {
            assert!(!list.allows(refused, false), "{refused}");
        }
    }

    #[test]
    fn patterns_name_hosts_and_ports() {
        let list = EndpointAllowlist::parse(
            "https://sqs.*.amazonaws.com, http://localstack:4566,http://10.0.0.5:*",
        )
        .unwrap();
        assert!(list.allows("http://localstack:4566", false));
        assert!(!list.allows("http://localstack:4567", false));
        assert!(list.allows("http://10.0.0.5:31234", false));
        assert!(!list.allows("http://10.0.0.6:31234", false));
        for bad in [
            "",
            "localstack:4566",
            "ftp://x",
            "http://x/path",
            "http://x:port",
        ] {
            assert!(EndpointAllowlist::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_pool_is_checked_on_endpoint_url_and_region() {
        let list =
            EndpointAllowlist::parse("https://sqs.*.amazonaws.com,http://localstack:4566").unwrap();
        assert_eq!(
            list.check(&queue(json!({"name": "q", "region": "eu-west-1"}))),
            Ok(())
        );
        assert_eq!(
            list.check(&queue(
                json!({"name": "q", "region": "us-east-1", "endpoint": "http://localstack:4566"})
            )),
            Ok(())
        );
        let refusal = list
            .check(&queue(
                json!({"name": "q", "region": "us-east-1", "endpoint": "http://attacker:80"}),
            ))
            .unwrap_err();
        assert_eq!(refusal.reason(), "EndpointNotAllowed");
        assert!(refusal.is_permanent());
        assert!(
            refusal.to_string().contains("http://attacker:80"),
            "{refusal}"
        );
        let refusal = list
            .check(&queue(
                json!({"url": "https://attacker/1/q", "region": "us-east-1"}),
            ))
            .unwrap_err();
        assert_eq!(refusal.reason(), "QueueUrlNotAllowed");
        let refusal = list
            .check(&queue(json!({"name": "q", "region": "x.attacker.com/"})))
            .unwrap_err();
        assert_eq!(refusal.reason(), "InvalidRegion");
    }

    fn secret(labels: serde_json::Value, annotations: serde_json::Value) -> Secret {
        serde_json::from_value(json!({"metadata": {"name": "aws", "namespace": "jobs",
            "labels": labels, "annotations": annotations}}))
        .unwrap()
    }

    fn reference(id: &str, key: &str) -> CredentialsSecretRef {
        CredentialsSecretRef {
            name: "aws".into(),
            access_key_id_key: id.into(),
            secret_access_key_key: key.into(),
        }
    }

    #[test]
    fn only_opted_in_secrets_and_their_credential_keys_are_read() {
        let standard = reference(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY);
        let opted_in = secret(json!({CREDENTIALS_LABEL: "true"}), json!({}));
        assert_eq!(check_secret(&opted_in, &standard), Ok(()));
        for labels in [json!({}), json!({CREDENTIALS_LABEL: "false"})] {
            let refusal = check_secret(&secret(labels, json!({})), &standard).unwrap_err();
            assert_eq!(refusal, Refusal::SecretNotOptedIn("jobs/aws".into()));
            assert!(!refusal.is_permanent(), "labelling the Secret fixes it");
        }
        // Another key of an opted-in Secret (say, a database password) is not a credential.
        let other = reference("DB_PASSWORD", AWS_SECRET_ACCESS_KEY);
        assert_eq!(
            check_secret(&opted_in, &other),
            Err(Refusal::SecretKeyNotAllowed {
                secret: "jobs/aws".into(),
                key: "DB_PASSWORD".into()
            })
        );
        // Unless the Secret itself declares it.
        let declares = secret(
            json!({CREDENTIALS_LABEL: "true"}),
            json!({CREDENTIAL_KEYS_ANNOTATION: "id, secret"}),
        );
        assert_eq!(check_secret(&declares, &reference("id", "secret")), Ok(()));
        assert!(check_secret(&declares, &other).is_err());
    }
}
