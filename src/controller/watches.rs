//! Watch plumbing: reflectors whose stores the controllers and providers
//! read, watches that two controllers share, trimming what caches keep, and
//! knowing when every watch of a scope has its first full list.

use std::sync::Arc;

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender};
use futures::{FutureExt, StreamExt, TryStreamExt};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

use crate::provider::cached::{Summaries, SummaryWriter};
use crate::provider::shape::is_managed;

/// A reflector-backed store plus the stream that feeds it (and the
/// controller, for children).
///
/// `trim` shrinks each object before the store keeps it: every store holds
/// one copy per object for as long as the operator runs, so what is never
/// read is not kept (see [`forget_bookkeeping`]).
pub fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    tracker: &Arc<SyncTracker>,
    name: &'static str,
    trim: fn(&mut K),
    deleted: Option<UnboundedSender<K>>,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    // Tracked after the reflector, so "synced" means the store holds the list.
    let stream = tracker
        .track(
            name,
            reflector::reflector(writer, watcher(api, config).modify(trim).default_backoff()),
        )
        .inspect_ok(move |event| {
            if let (watcher::Event::Delete(object), Some(deleted)) = (event, &deleted) {
                let _ = deleted.unbounded_send(object.clone());
            }
        })
        .touched_objects();
    (reader, stream)
}

/// A watch whose objects are kept only as summaries (see [`Summaries`]):
/// for caches that never hand out the objects themselves. `wake` says, of
/// each object the watch reports (deleted ones too), whom it wakes; they
/// come out of the returned receiver. The returned future drives the
/// watch; poll it.
pub fn summarise<K, V, W>(
    api: Api<K>,
    config: watcher::Config,
    tracker: &Arc<SyncTracker>,
    name: &'static str,
    summary: fn(&K) -> Option<V>,
    wake: fn(&K) -> Option<W>,
) -> (
    Summaries<V>,
    UnboundedReceiver<W>,
    futures::future::BoxFuture<'static, ()>,
)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    V: Send + Sync + 'static,
    W: Send + 'static,
{
    let mut writer = SummaryWriter::new(summary);
    let summaries = writer.summaries();
    let (woken, wakeups) = futures::channel::mpsc::unbounded();
    // Applied before it is tracked, so "synced" means the cache holds the list.
    let events = watcher(api, config)
        .default_backoff()
        .inspect(move |event| {
            if let Ok(event) = event {
                writer.apply(event);
            }
        });
    let watch = tracker
        .track(name, events)
        .for_each(move |event| {
            if let Err(error) = &event {
                tracing::warn!(watch = name, %error, "watch failed; retrying");
            }
            if let Some(whom) = changed_object(event).as_ref().and_then(wake) {
                // A closed channel means its reader has shut down.
                let _ = woken.unbounded_send(whom);
            }
            futures::future::ready(())
        })
        .boxed();
    (summaries, wakeups, watch)
}

/// Tells when every watch of a scope has delivered its first full list.
///
/// kube's `Store::wait_until_ready` sits on a oneshot that remembers only the
/// last task waiting on it, and the Controller waits on the same stores: two
/// waiters in different tasks can sleep through the wake-up. So readiness is
/// taken from the watch streams themselves, as they pass their first
/// `InitDone`.
pub struct SyncTracker {
    /// How many watches were handed out by `track`.
    expected: std::sync::atomic::AtomicUsize,
    synced: std::sync::Mutex<std::collections::HashSet<&'static str>>,
    all_synced: tokio::sync::watch::Sender<bool>,
}

impl SyncTracker {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            expected: std::sync::atomic::AtomicUsize::new(0),
            synced: std::sync::Mutex::new(std::collections::HashSet::new()),
            all_synced: tokio::sync::watch::channel(false).0,
        })
    }

    fn mark(&self, watch: &'static str) {
        let Ok(mut synced) = self.synced.lock() else {
            return;
        };
        if synced.insert(watch) {
            tracing::debug!(watch, "cache synced");
            if synced.len() >= self.expected.load(std::sync::atomic::Ordering::SeqCst) {
                self.all_synced.send_replace(true);
            }
        }
    }

    /// Resolves once every watch has synced.
    pub async fn wait(&self) {
        let mut receiver = self.all_synced.subscribe();
        let _ = receiver.wait_for(|synced| *synced).await;
    }

    /// Wraps a watch stream so its first full list marks it synced.
    pub fn track<K, S>(
        self: &Arc<Self>,
        name: &'static str,
        stream: S,
    ) -> impl futures::Stream<Item = S::Item> + Send + 'static
    where
        K: Send + 'static,
        S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    {
        self.expected
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let tracker = self.clone();
        stream.inspect(move |event| {
            if matches!(event, Ok(watcher::Event::InitDone)) {
                tracker.mark(name);
            }
        })
    }
}

