//! The container image, built here without Docker: `hack/image.sh` builds the OCI layout
//! (or reuses the static binary when nothing changed), the test reads the layout's JSON
//! and its one layer, unpacks it with `umoci unpack --rootless` and runs the binary from
//! the unpacked root filesystem. It also checks that the Dockerfile describes the same
//! image. Needs umoci (`apt-get install umoci`; `.ci/run` installs it), no cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ctrlplane_operator::api;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const BINARY: &str = "/usr/local/bin/ctrlplane-operator";
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
const NONROOT: u64 = 65532;
const HOST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One entry of the image's layer, from its tar header.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    kind: char,
    mode: u64,
    uid: u64,
    gid: u64,
}

struct Image {
    layout: PathBuf,
    manifest: Value,
    config: Value,
    /// path -> entry, and every entry's mtime.
    layer: BTreeMap<String, Entry>,
    mtimes: BTreeSet<u64>,
    bundle: PathBuf,
}

impl Image {
    fn rootfs(&self) -> PathBuf {
        self.bundle.join("rootfs")
    }

    fn in_rootfs(&self, path: &str) -> PathBuf {
        self.rootfs().join(path.trim_start_matches('/'))
    }
}

/// The image, built and unpacked once for all tests of this file. A failure is kept and
/// reported by every test that needs the image.
fn image() -> &'static Image {
    static IMAGE: OnceLock<Result<Image, String>> = OnceLock::new();
    match IMAGE.get_or_init(build_image) {
        Ok(image) => image,
        Err(err) => panic!("{err}"),
    }
}

fn build_image() -> Result<Image, String> {
    let umoci = Command::new("umoci").arg("--version").output();
    if !umoci.is_ok_and(|o| o.status.success()) {
        return Err(
            "umoci is not installed: the image test builds and unpacks the image \
                    with it (Debian: apt-get install umoci; .ci/run installs it)"
                .into(),
        );
    }
    let started = Instant::now();
    // hack/image.sh prints the image reference; cargo's output goes to stderr and is shown.
    let out = Command::new(repo_root().join("hack/image.sh"))
        .current_dir(repo_root())
        .env_remove("IMAGE_DIR")
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run hack/image.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!("hack/image.sh failed ({})", out.status));
    }
    eprintln!("hack/image.sh took {:.1}s", started.elapsed().as_secs_f64());
    let reference = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (layout, tag) = reference
        .rsplit_once(':')
        .ok_or_else(|| format!("hack/image.sh printed {reference:?}, not <layout>:<tag>"))?;
    if tag != VERSION {
        return Err(format!("the image is tagged {tag}, the crate is {VERSION}"));
    }
    let layout = PathBuf::from(layout);

    let layout_file: Value = read_json(&layout.join("oci-layout"))?;
    if layout_file["imageLayoutVersion"] != "1.0.0" {
        return Err(format!("oci-layout is {layout_file}"));
    }
    let index: Value = read_json(&layout.join("index.json"))?;
    let descriptors = index["manifests"].as_array().cloned().unwrap_or_default();
    if descriptors.len() != 1 {
        return Err(format!("index.json should name one manifest: {index}"));
    }
    let descriptor = &descriptors[0];
    if descriptor["annotations"]["org.opencontainers.image.ref.name"] != VERSION {
        return Err(format!(
            "index.json does not tag the manifest {VERSION}: {index}"
        ));
    }
    let manifest: Value = serde_json::from_slice(&blob(&layout, descriptor)?)
        .map_err(|e| format!("manifest: {e}"))?;
    let config: Value = serde_json::from_slice(&blob(&layout, &manifest["config"])?)
        .map_err(|e| format!("config: {e}"))?;
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    if layers.len() != 1 {
        return Err(format!("the image should have one layer: {manifest}"));
    }
    if layers[0]["mediaType"] != "application/vnd.oci.image.layer.v1.tar+gzip" {
        return Err(format!("layer media type: {}", layers[0]));
    }
    let compressed = blob(&layout, &layers[0])?;
    let tar = gunzip(&compressed)?;
    let diff_id = format!("sha256:{}", sha256_hex(&tar));
    if config["rootfs"]["diff_ids"] != json!([diff_id]) {
        return Err(format!(
            "the config's diff_ids {} do not match the layer ({diff_id})",
            config["rootfs"]["diff_ids"]
        ));
    }
    let (layer, mtimes) = parse_tar(&tar)?;

    let bundle = Path::new(env!("CARGO_TARGET_TMPDIR")).join("image-bundle");
    unpack(&layout, &bundle)?;
    Ok(Image {
        layout,
        manifest,
        config,
        layer,
        mtimes,
        bundle,
    })
}

