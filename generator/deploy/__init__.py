"""Scale-out artifacts from the spec: topology (ranks, GPUs, instances, nodes), the launch script,
Kubernetes manifests and the checks that hold them and the repository together."""
