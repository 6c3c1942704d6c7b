//! `queue.roleArn`: the operator assumes the role with STS (signed with the base credentials)
//! and reads the queue with the assumed ones. LocalStack here runs without STS, so one small
//! HTTP server plays both STS and SQS and records how each request was signed; the AWS SDK,
//! its signing and its credential provider are the real ones.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use qwp_operator::queue::{
    QueueDepthSource, QueueTarget, ROLE_SESSION_NAME, SqsQueueDepth, StaticCredentials,
};
use qwp_pool::decision::QueueDepth;

const ROLE: &str = "arn:aws:iam::123456789012:role/reader";

#[derive(Clone, Debug)]
struct Seen {
    /// The access key id of the request's SigV4 signature.
    signed_by: String,
    session_token: Option<String>,
    /// `X-Amz-Target` (SQS's JSON protocol) or the form body (STS's query protocol).
    what: String,
}

fn access_key_of(headers: &HeaderMap) -> String {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    authorization
        .split("Credential=")
        .nth(1)
        .and_then(|c| c.split('/').next())
        .unwrap_or_default()
        .to_string()
}

async fn serve(seen: Arc<Mutex<Vec<Seen>>>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let body = String::from_utf8_lossy(&body).to_string();
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    seen.lock().unwrap().push(Seen {
        signed_by: access_key_of(&headers),
        session_token: headers
            .get("x-amz-security-token")
            .and_then(|v| v.to_str().ok())
            .map(String::from),
        what: target.clone().unwrap_or_else(|| body.clone()),
    });
    match target.as_deref() {
        Some("AmazonSQS.GetQueueAttributes") => (
            StatusCode::OK,
            [("content-type", "application/x-amz-json-1.0")],
            r#"{"Attributes": {"ApproximateNumberOfMessages": "4",
                "ApproximateNumberOfMessagesNotVisible": "1",
                "ApproximateNumberOfMessagesDelayed": "0"}}"#
                .to_string(),
        ),
        None if body.contains("Action=AssumeRole") => (
            StatusCode::OK,
            [("content-type", "text/xml")],
            r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <Credentials>
      <AccessKeyId>ASIAASSUMED</AccessKeyId>
      <SecretAccessKey>assumed-secret</SecretAccessKey>
      <SessionToken>assumed-token</SessionToken>
      <Expiration>2099-01-01T00:00:00Z</Expiration>
    </Credentials>
    <AssumedRoleUser>
      <AssumedRoleId>AROAEXAMPLE:qwp-operator</AssumedRoleId>
      <Arn>arn:aws:sts::123456789012:assumed-role/reader/qwp-operator</Arn>
    </AssumedRoleUser>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>1</RequestId></ResponseMetadata>
</AssumeRoleResponse>"#
                .to_string(),
        ),
        _ => (
            StatusCode::BAD_REQUEST,
            [("content-type", "text/plain")],
            format!("unexpected request {target:?} {body}"),
        ),
    }
}

#[tokio::test]
async fn a_pool_role_is_assumed_with_the_base_keys_and_the_queue_read_with_the_assumed_ones() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = seen.clone();
    let app = Router::new()
        .fallback(move |headers: HeaderMap, body: Bytes| serve(recorder.clone(), headers, body));
    // Bound before the client is built: no port race.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let target = QueueTarget {
        url: Some(format!("{endpoint}/123456789012/jobs")),
        name: None,
        region: "us-east-1".into(),
        endpoint: Some(endpoint),
        credentials: Some(StaticCredentials {
            access_key_id: "BASEKEY".into(),
            secret_access_key: "base-secret".into(),
        }),
        role_arn: Some(ROLE.into()),
    };
    let reading = SqsQueueDepth::new()
        .read(&target)
        .await
        .expect("read with the assumed role");
    assert_eq!(
        reading.depth,
        QueueDepth {
            visible: 4,
            in_flight: 1,
            delayed: 0
        }
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        2,
        "one AssumeRole, one GetQueueAttributes: {seen:?}"
    );
    let (assume, read) = (&seen[0], &seen[1]);
    assert!(assume.what.contains("Action=AssumeRole"), "{assume:?}");
    assert!(
        assume.what.contains(&format!(
            "RoleArn={}",
            ROLE.replace(':', "%3A").replace('/', "%2F")
        )),
        "{assume:?}"
    );
    assert!(
        assume
            .what
            .contains(&format!("RoleSessionName={ROLE_SESSION_NAME}")),
        "{assume:?}"
    );
    assert_eq!(
        assume.signed_by, "BASEKEY",
        "STS is asked with the Secret's keys"
    );
    assert_eq!(read.what, "AmazonSQS.GetQueueAttributes");
    assert_eq!(
        read.signed_by, "ASIAASSUMED",
        "SQS is read with the assumed role"
    );
    assert_eq!(read.session_token.as_deref(), Some("assumed-token"));
}
