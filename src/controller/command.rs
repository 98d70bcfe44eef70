//! SandboxCommands in the lifecycle engine, and the runner that runs them.
//!
//! A command's plan ([`crate::plan::command::plan`]) records it Running
//! before it starts (the engine writes that first); then the runner runs it
//! through its Sandbox's provider, in a task of its own, so no reconcile
//! waits on it. When it ends, the runner keeps how it ended and wakes the
//! command, whose next reconcile records it. The runner knows only what
//! this process runs: a command recorded Running that it does not know was
//! interrupted by a restart, and is never run again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::channel::mpsc;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tracing::info;

use super::Context;
use super::lifecycle::LifecycleKind;
use super::sandbox::commands_of;
use crate::api::{
    ConditionStatus, DesiredState, SandboxCommand, SandboxCommandStatus, SandboxPhase,
};
use crate::plan::Decision;
use crate::plan::command::{
    CommandAction, CommandObservation, Run, RunEnd, SandboxView, SecretValues, keep_bytes, plan,
};
use crate::provider::{ActionNote, ExecRequest, ProviderError, SandboxProvider, WorkloadId};
use crate::runtime::kubeapi::describe_kube_error;

/// What this process knows of one command's run.
enum RunState {
    Running {
        abort: tokio::task::AbortHandle,
        secrets: SecretValues,
    },
    Ended {
        end: RunEnd,
        at: DateTime<Utc>,
        secrets: SecretValues,
    },
}

/// Runs commands, each in a task of its own, and remembers how they ended
/// until that is recorded.
pub struct CommandRunner {
    runs: Mutex<HashMap<String, RunState>>,
    /// Wakes a command (namespace, name) whose run ended.
    wake: mpsc::UnboundedSender<(String, String)>,
}

impl CommandRunner {
    /// A runner, and the stream of commands whose run ended.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<(String, String)>) {
        let (wake, woken) = mpsc::unbounded();
        (
            Self {
                runs: Mutex::new(HashMap::new()),
                wake,
            },
            woken,
        )
    }

    fn runs(&self) -> std::sync::MutexGuard<'_, HashMap<String, RunState>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What this process knows of a command's run, and the Secret values
    /// to keep out of its recorded output.
    pub fn view(&self, uid: &str) -> (Run, SecretValues) {
        match self.runs().get(uid) {
            None => (Run::Unknown, SecretValues::default()),
            Some(RunState::Running { secrets, .. }) => (Run::Running, secrets.clone()),
            Some(RunState::Ended { end, at, secrets }) => {
                (Run::Ended(end.clone(), *at), secrets.clone())
            }
        }
    }

    /// Runs a command; how it ends is kept, and the command woken.
    pub fn start(
        self: &Arc<Self>,
        command: &SandboxCommand,
        provider: Arc<dyn SandboxProvider>,
        sandbox: WorkloadId,
        request: Result<ExecRequest, String>,
        secrets: SecretValues,
    ) {
        let uid = command.uid().unwrap_or_default();
        let key = (command.namespace().unwrap_or_default(), command.name_any());
        let timeout =
            Duration::from_secs(u64::try_from(command.spec.timeout_seconds).unwrap_or(600));
        let runner = self.clone();
        let task_uid = uid.clone();
        let task_secrets = secrets.clone();
        let mut runs = self.runs();
        let task = tokio::spawn(async move {
            let end = match request {
                Err(why) => RunEnd::Broken(why),
                Ok(request) => {
                    match tokio::time::timeout(timeout, provider.exec(&sandbox, &request)).await {
                        Ok(Ok(outcome)) => RunEnd::Exited(outcome),
                        Ok(Err(error)) => RunEnd::Broken(error.to_string()),
                        Err(_) => RunEnd::TimedOut,
                    }
                }
            };
            runner.ended(&task_uid, end, task_secrets, &key);
        });
        runs.insert(
            uid,
            RunState::Running {
                abort: task.abort_handle(),
                secrets,
            },
        );
    }

    fn ended(&self, uid: &str, end: RunEnd, secrets: SecretValues, key: &(String, String)) {
        self.runs().insert(
            uid.to_string(),
            RunState::Ended {
                end,
                at: Utc::now(),
                secrets,
            },
        );
        let _ = self.wake.unbounded_send(key.clone());
    }

    /// Stops a running command; it ends with this reason.
    pub fn cancel(&self, command: &SandboxCommand, reason: &str, message: &str) {
        let uid = command.uid().unwrap_or_default();
        let secrets = match self.runs().remove(&uid) {
            Some(RunState::Running { abort, secrets }) => {
                abort.abort();
                secrets
            }
            Some(ended) => {
                self.runs().insert(uid, ended);
                return;
            }
            None => return,
        };
        self.ended(
            &uid,
            RunEnd::Cancelled(reason.into(), message.into()),
            secrets,
            &(command.namespace().unwrap_or_default(), command.name_any()),
        );
    }

    /// Forgets a run whose end is recorded.
    pub fn forget(&self, uid: &str) {
        let mut runs = self.runs();
        if matches!(runs.get(uid), Some(RunState::Ended { .. })) {
            runs.remove(uid);
        }
    }
}

