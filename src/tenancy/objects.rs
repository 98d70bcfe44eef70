//! The Kubernetes objects a project gets, built from its tenant and the
//! configured templates, and which namespace they go in. Pure: the caller
//! observes and applies.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, ResourceQuota, ResourceQuotaSpec};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::naming::{GroupTemplate, Tenant, namespace_name};
use crate::api::{MANAGED_BY, MANAGED_BY_LABEL};

/// The org id on every object a project gets.
pub const ORG_ID_LABEL: &str = "ctrlplane.dev/org-id";
/// The project id on every object a project gets; how its namespace is found.
pub const PROJECT_ID_LABEL: &str = "ctrlplane.dev/project-id";
/// The org's name, for people (names need not be valid label values).
pub const ORG_NAME_ANNOTATION: &str = "ctrlplane.dev/org-name";
/// The project's name, for people.
pub const PROJECT_NAME_ANNOTATION: &str = "ctrlplane.dev/project-name";
/// The ResourceQuota every project namespace gets.
pub const QUOTA_NAME: &str = "ctrlplane-tenant";

/// One RoleBinding to make in every project namespace: a ClusterRole (one
/// of the chart's aggregated roles) bound to the group the template names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingTemplate {
    pub cluster_role: String,
    pub group: GroupTemplate,
}

/// What every project gets, from the command line.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Templates {
    /// `spec.hard` of the ResourceQuota; empty: no quota.
    pub quota: BTreeMap<String, Quantity>,
    pub bindings: Vec<BindingTemplate>,
}

/// The labels of every object a project gets.
pub fn labels(tenant: &Tenant) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        (ORG_ID_LABEL.to_string(), tenant.org_id.to_string()),
        (PROJECT_ID_LABEL.to_string(), tenant.project_id.to_string()),
    ])
}

/// The selector of everything a project got.
pub fn project_selector(project_id: &super::protocol::Uuid) -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY},{PROJECT_ID_LABEL}={project_id}")
}

/// The selector of everything the projects of an org got.
pub fn org_selector(org_id: &super::protocol::Uuid) -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY},{ORG_ID_LABEL}={org_id}")
}

/// A namespace as far as choosing one goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenNamespace {
    pub name: String,
    pub project_id: Option<String>,
    pub terminating: bool,
}

impl SeenNamespace {
    pub fn from_namespace(namespace: &Namespace) -> Self {
        Self {
            name: namespace.metadata.name.clone().unwrap_or_default(),
            project_id: namespace
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(PROJECT_ID_LABEL).cloned()),
            terminating: namespace.metadata.deletion_timestamp.is_some(),
        }
    }
}

/// Why a project cannot have its namespace now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamespaceRefusal {
    #[error(
        "namespace {name} already exists and does not belong to project {project_id}; it is left alone"
    )]
    Taken { name: String, project_id: String },
    #[error(
        "namespace {name} of project {project_id} is being deleted; it is made again once it is gone"
    )]
    Terminating { name: String, project_id: String },
    #[error("several namespaces carry project id {project_id}: {}", names.join(", "))]
    Several {
        project_id: String,
        names: Vec<String>,
    },
}

/// Which namespace a project uses. `labelled` are the namespaces that carry
/// its project id; `at_derived_name` is whatever exists under the name
/// [`namespace_name`] gives (only looked up when `labelled` is empty).
///
/// A namespace that already carries the project's id is kept, whatever its
/// name: the project may have been renamed since, and namespaces cannot be.
/// A namespace of the derived name that is not the project's is never taken
/// over.
pub fn choose_namespace(
    tenant: &Tenant,
    labelled: &[SeenNamespace],
    at_derived_name: Option<&SeenNamespace>,
) -> Result<String, NamespaceRefusal> {
    let project_id = tenant.project_id.to_string();
    let chosen = match labelled {
        [one] => one.clone(),
        [] => {
            let name = namespace_name(tenant);
            match at_derived_name {
                None => return Ok(name),
                Some(seen) if seen.project_id.as_deref() == Some(project_id.as_str()) => {
                    seen.clone()
                }
                Some(_) => return Err(NamespaceRefusal::Taken { name, project_id }),
            }
        }
        several => {
            let mut names: Vec<String> = several.iter().map(|n| n.name.clone()).collect();
            names.sort();
            return Err(NamespaceRefusal::Several { project_id, names });
        }
    };
    if chosen.terminating {
        return Err(NamespaceRefusal::Terminating {
            name: chosen.name,
            project_id,
        });
    }
    Ok(chosen.name)
}