/// A reflector whose store and changes several readers share: one watch,
/// `subscribers` streams of what changed. The returned future drives the
/// watch; poll it.
///
/// kube's own shared reflector (`reflect_shared`) does not pass deletions on
/// to its subscribers (kube-rs/kube#1590), so a controller waiting for a
/// child to go (a stopped sandbox's pod, a deleted delivery) would not wake
/// up until its next timed requeue. Here every change the watch reports,
/// deletions included, goes to every subscriber, after the store has taken
/// it in.
pub fn reflect_shared<K>(
    api: Api<K>,
    config: watcher::Config,
    tracker: &Arc<SyncTracker>,
    name: &'static str,
    trim: fn(&mut K),
    subscribers: usize,
) -> Shared<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store::<K>();
    // Unbounded: the subscribers only turn each object into a queued
    // reconcile, so they keep up; a bounded channel would stall the watch
    // (and the store) behind the slowest of them.
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..subscribers)
        .map(|_| futures::channel::mpsc::unbounded())
        .unzip();
    let cached = store.clone();
    let deleted: Arc<std::sync::OnceLock<UnboundedSender<Arc<K>>>> = Default::default();
    let deleted_in_watch = deleted.clone();
    let watch = tracker
        .track(
            name,
            reflector::reflector(writer, watcher(api, config).modify(trim).default_backoff()),
        )
        .for_each(move |event| {
            if let Err(error) = &event {
                // The watcher retries with backoff; say why it has to.
                tracing::warn!(watch = name, %error, "watch failed; retrying");
            }
            let deletion = matches!(event, Ok(watcher::Event::Delete(_)));
            if let Some(object) = changed_object(event) {
                // The store has just taken its own copy: hand that one on,
                // so a change waiting for its subscribers holds no second
                // copy of the object. A deleted object is no longer there.
                let object = cached
                    .get(&reflector::ObjectRef::from_obj(&object))
                    .filter(|kept| kept.meta().resource_version == object.meta().resource_version)
                    .unwrap_or_else(|| Arc::new(object));
                if let (true, Some(deleted)) = (deletion, deleted_in_watch.get()) {
                    let _ = deleted.unbounded_send(object.clone());
                }
                for sender in &senders {
                    // A closed channel means its reader has shut down.
                    let _ = sender.unbounded_send(object.clone());
                }
            }
            futures::future::ready(())
        })
        .boxed();
    Shared {
        store,
        changes: receivers,
        deleted,
        watch,
    }
}

/// A shared watch: its store, one stream of changes per subscriber, and the
/// future that drives it.
pub struct Shared<K: Resource + 'static>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    pub store: Store<K>,
    pub changes: Vec<UnboundedReceiver<Arc<K>>>,
    /// Where deletions go, once someone asks for them ([`Shared::deletions`]).
    deleted: Arc<std::sync::OnceLock<UnboundedSender<Arc<K>>>>,
    pub watch: futures::future::BoxFuture<'static, ()>,
}

impl<K: Resource + 'static> Shared<K>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    /// The next subscriber's stream of changes.
    pub fn subscriber(&mut self) -> UnboundedReceiver<Arc<K>> {
        self.changes.remove(0)
    }

    /// The objects the watch reports deleted (and only those: an initial
    /// list or a relist is not a deletion), from now on. Asked for once.
    pub fn deletions(&mut self) -> UnboundedReceiver<Arc<K>> {
        let (sender, receiver) = futures::channel::mpsc::unbounded();
        let _ = self.deleted.set(sender);
        receiver
    }
}

/// Drops from a cached object what its writers keep for themselves:
/// `metadata.managedFields` (server-side apply) and kubectl's
/// last-applied-configuration annotation (client-side apply, a copy of the
/// whole manifest). Nothing here reads them, and they are often the larger
/// part of an object's metadata. The operator never writes a cached copy
/// back whole: status writes keep the server's metadata, and other writes
/// are patches.
pub fn forget_bookkeeping<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove(LAST_APPLIED_ANNOTATION);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// Where `kubectl apply` (client-side) keeps what it last applied.
const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Trims an object that is not ours to what tells whose it is: its name,
/// labels and owners. Deployments and Services are watched whatever their
/// labels, so that one of the same name as a child we would create is seen
/// (and never taken over) without asking the API server; other people's
/// cost only their metadata.
pub fn keep_metadata_unless_managed<K: Resource + HasSpecAndStatus>(object: &mut K) {
    forget_bookkeeping(object);
    if !is_managed(object) {
        object.meta_mut().annotations = None;
        object.clear_spec_and_status();
    }
}

/// Objects whose spec and status can be dropped from a cache.
pub trait HasSpecAndStatus {
    fn clear_spec_and_status(&mut self);
}

macro_rules! has_spec_and_status {
    ($($kind:ty),*) => {$(
        impl HasSpecAndStatus for $kind {
            fn clear_spec_and_status(&mut self) {
                self.spec = None;
                self.status = None;
            }
        }
    )*};
}

has_spec_and_status!(
    crate::provider::cached::CachedDeployment,
    crate::provider::cached::CachedService
);

/// The object a watch event is about, if it is a change to pass on. Objects
/// of an initial list (or a relist after a lost watch) count too: what
/// changed while the watch was down is only seen that way.
pub fn changed_object<K>(event: Result<watcher::Event<K>, watcher::Error>) -> Option<K> {
    match event {
        Ok(watcher::Event::Apply(object))
        | Ok(watcher::Event::Delete(object))
        | Ok(watcher::Event::InitApply(object)) => Some(object),
        Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
        Err(_) => None,
    }
}

