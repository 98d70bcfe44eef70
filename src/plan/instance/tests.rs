//! Tests of the Instance planner: scenarios a user goes through, and
//! properties that must hold for any spec, status and observation.

use chrono::{DateTime, Duration as ChronoDuration, TimeZone, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use proptest::prelude::*;

use super::*;
use crate::api::{
    ConditionStatus, HistoryEntry, InstanceResources, InstanceSpec, PortSpec, Suspension,
};
use crate::lifecycle::validate_transition;
use crate::provider::WorkloadStatus;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0).unwrap()
}

fn spec(image: &str) -> InstanceSpec {
    InstanceSpec {
        image: image.to_string(),
        replicas: 2,
        state: DesiredState::Running,
        resources: None,
        env: Vec::new(),
        ports: vec![PortSpec {
            name: "http".into(),
            port: 8080,
            protocol: Protocol::Tcp,
        }],
        health_check: None,
        region: None,
        provider: None,
        suspend: None,
        restarted_at: None,
        rollback: RollbackPolicy::Manual,
        progress_deadline_seconds: 60,
    }
}

fn instance(spec: InstanceSpec) -> Instance {
    let mut instance = Instance::new("web", spec);
    instance.metadata.namespace = Some("team-a".into());
    instance.metadata.uid = Some("0a1b2c3d-0000-4000-8000-000000000000".into());
    instance.metadata.generation = Some(1);
    instance.metadata.finalizers = Some(vec![FINALIZER.into()]);
    instance
}

/// A workload that is exactly what `plan` wants, rolled out and ready.
fn ready_workload(image: &str, replicas: i32) -> WorkloadStatus {
    WorkloadStatus {
        provider_ref: crate::api::ProviderRef {
            provider: "kubernetes".into(),
            kind: "Deployment".into(),
            name: "web".into(),
        },
        current: true,
        image: image.into(),
        desired_replicas: replicas,
        replicas,
        ready_replicas: replicas,
        restart_token: None,
        rollout_complete: true,
        progress_deadline_exceeded: None,
        problems: Vec::new(),
        endpoint_ready: true,
        terminating: false,
    }
}

fn observed(workload: Option<WorkloadStatus>) -> InstanceObservation {
    InstanceObservation {
        provider: Ok("kubernetes".into()),
        cleanup: Cleanup::Deprovision,
        workload,
        webhooks_listen: false,
    }
}

/// Plans, then stores the plan's status on the Instance as a write would.
fn step(
    instance: &mut Instance,
    observation: &InstanceObservation,
    now: DateTime<Utc>,
) -> InstancePlan {
    let plan = plan(instance, observation, now);
    instance.status = Some(plan.status.clone());
    plan
}

fn types_of(plan: &InstancePlan, since: i64) -> Vec<EventType> {
    plan.status
        .history
        .iter()
        .filter(|e| e.sequence > since)
        .map(|e| e.type_)
        .collect()
}

fn condition<'a>(plan: &'a InstancePlan, type_: &str) -> &'a crate::api::Condition {
    conditions::find(&plan.status.conditions, type_).unwrap()
}

fn last_seq(instance: &Instance) -> i64 {
    instance
        .status
        .as_ref()
        .and_then(|s| s.history.last())
        .map_or(0, |e| e.sequence)
}

/// Brings a new Instance to Running with `replicas` ready.
fn running(spec: InstanceSpec) -> Instance {
    let mut instance = instance(spec);
    let replicas = instance.spec.replicas;
    let image = instance.spec.image.clone();
    step(&mut instance, &observed(None), t0());
    step(
        &mut instance,
        &observed(Some(ready_workload(&image, replicas))),
        t0(),
    );
    assert_eq!(
        instance.status.as_ref().unwrap().phase,
        Some(InstancePhase::Running)
    );
    instance
}

#[test]
fn an_instance_takes_the_finalizer_only_when_its_deletion_must_wait_for_something() {
    let mut instance = instance(spec("nginx:1.27"));
    instance.metadata.finalizers = None;
    let garbage_collected = |webhooks_listen| InstanceObservation {
        cleanup: Cleanup::GarbageCollected,
        webhooks_listen,
        ..observed(None)
    };
    // Children owned by it, no Webhook: a deletion waits for nothing.
    let alone = plan(&instance, &garbage_collected(false), t0());
    assert_eq!(alone.finalizer, FinalizerAction::Keep);
    assert_eq!(alone.status.phase, Some(InstancePhase::Starting));
    // A Webhook in the namespace wants its last events.
    let heard = plan(&instance, &garbage_collected(true), t0());
    assert_eq!(heard.finalizer, FinalizerAction::Add);
    // A provider that must deprovision first.
    assert_eq!(
        plan(&instance, &observed(None), t0()).finalizer,
        FinalizerAction::Add
    );
    // Deleted without one: nothing holds it.
    instance.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    assert_eq!(
        plan(&instance, &garbage_collected(false), t0()).finalizer,
        FinalizerAction::Release
    );
}

