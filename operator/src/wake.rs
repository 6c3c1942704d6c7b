//! Wake-up hints from the API server (`qwp_pool::contract::WAKE_PATH`): a job was just queued
//! on a queue, so the pools reading it are reconciled now instead of at their next poll.
//!
//! The hint only schedules a normal reconcile and marks the pool's last queue reading stale
//! (so that reconcile reads the queue again); it never scales by itself. Hints for queues no
//! pool reads cost nothing; the queue poll stays the source of truth and the only path for
//! other producers. The channel is bounded: when it is full, hints are dropped (the poll
//! catches up).

use futures::{Stream, StreamExt};
use kube::runtime::reflector::{ObjectRef, Store};
use qwp_pool::contract::{WAKE_PATH, WAKE_QUEUE_PARAM, queue_name_of};
use qwp_pool::crd::QueueWorkerPool;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;

use crate::reconcile::Context;

/// Queue names waiting to be turned into reconciles.
const PENDING_WAKES: usize = 256;

#[derive(Clone)]
pub struct WakeSender(mpsc::Sender<String>);

pub struct WakeReceiver(mpsc::Receiver<String>);

pub fn channel() -> (WakeSender, WakeReceiver) {
    let (sender, receiver) = mpsc::channel(PENDING_WAKES);
    (WakeSender(sender), WakeReceiver(receiver))
}

impl WakeSender {
    /// Queues a wake-up for the pools reading `queue` (a name or URL); false when dropped.
    pub fn wake(&self, queue: &str) -> bool {
        self.0.try_send(queue_name_of(queue).to_string()).is_ok()
    }
}

/// Whether `pool` reads the queue called `name`.
pub fn reads_queue(pool: &QueueWorkerPool, name: &str) -> bool {
    let queue = &pool.spec.queue;
    queue.name.as_deref() == Some(name)
        || queue
            .url
            .as_deref()
            .is_some_and(|url| queue_name_of(url) == name)
}

impl WakeReceiver {
    /// The pools to reconcile, one per pool reading a woken queue; each is marked so its
    /// reconcile reads the queue afresh.
    pub fn into_reconciles(
        self,
        store: Store<QueueWorkerPool>,
        ctx: Arc<Context>,
    ) -> impl Stream<Item = ObjectRef<QueueWorkerPool>> + Send + 'static {
        tokio_stream_from(self.0).flat_map(move |name| {
            let pools: Vec<_> = store
                .state()
                .iter()
                .filter(|pool| reads_queue(pool, name.as_str()))
                .map(|pool| ObjectRef::from_obj(pool.as_ref()))
                .collect();
            for key in &pools {
                ctx.mark_woken(key);
            }
            ctx.metrics.count_wake(if pools.is_empty() {
                "no_pool"
            } else {
                "reconcile"
            });
            futures::stream::iter(pools)
        })
    }
}

