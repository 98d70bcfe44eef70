//! Tests of the Sandbox planner: scenarios, and properties that must hold
//! for any spec, status and observation.

use chrono::{DateTime, Duration as ChronoDuration, TimeZone, Utc};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use proptest::prelude::*;

use super::*;
use crate::api::{ConditionStatus, SandboxResources, SandboxSpec};
use crate::provider::ClaimObserved;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0).unwrap()
}

fn spec() -> SandboxSpec {
    SandboxSpec {
        image: "ghcr.io/acme/devbox:1".into(),
        resources: SandboxResources {
            cpu: Quantity("1".into()),
            memory: Quantity("2Gi".into()),
            storage: Quantity("10Gi".into()),
            storage_class_name: None,
        },
        ttl_seconds: None,
        expires_at: None,
        expiry_policy: ExpiryPolicy::Delete,
        state: DesiredState::Running,
        placement: None,
        agent_id: Some("agent-a1".into()),
        job_id: None,
        env: Vec::new(),
        ports: Vec::new(),
        provider: None,
        restarted_at: None,
        source: None,
    }
}

fn sandbox(spec: SandboxSpec) -> Sandbox {
    let mut sandbox = Sandbox::new("box", spec);
    sandbox.metadata.namespace = Some("agents".into());
    sandbox.metadata.uid = Some("0a1b2c3d-0000-4000-8000-000000000001".into());
    sandbox.metadata.generation = Some(1);
    sandbox.metadata.finalizers = Some(vec![FINALIZER.into()]);
    sandbox.metadata.creation_timestamp = Some(Time(
        k8s_openapi::jiff::Timestamp::from_second(t0().timestamp()).unwrap(),
    ));
    sandbox
}

fn host(name: &str, free_cpu: i64) -> Host {
    Host {
        name: name.into(),
        labels: [("kubernetes.io/hostname".to_string(), name.to_string())].into(),
        allocatable_cpu: free_cpu,
        allocatable_memory: 64 << 30,
        requested_cpu: 0,
        requested_memory: 0,
        schedulable: true,
        blocking_taints: Vec::new(),
    }
}

fn observation(observed: SandboxObserved) -> SandboxObservation {
    SandboxObservation {
        provider: Ok("pod".into()),
        cleanup: Cleanup::Deprovision,
        webhooks_listen: false,
        observed,
        commands: Vec::new(),
        source: None,
        hosts: vec![host("node-a", 8000), host("node-b", 4000)],
    }
}

/// What the provider would report once it did what the plan asked.
fn world_after(plan: &SandboxPlan, before: &SandboxObserved) -> SandboxObserved {
    let mut world = before.clone();
    for action in &plan.actions {
        match action {
            SandboxAction::Provision => {
                if let Some(w) = &plan.workload {
                    world.claim = Some(ClaimObserved {
                        name: format!("{}-data", w.name),
                        bound: true,
                        created_at: None,
                    });
                    world.service = !w.ports.is_empty();
                }
            }
            SandboxAction::Start => {
                if let Some(w) = &plan.workload {
                    world.pod = Some(ready_pod(w));
                }
            }
            SandboxAction::Stop => world.pod = None,
            SandboxAction::Deprovision => world = SandboxObserved::default(),
        }
    }
    world
}

fn ready_pod(workload: &SandboxWorkload) -> PodObserved {
    PodObserved {
        name: workload.name.clone(),
        revision: Some(workload.revision.clone()),
        ready: true,
        ip: Some("10.244.0.7".into()),
        host: match &workload.run {
            RunWanted::On(host) => Some(host.clone()),
            _ => None,
        },
        placed_on: None,
        failed: false,
        waiting_for_data: false,
        problems: Vec::new(),
        terminating: false,
    }
}

/// The host a plan starts the sandbox on, if it does.
fn run_on(plan: &SandboxPlan) -> Option<&str> {
    match plan.workload.as_ref().map(|w| &w.run) {
        Some(RunWanted::On(host)) => Some(host),
        _ => None,
    }
}

/// Plans, stores the status, and applies the plan to the world.
fn step(sandbox: &mut Sandbox, world: &mut SandboxObserved, now: DateTime<Utc>) -> SandboxPlan {
    let plan = plan(sandbox, &observation(world.clone()), now);
    sandbox.status = Some(plan.status.clone());
    *world = world_after(&plan, world);
    plan
}

fn phase(sandbox: &Sandbox) -> Option<SandboxPhase> {
    sandbox.status.as_ref().and_then(|s| s.phase)
}

fn types_of(sandbox: &Sandbox) -> Vec<EventType> {
    sandbox
        .status
        .as_ref()
        .map(|s| s.history.iter().map(|e| e.type_).collect())
        .unwrap_or_default()
}

