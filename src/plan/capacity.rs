//! Where a sandbox fits: each host's allocatable CPU and memory minus what
//! the pods already on it request. Pure. The operator places a sandbox on a
//! host itself, so a sandbox that fits nowhere waits with a condition that
//! says why, instead of leaving a Pending pod behind.

use crate::api::Placement;
use crate::provider::{Host, SANDBOX_HOST_TAINT};

/// Whether a sandbox with this placement may go to `host` at all.
fn eligible(host: &Host, placement: Option<&Placement>) -> bool {
    let placed = match placement {
        Some(Placement {
            host: Some(name), ..
        }) => &host.name == name,
        Some(p) => p
            .node_selector
            .iter()
            .all(|(k, v)| host.labels.get(k) == Some(v)),
        None => true,
    };
    host.schedulable && placed && host.blocking_taints.iter().all(|t| t == SANDBOX_HOST_TAINT)
}

/// What a sandbox asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub cpu: i64,
    pub memory: i64,
}

/// Why nothing fits, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoRoom {
    pub message: String,
}

/// The host with the most free CPU among those where the request fits
/// (spreading sandboxes out), or why there is none.
pub fn choose_host(
    hosts: &[Host],
    request: Request,
    placement: Option<&Placement>,
) -> Result<String, NoRoom> {
    let eligible: Vec<&Host> = hosts.iter().filter(|h| eligible(h, placement)).collect();
    let asked = format!(
        "asked for {} CPU and {} memory",
        format_cpu(request.cpu),
        format_memory(request.memory)
    );
    if eligible.is_empty() {
        let why = match placement {
            Some(Placement {
                host: Some(host), ..
            }) => format!("host {host} does not exist or is not ready"),
            Some(p) if !p.node_selector.is_empty() => format!(
                "no ready host has the labels {}",
                p.node_selector
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            _ => "no host is ready".to_string(),
        };
        return Err(NoRoom {
            message: format!("{asked}; {why}"),
        });
    }
    let chosen = eligible
        .iter()
        .filter(|h| h.free_cpu() >= request.cpu && h.free_memory() >= request.memory)
        .max_by(|a, b| {
            a.free_cpu()
                .cmp(&b.free_cpu())
                .then_with(|| b.name.cmp(&a.name))
        });
    if let Some(host) = chosen {
        return Ok(host.name.clone());
    }
    let most_cpu = eligible
        .iter()
        .max_by_key(|h| h.free_cpu())
        .expect("not empty");
    let most_memory = eligible
        .iter()
        .max_by_key(|h| h.free_memory())
        .expect("not empty");
    Err(NoRoom {
        message: format!(
            "{asked}; the most any eligible host has free is {} CPU ({}) and {} memory ({})",
            format_cpu(most_cpu.free_cpu().max(0)),
            most_cpu.name,
            format_memory(most_memory.free_memory().max(0)),
            most_memory.name
        ),
    })
}

/// Millicores as people write them: `1500m`, `2`.
pub fn format_cpu(millis: i64) -> String {
    if millis % 1000 == 0 {
        format!("{}", millis / 1000)
    } else {
        format!("{millis}m")
    }
}

/// Bytes as people write them: `512Mi`, `4Gi`, or plain bytes.
pub fn format_memory(bytes: i64) -> String {
    const UNITS: [(&str, i64); 4] = [
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes >= size && bytes % size == 0 {
            return format!("{}{unit}", bytes / size);
        }
    }
    if bytes >= 1 << 30 {
        return format!("{:.1}Gi", bytes as f64 / (1u64 << 30) as f64);
    }
    if bytes >= 1 << 20 {
        return format!("{:.1}Mi", bytes as f64 / (1u64 << 20) as f64);
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const GI: i64 = 1 << 30;

    fn host(name: &str, cpu: i64, memory: i64, used_cpu: i64, used_memory: i64) -> Host {
        Host {
            name: name.into(),
            labels: [("pool".to_string(), "sandboxes".to_string())].into(),
            allocatable_cpu: cpu,
            allocatable_memory: memory,
            requested_cpu: used_cpu,
            requested_memory: used_memory,
            schedulable: true,
            blocking_taints: Vec::new(),
        }
    }

    #[test]
    fn hosts_with_counts_at_the_integer_limits_do_not_overflow() {
        // allocatable CPU i64::MIN with 1 requested (or i64::MAX with -1)
        // panicked: attempt to subtract with overflow.
        let hosts = [
            host("low", i64::MIN, i64::MIN, 1, 1),
            host("high", i64::MAX, i64::MAX, -1, -1),
        ];
        assert_eq!(hosts[0].free_cpu(), i64::MIN);
        assert_eq!(hosts[1].free_memory(), i64::MAX);
        let request = Request { cpu: 1, memory: 1 };
        assert_eq!(choose_host(&hosts, request, None), Ok("high".into()));
        let too_much = Request {
            cpu: i64::MAX,
            memory: i64::MAX,
        };
        assert_eq!(choose_host(&hosts, too_much, None), Ok("high".into()));
        assert!(choose_host(&hosts[..1], request, None).is_err());
    }

    #[test]
    fn the_roomiest_host_that_fits_is_chosen() {
        let hosts = [
            host("a", 4000, 8 * GI, 3000, 0),
            host("b", 4000, 8 * GI, 1000, 0),
        ];
        let request = Request {
            cpu: 2000,
            memory: GI,
        };
        assert_eq!(choose_host(&hosts, request, None), Ok("b".into()));
    }

    #[test]
    fn nothing_fits_says_what_was_asked_and_the_most_free() {
        let hosts = [
            host("a", 4000, 8 * GI, 3000, 0),
            host("b", 4000, 8 * GI, 2500, 6 * GI),
        ];
        let request = Request {
            cpu: 2000,
            memory: GI,
        };
        let err = choose_host(&hosts, request, None).unwrap_err();
        assert_eq!(
            err.message,
            "asked for 2 CPU and 1Gi memory; the most any eligible host has free is 1500m CPU (b) and 8Gi memory (a)"
        );
    }

    #[test]
    fn placement_and_taints_narrow_the_hosts() {
        let mut tainted = host("tainted", 8000, 8 * GI, 0, 0);
        tainted.blocking_taints = vec!["node-role.kubernetes.io/control-plane".into()];
        let mut dedicated = host("dedicated", 2000, 8 * GI, 0, 0);
        dedicated.blocking_taints = vec![SANDBOX_HOST_TAINT.into()];
        let mut cordoned = host("cordoned", 8000, 8 * GI, 0, 0);
        cordoned.schedulable = false;
        let hosts = [tainted, dedicated, cordoned];
        let request = Request {
            cpu: 1000,
            memory: GI,
        };
        assert_eq!(choose_host(&hosts, request, None), Ok("dedicated".into()));
        let pinned = Placement {
            host: Some("cordoned".into()),
            node_selector: BTreeMap::new(),
        };
        assert!(
            choose_host(&hosts, request, Some(&pinned))
                .unwrap_err()
                .message
                .contains("host cordoned")
        );
        let selected = Placement {
            host: None,
            node_selector: [("pool".to_string(), "gpu".to_string())].into(),
        };
        assert!(
            choose_host(&hosts, request, Some(&selected))
                .unwrap_err()
                .message
                .contains("pool=gpu")
        );
    }

    #[test]
    fn quantities_read_as_people_write_them() {
        assert_eq!(format_cpu(1500), "1500m");
        assert_eq!(format_cpu(2000), "2");
        assert_eq!(format_memory(512 << 20), "512Mi");
        assert_eq!(format_memory(4 * GI), "4Gi");
        assert_eq!(format_memory(1000), "1000");
    }

    proptest! {
        /// A chosen host always has room for the request; when none is
        /// chosen, no eligible host had room.
        #[test]
        fn a_chosen_host_has_room(
            hosts in proptest::collection::vec((0i64..8000, 0i64..16, 0i64..8000, 0i64..16, any::<bool>()), 0..6),
            cpu in 1i64..4000,
            memory in 1i64..8,
        ) {
            let hosts: Vec<Host> = hosts
                .into_iter()
                .enumerate()
                .map(|(i, (c, m, uc, um, ready))| {
                    let mut h = host(&format!("h{i}"), c, m * GI, uc, um * GI);
                    h.schedulable = ready;
                    h
                })
                .collect();
            let request = Request { cpu, memory: memory * GI };
            match choose_host(&hosts, request, None) {
                Ok(name) => {
                    let h = hosts.iter().find(|h| h.name == name).unwrap();
                    prop_assert!(h.schedulable && h.free_cpu() >= cpu && h.free_memory() >= memory * GI);
                }
                Err(_) => prop_assert!(hosts
                    .iter()
                    .all(|h| !h.schedulable || h.free_cpu() < cpu || h.free_memory() < memory * GI)),
            }
        }
    }
}