#[test]
fn a_new_instance_is_provisioned_then_started_then_running() {
    let mut instance = instance(spec("nginx:1.27"));
    instance.metadata.finalizers = None;
    let first = step(&mut instance, &observed(None), t0());
    assert_eq!(first.finalizer, FinalizerAction::Add);
    // The workload is created in this reconcile: it is Starting at once,
    // through Provisioning, so one status write says both.
    assert_eq!(first.status.phase, Some(InstancePhase::Starting));
    assert_eq!(
        first.actions,
        vec![ProviderAction::Provision, ProviderAction::Start]
    );
    assert_eq!(
        types_of(&first, 0),
        vec![EventType::InstanceCreated, EventType::InstanceStarting]
    );
    // Steps on the way are in the history, not Kubernetes Events.
    assert!(first.events.is_empty(), "{:?}", first.events);
    let workload = first.workload.as_ref().unwrap();
    assert_eq!(
        (workload.image.as_str(), workload.replicas),
        ("nginx:1.27", 2)
    );

    instance.metadata.finalizers = Some(vec![FINALIZER.into()]);
    let mut starting = ready_workload("nginx:1.27", 2);
    starting.ready_replicas = 0;
    starting.rollout_complete = false;
    let second = step(&mut instance, &observed(Some(starting)), t0());
    assert_eq!(second.status.phase, Some(InstancePhase::Starting));
    assert_eq!(condition(&second, types::READY).reason, "Starting");
    assert!(second.status.endpoints.len() == 1);

    let third = step(
        &mut instance,
        &observed(Some(ready_workload("nginx:1.27", 2))),
        t0(),
    );
    assert_eq!(third.status.phase, Some(InstancePhase::Running));
    assert_eq!(
        condition(&third, types::READY).status,
        ConditionStatus::True
    );
    assert_eq!(third.status.ready_replicas, 2);
    assert_eq!(
        third.status.selector.as_deref(),
        Some("ctrlplane.dev/instance=web")
    );
    assert_eq!(
        third.status.endpoints[0].url,
        "http://web.team-a.svc.cluster.local:8080"
    );
    assert_eq!(
        third.status.current_release.as_ref().map(|r| r.outcome),
        Some(ReleaseOutcome::Succeeded)
    );
    assert_eq!(third.requeue_after, REQUEUE_SETTLED);
}

#[test]
fn stop_and_start_go_through_the_table() {
    let mut instance = running(spec("nginx:1.27"));
    instance.spec.state = DesiredState::Stopped;
    instance.metadata.generation = Some(2);
    let mut draining = ready_workload("nginx:1.27", 2);
    draining.current = false;
    let stopping = step(&mut instance, &observed(Some(draining)), t0());
    assert_eq!(stopping.status.phase, Some(InstancePhase::Stopping));
    assert_eq!(stopping.workload.as_ref().unwrap().replicas, 0);
    assert!(stopping.actions.contains(&ProviderAction::Stop));

    let stopped = step(
        &mut instance,
        &observed(Some(ready_workload("nginx:1.27", 0))),
        t0(),
    );
    assert_eq!(stopped.status.phase, Some(InstancePhase::Stopped));
    assert_eq!(condition(&stopped, types::READY).reason, "Stopped");

    let seq = last_seq(&instance);
    instance.spec.state = DesiredState::Running;
    instance.metadata.generation = Some(3);
    let starting = step(
        &mut instance,
        &observed(Some(ready_workload("nginx:1.27", 0))),
        t0(),
    );
    assert_eq!(starting.status.phase, Some(InstancePhase::Starting));
    assert_eq!(starting.workload.as_ref().unwrap().replicas, 2);
    assert_eq!(types_of(&starting, seq), vec![EventType::InstanceStarting]);
    let running = step(
        &mut instance,
        &observed(Some(ready_workload("nginx:1.27", 2))),
        t0(),
    );
    assert_eq!(running.status.phase, Some(InstancePhase::Running));
}

#[test]
fn starting_again_while_stopping_ends_the_stop_and_starts() {
    let mut instance = running(spec("nginx:1.27"));
    instance.spec.state = DesiredState::Stopped;
    instance.metadata.generation = Some(2);
    let mut draining = ready_workload("nginx:1.27", 0);
    draining.replicas = 2;
    step(&mut instance, &observed(Some(draining.clone())), t0());
    assert_eq!(
        instance.status.as_ref().unwrap().phase,
        Some(InstancePhase::Stopping)
    );
    instance.spec.state = DesiredState::Running;
    instance.metadata.generation = Some(3);
    let plan = step(&mut instance, &observed(Some(draining)), t0());
    assert_eq!(plan.status.phase, Some(InstancePhase::Starting));
    assert_eq!(plan.workload.as_ref().unwrap().replicas, 2);
    let last = plan
        .status
        .history
        .iter()
        .rev()
        .take(2)
        .map(|e| e.reason.as_str())
        .collect::<Vec<_>>();
    assert_eq!(last, ["StartRequested", "StopCancelled"]);
}

#[test]
fn suspension_stops_records_why_and_blocks_starting() {
    let mut instance = running(spec("nginx:1.27"));
    instance.spec.suspend = Some(Suspension {
        reason: "invoice 1042 unpaid".into(),
    });
    instance.metadata.generation = Some(2);
    let suspending = step(
        &mut instance,
        &observed(Some(ready_workload("nginx:1.27", 2))),
        t0(),
    );
    assert_eq!(suspending.status.suspended_at, Some(t0()));
    assert_eq!(
        suspending.status.suspend_reason.as_deref(),
        Some("invoice 1042 unpaid")
    );
    assert!(types_of(&suspending, 0).contains(&EventType::InstanceSuspended));
    assert_eq!(
        condition(&suspending, types::SUSPENDED).status,
        ConditionStatus::True
    );
    assert_eq!(suspending.workload.as_ref().unwrap().replicas, 0);
    step(
        &mut instance,
        &observed(Some(ready_workload("nginx:1.27", 0))),
        t0(),
    );
    assert_eq!(
        instance.status.as_ref().unwrap().phase,
        Some(InstancePhase::Stopped)
    );

    // spec.state: Running does not start a suspended Instance.
    instance.spec.state = DesiredState::Running;
    instance.metadata.generation = Some(3);
    let still = step(
        &mut instance,
        &observed(Some(ready_workload("nginx:1.27", 0))),
        t0(),
    );
    assert_eq!(still.status.phase, Some(InstancePhase::Stopped));
    assert_eq!(condition(&still, types::READY).reason, "Suspended");
    assert_eq!(still.workload.as_ref().unwrap().replicas, 0);

    let seq = last_seq(&instance);
    instance.spec.suspend = None;
    instance.metadata.generation = Some(4);
    let resumed = step(
        &mut instance,
        &observed(Some(ready_workload("nginx:1.27", 0))),
        t0(),
    );
    assert_eq!(resumed.status.phase, Some(InstancePhase::Starting));
    assert_eq!(resumed.status.suspended_at, None);
    assert_eq!(
        types_of(&resumed, seq),
        vec![EventType::InstanceUnsuspended, EventType::InstanceStarting]
    );
}