fn run_to_running(sandbox: &mut Sandbox, world: &mut SandboxObserved) {
    for _ in 0..4 {
        step(sandbox, world, t0());
    }
    assert_eq!(phase(sandbox), Some(SandboxPhase::Running));
}

#[test]
fn a_new_sandbox_gets_its_claim_and_a_pod_on_the_roomiest_host_at_once_then_runs() {
    let mut sandbox = sandbox(spec());
    let mut world = SandboxObserved::default();
    let first = step(&mut sandbox, &mut world, t0());
    assert_eq!(first.status.phase, Some(SandboxPhase::Starting));
    // The pod is made with its claim: a claim that binds only once a pod
    // uses it would never bind otherwise.
    assert_eq!(
        first.actions,
        vec![SandboxAction::Provision, SandboxAction::Start]
    );
    assert_eq!(run_on(&first), Some("node-a"));
    assert_eq!(
        first.labels,
        Some([(AGENT_LABEL.to_string(), "agent-a1".to_string())].into())
    );

    run_to_running(&mut sandbox, &mut world);
    let status = sandbox.status.clone().unwrap();
    assert_eq!(status.pod_ip.as_deref(), Some("10.244.0.7"));
    assert_eq!(status.host.as_deref(), Some("node-a"));
    assert_eq!(status.started_at, Some(t0()));
    assert_eq!(status.claim_name.as_deref(), Some("box-data"));
    assert!(conditions::is_true(&status.conditions, types::READY));
    assert!(conditions::is_true(&status.conditions, types::SCHEDULED));
    assert_eq!(
        types_of(&sandbox),
        [
            EventType::SandboxCreated,
            EventType::SandboxStarting,
            EventType::SandboxStarted
        ]
    );
}

#[test]
fn stop_keeps_the_claim_and_start_reuses_it() {
    let mut sandbox = sandbox(spec());
    let mut world = SandboxObserved::default();
    run_to_running(&mut sandbox, &mut world);
    sandbox.spec.state = DesiredState::Stopped;
    sandbox.metadata.generation = Some(2);
    let stopping = step(&mut sandbox, &mut world, t0());
    assert!(stopping.actions.contains(&SandboxAction::Stop));
    step(&mut sandbox, &mut world, t0());
    assert_eq!(phase(&sandbox), Some(SandboxPhase::Stopped));
    assert!(world.claim.is_some() && world.pod.is_none());
    sandbox.spec.state = DesiredState::Running;
    sandbox.metadata.generation = Some(3);
    for _ in 0..3 {
        step(&mut sandbox, &mut world, t0());
    }
    assert_eq!(phase(&sandbox), Some(SandboxPhase::Running));
    assert_eq!(world.claim.as_ref().unwrap().name, "box-data");
}

#[test]
fn expiry_with_stop_stops_once_and_keeps_the_data() {
    let mut s = spec();
    s.expires_at = Some(t0() + ChronoDuration::minutes(10));
    s.expiry_policy = ExpiryPolicy::Stop;
    let mut sandbox = sandbox(s);
    let mut world = SandboxObserved::default();
    run_to_running(&mut sandbox, &mut world);
    // Before the deadline: requeued for exactly then, nothing else.
    let before = plan(
        &sandbox,
        &observation(world.clone()),
        t0() + ChronoDuration::minutes(9),
    );
    assert!(before.requeue_after <= std::time::Duration::from_secs(61));
    assert!(before.requeue_after >= std::time::Duration::from_secs(59));
    let later = t0() + ChronoDuration::minutes(10);
    step(&mut sandbox, &mut world, later);
    step(&mut sandbox, &mut world, later);
    assert_eq!(phase(&sandbox), Some(SandboxPhase::Stopped));
    assert!(world.claim.is_some());
    let expired = types_of(&sandbox)
        .iter()
        .filter(|t| **t == EventType::SandboxExpired)
        .count();
    assert_eq!(expired, 1, "sandbox.expired is recorded once");
    // Again and again: no second expiry.
    step(&mut sandbox, &mut world, later + ChronoDuration::minutes(5));
    let expired = types_of(&sandbox)
        .iter()
        .filter(|t| **t == EventType::SandboxExpired)
        .count();
    assert_eq!(expired, 1);
}

