//! Static storage for tests that need PersistentVolumeClaims: nothing
//! provisions volumes in the local control plane, so a test brings a
//! StorageClass of its own with static PersistentVolumes in it, and the
//! controller manager's binder matches claims to them.

use super::{kubectl, kubectl_stdin};

/// A StorageClass of the test's own with `count` static PersistentVolumes of
/// 20Gi, so claims of different tests never take each other's volumes.
/// Removed when dropped.
pub struct Storage {
    pub class: String,
    volumes: Vec<String>,
}

impl Storage {
    pub fn create(namespace: &str, count: usize) -> Self {
        let class = format!("sc-{namespace}");
        let mut manifest = format!(
            "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: {class}\nprovisioner: kubernetes.io/no-provisioner\nvolumeBindingMode: Immediate\nreclaimPolicy: Retain\n"
        );
        let volumes: Vec<String> = (0..count).map(|i| format!("pv-{namespace}-{i}")).collect();
        for volume in &volumes {
            manifest.push_str(&format!(
                "---\napiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: {volume}\nspec:\n  capacity: {{storage: 20Gi}}\n  accessModes: [ReadWriteOnce]\n  storageClassName: {class}\n  hostPath: {{path: /tmp/{volume}}}\n"
            ));
        }
        kubectl_stdin(["apply", "--server-side", "-f", "-"], &manifest)
            .expect_success("creating static volumes");
        Self { class, volumes }
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        let mut args = vec![
            "delete",
            "--wait=false",
            "--ignore-not-found",
            "persistentvolume",
        ];
        args.extend(self.volumes.iter().map(String::as_str));
        let _ = kubectl(args);
        let _ = kubectl([
            "delete",
            "--wait=false",
            "--ignore-not-found",
            "storageclass",
            &self.class,
        ]);
    }
}