fn read_json(path: &Path) -> Result<Value, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// A blob named by a descriptor, with its size and digest checked.
fn blob(layout: &Path, descriptor: &Value) -> Result<Vec<u8>, String> {
    let digest = descriptor["digest"].as_str().unwrap_or_default();
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("not a sha256 digest: {descriptor}"))?;
    let path = layout.join("blobs/sha256").join(hex);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if sha256_hex(&bytes) != hex {
        return Err(format!("{} does not match its digest", path.display()));
    }
    if descriptor["size"].as_u64() != Some(bytes.len() as u64) {
        return Err(format!(
            "{} is not the size {descriptor} says",
            path.display()
        ));
    }
    Ok(bytes)
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn gunzip(compressed: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run gzip: {e}"))?;
    let mut stdin = child.stdin.take().unwrap();
    let input = compressed.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    writer.join().unwrap().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("gzip -dc failed on the layer ({})", out.status));
    }
    Ok(out.stdout)
}

/// The headers of a ustar archive: path -> (type, mode, owner), and the set of mtimes.
fn parse_tar(tar: &[u8]) -> Result<(BTreeMap<String, Entry>, BTreeSet<u64>), String> {
    fn field(header: &[u8], from: usize, to: usize) -> String {
        let raw = &header[from..to];
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        String::from_utf8_lossy(&raw[..end]).trim().to_string()
    }
    fn octal(header: &[u8], from: usize, to: usize) -> Result<u64, String> {
        let text = field(header, from, to);
        u64::from_str_radix(&text, 8).map_err(|e| format!("tar header field {text:?}: {e}"))
    }
    let mut entries = BTreeMap::new();
    let mut mtimes = BTreeSet::new();
    let mut at = 0;
    while at + 512 <= tar.len() {
        let header = &tar[at..at + 512];
        if header.iter().all(|&b| b == 0) {
            break;
        }
        if &header[257..262] != b"ustar" {
            return Err(format!("not a ustar header at offset {at}"));
        }
        let (name, prefix) = (field(header, 0, 100), field(header, 345, 500));
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let size = octal(header, 124, 136)?;
        let kind = match header[156] {
            b'0' | 0 => 'f',
            b'5' => 'd',
            b'2' => 'l',
            other => return Err(format!("{path}: unexpected tar entry type {other}")),
        };
        let entry = Entry {
            kind,
            mode: octal(header, 100, 108)?,
            uid: octal(header, 108, 116)?,
            gid: octal(header, 116, 124)?,
        };
        mtimes.insert(octal(header, 136, 148)?);
        if entries.insert(path.clone(), entry).is_some() {
            return Err(format!("{path} is twice in the layer"));
        }
        at += 512 + size.div_ceil(512) as usize * 512;
    }
    Ok((entries, mtimes))
}