#[test]
fn a_sandbox_takes_the_finalizer_only_when_its_deletion_must_wait_for_something() {
    let mut s = spec();
    s.expires_at = Some(t0() + ChronoDuration::minutes(10));
    let mut sandbox = sandbox(s);
    let mut world = SandboxObserved::default();
    run_to_running(&mut sandbox, &mut world);
    sandbox.metadata.finalizers = None;
    let alone = SandboxObservation {
        cleanup: Cleanup::GarbageCollected,
        ..observation(world.clone())
    };
    let expiring = plan(&sandbox, &alone, t0() + ChronoDuration::minutes(11));
    assert!(expiring.delete_sandbox);
    assert_eq!(expiring.finalizer, FinalizerAction::Keep, "none is needed");
    // With a Webhook listening it takes the finalizer.
    let heard = plan(
        &sandbox,
        &SandboxObservation {
            webhooks_listen: true,
            ..alone.clone()
        },
        t0() + ChronoDuration::minutes(11),
    );
    assert_eq!(heard.finalizer, FinalizerAction::Add);
    // And one with a command to finish first.
    let busy = plan(
        &sandbox,
        &SandboxObservation {
            commands: vec![command("a", 1, Some(CommandPhase::Running), true)],
            ..alone.clone()
        },
        t0(),
    );
    assert_eq!(busy.finalizer, FinalizerAction::Add);
    // So does one whose provider must deprovision first.
    assert_eq!(
        plan(&sandbox, &observation(world), t0()).finalizer,
        FinalizerAction::Add
    );
}

#[test]
fn expiry_with_delete_deletes_the_sandbox_once() {
    let mut s = spec();
    s.expires_at = Some(t0() + ChronoDuration::minutes(10));
    let mut sandbox = sandbox(s);
    let mut world = SandboxObserved::default();
    run_to_running(&mut sandbox, &mut world);
    let at = t0() + ChronoDuration::minutes(11);
    let expiring = step(&mut sandbox, &mut world, at);
    assert!(expiring.delete_sandbox);
    assert!(expiring.actions.is_empty(), "the deletion does the rest");
    assert_eq!(types_of(&sandbox).last(), Some(&EventType::SandboxExpired));
    // The API server marks it deleted; the finalizer drives the clean-up.
    sandbox.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    let deleting = step(&mut sandbox, &mut world, at);
    assert!(!deleting.delete_sandbox);
    assert_eq!(deleting.actions, vec![SandboxAction::Deprovision]);
    let done = step(&mut sandbox, &mut world, at);
    assert_eq!(done.status.phase, Some(SandboxPhase::Destroyed));
    assert_eq!(done.finalizer, FinalizerAction::Release);
    let expired = types_of(&sandbox)
        .iter()
        .filter(|t| **t == EventType::SandboxExpired)
        .count();
    assert_eq!(expired, 1);
    assert_eq!(
        types_of(&sandbox).last(),
        Some(&EventType::SandboxDestroyed)
    );
}

#[test]
fn extending_the_ttl_before_the_deadline_postpones_it() {
    let mut s = spec();
    s.ttl_seconds = Some(600);
    let mut sandbox = sandbox(s);
    let mut world = SandboxObserved::default();
    run_to_running(&mut sandbox, &mut world);
    sandbox.spec.ttl_seconds = Some(3600);
    sandbox.metadata.generation = Some(2);
    let later = t0() + ChronoDuration::minutes(20);
    let plan = step(&mut sandbox, &mut world, later);
    assert!(!plan.delete_sandbox);
    assert_eq!(
        plan.status.expires_at,
        Some(t0() + ChronoDuration::hours(1))
    );
    assert_eq!(phase(&sandbox), Some(SandboxPhase::Running));
}

#[test]
fn a_ttl_past_what_a_time_can_hold_never_expires_and_one_far_below_zero_has() {
    // spec.ttlSeconds i64::MAX panicked: TimeDelta::seconds out of bounds;
    // a TTL that fits a TimeDelta but ends past the end of time would have
    // overflowed the addition.
    for ttl in [i64::MAX, i64::MAX / 1000, 1 << 50] {
        let mut s = spec();
        s.ttl_seconds = Some(ttl);
        let sandbox = sandbox(s);
        assert_eq!(expiry(&sandbox), Some(DateTime::<Utc>::MAX_UTC), "{ttl}");
        let plan = plan(&sandbox, &observation(SandboxObserved::default()), t0());
        assert!(!plan.delete_sandbox, "{ttl}");
    }
    for ttl in [i64::MIN, -(1 << 50)] {
        let mut s = spec();
        s.ttl_seconds = Some(ttl);
        let sandbox = sandbox(s);
        assert_eq!(expiry(&sandbox), Some(DateTime::<Utc>::MIN_UTC), "{ttl}");
        let plan = plan(&sandbox, &observation(SandboxObserved::default()), t0());
        assert!(plan.delete_sandbox, "{ttl}");
    }
}