#[test]
fn an_image_change_is_a_new_release_that_succeeds() {
    let mut instance = running(spec("nginx:1.27"));
    let seq = last_seq(&instance);
    instance.spec.image = "nginx:1.28".into();
    instance.metadata.generation = Some(2);
    let deploying = step(
        &mut instance,
        &observed(Some(ready_workload("nginx:1.27", 2))),
        t0(),
    );
    assert!(deploying.actions.contains(&ProviderAction::Deploy));
    assert_eq!(deploying.workload.as_ref().unwrap().image, "nginx:1.28");
    let release = deploying.status.current_release.clone().unwrap();
    assert_eq!(
        (release.version, release.outcome),
        (2, ReleaseOutcome::Pending)
    );
    assert_eq!(types_of(&deploying, seq), vec![EventType::DeployStarted]);
    assert_eq!(
        condition(&deploying, types::PROGRESSING).reason,
        "RollingOut"
    );
    assert_eq!(deploying.status.phase, Some(InstancePhase::Running));

    let done = step(
        &mut instance,
        &observed(Some(ready_workload("nginx:1.28", 2))),
        t0(),
    );
    assert_eq!(
        done.status.current_release.as_ref().map(|r| r.outcome),
        Some(ReleaseOutcome::Succeeded)
    );
    assert_eq!(
        types_of(&done, seq),
        vec![EventType::DeployStarted, EventType::DeploySucceeded]
    );
    assert_eq!(done.status.releases.len(), 2);
}

#[test]
fn a_release_version_at_i64_max_stays_there() {
    // status.currentRelease.version i64::MAX and a new spec.image panicked:
    // attempt to add with overflow.
    let mut instance = running(spec("nginx:1.27"));
    let status = instance.status.as_mut().unwrap();
    status.current_release.as_mut().unwrap().version = i64::MAX;
    instance.spec.image = "nginx:1.28".into();
    let plan = plan(&instance, &observed(None), t0());
    let current = plan.status.current_release.unwrap();
    assert_eq!(
        (current.version, current.image.as_str()),
        (i64::MAX, "nginx:1.28")
    );
    assert!(plan.actions.contains(&ProviderAction::Deploy));
}

fn stuck(image: &str, replicas: i32) -> WorkloadStatus {
    let mut workload = ready_workload(image, replicas);
    workload.ready_replicas = 0;
    workload.rollout_complete = false;
    // Found stuck well after the release began.
    workload.progress_deadline_exceeded = Some(t0() + ChronoDuration::hours(1));
    workload.problems =
        vec!["pod web-1: container app is in CrashLoopBackOff (restarted 5 times)".into()];
    workload
}

#[test]
fn a_release_that_misses_its_deadline_fails_the_instance() {
    let mut instance = running(spec("nginx:1.27"));
    instance.spec.image = "example.test/crashloop:2".into();
    instance.metadata.generation = Some(2);
    step(
        &mut instance,
        &observed(Some(ready_workload("nginx:1.27", 2))),
        t0(),
    );
    let seq = last_seq(&instance);
    let failed = step(
        &mut instance,
        &observed(Some(stuck("example.test/crashloop:2", 2))),
        t0(),
    );
    assert_eq!(failed.status.phase, Some(InstancePhase::Failed));
    assert_eq!(
        types_of(&failed, seq),
        vec![EventType::DeployFailed, EventType::InstanceFailed]
    );
    let ready = condition(&failed, types::READY);
    assert_eq!(ready.reason, "Failed");
    assert!(
        ready.message.contains("CrashLoopBackOff"),
        "{}",
        ready.message
    );
    assert_eq!(failed.status.failed_generation, Some(2));

    // Nothing changes until the spec does.
    let again = step(
        &mut instance,
        &observed(Some(stuck("example.test/crashloop:2", 2))),
        t0(),
    );
    assert_eq!(again.status.phase, Some(InstancePhase::Failed));
    assert!(again.events.is_empty());

    // A fixed image: Failed -> Starting -> Running.
    instance.spec.image = "nginx:1.29".into();
    instance.metadata.generation = Some(3);
    let retry = step(
        &mut instance,
        &observed(Some(stuck("example.test/crashloop:2", 2))),
        t0(),
    );
    assert_eq!(retry.status.phase, Some(InstancePhase::Starting));
    let fixed = step(
        &mut instance,
        &observed(Some(ready_workload("nginx:1.29", 2))),
        t0(),
    );
    assert_eq!(fixed.status.phase, Some(InstancePhase::Running));
    assert_eq!(fixed.status.current_release.as_ref().unwrap().version, 3);
}

#[test]
fn a_verdict_from_before_the_rollback_does_not_fail_the_rollback() {
    let mut s = spec("nginx:1.27");
    s.rollback = RollbackPolicy::Auto;
    let mut instance = running(s);
    instance.spec.image = "example.test/crashloop:2".into();
    instance.metadata.generation = Some(2);
    step(
        &mut instance,
        &observed(Some(ready_workload("nginx:1.27", 2))),
        t0(),
    );
    let mut stuck_before = stuck("example.test/crashloop:2", 2);
    stuck_before.progress_deadline_exceeded = Some(t0() + ChronoDuration::minutes(5));
    let rollback_at = t0() + ChronoDuration::minutes(6);
    step(
        &mut instance,
        &observed(Some(stuck_before.clone())),
        rollback_at,
    );
    let rollback = instance
        .status
        .as_ref()
        .unwrap()
        .current_release
        .clone()
        .unwrap();
    assert_eq!(rollback.image, "nginx:1.27");
    // The Deployment rolls back, still showing the old release's verdict.
    let mut rolling = stuck_before;
    rolling.image = "nginx:1.27".into();
    let plan = step(
        &mut instance,
        &observed(Some(rolling)),
        rollback_at + ChronoDuration::seconds(1),
    );
    assert_eq!(
        plan.status.current_release.map(|r| r.outcome),
        Some(ReleaseOutcome::Pending),
        "the rollback is still under way, not failed"
    );
    assert_ne!(plan.status.phase, Some(InstancePhase::Failed));
}

