"""A cluster admin's review of the manifests, as code: Pod Security "restricted", tokens, resources, RBAC,
network policy, images and admin APIs. Pure: documents in, findings out.

The "restricted" rules follow Kubernetes' Pod Security Standards (baseline and restricted levels): no host
namespaces, ports or paths, nothing privileged, no Windows hostProcess, no unmasked /proc, only namespaced
sysctls, no SELinux type beyond the container ones (nor a user or role), no unconfined AppArmor profile, no
added capabilities beyond NET_BIND_SERVICE and ALL dropped, no privilege escalation, non-root, a RuntimeDefault
or Localhost seccomp profile, only the volume types the profile allows. A namespace enforcing that profile
refuses every pod that breaks one.
"""

from __future__ import annotations

from typing import Any, Collection, Iterator, Optional

from generator.serve.adminapi import ADMIN_APIS

RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}
"""Volume types Pod Security "restricted" allows."""
ALLOWED_ADDED_CAPABILITIES = {"NET_BIND_SERVICE"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"}
"""The sysctls Pod Security "baseline" (and so "restricted") allows in Kubernetes 1.33: namespaced ones only."""
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
"""SELinux types the profiles allow (``spc_t``, a super-privileged container, is not one)."""
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def pod_specs(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(role, pod spec, pod metadata) of every pod a document makes: workloads, CronJobs, LeaderWorkerSet leader
    and worker, Pods. The metadata carries the annotations the profiles also read (AppArmor's older form)."""
    kind = doc.get("kind")
    name = f"{kind} {(doc.get('metadata') or {}).get('name')}"
    spec = doc.get("spec") or {}
    if kind == "Pod":
        yield name, spec, doc.get("metadata") or {}
        return
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec") or {})
    if kind in WORKLOADS or kind == "CronJob":
        templates = [(name, spec.get("template") or {})]
    elif kind == "LeaderWorkerSet":
        lwt = spec.get("leaderWorkerTemplate") or {}
        templates = [(f"{name} {role}", lwt[role]) for role in ("leaderTemplate", "workerTemplate") if lwt.get(role)]
    else:
        templates = []
    for role, template in templates:
        yield role, template.get("spec") or {}, template.get("metadata") or {}


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for key in ("initContainers", "containers", "ephemeralContainers") for c in pod.get(key) or []
            if isinstance(c, dict)]


def secrets_read(pod: dict[str, Any]) -> set[str]:
    """The Secrets a pod reads: its containers' env and envFrom, its secret and projected volumes."""
    names = set()
    for c in _containers(pod):
        for env in c.get("env") or []:
            ref = ((env.get("valueFrom") or {}).get("secretKeyRef") or {}) if isinstance(env, dict) else {}
            names.add(ref.get("name"))
        names |= {(e.get("secretRef") or {}).get("name") for e in c.get("envFrom") or [] if isinstance(e, dict)}
    for v in pod.get("volumes") or []:
        if isinstance(v, dict):
            names.add((v.get("secret") or {}).get("secretName"))
            names |= {(s.get("secret") or {}).get("name") for s in (v.get("projected") or {}).get("sources") or []
                      if isinstance(s, dict)}
    return {str(n) for n in names if n}


def _baseline_context(who: str, ctx: dict[str, Any]) -> list[str]:
    """What the "baseline" rules refuse in one security context (the pod's or a container's)."""
    why = []
    if (ctx.get("windowsOptions") or {}).get("hostProcess"):
        why.append(f"{who} is a Windows hostProcess (full access to the node)")
    selinux = ctx.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
        why.append(f"{who} sets SELinux options the profile refuses ({selinux}; allowed: a type of "
                   f"{', '.join(sorted(t for t in SELINUX_TYPES if t))}, no user or role)")
    apparmor = (ctx.get("appArmorProfile") or {}).get("type")
    if apparmor not in (None, "RuntimeDefault", "Localhost"):
        why.append(f"{who} has AppArmor profile {apparmor!r} (allowed: RuntimeDefault, Localhost)")
    return why


def restricted_violations(pod: dict[str, Any], metadata: Optional[dict[str, Any]] = None) -> list[str]:
    """Why Pod Security "restricted" refuses this pod spec (empty: it passes); ``metadata``: the pod's, whose
    annotations may set AppArmor profiles."""
    why = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            why.append(f"{key}: true shares the node's namespace")
    for key, value in ((metadata or {}).get("annotations") or {}).items():
        if str(key).startswith(APPARMOR_ANNOTATION) and not (value == "runtime/default"
                                                               or str(value).startswith("localhost/")):
            why.append(f"annotation {key} sets AppArmor profile {value!r} (allowed: runtime/default, localhost/*)")
    unsafe = [s.get("name") for s in (pod.get("securityContext") or {}).get("sysctls") or []
              if isinstance(s, dict) and s.get("name") not in SAFE_SYSCTLS]
    if unsafe:
        why.append(f"sysctls {', '.join(map(str, unsafe))} are not namespaced (allowed: {', '.join(sorted(SAFE_SYSCTLS))})")
    why += _baseline_context("the pod", pod.get("securityContext") or {})
    for v in pod.get("volumes") or []:
        kinds = set(v) - {"name"}
        if kinds - RESTRICTED_VOLUMES:
            why.append(f"volume {v.get('name')!r} is {', '.join(sorted(kinds - RESTRICTED_VOLUMES))} "
                       "(allowed: " + ", ".join(sorted(RESTRICTED_VOLUMES)) + ")")
    pod_ctx = pod.get("securityContext") or {}
    for c in _containers(pod):
        ctx = c.get("securityContext") or {}
        who = f"container {c.get('name')!r}"
        if ctx.get("privileged"):
            why.append(f"{who} is privileged")
        if ctx.get("procMount", "Default") != "Default":
            why.append(f"{who} sets procMount {ctx['procMount']!r} (only Default masks /proc)")
        why += _baseline_context(who, ctx)
        caps = ctx.get("capabilities") or {}
        added = set(caps.get("add") or []) - ALLOWED_ADDED_CAPABILITIES
        if added:
            why.append(f"{who} adds capabilities {', '.join(sorted(added))}")
        if "ALL" not in (caps.get("drop") or []):
            why.append(f"{who} does not drop ALL capabilities")
        if ctx.get("allowPrivilegeEscalation") is not False:
            why.append(f"{who} does not set allowPrivilegeEscalation: false")
        if not ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")):
            why.append(f"{who} does not set runAsNonRoot: true (pod or container)")
        if ctx.get("runAsUser", pod_ctx.get("runAsUser")) == 0:
            why.append(f"{who} runs as user 0 (root)")
        seccomp = (ctx.get("seccompProfile") or pod_ctx.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            why.append(f"{who} has no RuntimeDefault or Localhost seccompProfile (pod or container)")
        if any(p.get("hostPort") for p in c.get("ports") or [] if isinstance(p, dict)):
            why.append(f"{who} uses a hostPort")
    return why


def review_pod(role: str, pod: dict[str, Any], metadata: dict[str, Any], *, needs_token: bool,
               server: bool, secrets: Optional[Collection[str]] = None) -> list[tuple[str, str]]:
    """(problem, fix) of one pod: the profile, then token, Secrets other than ``secrets`` (None: not reviewed),
    resources, images, admin APIs, fetching at start."""
    out = [(f"{role} fails Pod Security \"restricted\": {reason}", "re-render the manifests (tritongen writes "
            "pods that pass it)") for reason in restricted_violations(pod, metadata)]
    for name in sorted(secrets_read(pod) - set(secrets if secrets is not None else secrets_read(pod))):
        out.append((f"{role} reads Secret {name!r}, which is not one of tritongen's ({', '.join(sorted(secrets))})",
                    "remove the reference (re-render the manifests)"))
    if not needs_token and pod.get("automountServiceAccountToken") is not False:
        out.append((f"{role} mounts a ServiceAccount token it does not need", "set automountServiceAccountToken: false"))
    for c in _containers(pod):
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            missing = [r for r in ("cpu", "memory") if r not in (res.get(part) or {})]
            if missing:
                out.append((f"{role} container {c.get('name')!r} has no {'/'.join(missing)} {part} "
                            "(BestEffort pods are evicted first and can starve the node)",
                            f"set resources.{part} (tritongen sizes them from the plan)"))
        image = str(c.get("image") or "")
        if "@" not in image and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")):
            out.append((f"{role} image {image!r} is not pinned to a tag or digest", "name a version tag or a digest"))
        script = " ".join(str(a) for a in (c.get("command") or []) + (c.get("args") or []))
        if "pip install" in script or "pip3 install" in script:
            out.append((f"{role} container {c.get('name')!r} installs packages when it starts (unpinned code "
                        "fetched at every start)", "bake the packages into the image (loadtest.Dockerfile)"))
        if server and not all(f"--{p}-restricted-" in script for p in ("http", "grpc")):
            out.append((f"{role} starts tritonserver without --http-restricted-api/--grpc-restricted-protocol: "
                        f"its admin APIs ({', '.join(ADMIN_APIS)}) answer anyone who reaches the Service",
                        "re-render the manifests (the key comes from the admin-key Secret)"))
    return out


def review_rbac(doc: dict[str, Any], roles: Collection[tuple[Any, Any]] = ()) -> list[tuple[str, str]]:
    """A Role or ClusterRole granting more than a pod needs: exec anywhere, secrets, wildcards; a binding whose
    grant this review cannot see: cluster-wide, or of a role not among ``roles`` ((kind, name) of the file's own)."""
    name = f"{doc.get('kind')} {(doc.get('metadata') or {}).get('name')}"
    ref = doc.get("roleRef") if isinstance(doc.get("roleRef"), dict) else {}
    if doc.get("kind") == "ClusterRoleBinding":
        return [(f"{name} grants {ref.get('kind')} {ref.get('name')!r} in every namespace (cluster-admin, admin and "
                 "edit reach every Secret)", "bind a Role of this file with a RoleBinding")]
    if doc.get("kind") == "RoleBinding" and (ref.get("kind"), ref.get("name")) not in roles:
        return [(f"{name} binds {ref.get('kind')} {ref.get('name')!r}, which this file does not define, so what it "
                 "grants is not reviewed", "bind a Role defined in this file")]
    if doc.get("kind") not in ("Role", "ClusterRole"):
        return []
    out = []
    for rule in doc.get("rules") or []:
        resources, verbs = set(rule.get("resources") or []), set(rule.get("verbs") or [])
        if "*" in resources or "*" in verbs:
            out.append((f"{name} grants a wildcard ({sorted(resources)} / {sorted(verbs)})", "name the resources and verbs"))
        if "secrets" in resources:
            out.append((f"{name} grants access to secrets", "remove secrets from the rule"))
        if "pods/exec" in resources and not rule.get("resourceNames"):
            out.append((f"{name} grants pods/exec on every pod of the namespace", "list the pods in resourceNames"))
    return out
