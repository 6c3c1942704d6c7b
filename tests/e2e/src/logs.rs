//! Follows the logs of every pod in a namespace while a test runs, so the lines of pods that
//! are deleted (scale-down, kills) are still there to count and to dump. Pods are found from a
//! watch stream, so a pod is followed as soon as its container runs, however briefly it lives;
//! a follow reads the container's log from its start. Lines are kept in memory and written to
//! `<dir>/<pod>.log`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Clone)]
pub struct LogCollector {
    inner: Arc<Inner>,
}

struct Inner {
    lines: Mutex<Vec<PodLine>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Each followed pod's stream, by pod name; waiters subscribe to changes.
    streams: watch::Sender<HashMap<String, Stream>>,
}

/// Where the log stream of one pod is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stream {
    Following,
    /// The container stopped and every line it wrote has been read.
    Ended,
    /// The stream could not be opened or broke off: lines may be missing.
    Failed(String),
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
                streams: watch::channel(HashMap::new()).0,
            }),
        };
        let pods: Api<Pod> = Api::namespaced(client, ns);
        let this = collector.clone();
        let discover = tokio::spawn(async move {
            let mut following: HashSet<String> = HashSet::new();
            let events = watcher(pods.clone(), watcher::Config::default())
                .default_backoff()
                .touched_objects();
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                let Ok(pod) = event else { continue };
                let uid = pod.uid().unwrap_or_default();
                if following.contains(&uid) || !has_started(&pod) {
                    continue;
                }
                following.insert(uid);
                let name = pod.name_any();
                this.set_stream(&name, Stream::Following);
                let task = tokio::spawn(follow(pods.clone(), name, this.clone(), dir.clone()));
                this.inner.tasks.lock().expect("tasks lock").push(task);
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

    /// Stops following. Streams of pods still running stop where they are (the failure dump
    /// reads those pods' logs afresh).
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

    /// Waits until the log of each of `pods` has been read to its end (their containers
    /// stopped), so counts taken from the lines miss nothing. Panics when a pod's stream
    /// failed or is not complete within `timeout`.
    pub async fn wait_complete(&self, pods: &[String], timeout: Duration) {
        let mut streams = self.inner.streams.subscribe();
        let complete = tokio::time::timeout(
            timeout,
            streams.wait_for(|streams| {
                pods.iter()
                    .all(|pod| matches!(streams.get(pod), Some(Stream::Ended | Stream::Failed(_))))
            }),
        )
        .await;
        let streams = self.inner.streams.borrow().clone();
        let states: BTreeMap<&String, Option<&Stream>> =
            pods.iter().map(|pod| (pod, streams.get(pod))).collect();
        assert!(
            complete.is_ok(),
            "the logs of these pods were not read to their end within {timeout:?}: {states:?}"
        );
        let failed: Vec<_> = states
            .iter()
            .filter(|(_, state)| matches!(state, Some(Stream::Failed(_))))
            .collect();
        assert!(
            failed.is_empty(),
            "lines of these pods may be missing: {failed:?}"
        );
    }

    fn set_stream(&self, pod: &str, stream: Stream) {
        self.inner.streams.send_modify(|streams| {
            streams.insert(pod.to_string(), stream);
        });
    }

    fn push(&self, pod: &str, line: String) {
        self.inner.lines.lock().expect("lines lock").push(PodLine {
            pod: pod.to_string(),
            line,
        });
    }
}

/// Whether a container of the pod runs or has run: from then on it has a log to read.
pub fn has_started(pod: &Pod) -> bool {
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
    let stream = match pods.log_stream(&name, &params).await {
        Ok(stream) => stream,
        Err(e) => {
            collector.set_stream(&name, Stream::Failed(format!("open: {e}")));
            return;
        }
    };
    let _ = std::fs::create_dir_all(&dir);
    let mut file = std::fs::File::create(dir.join(format!("{name}.log"))).ok();
    let mut lines = stream.lines();
    let end = loop {
        match lines.next().await {
            None => break Stream::Ended,
            Some(Err(e)) => break Stream::Failed(format!("read: {e}")),
            Some(Ok(line)) => {
                if let Some(f) = file.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                collector.push(&name, line);
            }
        }
    };
    collector.set_stream(&name, end);
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