#[test]
fn auto_rollback_returns_to_the_last_good_release() {
    let mut s = spec("nginx:1.27");
    s.rollback = RollbackPolicy::Auto;
    let mut instance = running(s);
    instance.spec.image = "example.test/crashloop:2".into();
    instance.metadata.generation = Some(2);
    step(
        &mut instance,
        &observed(Some(ready_workload("nginx:1.27", 2))),
        t0(),
    );
    let seq = last_seq(&instance);
    let rolling_back = step(
        &mut instance,
        &observed(Some(stuck("example.test/crashloop:2", 2))),
        t0(),
    );
    assert_eq!(
        types_of(&rolling_back, seq),
        vec![
            EventType::DeployFailed,
            EventType::DeployRolledBack,
            EventType::InstanceFailed,
            EventType::InstanceStarting
        ]
    );
    assert!(rolling_back.actions.contains(&ProviderAction::Rollback));
    assert_eq!(rolling_back.workload.as_ref().unwrap().image, "nginx:1.27");
    let current = rolling_back.status.current_release.clone().unwrap();
    assert_eq!((current.version, current.image.as_str()), (3, "nginx:1.27"));
    let outcomes: Vec<_> = rolling_back
        .status
        .releases
        .iter()
        .map(|r| r.outcome)
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ReleaseOutcome::Succeeded,
            ReleaseOutcome::RolledBack,
            ReleaseOutcome::Pending
        ]
    );

    let back = step(
        &mut instance,
        &observed(Some(ready_workload("nginx:1.27", 2))),
        t0(),
    );
    assert_eq!(back.status.phase, Some(InstancePhase::Running));
    assert_eq!(condition(&back, types::PROGRESSING).reason, "RolledBack");
    // spec.image still names the bad image; it is not deployed again by itself.
    let steady = step(
        &mut instance,
        &observed(Some(ready_workload("nginx:1.27", 2))),
        t0(),
    );
    assert!(!steady.actions.contains(&ProviderAction::Deploy));
    assert!(steady.events.is_empty());
}

#[test]
fn a_running_instance_whose_replicas_crash_fails_after_the_deadline() {
    let mut instance = running(spec("nginx:1.27"));
    let mut crashing = ready_workload("nginx:1.27", 2);
    crashing.ready_replicas = 1;
    crashing.rollout_complete = false;
    crashing.problems = vec!["pod web-1: container app is in CrashLoopBackOff".into()];
    let unhealthy = step(&mut instance, &observed(Some(crashing.clone())), t0());
    assert_eq!(unhealthy.status.phase, Some(InstancePhase::Running));
    assert_eq!(
        condition(&unhealthy, types::READY).reason,
        "ReplicasNotReady"
    );
    assert!(types_of(&unhealthy, 0).contains(&EventType::HealthDegraded));
    assert!(unhealthy.requeue_after <= std::time::Duration::from_secs(61));

    let later = step(
        &mut instance,
        &observed(Some(crashing)),
        t0() + ChronoDuration::seconds(61),
    );
    assert_eq!(later.status.phase, Some(InstancePhase::Failed));
    assert!(
        condition(&later, types::READY)
            .message
            .contains("CrashLoopBackOff")
    );
}

/// The observed workload of a settled Instance with `ready` of `replicas`
/// ready: no spec change under way, some replicas just went unready.
fn with_ready(image: &str, replicas: i32, ready: i32) -> WorkloadStatus {
    let mut workload = ready_workload(image, replicas);
    workload.ready_replicas = ready;
    workload.rollout_complete = ready >= replicas;
    workload.endpoint_ready = ready > 0;
    workload
}

fn with_health_check(mut spec: InstanceSpec) -> InstanceSpec {
    spec.health_check = Some(crate::api::HealthCheck {
        http_get: Some(crate::api::HttpHealthCheck {
            path: "/healthz".into(),
            port: "http".into(),
        }),
        tcp_socket: None,
        exec: None,
        initial_delay_seconds: None,
        period_seconds: None,
        timeout_seconds: None,
        failure_threshold: None,
    });
    spec
}

/// The one health event a plan recorded after `since`, if any, with its
/// previousHealth, readyReplicas and replicas details.
fn health_event(plan: &InstancePlan, since: i64) -> Option<(EventType, String, String, String)> {
    let health: Vec<_> = plan
        .status
        .history
        .iter()
        .filter(|e| e.sequence > since && e.type_.family() == "health")
        .collect();
    assert!(health.len() <= 1, "more than one health event: {health:?}");
    health.first().map(|e| {
        let detail = |k: &str| e.details.get(k).cloned().unwrap_or_default();
        (
            e.type_,
            detail("previousHealth"),
            detail("readyReplicas"),
            detail("replicas"),
        )
    })
}

#[test]
fn health_passed_comes_with_running_when_every_replica_passed_the_health_check() {
    let instance = running(with_health_check(spec("nginx:1.27")));
    let history = &instance.status.as_ref().unwrap().history;
    let types: Vec<_> = history.iter().map(|e| e.type_).collect();
    assert_eq!(
        types,
        [
            EventType::InstanceCreated,
            EventType::InstanceStarting,
            EventType::InstanceStarted,
            EventType::HealthPassed
        ]
    );
    let passed = history.last().unwrap();
    assert_eq!(
        passed.details.get("replicas").map(String::as_str),
        Some("2")
    );
    // instance.started already says it to a person: no Kubernetes Event of its own.
    assert!(!crate::plan::deserves_event(EventType::HealthPassed));

    // Again at every start: stopped, then started.
    let mut instance = instance;
    instance.spec.state = DesiredState::Stopped;
    instance.metadata.generation = Some(2);
    step(
        &mut instance,
        &observed(Some(ready_workload("nginx:1.27", 0))),
        t0(),
    );
    assert_eq!(
        instance.status.as_ref().unwrap().phase,
        Some(InstancePhase::Stopped)
    );
    instance.spec.state = DesiredState::Running;
    instance.metadata.generation = Some(3);
    let seq = last_seq(&instance);
    step(
        &mut instance,
        &observed(Some(ready_workload("nginx:1.27", 0))),
        t0(),
    );
    let started = step(
        &mut instance,
        &observed(Some(ready_workload("nginx:1.27", 2))),
        t0(),
    );
    assert_eq!(
        types_of(&started, seq),
        [
            EventType::InstanceStarting,
            EventType::InstanceStarted,
            EventType::HealthPassed
        ]
    );
}