fn tokio_stream_from(mut receiver: mpsc::Receiver<String>) -> impl Stream<Item = String> {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

/// Whether this replica reconciles now (with leader election, only the leader does).
pub type Leading = Arc<dyn Fn() -> bool + Send + Sync>;

#[derive(Clone)]
struct WakeRoute {
    wakes: WakeSender,
    metrics: Arc<crate::metrics::Metrics>,
    leading: Leading,
}

/// `POST` [`WAKE_PATH`]`?queue=NAME` on the admin port: 202 when taken, 503 on a replica that
/// is not leading (the API server tries every replica of the headless Service), 429 when the
/// channel is full (the poll catches up).
pub fn router(
    wakes: WakeSender,
    metrics: Arc<crate::metrics::Metrics>,
    leading: Leading,
) -> axum::Router {
    axum::Router::new()
        .route(WAKE_PATH, axum::routing::post(wake))
        .with_state(WakeRoute {
            wakes,
            metrics,
            leading,
        })
}

async fn wake(
    axum::extract::State(route): axum::extract::State<WakeRoute>,
    axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>,
) -> axum::http::StatusCode {
    use axum::http::StatusCode;
    let Some(queue) = query.get(WAKE_QUEUE_PARAM) else {
        return StatusCode::BAD_REQUEST;
    };
    if !(route.leading)() {
        route.metrics.count_wake("standby");
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if route.wakes.wake(queue) {
        StatusCode::ACCEPTED
    } else {
        route.metrics.count_wake("dropped");
        StatusCode::TOO_MANY_REQUESTS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{FakeProbe, QUEUE_URL, test_pool};
    use crate::reconcile::{observe, validate};
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher;
    use qwp_pool::decision::QueueDepth;
    use serde_json::json;
    use tower::ServiceExt;

    fn depth(visible: u64) -> QueueDepth {
        QueueDepth {
            visible,
            in_flight: 0,
            delayed: 0,
        }
    }

    #[tokio::test]
    async fn a_wake_makes_the_next_reconcile_read_the_queue_instead_of_its_cached_reading() {
        let test = Context::test(FakeProbe::default());
        let pool = test_pool(json!({}));
        let valid = validate::spec(&pool).unwrap();
        test.queue.set(Ok(depth(0)));
        let first = observe::queue(&valid, &test.ctx, None).await.unwrap();
        assert!(first.fresh);
        // A job arrives: within the poll interval the reconcile reuses the empty reading…
        test.queue.set(Ok(depth(3)));
        let cached = observe::queue(&valid, &test.ctx, None).await.unwrap();
        assert!(!cached.fresh);
        assert_eq!(cached.reading.unwrap().depth.visible, 0);
        // …unless the API server's hint came in: then it reads the queue, once.
        test.ctx.mark_woken(&valid.key);
        let woken = observe::queue(&valid, &test.ctx, None).await.unwrap();
        assert!(woken.fresh);
        assert_eq!(woken.reading.unwrap().depth.visible, 3);
        let after = observe::queue(&valid, &test.ctx, None).await.unwrap();
        assert!(!after.fresh);
        assert_eq!(test.queue.targets.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_wake_for_a_queue_reconciles_exactly_the_pools_reading_it() {
        let test = Context::test(FakeProbe::default());
        let mut writer = Writer::<QueueWorkerPool>::default();
        let reading = test_pool(json!({}));
        let mut other = test_pool(json!({"queue": {"name": "elsewhere", "region": "us-east-1"}}));
        other.metadata.name = Some("other".into());
        writer.apply_watcher_event(&watcher::Event::Apply(reading.clone()));
        writer.apply_watcher_event(&watcher::Event::Apply(other));
        let (sender, receiver) = channel();
        let mut reconciles =
            Box::pin(receiver.into_reconciles(writer.as_reader(), test.ctx.clone()));
        // The API server sends its queue's URL or name; both name the same queue.
        assert!(sender.wake(QUEUE_URL));
        assert_eq!(reconciles.next().await, Some(ObjectRef::from_obj(&reading)));
        assert!(sender.wake("thumbs"));
        assert_eq!(reconciles.next().await, Some(ObjectRef::from_obj(&reading)));
        assert!(sender.wake("nobody-reads-this"));
        assert!(sender.wake("thumbs"));
        // The unread queue yields nothing; the next pool out is the second wake's.
        assert_eq!(reconciles.next().await, Some(ObjectRef::from_obj(&reading)));
        let text = test.ctx.metrics.encode();
        assert!(
            text.contains("qwp_operator_wakes_total{result=\"no_pool\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("qwp_operator_wakes_total{result=\"reconcile\"} 3"),
            "{text}"
        );
    }

    /// The whole path on the mocked API server: the wake route takes the API server's hint,
    /// the trigger stream names the pool reading that queue, and its reconcile scales a pool
    /// at zero on a fresh queue read although the last (empty) reading is younger than the
    /// poll interval. A hint for a queue no pool reads triggers nothing and reads nothing.
    #[tokio::test]
    async fn a_hint_reconciles_the_pool_at_zero_at_once_and_an_unknown_queue_nothing() {
        use crate::fixtures::{
            Expect, Reply, deployment_path, events_path, existing_deployment, status_path,
        };
        use http::Method;

        let mut test = Context::test(FakeProbe::default());
        let pool = test_pool(json!({"minReplicas": 0}));
        let mut writer = Writer::<QueueWorkerPool>::default();
        writer.apply_watcher_event(&watcher::Event::Apply(pool.clone()));
        let (sender, receiver) = channel();
        let route = router(sender, test.ctx.metrics.clone(), Arc::new(|| true));
        let mut reconciles =
            Box::pin(receiver.into_reconciles(writer.as_reader(), test.ctx.clone()));
        let pool_reply = Reply::Json(serde_json::to_value(&pool).unwrap());

        // The pool at rest: an empty queue, no replica.
        test.queue.set(Ok(depth(0)));
        let idle = existing_deployment(&pool, 0, 0);
        let rest = test
            .reconcile(
                &pool,
                vec![
                    Expect::new(Method::GET, deployment_path(), Reply::Json(idle.clone())),
                    Expect::new(Method::PATCH, status_path(), pool_reply.clone()),
                ],
            )
            .await;
        assert!(rest.is_ok(), "{rest:?}");
        assert_eq!(test.queue.targets.lock().unwrap().len(), 1);

        // A job is queued; the API server hints an unknown queue, then this one.
        test.queue.set(Ok(depth(1)));
        let hint = |queue: &str| {
            axum::http::Request::post(format!("{WAKE_PATH}?{WAKE_QUEUE_PARAM}={queue}"))
                .body(axum::body::Body::empty())
                .unwrap()
        };
        for queue in ["nobody-reads-this", "thumbs"] {
            let answer = route.clone().oneshot(hint(queue)).await.unwrap();
            assert_eq!(answer.status(), axum::http::StatusCode::ACCEPTED);
        }
        // The unknown queue yielded nothing: the first pool out is the second hint's.
        let woken = reconciles.next().await.expect("a reconcile for the pool");
        assert_eq!(woken, ObjectRef::from_obj(&pool));
        let text = test.ctx.metrics.encode();
        assert!(
            text.contains("qwp_operator_wakes_total{result=\"no_pool\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("qwp_operator_wakes_total{result=\"reconcile\"} 1"),
            "{text}"
        );
        assert_eq!(
            test.queue.targets.lock().unwrap().len(),
            1,
            "a hint reads no queue by itself"
        );

        // The reconcile it triggers reads the queue and scales from zero.
        let scaled = test
            .reconcile(
                &pool,
                vec![
                    Expect::new(Method::GET, deployment_path(), Reply::Json(idle)),
                    Expect::new(Method::PATCH, deployment_path(), Reply::Echo)
                        .check(|body| assert_eq!(body["spec"]["replicas"], 1)),
                    Expect::new(Method::POST, events_path(), Reply::Echo)
                        .check(|body| assert_eq!(body["reason"], "Scaled")),
                    Expect::new(Method::PATCH, status_path(), pool_reply),
                ],
            )
            .await;
        assert!(scaled.is_ok(), "{scaled:?}");
        assert_eq!(
            test.queue.targets.lock().unwrap().len(),
            2,
            "one fresh read"
        );
    }

    #[tokio::test]
    async fn only_the_leading_replica_takes_a_wake() {
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let request = || {
            axum::http::Request::post(format!("{WAKE_PATH}?{WAKE_QUEUE_PARAM}=thumbs"))
                .body(axum::body::Body::empty())
                .unwrap()
        };
        let (sender, mut receiver) = channel();
        let standby = router(sender.clone(), metrics.clone(), Arc::new(|| false));
        let answer = standby.oneshot(request()).await.unwrap();
        assert_eq!(answer.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
        let leader = router(sender, metrics.clone(), Arc::new(|| true));
        let answer = leader.oneshot(request()).await.unwrap();
        assert_eq!(answer.status(), axum::http::StatusCode::ACCEPTED);
        assert_eq!(receiver.0.recv().await.as_deref(), Some("thumbs"));
        assert!(receiver.0.try_recv().is_err(), "the standby queued nothing");
    }
}