/// Holds back each key of a stream of wake-ups until it has been quiet for
/// `quiet`, or `longest` has passed since it was first held, then passes it
/// on once.
///
/// A new workload's children report a quick run of changes (created,
/// scheduled, running, ready); one reconcile after the run reads them as
/// well as one after each. Unlike a controller-wide debounce, this holds
/// back only the children's news: an object's own changes start a
/// reconcile at once, and children that never stop changing still wake
/// their owner every `longest`.
pub fn settle<T>(
    input: impl futures::Stream<Item = T> + Send + 'static,
    quiet: std::time::Duration,
    longest: std::time::Duration,
) -> impl futures::Stream<Item = T> + Send + 'static
where
    T: Eq + std::hash::Hash + Clone + Send + 'static,
{
    use std::collections::HashMap;
    use tokio::time::Instant;
    let (sender, receiver) = futures::channel::mpsc::unbounded();
    tokio::spawn(async move {
        let mut input = std::pin::pin!(input);
        // Each held key: when it was first held, and when it last changed.
        let mut held: HashMap<T, (Instant, Instant)> = HashMap::new();
        loop {
            let due = held
                .values()
                .map(|(first, last)| (*last + quiet).min(*first + longest))
                .min();
            let next = async {
                match due {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => futures::future::pending().await,
                }
            };
            tokio::select! {
                item = input.next() => {
                    let Some(item) = item else { break };
                    let now = Instant::now();
                    held.entry(item).and_modify(|(_, last)| *last = now).or_insert((now, now));
                }
                _ = next => {
                    let now = Instant::now();
                    let ready: Vec<T> = held
                        .iter()
                        .filter(|(_, (first, last))| *last + quiet <= now || *first + longest <= now)
                        .map(|(key, _)| key.clone())
                        .collect();
                    for key in ready {
                        held.remove(&key);
                        if sender.unbounded_send(key).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        // The input ended: pass on what is held.
        for key in held.into_keys() {
            let _ = sender.unbounded_send(key);
        }
    });
    receiver
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn named(name: &str) -> ConfigMap {
        let mut object = ConfigMap::default();
        object.metadata.name = Some(name.into());
        object
    }

    #[tokio::test(start_paused = true)]
    async fn settle_passes_each_key_on_once_after_its_run_of_changes() {
        use std::time::Duration;
        let (input, output) = futures::channel::mpsc::unbounded();
        let mut settled = Box::pin(settle(
            output,
            Duration::from_millis(500),
            Duration::from_secs(3),
        ));
        for _ in 0..5 {
            input.unbounded_send("a").unwrap();
            input.unbounded_send("b").unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut got = vec![settled.next().await.unwrap(), settled.next().await.unwrap()];
        got.sort();
        assert_eq!(got, ["a", "b"], "each key once");
        // A key that never stops changing still comes through, every 3s.
        let started = tokio::time::Instant::now();
        let noisy = tokio::spawn(async move {
            loop {
                if input.unbounded_send("c").is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        assert_eq!(settled.next().await, Some("c"));
        assert!(started.elapsed() <= Duration::from_millis(3100));
        noisy.abort();
    }

    #[test]
    fn deletions_reach_the_subscribers_of_a_shared_watch() {
        let name = |event| changed_object::<ConfigMap>(event).and_then(|o| o.metadata.name);
        assert_eq!(
            name(Ok(watcher::Event::Delete(named("gone")))).as_deref(),
            Some("gone")
        );
        assert_eq!(
            name(Ok(watcher::Event::Apply(named("new")))).as_deref(),
            Some("new")
        );
        assert_eq!(
            name(Ok(watcher::Event::InitApply(named("listed")))).as_deref(),
            Some("listed")
        );
        assert_eq!(name(Ok(watcher::Event::Init)), None);
        assert_eq!(name(Ok(watcher::Event::InitDone)), None);
    }

    #[test]
    fn a_cached_object_keeps_its_annotations_but_not_its_writers_bookkeeping() {
        let mut applied = named("web");
        applied.metadata.managed_fields = Some(vec![Default::default()]);
        applied.metadata.annotations = Some(
            [
                (
                    LAST_APPLIED_ANNOTATION.to_string(),
                    "{\"kind\":\"ConfigMap\"}".to_string(),
                ),
                ("team".to_string(), "web".to_string()),
            ]
            .into(),
        );
        let mut only_applied = applied.clone();
        only_applied.metadata.annotations =
            Some([(LAST_APPLIED_ANNOTATION.to_string(), "{}".to_string())].into());
        forget_bookkeeping(&mut applied);
        forget_bookkeeping(&mut only_applied);
        assert!(applied.metadata.managed_fields.is_none());
        assert_eq!(
            applied.metadata.annotations,
            Some([("team".to_string(), "web".to_string())].into())
        );
        assert_eq!(
            only_applied.metadata.annotations, None,
            "no empty map is kept"
        );
    }
}