#[test]
fn without_a_health_check_or_replicas_no_health_check_passes() {
    let plain = running(spec("nginx:1.27"));
    assert!(
        plain
            .status
            .as_ref()
            .unwrap()
            .history
            .iter()
            .all(|e| e.type_.family() != "health")
    );
    let mut none = with_health_check(spec("nginx:1.27"));
    none.replicas = 0;
    let none = running(none);
    assert!(
        none.status
            .as_ref()
            .unwrap()
            .history
            .iter()
            .all(|e| e.type_.family() != "health")
    );
}

#[test]
fn replicas_going_unready_degrade_then_fail_and_coming_back_recover() {
    let mut instance = running(spec("nginx:1.27"));
    let look = |instance: &mut Instance, ready: i32| {
        let seq = last_seq(instance);
        let planned = step(
            instance,
            &observed(Some(with_ready("nginx:1.27", 2, ready))),
            t0(),
        );
        assert_eq!(planned.status.phase, Some(InstancePhase::Running));
        // Planning again on the same observation records nothing more.
        let again = plan(
            instance,
            &observed(Some(with_ready("nginx:1.27", 2, ready))),
            t0(),
        );
        assert_eq!(again.status.history, planned.status.history);
        (health_event(&planned, seq), planned)
    };
    let str3 = |t: EventType, before: &str, ready: &str| {
        Some((t, before.to_string(), ready.to_string(), "2".to_string()))
    };

    // Healthy -> some ready: degraded, a Warning.
    let (event, plan) = look(&mut instance, 1);
    assert_eq!(event, str3(EventType::HealthDegraded, "Healthy", "1"));
    let warning = plan
        .events
        .iter()
        .find(|e| e.reason == "HealthDegraded")
        .unwrap();
    assert!(warning.warning);
    assert!(
        warning.message.contains("1 of 2 replicas ready"),
        "{}",
        warning.message
    );
    assert_eq!(condition(&plan, types::READY).reason, "ReplicasNotReady");
    // Degraded -> none ready: failed, a Warning.
    let (event, plan) = look(&mut instance, 0);
    assert_eq!(event, str3(EventType::HealthFailed, "Degraded", "0"));
    assert!(
        plan.events
            .iter()
            .any(|e| e.warning && e.reason == "HealthCheckFailed")
    );
    // Failed -> some ready again: degraded, from failed.
    let (event, _) = look(&mut instance, 1);
    assert_eq!(event, str3(EventType::HealthDegraded, "Failed", "1"));
    // Degraded -> every replica ready: recovered, not a Warning.
    let (event, plan) = look(&mut instance, 2);
    assert_eq!(event, str3(EventType::HealthRecovered, "Degraded", "2"));
    assert!(
        plan.events
            .iter()
            .any(|e| !e.warning && e.reason == "HealthRecovered")
    );
    assert_eq!(condition(&plan, types::READY).status, ConditionStatus::True);
    // Healthy -> none ready at once: failed, from healthy; then recovered from failed.
    let (event, _) = look(&mut instance, 0);
    assert_eq!(event, str3(EventType::HealthFailed, "Healthy", "0"));
    let (event, _) = look(&mut instance, 2);
    assert_eq!(event, str3(EventType::HealthRecovered, "Failed", "2"));
    // Staying healthy is no event.
    let (event, _) = look(&mut instance, 2);
    assert_eq!(event, None);
    // Nor is moving between two degraded counts.
    let mut three = running(spec("nginx:1.27"));
    three.spec.replicas = 3;
    three.status.as_mut().unwrap().applied_scale = Some(AppliedScale {
        replicas: 3,
        cpu: None,
        memory: None,
    });
    step(
        &mut three,
        &observed(Some(ready_workload("nginx:1.27", 3))),
        t0(),
    );
    let seq = last_seq(&three);
    step(
        &mut three,
        &observed(Some(with_ready("nginx:1.27", 3, 2))),
        t0(),
    );
    let fewer = step(
        &mut three,
        &observed(Some(with_ready("nginx:1.27", 3, 1))),
        t0(),
    );
    assert_eq!(types_of(&fewer, seq), [EventType::HealthDegraded]);
}

#[test]
fn unready_replicas_during_a_spec_change_are_no_health_event() {
    let mut instance = running(spec("nginx:1.27"));
    let seq = last_seq(&instance);
    instance.spec.image = "nginx:1.28".into();
    instance.metadata.generation = Some(2);
    let mut rolling = with_ready("nginx:1.28", 2, 0);
    rolling.rollout_complete = false;
    step(&mut instance, &observed(Some(rolling.clone())), t0());
    step(
        &mut instance,
        &observed(Some(with_ready("nginx:1.28", 2, 1))),
        t0(),
    );
    let done = step(
        &mut instance,
        &observed(Some(ready_workload("nginx:1.28", 2))),
        t0(),
    );
    assert!(
        types_of(&done, seq).iter().all(|t| t.family() != "health"),
        "{:?}",
        types_of(&done, seq)
    );
}

#[test]
fn scaling_is_an_event_with_old_and_new_values_and_not_a_health_problem() {
    let mut instance = running(spec("nginx:1.27"));
    let seq = last_seq(&instance);
    instance.spec.replicas = 4;
    instance.spec.resources = Some(InstanceResources {
        cpu: Some(Quantity("500m".into())),
        memory: None,
    });
    instance.metadata.generation = Some(2);
    let mut scaling = ready_workload("nginx:1.27", 4);
    scaling.ready_replicas = 2;
    scaling.rollout_complete = false;
    let plan = step(&mut instance, &observed(Some(scaling)), t0());
    assert!(plan.actions.contains(&ProviderAction::Scale));
    assert_eq!(types_of(&plan, seq), vec![EventType::InstanceScaled]);
    let scaled = plan.status.history.last().unwrap();
    assert_eq!(
        scaled.details.get("oldReplicas").map(String::as_str),
        Some("2")
    );
    assert_eq!(
        scaled.details.get("newReplicas").map(String::as_str),
        Some("4")
    );
    assert_eq!(
        scaled.details.get("newCpu").map(String::as_str),
        Some("500m")
    );
    assert_eq!(condition(&plan, types::READY).reason, "Updating");
    let done = step(
        &mut instance,
        &observed(Some(ready_workload("nginx:1.27", 4))),
        t0(),
    );
    assert_eq!(types_of(&done, seq), vec![EventType::InstanceScaled]);
}

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