/// What a command's plan asks for.
pub struct CommandActs {
    action: Option<CommandAction>,
    sandbox: WorkloadId,
}

fn sandbox_view(sandbox: &crate::api::Sandbox) -> SandboxView {
    let status = sandbox.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == ConditionStatus::True);
    SandboxView {
        running: status.phase == Some(SandboxPhase::Running) && ready,
        not_running: sandbox.spec.state == DesiredState::Stopped
            || matches!(
                status.phase,
                Some(SandboxPhase::Stopped | SandboxPhase::Error | SandboxPhase::Destroyed)
            ),
        deleting: sandbox.metadata.deletion_timestamp.is_some(),
        pod: status
            .provider_ref
            .filter(|r| r.kind == "Pod")
            .map(|r| r.name),
    }
}

#[async_trait]
impl LifecycleKind for SandboxCommand {
    type Observation = CommandObservation;
    type Acts = CommandActs;

    async fn observe(&self, context: &Context) -> Result<Self::Observation, ProviderError> {
        let namespace = self.namespace().unwrap_or_default();
        let sandbox = context
            .sandboxes
            .get(&ObjectRef::new(&self.spec.sandbox_ref.name).within(&namespace));
        let mine = super::sandbox::command_mark(self);
        let earlier_unfinished = match &sandbox {
            Some(sandbox) => commands_of(sandbox, &context.commands),
            None => Vec::new(),
        }
        .iter()
        .any(|c| {
            (c.mark.created, &c.mark.name) < (mine.created, &mine.name)
                && !c.phase.is_some_and(|p| p.is_finished())
        });
        let (run, secrets) = context.runner.view(&self.uid().unwrap_or_default());
        Ok(CommandObservation {
            sandbox: sandbox.as_deref().map(sandbox_view),
            earlier_unfinished,
            run,
            secrets,
        })
    }

    fn plan(
        &self,
        observation: &Self::Observation,
        now: DateTime<Utc>,
    ) -> (Decision<SandboxCommandStatus>, Self::Acts) {
        let plan = plan(self, observation, now);
        let acts = CommandActs {
            action: plan.action,
            sandbox: WorkloadId {
                namespace: self.namespace().unwrap_or_default(),
                name: self.spec.sandbox_ref.name.clone(),
                uid: String::new(),
            },
        };
        (plan.decision, acts)
    }