fn unpack(layout: &Path, bundle: &Path) -> Result<(), String> {
    if bundle.exists() {
        std::fs::remove_dir_all(bundle).map_err(|e| format!("{}: {e}", bundle.display()))?;
    }
    let out = Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:{VERSION}", layout.display()))
        .arg(bundle)
        .output()
        .map_err(|e| format!("cannot run umoci: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "umoci unpack failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Runs a command with a clean environment and a deadline.
fn run(cmd: &mut Command, deadline: Duration) -> Output {
    use std::io::Read;
    let mut child = cmd
        .env_clear()
        .env("PATH", HOST_PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    // Read both pipes while waiting, so a large output cannot block the child.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {deadline:?}; stderr:\n{}",
                String::from_utf8_lossy(&stderr.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn run_binary(image: &Image, args: &[&str]) -> String {
    let out = run(
        Command::new(image.in_rootfs(BINARY)).args(args),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "{BINARY} {args:?} from the unpacked image failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn config_runs_the_binary_as_nonroot() {
    let image = image();
    let config = &image.config;
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], "amd64");
    let c = &config["config"];
    assert_eq!(c["User"], "65532:65532", "user: {c}");
    assert_eq!(c["Entrypoint"], json!([BINARY]));
    assert_eq!(
        c["Cmd"],
        json!(["run", "--metrics-address=0.0.0.0:8080", "--log-format=json"])
    );
    assert_eq!(c["WorkingDir"], "/");
    assert_eq!(
        c["Env"],
        json!([
            format!("PATH={HOST_PATH}"),
            format!("SSL_CERT_FILE={CA_BUNDLE}")
        ])
    );
    assert_eq!(c["ExposedPorts"], json!({"8080/tcp": {}}));
    let labels = json!({
        "org.opencontainers.image.source": "https://github.com/ctrlplane/ctrlplane-operator",
        "org.opencontainers.image.version": VERSION,
        "org.opencontainers.image.title": "ctrlplane-operator",
        "org.opencontainers.image.licenses": "Apache-2.0",
    });
    assert_eq!(c["Labels"], labels);
    assert_eq!(image.manifest["annotations"], labels);

    // The chart runs the pod as the image's user.
    let deployment = std::fs::read_to_string(
        repo_root().join("deploy/helm/ctrlplane-operator/templates/deployment.yaml"),
    )
    .unwrap();
    for line in [
        "runAsNonRoot: true",
        "runAsUser: 65532",
        "runAsGroup: 65532",
    ] {
        assert!(
            deployment.contains(line),
            "the chart's Deployment lacks `{line}`, the image's user"
        );
    }
}

#[test]
fn layer_holds_exactly_the_layout() {
    let image = image();
    let root = |kind, mode| Entry {
        kind,
        mode,
        uid: 0,
        gid: 0,
    };
    let expected: BTreeMap<String, Entry> = [
        ("etc/", root('d', 0o755)),
        ("etc/group", root('f', 0o644)),
        ("etc/nsswitch.conf", root('f', 0o644)),
        ("etc/passwd", root('f', 0o644)),
        ("etc/ssl/", root('d', 0o755)),
        ("etc/ssl/certs/", root('d', 0o755)),
        ("etc/ssl/certs/ca-certificates.crt", root('f', 0o644)),
        ("home/", root('d', 0o755)),
        (
            "home/nonroot/",
            Entry {
                kind: 'd',
                mode: 0o700,
                uid: NONROOT,
                gid: NONROOT,
            },
        ),
        ("tmp/", root('d', 0o1777)),
        ("usr/", root('d', 0o755)),
        ("usr/local/", root('d', 0o755)),
        ("usr/local/bin/", root('d', 0o755)),
        ("usr/local/bin/ctrlplane-operator", root('f', 0o755)),
    ]
    .into_iter()
    .map(|(path, entry)| (path.to_string(), entry))
    .collect();
    assert_eq!(image.layer, expected, "the layer's files, modes and owners");

    // Every timestamp is the one epoch the image was built with.
    let created = image.config["created"].as_str().unwrap();
    let created = chrono::DateTime::parse_from_rfc3339(created)
        .unwrap_or_else(|e| panic!("config.created {created:?}: {e}"))
        .timestamp() as u64;
    assert_eq!(
        image.mtimes,
        BTreeSet::from([created]),
        "file times in the layer"
    );
    assert_eq!(
        image.config["history"][0]["created"],
        image.config["created"]
    );
}

#[test]
fn binary_is_static() {
    let image = image();
    let elf = std::fs::read(image.in_rootfs(BINARY)).unwrap();
    let (interpreter, needed) = elf_dynamic_deps(&elf);
    assert!(
        !interpreter,
        "{BINARY} has a program interpreter (PT_INTERP): it is dynamically linked"
    );
    assert_eq!(needed, 0, "{BINARY} needs shared libraries (DT_NEEDED)");
    // ldd agrees, when it is there to ask.
    if let Ok(out) = Command::new("ldd").arg(image.in_rootfs(BINARY)).output() {
        let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains("statically linked") || said.contains("not a dynamic executable"),
            "ldd says: {said}"
        );
    }
}

/// The check above, on a binary known to be dynamic: cargo's ordinary debug build.
#[test]
fn the_static_check_sees_a_dynamic_binary() {
    let elf = std::fs::read(env!("CARGO_BIN_EXE_ctrlplane-operator")).unwrap();
    let (interpreter, needed) = elf_dynamic_deps(&elf);
    assert!(interpreter, "the debug build has no PT_INTERP");
    assert!(needed > 0, "the debug build needs no shared library");
}

/// Whether an x86-64 ELF file has PT_INTERP, and how many DT_NEEDED entries it has.
fn elf_dynamic_deps(elf: &[u8]) -> (bool, usize) {
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap());
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not a 64-bit ELF file");
    assert_eq!(elf[5], 1, "not a little-endian ELF file");
    assert_eq!(u16_at(0x12), 62, "not an x86-64 ELF file");
    let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, u16_at(0x36), u16_at(0x38));
    let mut interpreter = false;
    let mut needed = 0;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        match u32_at(ph) {
            3 => interpreter = true, // PT_INTERP
            2 => {
                // PT_DYNAMIC: (d_tag, d_val) pairs until DT_NULL.
                let (offset, size) = (u64_at(ph + 8) as usize, u64_at(ph + 32) as usize);
                for entry in (offset..offset + size).step_by(16) {
                    match u64_at(entry) {
                        0 => break,
                        1 => needed += 1,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    (interpreter, needed)
}

#[test]
fn binary_runs_from_the_unpacked_rootfs() {
    let image = image();
    assert_eq!(
        run_binary(image, &["--version"]),
        format!("ctrlplane-operator {VERSION}\n")
    );
    assert_eq!(
        run_binary(image, &["version"]),
        format!("ctrlplane-operator {VERSION}\n")
    );
    let crds = run_binary(image, &["crds"]);
    let expected: String = api::crds()
        .iter()
        .map(|crd| format!("---\n{}", api::crd_yaml(crd).unwrap()))
        .collect();
    assert!(
        crds == expected,
        "`crds` from the image differs from the code's CRDs"
    );
    for name in ["instances", "sandboxes", "webhooks", "webhookdeliveries"] {
        assert!(
            crds.contains(&format!("\n  name: {name}.ctrlplane.dev\n")),
            "`crds` lacks {name}.ctrlplane.dev"
        );
    }
}

#[test]
fn rootfs_has_the_ca_bundle_and_the_nonroot_user() {
    let image = image();
    let bundle = std::fs::read(image.in_rootfs(CA_BUNDLE)).unwrap();
    assert!(
        String::from_utf8_lossy(&bundle).contains("-----BEGIN CERTIFICATE-----"),
        "{CA_BUNDLE} holds no certificate"
    );
    assert!(
        bundle == std::fs::read(CA_BUNDLE).unwrap(),
        "{CA_BUNDLE} in the image is not the machine's"
    );
    let passwd = std::fs::read_to_string(image.in_rootfs("/etc/passwd")).unwrap();
    assert!(
        passwd
            .lines()
            .any(|l| l == "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin"),
        "/etc/passwd:\n{passwd}"
    );
    assert!(
        passwd.lines().any(|l| l.starts_with("root:x:0:0:")),
        "/etc/passwd:\n{passwd}"
    );
    let group = std::fs::read_to_string(image.in_rootfs("/etc/group")).unwrap();
    assert!(
        group.lines().any(|l| l == "nonroot:x:65532:"),
        "/etc/group:\n{group}"
    );
    let nsswitch = std::fs::read_to_string(image.in_rootfs("/etc/nsswitch.conf")).unwrap();
    assert!(
        nsswitch.lines().any(|l| l == "hosts: files dns"),
        "/etc/nsswitch.conf:\n{nsswitch}"
    );
    assert!(image.in_rootfs("/home/nonroot").is_dir());
    assert!(image.in_rootfs("/tmp").is_dir());
}

/// glibc linked statically still looks names up through NSS; `files` and `dns` are inside
/// libc in the glibc it is built with (Debian 12: 2.36), so the image needs no NSS module. This runs the
/// binary chrooted into a copy of the unpacked image (in a user and mount namespace, so
/// no root is needed), with the /etc/hosts and /dev a container runtime would provide,
/// and checks that it resolves a name from /etc/hosts: `run` with leader election asks
/// the API server named in its kubeconfig for the Lease, logs where it connects, and
/// exits when the connection is refused.
#[test]
fn names_resolve_inside_the_rootfs() {
    let image = image();
    let bundle = Path::new(env!("CARGO_TARGET_TMPDIR")).join("image-bundle-nss");
    unpack(&image.layout, &bundle).unwrap();
    let rootfs = bundle.join("rootfs");
    std::fs::write(
        rootfs.join("etc/hosts"),
        "127.0.0.1 localhost\n127.0.0.7 ctrlplane-image-check\n",
    )
    .unwrap();
    std::fs::create_dir_all(rootfs.join("dev")).unwrap();
    std::fs::write(
        rootfs.join("tmp/kubeconfig"),
        "apiVersion: v1\nkind: Config\n\
         clusters: [{name: c, cluster: {server: 'https://ctrlplane-image-check:1'}}]\n\
         users: [{name: u, user: {token: t}}]\n\
         contexts: [{name: c, context: {cluster: c, user: u}}]\n\
         current-context: c\n",
    )
    .unwrap();
    let script = r#"mount --rbind /dev "$1/dev" && exec chroot "$1" /usr/local/bin/ctrlplane-operator run --kubeconfig /tmp/kubeconfig --metrics-address 127.0.0.1:0 --leader-election --log-format json --log-level hyper_util=debug"#;
    let out = run(
        Command::new("unshare")
            .args([
                "--user",
                "--map-root-user",
                "--mount",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .arg(&rootfs),
        Duration::from_secs(60),
    );
    let logs = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(
        logs.contains("connecting to 127.0.0.7:1"),
        "the binary in the image did not resolve ctrlplane-image-check through /etc/hosts \
         (unshare needs unprivileged user namespaces, or root); it said:\n{logs}"
    );
    assert!(
        logs.contains("Connection refused") || logs.contains("client error (Connect)"),
        "{logs}"
    );
    std::fs::remove_dir_all(&bundle).unwrap();
}

/// The Dockerfile's final stage, instruction by instruction (continuations joined,
/// comments dropped): (instruction, arguments).
fn dockerfile_stages() -> Vec<Vec<(String, String)>> {
    let text = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part.trim());
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    for line in logical.into_iter().filter(|l| !l.is_empty()) {
        let (instruction, args) = line.split_once(' ').unwrap_or((&line, ""));
        let instruction = instruction.to_uppercase();
        if instruction == "FROM" {
            stages.push(Vec::new());
        }
        if let Some(stage) = stages.last_mut() {
            stage.push((instruction, args.trim().to_string()));
        }
    }
    stages
}

/// `KEY=VALUE KEY="VALUE"` pairs, as ENV and LABEL take them.
fn key_values(args: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let (mut word, mut quoted) = (String::new(), false);
    for c in args.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
        .into_iter()
        .map(|w| {
            let (k, v) = w
                .split_once('=')
                .unwrap_or_else(|| panic!("not KEY=VALUE: {w}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn dockerfile_builds_the_same_image() {
    let image = image();
    let c = &image.config["config"];
    let stages = dockerfile_stages();
    let build = &stages[0];
    let last = stages.last().unwrap();
    assert_eq!(
        last[0],
        ("FROM".to_string(), "scratch".to_string()),
        "the Dockerfile's image should be built from scratch, as hack/image.sh does"
    );

    // The same binary build and the same root filesystem, from hack/image.sh.
    let script = std::fs::read_to_string(repo_root().join("hack/image.sh")).unwrap();
    for needle in [
        "-C target-feature=+crt-static",
        "CARGO_PROFILE_RELEASE_STRIP=symbols",
        "x86_64-unknown-linux-gnu",
    ] {
        assert!(script.contains(needle), "hack/image.sh lacks {needle}");
        assert!(
            build.iter().any(|(_, args)| args.contains(needle)),
            "the Dockerfile's build stage lacks {needle}, which hack/image.sh uses"
        );
    }
    assert!(
        build.iter().any(|(i, args)| i == "RUN"
            && args.starts_with(&format!(
                "hack/image.sh rootfs target/x86_64-unknown-linux-gnu/release/ctrlplane-operator {CA_BUNDLE} /rootfs"
            ))),
        "the Dockerfile should lay out the root filesystem with `hack/image.sh rootfs`"
    );

    // The final stage: that root filesystem and the same configuration, nothing else.
    let mut env = Vec::new();
    let mut labels = serde_json::Map::new();
    for (instruction, args) in &last[1..] {
        match instruction.as_str() {
            "COPY" => assert_eq!(args, "--from=build /rootfs/ /"),
            "USER" => assert_eq!(c["User"], json!(args), "USER"),
            "WORKDIR" => assert_eq!(c["WorkingDir"], json!(args), "WORKDIR"),
            "EXPOSE" => assert_eq!(
                c["ExposedPorts"],
                json!({format!("{args}/tcp"): {}}),
                "EXPOSE"
            ),
            "ENTRYPOINT" | "CMD" => {
                let value: Value = serde_json::from_str(args)
                    .unwrap_or_else(|e| panic!("{instruction} should be JSON ({e}): {args}"));
                let key = if instruction == "CMD" {
                    "Cmd"
                } else {
                    "Entrypoint"
                };
                assert_eq!(c[key], value, "{instruction}");
            }
            "ENV" => env.extend(
                key_values(args)
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}")),
            ),
            "LABEL" => labels.extend(key_values(args).into_iter().map(|(k, v)| (k, json!(v)))),
            other => panic!(
                "the Dockerfile's final stage has {other} {args}, which hack/image.sh does not do"
            ),
        }
    }
    for key in ["User", "WorkingDir", "ExposedPorts", "Entrypoint", "Cmd"] {
        let instruction = match key {
            "User" => "USER",
            "WorkingDir" => "WORKDIR",
            "ExposedPorts" => "EXPOSE",
            "Entrypoint" => "ENTRYPOINT",
            _ => "CMD",
        };
        assert!(
            last.iter().any(|(i, _)| i == instruction),
            "the Dockerfile's final stage lacks {instruction}"
        );
    }
    assert_eq!(c["Env"], json!(env), "ENV");
    assert_eq!(c["Labels"], Value::Object(labels), "LABEL");
}