#[test]
fn a_restart_happens_once_per_timestamp() {
    let mut instance = running(spec("nginx:1.27"));
    let at = t0() + ChronoDuration::minutes(5);
    instance.spec.restarted_at = Some(at);
    instance.metadata.generation = Some(2);
    let restart = step(
        &mut instance,
        &observed(Some(ready_workload("nginx:1.27", 2))),
        t0(),
    );
    assert!(restart.actions.contains(&ProviderAction::Restart));
    assert_eq!(
        restart.workload.as_ref().unwrap().restart_token,
        Some(at.to_rfc3339())
    );
    assert_eq!(restart.status.restarted_at, Some(at));
    // A GitOps re-apply of the same value does nothing.
    let mut restarted = ready_workload("nginx:1.27", 2);
    restarted.restart_token = Some(at.to_rfc3339());
    step(&mut instance, &observed(Some(restarted.clone())), t0());
    let again = step(&mut instance, &observed(Some(restarted)), t0());
    assert!(!again.actions.contains(&ProviderAction::Restart));
    assert!(again.events.is_empty());
}

#[test]
fn deletion_deprovisions_then_releases() {
    let mut instance = running(spec("nginx:1.27"));
    instance.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    let destroying = step(
        &mut instance,
        &observed(Some(ready_workload("nginx:1.27", 2))),
        t0(),
    );
    assert_eq!(destroying.status.phase, Some(InstancePhase::Destroying));
    assert_eq!(destroying.actions, vec![ProviderAction::Deprovision]);
    assert_eq!(destroying.finalizer, FinalizerAction::Keep);
    let destroyed = step(&mut instance, &observed(None), t0());
    assert_eq!(destroyed.status.phase, Some(InstancePhase::Destroyed));
    assert_eq!(destroyed.finalizer, FinalizerAction::Release);
    assert_eq!(
        destroyed.status.history.last().map(|e| e.type_),
        Some(EventType::InstanceDeleted)
    );
}

#[test]
fn deleting_a_starting_instance_fails_it_first_as_the_table_requires() {
    let mut instance = instance(spec("nginx:1.27"));
    step(&mut instance, &observed(None), t0());
    let mut starting = ready_workload("nginx:1.27", 2);
    starting.ready_replicas = 0;
    starting.rollout_complete = false;
    step(&mut instance, &observed(Some(starting.clone())), t0());
    instance.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    let plan = step(&mut instance, &observed(Some(starting)), t0());
    let path: Vec<_> = plan
        .status
        .history
        .iter()
        .filter_map(|e| e.to.clone())
        .collect();
    assert_eq!(path, ["Provisioning", "Starting", "Failed", "Destroying"]);
}

#[test]
fn an_unknown_provider_is_a_condition_not_a_state_change() {
    let mut s = spec("nginx:1.27");
    s.provider = Some("kubevirt".into());
    let instance = instance(s);
    let observation = InstanceObservation {
        provider: Err(UnknownProvider {
            name: "kubevirt".into(),
            known: "kubernetes".into(),
        }),
        cleanup: Cleanup::GarbageCollected,
        workload: None,
        webhooks_listen: true,
    };
    let plan = plan(&instance, &observation, t0());
    assert_eq!(plan.status.phase, None);
    assert!(plan.actions.is_empty());
    let synced = condition(&plan, types::SYNCED);
    assert_eq!(
        (synced.status, synced.reason.as_str()),
        (ConditionStatus::False, "UnknownProvider")
    );
    assert!(synced.message.contains("kubevirt") && synced.message.contains("kubernetes"));
    assert_eq!(plan.events.len(), 1);
    assert!(plan.events[0].warning);
}

#[test]
fn a_missing_workload_of_a_running_instance_is_provisioned_again() {
    let mut instance = running(spec("nginx:1.27"));
    let plan = step(&mut instance, &observed(None), t0());
    assert_eq!(plan.actions.first(), Some(&ProviderAction::Provision));
    assert_eq!(plan.status.phase, Some(InstancePhase::Running));
    assert_eq!(
        condition(&plan, types::READY).status,
        ConditionStatus::False
    );
}

// ------------------------------------------------------------- properties

const IMAGES: &[&str] = &["nginx:1.27", "nginx:1.28", "example.test/crashloop:1"];

fn phase_strategy() -> impl Strategy<Value = Option<InstancePhase>> {
    prop_oneof![
        Just(None),
        proptest::sample::select(InstancePhase::ALL.to_vec()).prop_map(Some),
    ]
}

fn image_strategy() -> impl Strategy<Value = String> {
    proptest::sample::select(IMAGES).prop_map(str::to_string)
}

fn outcome_strategy() -> impl Strategy<Value = ReleaseOutcome> {
    proptest::sample::select(vec![
        ReleaseOutcome::Pending,
        ReleaseOutcome::Succeeded,
        ReleaseOutcome::Failed,
        ReleaseOutcome::RolledBack,
    ])
}

prop_compose! {
    fn spec_strategy()(
        image in image_strategy(),
        replicas in 0i32..4,
        stopped in any::<bool>(),
        suspended in any::<bool>(),
        restart in proptest::option::of(0i64..3),
        auto in any::<bool>(),
        ports in any::<bool>(),
    ) -> InstanceSpec {
        let mut s = spec(&image);
        s.replicas = replicas;
        s.state = if stopped { DesiredState::Stopped } else { DesiredState::Running };
        s.suspend = suspended.then(|| Suspension { reason: "billing".into() });
        s.restarted_at = restart.map(|m| t0() + ChronoDuration::minutes(m));
        s.rollback = if auto { RollbackPolicy::Auto } else { RollbackPolicy::Manual };
        if !ports {
            s.ports.clear();
        }
        s
    }
}