#[test]
fn a_deleted_sandbox_whose_children_go_with_it_is_destroyed_at_once() {
    let mut sandbox = sandbox(spec());
    let mut world = SandboxObserved::default();
    run_to_running(&mut sandbox, &mut world);
    sandbox.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    let observation = SandboxObservation {
        cleanup: Cleanup::GarbageCollected,
        ..observation(world.clone())
    };
    let plan = plan(&sandbox, &observation, t0());
    assert_eq!(plan.status.phase, Some(SandboxPhase::Destroyed));
    assert_eq!(plan.finalizer, FinalizerAction::Release);
    // The provider is still told, so it can forget what it kept.
    assert_eq!(plan.actions, vec![SandboxAction::Deprovision]);
    assert_eq!(
        plan.events
            .iter()
            .map(|e| e.reason.as_str())
            .collect::<Vec<_>>(),
        ["Destroyed"]
    );
}

#[test]
fn a_pod_waiting_for_its_claim_is_not_a_failure() {
    let mut sandbox = sandbox(spec());
    let mut world = SandboxObserved::default();
    step(&mut sandbox, &mut world, t0());
    world.claim.as_mut().unwrap().bound = false;
    let pod = world.pod.as_mut().unwrap();
    pod.ready = false;
    pod.waiting_for_data = true;
    pod.problems = vec![
        "pod box cannot be scheduled: pod has unbound immediate PersistentVolumeClaims".into(),
    ];
    let waiting = plan(&sandbox, &observation(world.clone()), t0());
    assert_eq!(waiting.status.phase, Some(SandboxPhase::Starting));
    let ready = conditions::find(&waiting.status.conditions, types::READY).unwrap();
    assert_eq!(ready.reason, "WaitingForClaim");
    assert!(ready.message.contains("box-data"), "{}", ready.message);
    assert!(!waiting.actions.contains(&SandboxAction::Stop));
}

#[test]
fn the_write_that_asks_for_the_claim_and_the_pod_names_them() {
    let mut sandbox = sandbox(spec());
    let mut world = SandboxObserved {
        claim_name: Some("box-data".into()),
        ..SandboxObserved::default()
    };
    let first = step(&mut sandbox, &mut world, t0());
    assert!(first.actions.contains(&SandboxAction::Start));
    assert_eq!(first.status.claim_name.as_deref(), Some("box-data"));
    assert_eq!(
        first
            .status
            .provider_ref
            .as_ref()
            .map(|r| (r.kind.as_str(), r.name.as_str())),
        Some(("Pod", "box"))
    );
    // Once the pod and claim show up, the names stay as they were written.
    let second = step(&mut sandbox, &mut world, t0());
    assert_eq!(second.status.claim_name, first.status.claim_name);
    assert_eq!(second.status.provider_ref, first.status.provider_ref);
}

#[test]
fn a_new_claim_that_has_not_bound_yet_is_not_reported_until_its_grace_is_over() {
    let mut sandbox = sandbox(spec());
    let mut world = SandboxObserved::default();
    let first = step(&mut sandbox, &mut world, t0());
    let claim = world.claim.as_mut().unwrap();
    claim.bound = false;
    claim.created_at = Some(t0());
    let pod = world.pod.as_mut().unwrap();
    pod.ready = false;
    pod.waiting_for_data = true;
    pod.problems = vec![
        "pod box cannot be scheduled: pod has unbound immediate PersistentVolumeClaims".into(),
    ];

    let soon = t0() + chrono::Duration::seconds(2);
    let early = plan(&sandbox, &observation(world.clone()), soon);
    let ready = conditions::find(&early.status.conditions, types::READY).unwrap();
    assert_eq!(
        ready.reason, "Starting",
        "a claim binding in its first seconds is no news"
    );
    let before = conditions::find(&first.status.conditions, types::READY).unwrap();
    assert_eq!(
        (&before.reason, &before.message),
        (&ready.reason, &ready.message),
        "so nothing changes, and no status write is due"
    );
    assert!(
        early.requeue_after <= REQUEUE_PROGRESSING,
        "a starting Sandbox is looked at again by the end of the grace"
    );

    let late = t0() + chrono::Duration::from_std(CLAIM_BINDING_GRACE).unwrap();
    let waiting = plan(&sandbox, &observation(world), late);
    let ready = conditions::find(&waiting.status.conditions, types::READY).unwrap();
    assert_eq!(ready.reason, "WaitingForClaim");
}