    async fn act(
        &self,
        context: &Context,
        acts: &Self::Acts,
    ) -> Result<Vec<ActionNote>, ProviderError> {
        match acts.action {
            Some(CommandAction::Start) => {
                let namespace = self.namespace().unwrap_or_default();
                let sandbox = context
                    .sandboxes
                    .get(&ObjectRef::new(&acts.sandbox.name).within(&namespace));
                let provider = context
                    .sandbox_providers
                    .resolve(sandbox.as_ref().and_then(|s| s.spec.provider.as_deref()));
                let Ok(provider) = provider else {
                    // Recorded Running already: it ends Failed, never runs.
                    context.runner.start(
                        self,
                        Arc::new(NoProvider),
                        acts.sandbox.clone(),
                        Err("its Sandbox's provider is not registered".into()),
                        SecretValues::default(),
                    );
                    return Ok(Vec::new());
                };
                let id = WorkloadId {
                    uid: sandbox.as_ref().and_then(|s| s.uid()).unwrap_or_default(),
                    ..acts.sandbox.clone()
                };
                let (request, secrets) = exec_request(self, context).await;
                info!(sandbox = id.name, "starting the command");
                context.runner.start(self, provider, id, request, secrets);
                Ok(Vec::new())
            }
            Some(CommandAction::Cancel) => {
                context.runner.cancel(
                    self,
                    "SandboxDeleted",
                    "its Sandbox was deleted while it ran",
                );
                Ok(Vec::new())
            }
            Some(CommandAction::Forget) => {
                context.runner.forget(&self.uid().unwrap_or_default());
                Ok(Vec::new())
            }
            None => Ok(Vec::new()),
        }
    }
}

/// Stands in when a command's Sandbox names a provider that does not exist.
struct NoProvider;

impl crate::provider::Named for NoProvider {
    fn name(&self) -> &str {
        "none"
    }
}

#[async_trait]
impl SandboxProvider for NoProvider {
    async fn apply(
        &self,
        _: &crate::provider::SandboxWorkload,
        _: crate::provider::ApplyReason,
    ) -> crate::provider::ProviderResult<Vec<ActionNote>> {
        Ok(Vec::new())
    }
    async fn deprovision(
        &self,
        _: &WorkloadId,
    ) -> crate::provider::ProviderResult<crate::provider::Deprovision> {
        Ok(crate::provider::Deprovision::Done)
    }
    async fn observe(
        &self,
        _: &WorkloadId,
    ) -> crate::provider::ProviderResult<crate::provider::SandboxObserved> {
        Ok(Default::default())
    }
    async fn hosts(&self) -> crate::provider::ProviderResult<Vec<crate::provider::Host>> {
        Ok(Vec::new())
    }
    fn cleanup(&self) -> crate::provider::Cleanup {
        crate::provider::Cleanup::GarbageCollected
    }
}

/// The exec request of a command, its env resolved (Secret values read now,
/// never kept anywhere but in memory for redaction), or why it cannot be.
async fn exec_request(
    command: &SandboxCommand,
    context: &Context,
) -> (Result<ExecRequest, String>, SecretValues) {
    let namespace = command.namespace().unwrap_or_default();
    let secrets_api: Api<Secret> = Api::namespaced(context.client.clone(), &namespace);
    let mut env = Vec::new();
    let mut secrets = Vec::new();
    for variable in &command.spec.env {
        if let Some(value) = &variable.value {
            env.push((variable.name.clone(), value.clone()));
            continue;
        }
        let Some(reference) = &variable.secret_key_ref else {
            continue;
        };
        let secret = match secrets_api.get_opt(&reference.name).await {
            Ok(Some(secret)) => secret,
            Ok(None) => {
                return (
                    Err(format!("Secret {} does not exist", reference.name)),
                    SecretValues(secrets),
                );
            }
            Err(error) => {
                return (
                    Err(format!(
                        "reading Secret {}: {}",
                        reference.name,
                        describe_kube_error(&error)
                    )),
                    SecretValues(secrets),
                );
            }
        };
        let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(&reference.key)) else {
            return (
                Err(format!(
                    "Secret {} has no key {:?}",
                    reference.name, reference.key
                )),
                SecretValues(secrets),
            );
        };
        let value = String::from_utf8_lossy(&bytes.0).into_owned();
        secrets.push((variable.name.clone(), value.clone()));
        env.push((variable.name.clone(), value));
    }
    let request = ExecRequest {
        argv: command.spec.command.clone(),
        env,
        working_dir: command.spec.working_dir.clone(),
        keep_bytes: keep_bytes(&secrets),
    };
    (Ok(request), SecretValues(secrets))
}
