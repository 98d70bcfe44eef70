//! Everything that talks to the API server: the kubeconfig, kubectl's way,
//! reads, and the writes that `change` builds. Objects travel as raw JSON,
//! so that what the plugin sends back is exactly what the server stored.

use ctrlplane_operator::api::{Instance, Sandbox, Webhook, WebhookDelivery};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::change::FIELD_MANAGER;
use crate::cli::Global;
use crate::error::CliError;
use crate::show::{self, Child};
use crate::target::{self, Kind, Target};

/// A client for the cluster and namespace the flags and kubeconfig name.
pub struct Cluster {
    client: Client,
    pub namespace: String,
}

/// Reads the kubeconfig as kubectl does: `--kubeconfig`, else every file
/// in `$KUBECONFIG` (merged), else `~/.kube/config`; `--context`, else its
/// current-context; the namespace from `-n`, else the context's, else
/// `default`.
pub async fn connect(global: &Global) -> Result<Cluster, CliError> {
    let config_error = |e: kube::config::KubeconfigError| CliError::Config(e.to_string());
    let kubeconfig = match &global.kubeconfig {
        Some(path) => Kubeconfig::read_from(path).map_err(config_error)?,
        None => Kubeconfig::read().map_err(config_error)?,
    };
    if let Some(context) = &global.context
        && !kubeconfig.contexts.iter().any(|c| &c.name == context)
    {
        return Err(CliError::Config(format!(
            "context {context:?} does not exist in the kubeconfig"
        )));
    }
    if global.context.is_none()
        && kubeconfig
            .current_context
            .as_deref()
            .unwrap_or("")
            .is_empty()
    {
        return Err(CliError::Config(
            "the kubeconfig has no current-context: pass --context".into(),
        ));
    }
    let options = KubeConfigOptions {
        context: global.context.clone(),
        ..Default::default()
    };
    let config = Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(config_error)?;
    let namespace = global
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| config.default_namespace.clone());
    let config = ctrlplane_operator::runtime::identified_as(
        config,
        concat!("kubectl-ctrlplane/", env!("CARGO_PKG_VERSION")),
    );
    let client = Client::try_from(config)?;
    Ok(Cluster { client, namespace })
}

fn resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Instance => ApiResource::erase::<Instance>(&()),
        Kind::Sandbox => ApiResource::erase::<Sandbox>(&()),
        Kind::Webhook => ApiResource::erase::<Webhook>(&()),
        Kind::WebhookDelivery => ApiResource::erase::<WebhookDelivery>(&()),
    }
}

fn to_value(object: DynamicObject) -> Result<Value, CliError> {
    Ok(serde_json::to_value(object)?)
}

/// An object's raw JSON as one of our types.
pub fn typed<T: DeserializeOwned>(kind: Kind, object: &Value) -> Result<T, CliError> {
    serde_json::from_value(object.clone()).map_err(|e| {
        CliError::Message(format!(
            "cannot read {}: {e} (is the plugin older than the CRDs?)",
            kind.object(object["metadata"]["name"].as_str().unwrap_or_default())
        ))
    })
}

/// Whether an object's `metadata.generation` moved: its spec changed.
pub fn generation(object: &Value) -> Option<i64> {
    object["metadata"]["generation"].as_i64()
}