prop_compose! {
    fn status_strategy()(
        phase in phase_strategy(),
        releases in proptest::collection::vec((image_strategy(), outcome_strategy()), 0..4),
        restarted in proptest::option::of(0i64..3),
        suspended in any::<bool>(),
        scale in proptest::option::of(0i32..4),
        failed_generation in proptest::option::of(1i64..4),
        ready in proptest::option::of((any::<bool>(), 0i64..120, any::<bool>())),
        history_len in 0i64..4,
        dispatched in 0i64..4,
    ) -> InstanceStatus {
        let releases: Vec<Release> = releases
            .into_iter()
            .enumerate()
            .map(|(i, (image, outcome))| Release {
                version: i as i64 + 1,
                image: image.into(),
                created_at: t0(),
                outcome,
            })
            .collect();
        let mut conditions = Vec::new();
        if let Some((is_ready, age, not_ready_reason)) = ready {
            conditions.push(crate::api::Condition {
                type_: types::READY.into(),
                status: if is_ready { ConditionStatus::True } else { ConditionStatus::False },
                reason: if not_ready_reason { "ReplicasNotReady".into() } else { "Running".into() },
                message: Default::default(),
                last_transition_time: t0() - ChronoDuration::seconds(age),
                observed_generation: Some(1),
            });
        }
        let history: Vec<HistoryEntry> = (1..=history_len)
            .map(|sequence| HistoryEntry {
                sequence,
                type_: EventType::InstanceScaled,
                from: None,
                to: None,
                reason: "Scaled".into(),
                message: Default::default(),
                details: Default::default(),
                time: t0(),
            })
            .collect();
        InstanceStatus {
            phase,
            current_release: releases.last().cloned(),
            releases,
            restarted_at: restarted.map(|m| t0() + ChronoDuration::minutes(m)),
            suspended_at: suspended.then(t0),
            suspend_reason: suspended.then(|| "billing".into()),
            applied_scale: scale.map(|replicas| AppliedScale { replicas, cpu: None, memory: None }),
            failed_generation,
            conditions,
            dispatched_seq: dispatched.min(history_len),
            history,
            ..InstanceStatus::default()
        }
    }
}

prop_compose! {
    fn workload_strategy()(
        image in image_strategy(),
        desired in 0i32..4,
        replicas in 0i32..4,
        ready in 0i32..4,
        current in any::<bool>(),
        restart in proptest::option::of(0i64..3),
        complete in any::<bool>(),
        exceeded in any::<bool>(),
        problem in any::<bool>(),
        endpoint in any::<bool>(),
        terminating in any::<bool>(),
    ) -> WorkloadStatus {
        let mut w = ready_workload(&image, desired);
        w.replicas = replicas;
        w.ready_replicas = ready.min(replicas);
        w.current = current;
        w.restart_token = restart.map(|m| (t0() + ChronoDuration::minutes(m)).to_rfc3339());
        w.rollout_complete = complete;
        w.progress_deadline_exceeded = exceeded.then(|| t0() + ChronoDuration::hours(1));
        w.problems = if problem { vec!["pod web-1: CrashLoopBackOff".into()] } else { Vec::new() };
        w.endpoint_ready = endpoint;
        w.terminating = terminating;
        w
    }
}