#[test]
fn a_sandbox_that_fits_nowhere_waits_and_says_why() {
    let mut s = spec();
    s.resources.cpu = Quantity("16".into());
    let mut sandbox = sandbox(s);
    let mut world = SandboxObserved::default();
    step(&mut sandbox, &mut world, t0());
    let waiting = step(&mut sandbox, &mut world, t0());
    assert_eq!(waiting.status.phase, Some(SandboxPhase::Created));
    assert!(!waiting.actions.contains(&SandboxAction::Start));
    let scheduled = conditions::find(&waiting.status.conditions, types::SCHEDULED).unwrap();
    assert_eq!(
        (scheduled.status, scheduled.reason.as_str()),
        (ConditionStatus::False, "InsufficientCapacity")
    );
    assert!(
        scheduled.message.contains("asked for 16 CPU")
            && scheduled.message.contains("8 CPU (node-a)")
    );
    assert_eq!(waiting.requeue_after, REQUEUE_WAITING_FOR_ROOM);
}

#[test]
fn a_failing_pod_is_an_error_until_a_restart_or_a_fixed_spec() {
    let mut sandbox = sandbox(spec());
    let mut world = SandboxObserved::default();
    step(&mut sandbox, &mut world, t0());
    step(&mut sandbox, &mut world, t0());
    let pod = world.pod.as_mut().unwrap();
    pod.ready = false;
    pod.failed = true;
    pod.problems = vec!["pod box: container sandbox is in ImagePullBackOff".into()];
    step(&mut sandbox, &mut world, t0());
    assert_eq!(phase(&sandbox), Some(SandboxPhase::Error));
    let ready = conditions::find(&sandbox.status.as_ref().unwrap().conditions, types::READY)
        .unwrap()
        .clone();
    assert!(ready.message.contains("ImagePullBackOff"));
    // Nothing happens by itself.
    let again = step(&mut sandbox, &mut world, t0());
    assert!(again.events.is_empty());
    assert_eq!(phase(&sandbox), Some(SandboxPhase::Error));
    // A restart request replaces the pod.
    sandbox.spec.restarted_at = Some(t0());
    sandbox.metadata.generation = Some(2);
    let restart = step(&mut sandbox, &mut world, t0());
    assert!(restart.actions.contains(&SandboxAction::Stop));
    for _ in 0..3 {
        step(&mut sandbox, &mut world, t0());
    }
    assert_eq!(phase(&sandbox), Some(SandboxPhase::Running));
}

#[test]
fn a_pod_deleted_by_hand_is_made_again() {
    let mut sandbox = sandbox(spec());
    let mut world = SandboxObserved::default();
    run_to_running(&mut sandbox, &mut world);
    world.pod = None;
    for _ in 0..3 {
        step(&mut sandbox, &mut world, t0());
    }
    assert_eq!(phase(&sandbox), Some(SandboxPhase::Running));
    let path: Vec<_> = sandbox
        .status
        .as_ref()
        .unwrap()
        .history
        .iter()
        .filter_map(|e| e.to.clone())
        .collect();
    assert_eq!(path[3..], ["Stopped", "Starting", "Running"]);
}

#[test]
fn pinned_placement_goes_to_that_host_or_waits() {
    let mut s = spec();
    s.placement = Some(Placement {
        host: Some("node-b".into()),
        node_selector: Default::default(),
    });
    let mut sandbox = sandbox(s);
    let mut world = SandboxObserved::default();
    let placed = step(&mut sandbox, &mut world, t0());
    assert_eq!(run_on(&placed), Some("node-b"));
}

use crate::api::Placement;

// ------------------------------------------------------------- properties

fn world_strategy() -> impl Strategy<Value = SandboxObserved> {
    (
        any::<bool>(),
        any::<bool>(),
        proptest::option::of((any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>())),
        any::<bool>(),
    )
        .prop_map(|(claim, bound, pod, service)| SandboxObserved {
            claim_name: Some("box-data".into()),
            claim: claim.then(|| ClaimObserved {
                name: "box-data".into(),
                bound,
                created_at: None,
            }),
            pod: pod.map(|(ready, failed, terminating, current)| PodObserved {
                name: "box".into(),
                revision: current.then(|| "stale-or-not".into()),
                ready,
                ip: ready.then(|| "10.244.0.9".into()),
                host: Some("node-a".into()),
                placed_on: Some("node-a".into()),
                failed,
                waiting_for_data: false,
                problems: if failed {
                    vec!["crash".into()]
                } else {
                    Vec::new()
                },
                terminating,
            }),
            service,
        })
}