impl Cluster {
    fn api(&self, kind: Kind) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace, &resource(kind))
    }

    /// An object, or the API server's not-found error.
    pub async fn get(&self, kind: Kind, name: &str) -> Result<Value, CliError> {
        to_value(self.api(kind).get(name).await?)
    }

    async fn get_opt(&self, kind: Kind, name: &str) -> Result<Option<Value>, CliError> {
        match self.api(kind).get_opt(name).await? {
            Some(object) => Ok(Some(to_value(object)?)),
            None => Ok(None),
        }
    }

    /// The object a command names. A bare name that more than one kind
    /// could mean is looked up as each: it must exist as exactly one.
    pub async fn resolve(
        &self,
        target: &Target,
        allowed: &[Kind],
    ) -> Result<(Kind, Value), CliError> {
        if let Some(kind) = target.kind {
            return Ok((kind, self.get(kind, &target.name).await?));
        }
        let mut found = Vec::new();
        for kind in allowed {
            if let Some(object) = self.get_opt(*kind, &target.name).await? {
                found.push((*kind, object));
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(target::not_found(&target.name, &self.namespace, allowed)),
            _ => {
                let kinds: Vec<Kind> = found.iter().map(|(k, _)| *k).collect();
                Err(target::ambiguous(&target.name, &self.namespace, &kinds))
            }
        }
    }

    /// A server-side apply of `body` by the plugin's field manager,
    /// forced: the plugin's fields are the user's word, as with `kubectl
    /// scale`. `body` carries the resourceVersion it was built from.
    pub async fn apply(&self, kind: Kind, name: &str, body: &Value) -> Result<Value, CliError> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        to_value(
            self.api(kind)
                .patch(name, &params, &Patch::Apply(body))
                .await?,
        )
    }

    /// A JSON merge patch by the plugin's field manager.
    pub async fn merge_patch(
        &self,
        kind: Kind,
        name: &str,
        patch: &Value,
    ) -> Result<Value, CliError> {
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        to_value(
            self.api(kind)
                .patch(name, &params, &Patch::Merge(patch))
                .await?,
        )
    }

    /// WebhookDelivery records, of one Webhook (by `spec.webhookName`, a
    /// selectable field: exact, where a label value could be cut short) or
    /// all; in this namespace or all of them.
    pub async fn deliveries(
        &self,
        webhook: Option<&str>,
        all_namespaces: bool,
    ) -> Result<Vec<Value>, CliError> {
        let api: Api<DynamicObject> = if all_namespaces {
            Api::all_with(self.client.clone(), &resource(Kind::WebhookDelivery))
        } else {
            self.api(Kind::WebhookDelivery)
        };
        let mut params = ListParams::default();
        if let Some(webhook) = webhook {
            params = params.fields(&format!("spec.webhookName={webhook}"));
        }
        let list = api.list(&params).await?;
        list.items.into_iter().map(to_value).collect()
    }

    /// The children of an Instance (its Deployment and Service) or a
    /// Sandbox (its Pod, claim and Service), read with the user's own
    /// credentials: what exists, as rows and as raw objects, and the
    /// addresses of the Service's ports. One that cannot be read is a row
    /// saying why; one that does not exist is left out.
    pub async fn children(
        &self,
        kind: Kind,
        object: &Value,
    ) -> (Vec<Child>, Vec<Value>, Vec<(String, String)>) {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let uid = object["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let status = &object["status"];
        let provider_name = |wanted: &str| {
            (status["providerRef"]["kind"] == wanted)
                .then(|| status["providerRef"]["name"].as_str())
                .flatten()
                .unwrap_or(&name)
                .to_string()
        };
        let mut rows = Vec::new();
        let mut raw = Vec::new();
        let mut addresses = Vec::new();
        match kind {
            Kind::Instance => {
                let deployment = provider_name("Deployment");
                if let Some(d) = self
                    .child::<Deployment>("Deployment", &deployment, &mut rows)
                    .await
                {
                    rows.push(show::deployment_child(&d, &uid));
                    raw.extend(serde_json::to_value(d).ok());
                }
            }
            Kind::Sandbox => {
                let pod = provider_name("Pod");
                if let Some(p) = self.child::<Pod>("Pod", &pod, &mut rows).await {
                    rows.push(show::pod_child(&p, &uid));
                    raw.extend(serde_json::to_value(p).ok());
                }
                let claim = status["claimName"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| format!("{name}-data"));
                if let Some(c) = self
                    .child::<PersistentVolumeClaim>("PersistentVolumeClaim", &claim, &mut rows)
                    .await
                {
                    rows.push(show::claim_child(&c, &uid));
                    raw.extend(serde_json::to_value(c).ok());
                }
            }
            Kind::Webhook | Kind::WebhookDelivery => return (rows, raw, addresses),
        }
        if let Some(s) = self.child::<Service>("Service", &name, &mut rows).await {
            rows.push(show::service_child(&s, &uid));
            addresses = show::service_addresses(&s);
            raw.extend(serde_json::to_value(s).ok());
        }
        (rows, raw, addresses)
    }

    /// One child, None when it does not exist; when it cannot be read,
    /// a row saying why.
    async fn child<T>(&self, kind: &'static str, name: &str, rows: &mut Vec<Child>) -> Option<T>
    where
        T: kube::Resource<Scope = kube::core::NamespaceResourceScope>
            + DeserializeOwned
            + Clone
            + std::fmt::Debug,
        <T as kube::Resource>::DynamicType: Default,
    {
        let api: Api<T> = Api::namespaced(self.client.clone(), &self.namespace);
        match api.get_opt(name).await {
            Ok(found) => found,
            Err(e) => {
                rows.push(show::unreadable_child(
                    kind,
                    name,
                    &CliError::from(e).to_string(),
                ));
                None
            }
        }
    }
}

/// Takes `metadata.managedFields` out of what is printed, as kubectl does
/// unless asked (`--show-managed-fields`).
pub fn without_managed_fields(mut object: Value) -> Value {
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("managedFields");
    }
    object
}

/// Several objects as kubectl prints them with `-o json`: a `v1` List.
pub fn list(items: Vec<Value>) -> Value {
    let mut list = Map::new();
    list.insert("apiVersion".into(), "v1".into());
    list.insert("kind".into(), "List".into());
    list.insert(
        "items".into(),
        Value::Array(items.into_iter().map(without_managed_fields).collect()),
    );
    list.insert("metadata".into(), Value::Object(Map::new()));
    Value::Object(list)
}