prop_compose! {
    fn case_strategy()(
        spec in spec_strategy(),
        status in proptest::option::of(status_strategy()),
        generation in 1i64..5,
        deleting in any::<bool>(),
        finalizer in any::<bool>(),
        workload in proptest::option::of(workload_strategy()),
        known_provider in proptest::bool::weighted(0.9),
        garbage_collected in any::<bool>(),
        later in 0i64..200,
    ) -> (Instance, InstanceObservation, DateTime<Utc>) {
        let mut instance = instance(spec);
        // Destroying and Destroyed only ever follow a deletion, which cannot
        // be taken back.
        let destroying = status
            .as_ref()
            .is_some_and(|s| matches!(s.phase, Some(InstancePhase::Destroying | InstancePhase::Destroyed)));
        instance.status = status;
        instance.metadata.generation = Some(generation);
        if deleting || destroying {
            instance.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        }
        if !finalizer {
            instance.metadata.finalizers = None;
        }
        let observation = InstanceObservation {
            provider: if known_provider {
                Ok("kubernetes".into())
            } else {
                Err(UnknownProvider { name: "other".into(), known: "kubernetes".into() })
            },
            cleanup: if garbage_collected { Cleanup::GarbageCollected } else { Cleanup::Deprovision },
            workload,
            webhooks_listen: true,
        };
        (instance, observation, t0() + ChronoDuration::seconds(later))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever the spec, status and observation: every phase change the
    /// plan records is one the table allows, and the recorded changes lead
    /// from the old phase to the new one.
    #[test]
    fn no_plan_holds_a_forbidden_transition((instance, observation, now) in case_strategy()) {
        let before = instance.status.as_ref().and_then(|s| s.phase);
        let old_last = last_seq(&instance);
        let plan = plan(&instance, &observation, now);
        let mut phase = before;
        for entry in plan.status.history.iter().filter(|e| e.sequence > old_last) {
            let Some(to) = &entry.to else { continue };
            let to: InstancePhase = serde_json::from_value(serde_json::json!(to)).unwrap();
            prop_assert_eq!(entry.from.as_ref().map(String::from), phase.map(|p| p.to_string()));
            if let Some(from) = phase {
                prop_assert!(validate_transition(from, to).is_ok(), "{} -> {}", from, to);
            } else {
                prop_assert_eq!(to, InstancePhase::Provisioning);
            }
            phase = Some(to);
        }
        prop_assert_eq!(phase, plan.status.phase);
        prop_assert_ne!(condition(&plan, types::SYNCED).reason.as_str(), "TransitionRefused");
    }

    /// Planning again on the plan's own result, with the same observation,
    /// changes nothing and says nothing.
    #[test]
    fn planning_again_changes_nothing((mut instance, observation, now) in case_strategy()) {
        let first = plan(&instance, &observation, now);
        instance.status = Some(first.status.clone());
        if first.finalizer == FinalizerAction::Add {
            instance.metadata.finalizers = Some(vec![FINALIZER.into()]);
        }
        let second = plan(&instance, &observation, now);
        prop_assert_eq!(&second.status, &first.status);
        prop_assert!(second.events.is_empty(), "{:?}", second.events);
        prop_assert_eq!(&second.workload, &first.workload);
    }

    /// A deleted Instance never gets anything created or started.
    #[test]
    fn deletion_only_ever_deprovisions((mut instance, observation, now) in case_strategy()) {
        instance.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        let plan = plan(&instance, &observation, now);
        prop_assert!(plan.actions.iter().all(|a| *a == ProviderAction::Deprovision));
        prop_assert!(plan.workload.is_none());
        if plan.status.phase == Some(InstancePhase::Destroyed) {
            prop_assert_eq!(plan.finalizer, FinalizerAction::Release);
        }
    }

    /// The workload never runs replicas while the Instance is stopped or
    /// suspended, and always runs spec.replicas otherwise.
    #[test]
    fn replicas_follow_the_intent((instance, observation, now) in case_strategy()) {
        let plan = plan(&instance, &observation, now);
        if let Some(workload) = &plan.workload {
            let stopped = instance.spec.suspend.is_some() || instance.spec.state == DesiredState::Stopped;
            let expected = if stopped { 0 } else { instance.spec.replicas };
            prop_assert_eq!(workload.replicas, expected);
        }
    }
}

/// The world a healthy provider produces once it has applied a workload.
fn converged_world(workload: &InstanceWorkload) -> WorkloadStatus {
    let mut world = ready_workload(&workload.image, workload.replicas);
    world.restart_token = workload.restart_token.clone();
    world.endpoint_ready = true;
    world
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Liveness: from any status, with a provider that does what it is told,
    /// an Instance reaches what its spec asks for within a few reconciles,
    /// unless it is Failed and nothing asks it to try again.
    #[test]
    fn a_healthy_world_brings_every_instance_where_its_spec_says(
        (mut instance, observation, now) in case_strategy()
    ) {
        let mut world = observation.workload.clone();
        let observation = InstanceObservation { provider: Ok("kubernetes".into()), workload: None, ..observation };
        let stuck_failed = instance.status.as_ref().is_some_and(|s| {
            s.phase == Some(InstancePhase::Failed)
                && s.failed_generation.is_some_and(|g| instance.metadata.generation.is_some_and(|current| current <= g))
        });
        let mut failed_by_the_first_world = false;
        for round in 0..8 {
            let plan = plan(&instance, &InstanceObservation { workload: world.clone(), ..observation.clone() }, now);
            instance.status = Some(plan.status.clone());
            // The random first world may be a failing one; a failure it
            // causes stands until the spec changes, as it should.
            if round == 0 && plan.status.phase == Some(InstancePhase::Failed) {
                failed_by_the_first_world = true;
            }
            if plan.finalizer == FinalizerAction::Add {
                instance.metadata.finalizers = Some(vec![FINALIZER.into()]);
            }
            world = match (&plan.workload, plan.actions.contains(&ProviderAction::Deprovision)) {
                (_, true) => None,
                (Some(workload), false) => Some(converged_world(workload)),
                (None, false) => world,
            };
        }
        let status = instance.status.clone().unwrap();
        let deleting = instance.metadata.deletion_timestamp.is_some();
        let stopped = instance.spec.suspend.is_some() || instance.spec.state == DesiredState::Stopped;
        let expected = if deleting {
            InstancePhase::Destroyed
        } else if (stuck_failed || failed_by_the_first_world) && status.phase == Some(InstancePhase::Failed) {
            InstancePhase::Failed
        } else if stopped {
            InstancePhase::Stopped
        } else {
            InstancePhase::Running
        };
        // A status with no phase and no finalizer while deleting never gets
        // one: nothing was created, it is simply let go.
        if deleting && status.phase.is_none() {
            prop_assert_eq!(plan(&instance, &InstanceObservation { workload: world, ..observation }, now).finalizer, FinalizerAction::Release);
            return Ok(());
        }
        prop_assert_eq!(status.phase, Some(expected), "history: {:?}", status.history.iter().map(|e| (e.type_, e.reason.clone())).collect::<Vec<_>>());
        if expected == InstancePhase::Running {
            prop_assert!(conditions::is_true(&status.conditions, types::READY));
        }
    }
}

/// The planner only proposes moves the table allows (the property tests hold
/// it to that), so a refusal is a guard against a planner bug. This drives
/// the guard directly: a skipped step is not made, and says so.
#[test]
fn a_refused_transition_is_not_made_and_shows_as_a_condition_and_a_warning() {
    let mut stopped = instance(spec("nginx:1.27"));
    stopped.status = Some(InstanceStatus {
        phase: Some(InstancePhase::Stopped),
        ..InstanceStatus::default()
    });
    let observation = observed(None);
    let mut planner = Planner::new(&stopped, &observation, t0());
    assert!(!planner.transition(InstancePhase::Running, "Test", "skips Starting".into()));
    planner.update_conditions(None);

    assert_eq!(planner.status.phase, Some(InstancePhase::Stopped));
    assert!(planner.status.history.is_empty(), "nothing was recorded");
    let synced = conditions::find(&planner.status.conditions, types::SYNCED).unwrap();
    assert_eq!(synced.reason, "TransitionRefused");
    assert!(
        synced.message.contains("Stopped") && synced.message.contains("Running"),
        "names both states: {}",
        synced.message
    );
    let warning = planner
        .events
        .iter()
        .find(|e| e.reason == "TransitionRefused")
        .expect("a TransitionRefused Event");
    assert!(warning.warning);
    assert_eq!(warning.message, synced.message);
}
