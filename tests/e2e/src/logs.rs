//! Follows the logs of every pod in a namespace while a test runs, so the lines of pods that
//! are deleted (scale-down, kills) are still there to count and to dump. Lines are kept in
//! memory and written to `<dir>/<pod>.log`.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, LogParams};
use kube::{Client, ResourceExt};
use serde_json::Value;
use tokio::task::JoinHandle;

#[derive(Clone)]
pub struct LogCollector {
    inner: Arc<Inner>,
}

struct Inner {
    lines: Mutex<Vec<PodLine>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Clone, Debug)]
pub struct PodLine {
    pub pod: String,
    pub line: String,
}

impl PodLine {
    /// The line as a JSON object (workers log with LOG_FORMAT=json).
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.line).ok()
    }

    /// The log message of a JSON line.
    pub fn message(&self) -> Option<String> {
        self.json()?.get("message")?.as_str().map(str::to_string)
    }
}

impl LogCollector {
    pub fn start(client: Client, ns: &str, dir: PathBuf) -> Self {
        let collector = LogCollector {
            inner: Arc::new(Inner {
                lines: Mutex::new(Vec::new()),
                tasks: Mutex::new(Vec::new()),
            }),
        };
        let pods: Api<Pod> = Api::namespaced(client, ns);
        let this = collector.clone();
        let discover = tokio::spawn(async move {
            let mut following: HashSet<String> = HashSet::new();
            loop {
                if let Ok(list) = pods.list(&ListParams::default()).await {
                    for pod in list {
                        let uid = pod.uid().unwrap_or_default();
                        if following.contains(&uid) || !has_started(&pod) {
                            continue;
                        }
                        following.insert(uid);
                        let task = tokio::spawn(follow(
                            pods.clone(),
                            pod.name_any(),
                            this.clone(),
                            dir.clone(),
                        ));
                        this.inner.tasks.lock().expect("tasks lock").push(task);
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        collector
            .inner
            .tasks
            .lock()
            .expect("tasks lock")
            .push(discover);
        collector
    }

    pub fn stop(&self) {
        for task in self.inner.tasks.lock().expect("tasks lock").drain(..) {
            task.abort();
        }
    }

    /// Every line collected so far.
    pub fn lines(&self) -> Vec<PodLine> {
        self.inner.lines.lock().expect("lines lock").clone()
    }

    /// JSON lines whose message is `message`.
    pub fn with_message(&self, message: &str) -> Vec<(String, Value)> {
        self.lines()
            .into_iter()
            .filter_map(|l| {
                let json = l.json()?;
                (json.get("message")?.as_str()? == message).then_some((l.pod, json))
            })
            .collect()
    }

    fn push(&self, pod: &str, line: String) {
        self.inner.lines.lock().expect("lines lock").push(PodLine {
            pod: pod.to_string(),
            line,
        });
    }
}

fn has_started(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.state
                    .as_ref()
                    .is_some_and(|st| st.running.is_some() || st.terminated.is_some())
            })
        })
}

async fn follow(pods: Api<Pod>, name: String, collector: LogCollector, dir: PathBuf) {
    let params = LogParams {
        follow: true,
        ..LogParams::default()
    };
    let Ok(stream) = pods.log_stream(&name, &params).await else {
        return;
    };
    let _ = std::fs::create_dir_all(&dir);
    let mut file = std::fs::File::create(dir.join(format!("{name}.log"))).ok();
    let mut lines = stream.lines();
    while let Some(Ok(line)) = lines.next().await {
        if let Some(f) = file.as_mut() {
            let _ = writeln!(f, "{line}");
        }
        collector.push(&name, line);
    }
}

/// Job ids whose "job started" line says the message had been received before.
pub fn redelivered_jobs(collector: &LogCollector) -> HashSet<String> {
    collector
        .with_message("job started")
        .into_iter()
        .filter(|(_, json)| {
            span_field(json, "receive_count")
                .and_then(|v| v.as_u64())
                .is_some_and(|n| n >= 2)
        })
        .filter_map(|(_, json)| {
            span_field(&json, "job_id").and_then(|v| v.as_str().map(str::to_string))
        })
        .collect()
}

/// Jobs handed back to the queue by draining workers (sum of `unfinished`).
pub fn handed_back_jobs(collector: &LogCollector) -> u64 {
    collector
        .with_message("handed unfinished jobs back to the queue")
        .iter()
        .filter_map(|(_, json)| json.get("unfinished").and_then(Value::as_u64))
        .sum()
}

/// A field of the line's current span (tracing-subscriber's JSON puts it under "span").
pub fn span_field<'a>(json: &'a Value, field: &str) -> Option<&'a Value> {
    json.get(field)
        .or_else(|| json.get("span").and_then(|s| s.get(field)))
        .or_else(|| {
            json.get("spans")?
                .as_array()?
                .iter()
                .rev()
                .find_map(|s| s.get(field))
        })
}