prop_compose! {
    fn case_strategy()(
        phase in proptest::option::of(proptest::sample::select(SandboxPhase::ALL.to_vec())),
        stopped in any::<bool>(),
        deleting in any::<bool>(),
        expires in proptest::option::of(-600i64..600),
        stop_policy in any::<bool>(),
        restart in any::<bool>(),
        world in world_strategy(),
        generation in 1i64..4,
        expired_before in any::<bool>(),
    ) -> (Sandbox, SandboxObserved) {
        let mut s = spec();
        s.state = if stopped { DesiredState::Stopped } else { DesiredState::Running };
        s.expires_at = expires.map(|secs| t0() + ChronoDuration::seconds(secs));
        s.expiry_policy = if stop_policy { ExpiryPolicy::Stop } else { ExpiryPolicy::Delete };
        s.restarted_at = restart.then(t0);
        let mut sandbox = sandbox(s);
        sandbox.metadata.generation = Some(generation);
        let destroyed = phase == Some(SandboxPhase::Destroyed);
        if deleting || destroyed {
            sandbox.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        }
        let mut status = SandboxStatus { phase, ..SandboxStatus::default() };
        if expired_before {
            conditions::set_condition(
                &mut status.conditions,
                DesiredCondition::new(types::EXPIRED, true, "ExpiredStop", ""),
                Some(1),
                t0(),
            );
        }
        sandbox.status = Some(status);
        (sandbox, world)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// No plan records a phase change the Sandbox table forbids.
    #[test]
    fn no_plan_holds_a_forbidden_transition((sandbox, world) in case_strategy()) {
        let before = phase(&sandbox);
        let plan = plan(&sandbox, &observation(world), t0());
        let mut current = before;
        for entry in plan.status.history.iter() {
            let Some(to) = &entry.to else { continue };
            let to: SandboxPhase = serde_json::from_value(serde_json::json!(to)).unwrap();
            if let Some(from) = current {
                prop_assert!(validate_transition(from, to).is_ok(), "{} -> {}", from, to);
            } else {
                prop_assert_eq!(to, SandboxPhase::Created);
            }
            current = Some(to);
        }
        prop_assert_eq!(current, plan.status.phase);
        prop_assert_ne!(conditions::find(&plan.status.conditions, types::SYNCED).unwrap().reason.as_str(), "TransitionRefused");
    }

    /// Planning again on the plan's own result changes nothing.
    #[test]
    fn planning_again_changes_nothing((mut sandbox, world) in case_strategy()) {
        let first = plan(&sandbox, &observation(world.clone()), t0());
        sandbox.status = Some(first.status.clone());
        if let Some(labels) = &first.labels {
            sandbox.metadata.labels = Some(labels.clone());
        }
        let second = plan(&sandbox, &observation(world), t0());
        prop_assert_eq!(&second.status, &first.status);
        prop_assert!(second.events.is_empty(), "{:?}", second.events);
    }

    /// With a provider that does what it is told, every sandbox ends where
    /// its spec says within a few reconciles (or in Error, if the first
    /// world failed it and nothing asks to retry).
    #[test]
    fn a_healthy_world_brings_every_sandbox_where_its_spec_says((mut sandbox, world) in case_strategy()) {
        let mut world = world;
        let mut failed_first = false;
        for round in 0..10 {
            let plan = step(&mut sandbox, &mut world, t0());
            if round == 0 && plan.status.phase == Some(SandboxPhase::Error) {
                failed_first = true;
            }
            // A healthy provider heals what the random world broke.
            if let Some(pod) = world.pod.as_mut() {
                pod.failed = false;
                pod.terminating = false;
                pod.ready = true;
            }
            if let Some(claim) = world.claim.as_mut() {
                claim.bound = true;
            }
            if plan.delete_sandbox {
                sandbox.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
            }
        }
        let status = sandbox.status.clone().unwrap();
        let deleting = sandbox.metadata.deletion_timestamp.is_some();
        let expired = sandbox.spec.expires_at.is_some_and(|at| at <= t0());
        let expected = if deleting {
            SandboxPhase::Destroyed
        } else if sandbox.spec.state == DesiredState::Stopped || expired {
            SandboxPhase::Stopped
        } else {
            SandboxPhase::Running
        };
        if failed_first && status.phase == Some(SandboxPhase::Error) {
            return Ok(());
        }
        prop_assert_eq!(status.phase, Some(expected), "{:?}", status.history.iter().map(|e| (e.to.clone(), e.reason.clone())).collect::<Vec<_>>());
    }
}

/// As for Instances: the guard behind the table, driven directly.
#[test]
fn a_refused_transition_is_not_made_and_shows_as_a_condition_and_a_warning() {
    let mut stopped = sandbox(spec());
    stopped.status = Some(SandboxStatus {
        phase: Some(SandboxPhase::Stopped),
        ..SandboxStatus::default()
    });
    let observed = observation(SandboxObserved::default());
    let mut planner = Planner::new(&stopped, &observed, t0());
    assert!(!planner.transition(SandboxPhase::Running, "Test", "skips Starting".into()));
    planner.update_status("pod", None);

    assert_eq!(planner.status.phase, Some(SandboxPhase::Stopped));
    assert!(planner.status.history.is_empty(), "nothing was recorded");
    let synced = conditions::find(&planner.status.conditions, types::SYNCED).unwrap();
    assert_eq!(synced.reason, "TransitionRefused");
    assert!(
        synced.message.contains("Stopped") && synced.message.contains("Running"),
        "names both states: {}",
        synced.message
    );
    assert!(
        planner
            .events
            .iter()
            .any(|e| e.warning && e.reason == "TransitionRefused" && e.message == synced.message)
    );
}

// ------------------------------------------------------------- commands

fn command(name: &str, second: i64, phase: Option<CommandPhase>, started: bool) -> CommandView {
    CommandView {
        mark: CommandMark {
            name: name.into(),
            uid: format!("uid-{name}"),
            created: t0() + ChronoDuration::seconds(second),
        },
        phase,
        started,
        exit_code: match phase {
            Some(CommandPhase::Succeeded) => Some(0),
            Some(CommandPhase::Failed) if started => Some(3),
            _ => None,
        },
        reason: if phase == Some(CommandPhase::Failed) {
            "NonZeroExitCode".into()
        } else {
            String::new()
        },
        message: String::new(),
    }
}

fn plan_with_commands(
    sandbox: &Sandbox,
    world: &SandboxObserved,
    commands: Vec<CommandView>,
) -> SandboxPlan {
    let mut observation = observation(world.clone());
    observation.commands = commands;
    plan(sandbox, &observation, t0())
}

fn command_events(plan: &SandboxPlan, since: i64) -> Vec<(EventType, String)> {
    plan.status
        .history
        .iter()
        .filter(|e| e.sequence > since)
        .map(|e| {
            (
                e.type_,
                e.details.get("command").cloned().unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn commands_are_recorded_in_the_sandbox_history_in_order_and_once() {
    use EventType::*;
    let mut sandbox = sandbox(spec());
    let mut world = SandboxObserved::default();
    run_to_running(&mut sandbox, &mut world);
    let seq = sandbox
        .status
        .as_ref()
        .unwrap()
        .history
        .last()
        .unwrap()
        .sequence;
    let commands = vec![
        command("a", 1, Some(CommandPhase::Succeeded), true),
        command("b", 2, Some(CommandPhase::Running), true),
        command("c", 3, Some(CommandPhase::Pending), false),
    ];
    let first = plan_with_commands(&sandbox, &world, commands.clone());
    assert_eq!(
        command_events(&first, seq),
        [
            (SandboxCommandStarted, "a".to_string()),
            (SandboxCommandSucceeded, "a".to_string()),
            (SandboxCommandStarted, "b".to_string()),
        ]
    );
    sandbox.status = Some(first.status.clone());
    let again = plan_with_commands(&sandbox, &world, commands);
    assert_eq!(again.status, first.status, "nothing is recorded twice");
    let seq = sandbox
        .status
        .as_ref()
        .unwrap()
        .history
        .last()
        .unwrap()
        .sequence;
    let later = plan_with_commands(
        &sandbox,
        &world,
        vec![
            command("a", 1, Some(CommandPhase::Succeeded), true),
            command("b", 2, Some(CommandPhase::Failed), true),
            command("c", 3, Some(CommandPhase::Failed), false),
        ],
    );
    assert_eq!(
        command_events(&later, seq),
        [
            (SandboxCommandFailed, "b".to_string()),
            (SandboxCommandFailed, "c".to_string()),
        ],
        "c never started: only how it ended"
    );
    let failed_b = later
        .status
        .history
        .iter()
        .find(|e| {
            e.details.get("command").map(String::as_str) == Some("b")
                && e.type_ == SandboxCommandFailed
        })
        .unwrap();
    assert_eq!(
        failed_b.details.get("exitCode").map(String::as_str),
        Some("3")
    );
}

#[test]
fn a_command_that_reaches_the_cache_late_is_still_recorded_once() {
    use EventType::*;
    let mut sandbox = sandbox(spec());
    let mut world = SandboxObserved::default();
    run_to_running(&mut sandbox, &mut world);
    let last_seq = |sandbox: &Sandbox| {
        sandbox
            .status
            .as_ref()
            .unwrap()
            .history
            .last()
            .unwrap()
            .sequence
    };
    // "b" ran first: "a", created in the same second, was not there yet.
    let b_done = command("b", 1, Some(CommandPhase::Succeeded), true);
    let first = plan_with_commands(&sandbox, &world, vec![b_done.clone()]);
    sandbox.status = Some(first.status);
    let seq = last_seq(&sandbox);
    let a_done = command("a", 1, Some(CommandPhase::Succeeded), true);
    let late = plan_with_commands(&sandbox, &world, vec![a_done.clone(), b_done.clone()]);
    assert_eq!(
        command_events(&late, seq),
        [
            (SandboxCommandStarted, "a".to_string()),
            (SandboxCommandSucceeded, "a".to_string()),
        ]
    );
    sandbox.status = Some(late.status.clone());
    let again = plan_with_commands(&sandbox, &world, vec![a_done.clone(), b_done.clone()]);
    assert_eq!(again.status, late.status, "nothing is recorded twice");
    // Once they are old enough, the mark moves over both and forgets them.
    let mut observation = observation(world.clone());
    observation.commands = vec![a_done, b_done];
    let settled = plan(
        &sandbox,
        &observation,
        t0() + ChronoDuration::seconds(2) + ChronoDuration::from_std(LATE_COMMAND_WINDOW).unwrap(),
    );
    let cursor = settled.status.commands.clone().unwrap();
    assert_eq!(cursor.finished.map(|m| m.name).as_deref(), Some("b"));
    assert!(cursor.recorded.is_empty());
    assert_eq!(command_events(&settled, last_seq(&sandbox)), []);
}

#[test]
fn a_command_deleted_while_it_ran_is_recorded_as_failed() {
    let mut sandbox = sandbox(spec());
    let mut world = SandboxObserved::default();
    run_to_running(&mut sandbox, &mut world);
    let started = plan_with_commands(
        &sandbox,
        &world,
        vec![command("a", 1, Some(CommandPhase::Running), true)],
    );
    sandbox.status = Some(started.status);
    let seq = sandbox
        .status
        .as_ref()
        .unwrap()
        .history
        .last()
        .unwrap()
        .sequence;
    let gone = plan_with_commands(&sandbox, &world, Vec::new());
    assert_eq!(
        command_events(&gone, seq),
        [(EventType::SandboxCommandFailed, "a".to_string())]
    );
    assert_eq!(gone.status.history.last().unwrap().reason, "Deleted");
}

#[test]
fn a_deleted_sandbox_waits_for_its_commands_to_end() {
    let mut sandbox = sandbox(spec());
    let mut world = SandboxObserved::default();
    run_to_running(&mut sandbox, &mut world);
    sandbox.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    let mut observation = SandboxObservation {
        cleanup: Cleanup::GarbageCollected,
        ..observation(world.clone())
    };
    observation.commands = vec![command("a", 1, Some(CommandPhase::Running), true)];
    let waiting = plan(&sandbox, &observation, t0());
    assert_ne!(waiting.status.phase, Some(SandboxPhase::Destroyed));
    assert_eq!(waiting.finalizer, FinalizerAction::Keep);
    observation.commands = vec![command("a", 1, Some(CommandPhase::Failed), true)];
    let done = plan(&sandbox, &observation, t0());
    assert_eq!(done.status.phase, Some(SandboxPhase::Destroyed));
    assert_eq!(done.finalizer, FinalizerAction::Release);
}

// ------------------------------------------------------------- snapshots

#[test]
fn a_sandbox_from_a_snapshot_waits_for_it_then_restores_from_it() {
    let mut s = spec();
    s.source = Some(crate::api::SandboxSource {
        snapshot_ref: crate::api::SnapshotReference {
            name: "snap".into(),
        },
    });
    let sandbox = sandbox(s);
    let world = SandboxObserved::default();
    let mut observation = observation(world.clone());
    observation.source = Some(SourceView {
        phase: Some(SnapshotPhase::Pending),
        volume_snapshot: Some("snap".into()),
        restore_size: None,
        message: String::new(),
    });
    let waiting = plan(&sandbox, &observation, t0());
    assert_eq!(waiting.status.phase, Some(SandboxPhase::Created));
    assert!(
        waiting.actions.is_empty(),
        "nothing is made before its data is ready"
    );
    let ready = conditions::find(&waiting.status.conditions, types::READY).unwrap();
    assert_eq!(ready.reason, "WaitingForSnapshot");
    observation.source = None;
    let missing = plan(&sandbox, &observation, t0());
    assert!(
        conditions::find(&missing.status.conditions, types::READY)
            .unwrap()
            .message
            .contains("does not exist")
    );
    observation.source = Some(SourceView {
        phase: Some(SnapshotPhase::Ready),
        volume_snapshot: Some("snap".into()),
        restore_size: Some("20Gi".into()),
        message: String::new(),
    });
    let restoring = plan(&sandbox, &observation, t0());
    assert!(restoring.actions.contains(&SandboxAction::Provision));
    let restore = restoring.workload.unwrap().restore_from.unwrap();
    assert_eq!(
        (
            restore.volume_snapshot.as_str(),
            restore.restore_size.as_deref()
        ),
        ("snap", Some("20Gi"))
    );
}