/// The namespace, as it is applied: our labels and the names for people.
pub fn namespace(tenant: &Tenant, name: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels(tenant)),
            annotations: Some(BTreeMap::from([
                (ORG_NAME_ANNOTATION.to_string(), tenant.org_name.clone()),
                (
                    PROJECT_NAME_ANNOTATION.to_string(),
                    tenant.project_name.clone(),
                ),
            ])),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The ResourceQuota, or `None` when the template is empty.
pub fn quota(tenant: &Tenant, namespace: &str, templates: &Templates) -> Option<ResourceQuota> {
    if templates.quota.is_empty() {
        return None;
    }
    Some(ResourceQuota {
        metadata: ObjectMeta {
            name: Some(QUOTA_NAME.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels(tenant)),
            ..Default::default()
        },
        spec: Some(ResourceQuotaSpec {
            hard: Some(templates.quota.clone()),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// One RoleBinding per binding template, named after its ClusterRole (so a
/// binding's immutable roleRef never has to change: another role is another
/// binding).
pub fn role_bindings(tenant: &Tenant, namespace: &str, templates: &Templates) -> Vec<RoleBinding> {
    templates
        .bindings
        .iter()
        .map(|binding| RoleBinding {
            metadata: ObjectMeta {
                name: Some(binding.cluster_role.clone()),
                namespace: Some(namespace.to_string()),
                labels: Some(labels(tenant)),
                ..Default::default()
            },
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "ClusterRole".into(),
                name: binding.cluster_role.clone(),
            },
            subjects: Some(vec![Subject {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "Group".into(),
                name: binding.group.expand(tenant),
                namespace: None,
            }]),
        })
        .collect()
}

/// Of the objects found with a project's labels, the names to delete: those
/// the templates no longer call for (a role dropped from the command line,
/// the quota switched off).
pub fn stale<'a>(found: &'a [String], wanted: &[String]) -> Vec<&'a str> {
    found
        .iter()
        .filter(|name| !wanted.contains(name))
        .map(String::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenancy::protocol::Uuid;

    fn tenant() -> Tenant {
        Tenant {
            org_id: Uuid::parse("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee").unwrap(),
            org_name: "Acme".into(),
            project_id: Uuid::parse("11111111-2222-3333-4444-555555555555").unwrap(),
            project_name: "Web".into(),
        }
    }

    fn seen(name: &str, project_id: Option<&str>, terminating: bool) -> SeenNamespace {
        SeenNamespace {
            name: name.into(),
            project_id: project_id.map(str::to_string),
            terminating,
        }
    }

    const PROJECT: &str = "11111111-2222-3333-4444-555555555555";

    #[test]
    fn a_new_project_gets_the_derived_name() {
        assert_eq!(
            choose_namespace(&tenant(), &[], None),
            Ok(namespace_name(&tenant()))
        );
    }

    #[test]
    fn a_project_keeps_the_namespace_that_carries_its_id() {
        let renamed = seen("acme-old-name-0123456789", Some(PROJECT), false);
        assert_eq!(
            choose_namespace(&tenant(), std::slice::from_ref(&renamed), None),
            Ok(renamed.name)
        );
        let derived = seen(&namespace_name(&tenant()), Some(PROJECT), false);
        assert_eq!(
            choose_namespace(&tenant(), &[], Some(&derived)),
            Ok(derived.name)
        );
    }

    #[test]
    fn a_namespace_of_someone_else_is_never_taken_over() {
        let name = namespace_name(&tenant());
        for other in [
            seen(&name, None, false),
            seen(&name, Some("99999999-2222-3333-4444-555555555555"), false),
        ] {
            let refusal = choose_namespace(&tenant(), &[], Some(&other)).unwrap_err();
            assert!(matches!(refusal, NamespaceRefusal::Taken { .. }));
            assert!(refusal.to_string().contains("left alone"), "{refusal}");
        }
    }

    #[test]
    fn a_terminating_namespace_is_waited_for() {
        let going = seen("acme-web-x", Some(PROJECT), true);
        let refusal = choose_namespace(&tenant(), &[going], None).unwrap_err();
        assert!(matches!(refusal, NamespaceRefusal::Terminating { .. }));
    }

    #[test]
    fn two_namespaces_of_one_project_are_not_guessed_between() {
        let refusal = choose_namespace(
            &tenant(),
            &[
                seen("b", Some(PROJECT), false),
                seen("a", Some(PROJECT), false),
            ],
            None,
        )
        .unwrap_err();
        assert_eq!(
            refusal.to_string(),
            format!("several namespaces carry project id {PROJECT}: a, b")
        );
    }

    #[test]
    fn the_objects_carry_the_tenant_and_the_templates() {
        let templates = Templates {
            quota: BTreeMap::from([
                (
                    "count/instances.ctrlplane.dev".to_string(),
                    Quantity("10".into()),
                ),
                ("requests.cpu".to_string(), Quantity("4".into())),
            ]),
            bindings: vec![BindingTemplate {
                cluster_role: "ctrlplane-operator-edit".into(),
                group: GroupTemplate::parse("{org}-{project}-editors").unwrap(),
            }],
        };
        let ns = namespace(&tenant(), "acme-web-x");
        let labels = ns.metadata.labels.unwrap();
        assert_eq!(labels[PROJECT_ID_LABEL], PROJECT);
        assert_eq!(labels[ORG_ID_LABEL], "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(
            ns.metadata.annotations.unwrap()[PROJECT_NAME_ANNOTATION],
            "Web"
        );

        let quota = quota(&tenant(), "acme-web-x", &templates).unwrap();
        assert_eq!(quota.metadata.name.as_deref(), Some(QUOTA_NAME));
        assert_eq!(quota.spec.unwrap().hard.unwrap(), templates.quota);

        let bindings = role_bindings(&tenant(), "acme-web-x", &templates);
        assert_eq!(bindings.len(), 1);
        assert_eq!(bindings[0].role_ref.name, "ctrlplane-operator-edit");
        assert_eq!(bindings[0].role_ref.kind, "ClusterRole");
        let subject = &bindings[0].subjects.as_ref().unwrap()[0];
        assert_eq!(
            (subject.kind.as_str(), subject.name.as_str()),
            ("Group", "Acme-Web-editors")
        );
    }

    #[test]
    fn no_quota_template_means_no_quota() {
        assert!(quota(&tenant(), "ns", &Templates::default()).is_none());
    }

    #[test]
    fn only_what_the_templates_dropped_is_stale() {
        let found = vec!["a".to_string(), "b".to_string()];
        assert_eq!(stale(&found, &["a".to_string()]), ["b"]);
        assert!(stale(&found, &found).is_empty());
    }

    #[test]
    fn selectors_name_our_label_and_the_id() {
        assert_eq!(
            project_selector(&tenant().project_id),
            format!(
                "app.kubernetes.io/managed-by=ctrlplane-operator,ctrlplane.dev/project-id={PROJECT}"
            )
        );
        assert!(
            org_selector(&tenant().org_id)
                .ends_with("ctrlplane.dev/org-id=aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")
        );
    }
}
